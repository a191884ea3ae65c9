"""Per-method embedding speed on a Criteo-like profile, as ratios to `full`, in one run.

For the criteo-kaggle preset (26 tables, 33.8M ids, d=16) at budgets of 1/2, 1/10 and 1/100 of
the full tables, every registered method is solved with the workload solver and timed on batches
of 4096 samples x 26 fields (Zipf ids): one training step per stage (forward + backward +
optimizer: the trainer's FusedSparseAdam (torch's SparseAdam values, one C pass per table) for sparse-gradient
tables, Adam for dense parameters, plus the method's
own hooks and regulariser) and the forward-only lookup of the exported serving form. Each
(method, budget) runs in a fresh subprocess so its peak RSS is its own; timings are medians of
several repetitions (lookups: medians over 40 further batches, after the training batches have warmed the
tables), and `full` is measured in the same run, so the ratios are comparable.

`full` is measured in both layouts: one global table (its default where all fields share a dim,
TorchRec's grouped tables) and one table per field. Each method is judged against full in the
method's own layout (per-field methods against per-field full: the ratio is the cost of the
compression, not of the layout), and its ratio to the default full is printed beside it.

Targets apply to both ratios (training step and lookup). They are judged on a paired measurement: after
its own measurement (and its peak RSS), each method's process builds full in the same layout next to a
fresh build of the method and times the two interleaved (training: one step of each per batch, in
alternating order; lookups: blocks of PAIR_BLOCK batches, the order alternating by block, the first
lookup of a block not timed), and the ratio is the median of the per-batch ratios. This machine drifts
2-3x between processes, so a ratio of two processes can be off by that much; the ratios of separate
processes are printed beside it. ``--no-paired`` skips the paired run (and judges the separate ones).
``--rounds N`` repeats the whole measurement N times, full included, and reports the median of the
per-round ratios with their range.

``--ids shuffled`` maps each frequency rank to a fixed random id (data whose ids say nothing about
frequency); the default gives rank r the id r, so full's hot rows share cache lines.

Usage: python benchmarks/method_speed.py [--reps 7] [--threads 2] [--methods a,b] [--budgets 0.5,0.1,0.01] [--rounds 1]
       [--ids sorted|shuffled] [--no-paired]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

BATCH, FIELDS = 4096, 26
LOOKUP_BATCHES = 40
LAYOUTS = ("global", "per_field")
PAIR_BLOCK = 5


def worker(method: str, ratio: float, reps: int, threads: int, layout: str | None = None,
           ids: str = "sorted", paired: bool = True) -> dict:
    import resource

    import numpy as np
    import torch

    from embadvisor import kernels
    from embadvisor.methods import build_collection, solve
    from embadvisor.profiles import get_preset

    torch.set_num_threads(threads)
    prof = get_preset("criteo-kaggle")
    tables = prof.tables()
    full_bytes = prof.full_table_bytes()
    plan = solve(method, tables, full_bytes * ratio if method != "full" else math.inf, layout=layout)
    if not plan.feasible:
        return {"method": method, "ratio": ratio, "feasible": False, "reason": plan.reason,
                "min_budget_bytes": plan.min_budget_bytes}
    t0 = time.perf_counter()
    torch.manual_seed(0)
    emb = build_collection(plan)
    rng = np.random.default_rng(0)
    counts = zipf_counts(tables)
    # "sorted": frequency rank r is id r (hot ids share cache lines); "shuffled": a fixed random id per rank,
    # as in data whose ids were assigned without regard to frequency (e.g. Criteo's hashed categories)
    perms = [np.random.default_rng(7 + f).permutation(t.num_embeddings) for f, t in enumerate(tables)] \
        if ids == "shuffled" else None
    if perms is not None:
        by_id = []
        for c, perm in zip(counts, perms, strict=True):
            c_id = np.empty_like(c)
            c_id[perm] = c
            by_id.append(c_id)
        counts = by_id
    emb.prepare(counts)
    build_s = time.perf_counter() - t0
    sizes = np.array([t.num_embeddings for t in tables])
    # training batches, then LOOKUP_BATCHES more for the lookups (a lookup takes about a millisecond: many
    # distinct batches keep the median steady on a noisy machine)
    ranks = zipf_ranks(rng, sizes, reps + 2 + LOOKUP_BATCHES)
    if perms is not None:
        ranks = [np.stack([perm[r[:, f]] for f, perm in enumerate(perms)], 1) for r in ranks]
    batches = [torch.from_numpy(r) for r in ranks[: reps + 2]]
    lookup_batches = [torch.from_numpy(r) for r in ranks[reps + 2:]]
    step_fn, _ = _trainer(emb)
    stage_ms = {}
    for stage in emb.stages:
        emb.on_stage_start(stage)
        times = [step_fn(ids) for ids in batches]
        emb.on_epoch_end(0, stage)
        stage_ms[stage.name] = statistics.median(times[2:]) * 1000
    served = emb.export()
    lookups = [_lookup(served, ids) for ids in batches + lookup_batches]
    out = {
        "method": method, "ratio": ratio, "feasible": True, "layout": plan.layout,
        "serve_bytes": plan.memory.serve_bytes, "train_bytes": plan.memory.train_bytes,
        "measured_serve_bytes": served.measured_memory(),
        "stage_ms": stage_ms, "train_ms": sum(stage_ms.values()) / len(stage_ms),
        "lookup_ms": statistics.median(lookups[len(batches):]) * 1000, "build_s": build_s,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "native": kernels.available(), "huge_page_bytes": _huge_page_bytes(),
    }
    if paired and method != "full":
        del served, step_fn, emb
        out.update(_paired(plan, tables, counts, batches, lookup_batches))
    return out


def zipf_counts(tables) -> list:
    """Per-id counts of each table, Zipf(1.1) by id (id 0 most frequent): what ``prepare`` gets."""
    import numpy as np

    return [np.maximum(1, (1e6 / np.arange(1, t.num_embeddings + 1) ** 1.1)).astype(np.int64) for t in tables]


def zipf_ranks(rng, sizes, count: int) -> list:
    """``count`` batches of BATCH rows, one Zipf(1.1) frequency rank per table size in ``sizes``."""
    import numpy as np

    return [np.stack([np.minimum(rng.zipf(1.1, BATCH) - 1, n - 1) for n in sizes], 1) for _ in range(count)]


def _trainer(emb, device=None):
    """A timed training step for ``emb`` (the trainer's sparse Adam for the device on sparse tables: FusedSparseAdam
    on the CPU, torch's SparseAdam on CUDA; Adam on the rest), and its optimizers. On CUDA each step is timed
    from a synchronised start to a synchronised end."""
    import torch

    from embadvisor.devices import synchronize
    from embadvisor.tasks.optim import sparse_adam
    from embadvisor.tasks.trainer import backward_step, prefault_sparse_state, with_regularization

    device = torch.device(device or "cpu")
    sparse = emb.sparse_parameters()
    sid = {id(p) for p in sparse}
    dense = [p for p in emb.parameters() if p.requires_grad and id(p) not in sid]
    opts = ([sparse_adam(sparse, lr=1e-3)] if sparse else []) + \
           ([torch.optim.Adam(dense, lr=1e-3)] if dense else [])
    for o in opts:
        prefault_sparse_state(o)
    emb.on_train_start("adam", 1e-3)
    emb.train()
    step = 0

    def step_fn(ids) -> float:
        nonlocal step
        synchronize(device)
        t = time.perf_counter()
        backward_step(with_regularization(emb, emb(ids).pow(2).mean()), opts)
        step += 1
        emb.on_step(step)
        synchronize(device)
        return time.perf_counter() - t

    return step_fn, opts


def _lookup(served, ids, device=None) -> float:
    """Seconds of one forward of ``served`` on ``ids`` (on CUDA: synchronised at both ends)."""
    import torch

    from embadvisor.devices import synchronize

    device = torch.device(device or "cpu")
    with torch.no_grad():
        synchronize(device)
        t = time.perf_counter()
        served(ids)
        synchronize(device)
        return time.perf_counter() - t


def _paired(plan, tables, counts, batches, lookup_batches) -> dict:
    """The method against full (same layout) in this process, interleaved: ratios without the drift between
    processes. Runs after the method's own measurement (its peak RSS is taken before full's tables exist),
    on a fresh build of the method (same plan and seed) trained again next to full.

    Training: in every stage of the method, one step of each per batch in alternating order (full stays in
    its one stage). Lookups (exported forms): blocks of PAIR_BLOCK batches, the method's block then full's on
    the same batches, the order alternating by block; the first lookup of a block warms the caches and is not
    timed. Ratios: medians of the per-batch ratios (training: mean over the method's stages)."""
    import torch

    from embadvisor.methods import build_collection, solve

    full = build_collection(solve("full", tables, math.inf, layout=plan.layout))
    full.prepare(None)
    full_step, _ = _trainer(full)
    full.on_stage_start(full.stages[0])
    torch.manual_seed(0)
    emb = build_collection(plan)
    emb.prepare(counts)
    step_fn, _ = _trainer(emb)
    stage_r = []
    for stage in emb.stages:
        emb.on_stage_start(stage)
        ratios = []
        for i, ids in enumerate(batches):
            if i % 2:
                tf, tm = full_step(ids), step_fn(ids)
            else:
                tm, tf = step_fn(ids), full_step(ids)
            ratios.append(tm / tf)
        emb.on_epoch_end(0, stage)
        stage_r.append(statistics.median(ratios[2:]))
    served, full_served = emb.export(), full.export()
    lookup_r, lookup_m, lookup_f = [], [], []
    for k in range(0, len(lookup_batches), PAIR_BLOCK):
        block = lookup_batches[k : k + PAIR_BLOCK]
        first, second = (served, full_served) if (k // PAIR_BLOCK) % 2 == 0 else (full_served, served)
        t1 = [_lookup(first, ids) for ids in block][1:]
        t2 = [_lookup(second, ids) for ids in block][1:]
        tm, tf = (t1, t2) if first is served else (t2, t1)
        lookup_r += [a / b for a, b in zip(tm, tf, strict=True)]
        lookup_m += tm
        lookup_f += tf
    return {
        "paired_train": sum(stage_r) / len(stage_r),
        "paired_lookup": statistics.median(lookup_r),
        # the absolute medians (ms) and full's huge-page bytes: a paired ratio far from the separate one is
        # then explainable (e.g. full's tables without huge pages in this process)
        "paired_lookup_ms": (statistics.median(lookup_m) * 1000, statistics.median(lookup_f) * 1000),
        "paired_huge_page_bytes": _huge_page_bytes(),
    }


def _huge_page_bytes() -> int:
    """Bytes of this process on transparent huge pages (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/smaps_rollup") as f:
            return next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("AnonHugePages:"))
    except (OSError, StopIteration):
        return 0


def run(method: str, ratio: float, reps: int, threads: int, layout: str | None = None, ids: str = "sorted",
        paired: bool = True) -> dict:
    cmd = [sys.executable, __file__, "--worker", method, "--ratio", str(ratio), "--reps", str(reps),
           "--threads", str(threads), "--ids", ids] + (["--layout", layout] if layout else []) + \
          ([] if paired else ["--no-paired"])
    res = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    if res.returncode != 0:
        return {"method": method, "ratio": ratio, "feasible": False, "reason": "crashed: " + res.stderr[-300:]}
    return json.loads(res.stdout.strip().splitlines()[-1])


TARGETS = {"hash": 1.5, "qr": 1.5, "robe": 1.5, "mde": 1.5, "adapt": 1.5, "int8": 1.5, "int16": 1.5, "alpt": 1.5,
           "tt_rec": 3.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker")
    ap.add_argument("--ratio", type=float, default=0.1)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--methods")
    ap.add_argument("--budgets", default="0.5,0.1,0.01")
    ap.add_argument("--rounds", type=int, default=1, help="repeat everything, full included; report median ratios")
    ap.add_argument("--layout", choices=LAYOUTS, help=argparse.SUPPRESS)  # the worker's layout (full)
    ap.add_argument("--no-paired", dest="paired", action="store_false",
                    help="judge on the separate-process ratios only (no in-process interleaved run against full)")
    ap.add_argument("--ids", choices=("sorted", "shuffled"), default="sorted",
                    help="Zipf ids with id = frequency rank (default), or each rank mapped to a fixed random id")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.ratio, args.reps, args.threads, args.layout, args.ids, args.paired)))
        return
    from embadvisor.methods import get_method, list_methods

    default_full = get_method("full").tags.layout

    methods = args.methods.split(",") if args.methods else list_methods()
    methods = ["full"] + [m for m in methods if m != "full"]
    budgets = [float(x) for x in args.budgets.split(",")]
    print(f"criteo-kaggle preset, batch {BATCH} x {FIELDS} fields, {args.ids} Zipf ids, {args.threads} threads, "
          f"medians of {args.reps}"
          f"{f'; {args.rounds} rounds, each with its own full run (ratios: median over rounds)' if args.rounds > 1 else ''}")
    runs: dict[tuple[str, float], list[tuple[dict, dict[str, float]]]] = {}
    for k in range(args.rounds):
        # this machine drifts between processes: every round re-measures full (in both layouts), and each ratio
        # uses its round's full runs
        full = {lay: run("full", 1.0, args.reps, args.threads, lay, args.ids) for lay in LAYOUTS}
        for lay, f in full.items():
            print(f"round {k + 1} full ({lay}{', the default' if lay == default_full else ''}): train step "
                  f"{f['train_ms']:.1f} ms, lookup {f['lookup_ms']:.2f} ms, peak RSS {f['peak_rss_bytes'] / 2**30:.2f} GiB, "
                  f"C kernels {'on' if f.get('native') else 'off'}, "
                  f"on huge pages {f.get('huge_page_bytes', 0) / 2**30:.2f} GiB",
                  flush=True)
        for ratio in budgets:
            for m in methods[1:]:
                r = run(m, ratio, args.reps, args.threads, ids=args.ids, paired=args.paired)
                if not r["feasible"]:
                    runs.setdefault((m, ratio), []).append((r, {}))
                    continue
                same, default = full[r["layout"]], full[default_full]
                x = {"train_sep": r["train_ms"] / same["train_ms"], "lookup_sep": r["lookup_ms"] / same["lookup_ms"],
                     "train_default": r["train_ms"] / default["train_ms"],
                     "lookup_default": r["lookup_ms"] / default["lookup_ms"]}
                # judged: the in-process interleaved ratio where measured, else the separate-process one
                x["train"] = r.get("paired_train", x["train_sep"])
                x["lookup"] = r.get("paired_lookup", x["lookup_sep"])
                runs.setdefault((m, ratio), []).append((r, x))
    if args.paired:
        print("train/full, lookup/full: judged on the method against full in its own layout, interleaved in one "
              "process (median of per-batch ratios); in brackets the ratio of separate processes (same layout / "
              f"default full, {default_full})")
    else:
        print("train/full, lookup/full: against full in the method's own layout, separate processes (judged); in "
              f"brackets against the default full ({default_full})")
    header = (f"{'method':10} {'budget':>7} {'layout':9} {'serve MiB':>10} {'train/full':>19} {'lookup/full':>19} "
              f"{'target':>6} {'peak RSS GiB':>12}  per-stage ms")
    print(header)
    print("-" * len(header))

    def med(xs: list[dict[str, float]], key: str) -> float:
        return statistics.median(x[key] for x in xs)

    for ratio in budgets:
        for m in methods[1:]:
            rs = runs[(m, ratio)]
            r = rs[0][0]
            if not r["feasible"]:
                print(f"{m:10} {ratio:>7} infeasible ({r.get('reason', '')[:60]})")
                continue
            xs = [x for _, x in rs]
            tr, lk = med(xs, "train"), med(xs, "lookup")
            target = TARGETS.get(m)
            ok = "" if target is None else ("ok" if tr <= target and lk <= target else "SLOW")
            stages = ", ".join(f"{k} {v:.1f}" for k, v in r["stage_ms"].items())
            spread = "" if len(rs) == 1 else (f" (judged: train {min(x['train'] for x in xs):.2f}-"
                                              f"{max(x['train'] for x in xs):.2f}, lookup "
                                              f"{min(x['lookup'] for x in xs):.2f}-{max(x['lookup'] for x in xs):.2f})")
            rss = max(x[0]["peak_rss_bytes"] for x in rs)
            br = ("{:.2f}/{:.2f}" if args.paired else "{1:.2f}")
            trb = br.format(med(xs, "train_sep"), med(xs, "train_default"))
            lkb = br.format(med(xs, "lookup_sep"), med(xs, "lookup_default"))
            print(f"{m:10} {ratio:>7} {r['layout']:9} {r['serve_bytes'] / 2**20:>10.1f} {tr:>6.2f} ({trb:>10}) "
                  f"{lk:>6.2f} ({lkb:>10}) "
                  f"{(f'<={target}' if target else 'report'):>6} {rss / 2**30:>12.2f}  {stages} {ok}{spread}")

if __name__ == "__main__":
    main()
