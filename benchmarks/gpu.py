"""GPU figures for issue #20 in one short run (a few minutes on one H100), printed with the GPU model.

1. ``methods``: every registered method's training step and serving lookup on the device, as ratios to
   ``full`` in the method's own layout (``full`` in both layouts), with the protocol of
   ``benchmarks/method_speed.py`` and its functions: the criteo-kaggle preset (26 tables, 33.8M ids,
   d=16), each method solved at ``--budget`` of the full tables (at its minimum budget where that is
   larger), batches of 4096 x 26 Zipf ids (resident on the device), one training step per batch with the
   trainer's optimizers (torch's SparseAdam for sparse tables on CUDA), medians of ``--reps`` steps per
   stage after 2 warm-up steps, every step synchronised at both ends; lookups of the exported form,
   median of 40 batches. Beside them, the peak device memory of the training steps
   (``torch.cuda.max_memory_allocated``) against the plan's analytic training bytes. Each method runs
   in its own process (``--method-timeout`` seconds at most), so a slow or failing one costs only itself.
2. ``adam``: SparseAdam (the trainer's choice) against a dense fused Adam (``torch.optim.Adam(fused=True)``
   on a dense gradient) for one table of 100k, 1M and 33.8M rows at d=16: step ms on the device.
3. ``dlrm``: samples/s of full DLRM training through ``embadvisor.tasks.api.train`` on the device and on
   the CPU (all its cores), on synthetic Criteo-like data (26 Zipf fields capped at 1M ids, 13 dense
   features), with the run's peak device memory against the analytic training bytes.
4. ``recommend``: ``embadvisor recommend --budget 64MB --task ctr --device cuda`` (the built-in default
   workload) with its wall time, on a fresh study, stopped after ``--recommend-time-limit`` (``none``:
   the whole default search). It needs the ``--device`` option on ``recommend``; without it the section
   says so and is skipped.

``--quick`` is the smoke test that runs anywhere (``--device cpu --quick``): tables capped at 20k rows,
2 repetitions, small DLRM data, methods in this process, and ``recommend`` only checked for its option.
``--device cuda`` on a machine without CUDA exits with status 2 and one line.

On a GPU machine with one command limited to 10 minutes, run it in two calls of about 4-5 minutes each
(estimates, not yet measured): ``--only methods,adam`` and then ``--only dlrm,recommend``. Every line
is printed as soon as it is measured, so a call that is cut off still leaves its finished lines.

Usage: python benchmarks/gpu.py [--device cuda] [--quick] [--only methods,adam,dlrm,recommend]
       [--methods a,b] [--budget 0.5] [--reps 5] [--threads N] [--[no-]isolate] [--method-timeout 60]
       [--recommend-time-limit 3m]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import method_speed  # noqa: E402  (the protocol's functions: batches, counts, timed step, timed lookup)

SECTIONS = ("methods", "adam", "dlrm", "recommend")
QUICK_ROWS = 20_000  # --quick: table rows capped here


def gib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**30:.2f}"


# --------------------------------------------------------------------------- 1. methods
def tables_for(quick: bool):
    """The criteo-kaggle preset's tables (``--quick``: capped at QUICK_ROWS rows)."""
    from embadvisor.profiles import get_preset
    from embadvisor.profiles.schema import FrequencySummary, TableSpec

    tables = get_preset("criteo-kaggle").tables()
    if not quick:
        return tables
    capped = [TableSpec(t.name, min(t.num_embeddings, QUICK_ROWS), t.embedding_dim) for t in tables]
    counts = method_speed.zipf_counts(capped)
    return [TableSpec(t.name, t.num_embeddings, t.embedding_dim, FrequencySummary.from_counts(c))
            for t, c in zip(capped, counts, strict=True)]


def method_worker(method: str, ratio: float, reps: int, device_spec: str, quick: bool,
                  layout: str | None = None, threads: int = 1) -> dict:
    """One method on the device: step and lookup medians, peak device memory of the steps, analytic bytes."""
    import numpy as np
    import torch

    from embadvisor import devices
    from embadvisor.methods import build_collection, solve

    device = devices.resolve_device(device_spec)
    torch.set_num_threads(threads)
    tables = tables_for(quick)
    full_bytes = sum(t.num_embeddings * t.embedding_dim * 4 for t in tables)
    plan = solve(method, tables, full_bytes * ratio if method != "full" else math.inf, layout=layout)
    used = ratio
    if not plan.feasible and plan.min_budget_bytes > 0:
        plan = solve(method, tables, plan.min_budget_bytes, layout=layout)
        used = plan.min_budget_bytes / full_bytes
    if not plan.feasible:
        return {"method": method, "feasible": False, "reason": plan.reason}
    torch.manual_seed(0)
    emb = build_collection(plan)
    emb.prepare(method_speed.zipf_counts(tables))
    emb.to(device)
    rng = np.random.default_rng(0)
    sizes = [t.num_embeddings for t in tables]
    ranks = method_speed.zipf_ranks(rng, sizes, reps + 2 + method_speed.LOOKUP_BATCHES)
    batches = [torch.from_numpy(r).to(device) for r in ranks[: reps + 2]]
    lookup_batches = [torch.from_numpy(r).to(device) for r in ranks[reps + 2:]]
    devices.reset_peak_memory(device)
    step_fn, _ = method_speed._trainer(emb, device)
    stage_ms = {}
    for stage in emb.stages:
        emb.on_stage_start(stage)
        times = [step_fn(ids) for ids in batches]
        emb.on_epoch_end(0, stage)
        stage_ms[stage.name] = statistics.median(times[2:]) * 1000
    peak_train = devices.peak_memory(device)
    served = emb.export()
    lookups = [method_speed._lookup(served, ids, device) for ids in batches + lookup_batches]
    batch_bytes = sum(b.numel() * b.element_size() for b in batches + lookup_batches)
    return {
        "method": method, "feasible": True, "layout": plan.layout, "budget": used,
        "train_ms": sum(stage_ms.values()) / len(stage_ms), "stage_ms": stage_ms,
        "lookup_ms": statistics.median(lookups[len(batches):]) * 1000,
        "train_bytes": plan.memory.train_bytes, "serve_bytes": plan.memory.serve_bytes,
        "peak_train_device_bytes": peak_train, "batch_bytes": batch_bytes,
    }


def run_method(method: str, args, layout: str | None = None) -> dict:
    """:func:`method_worker` in this process (``--quick``) or in a fresh one with a timeout (``--isolate``)."""
    if not args.isolate:
        try:
            return method_worker(method, args.budget, args.reps, args.device, True, layout, args.threads)
        except Exception as e:  # report and go on, as the isolated runs do
            return {"method": method, "feasible": False, "reason": f"failed: {type(e).__name__}: {e}"[:300]}
    cmd = [sys.executable, __file__, "--worker", method, "--budget", str(args.budget), "--reps", str(args.reps),
           "--device", args.device, "--threads", str(args.threads)] + (["--layout", layout] if layout else []) + \
          (["--quick"] if args.quick else [])
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=args.method_timeout)
    except subprocess.TimeoutExpired:
        return {"method": method, "feasible": False, "reason": f"timed out after {args.method_timeout} s"}
    if res.returncode != 0:
        return {"method": method, "feasible": False, "reason": "crashed: " + " ".join(res.stderr.split())[-300:]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def section_methods(args) -> None:
    from embadvisor.methods import list_methods

    names = args.methods.split(",") if args.methods else list_methods()
    print(f"\n## 1. training step and lookup per method on {args.device}, ratios to full in the method's layout "
          f"(budget {args.budget:g} of the full tables, or the method's minimum where larger; medians of "
          f"{args.reps} steps per stage; peak = max_memory_allocated over the training steps)", flush=True)
    full = {lay: run_method("full", args, lay) for lay in method_speed.LAYOUTS}
    for lay, f in full.items():
        if not f.get("feasible"):
            print(f"full ({lay}): {f.get('reason')}")
            return
        print(f"full ({lay}): train step {f['train_ms']:.2f} ms, lookup {f['lookup_ms']:.3f} ms, analytic train "
              f"{gib(f['train_bytes'])} GiB, peak train {gib(f['peak_train_device_bytes'])} GiB", flush=True)
    header = (f"{'method':10} {'budget':>7} {'layout':9} {'train ms':>9} {'train/full':>10} {'lookup ms':>9} "
              f"{'lookup/full':>11} {'analytic GiB':>12} {'peak GiB':>9} {'peak/analytic':>13}  per-stage ms")
    print(header)
    print("-" * len(header))
    for m in names:
        if m == "full":
            continue
        r = run_method(m, args)
        if not r.get("feasible"):
            print(f"{m:10} {r.get('reason', '')}", flush=True)
            continue
        f = full[r["layout"]]
        peak = r["peak_train_device_bytes"]
        ratio = "-" if peak is None else f"{peak / max(1, r['train_bytes']):.2f}"
        stages = ", ".join(f"{k} {v:.2f}" for k, v in r["stage_ms"].items())
        print(f"{m:10} {r['budget']:>7.3g} {r['layout']:9} {r['train_ms']:>9.2f} {r['train_ms'] / f['train_ms']:>10.2f} "
              f"{r['lookup_ms']:>9.3f} {r['lookup_ms'] / f['lookup_ms']:>11.2f} {gib(r['train_bytes']):>12} "
              f"{gib(peak):>9} {ratio:>13}  {stages}", flush=True)


# --------------------------------------------------------------------------- 2. sparse vs dense Adam
def section_adam(args, device) -> None:
    import torch

    from embadvisor import devices
    from embadvisor.tasks.optim import sparse_adam
    from embadvisor.tasks.trainer import prefault_sparse_state

    rows_list = (1000, 10_000) if args.quick else (100_000, 1_000_000, 33_762_577)
    reps = 3 if args.quick else 10
    print(f"\n## 2. one table at d=16, batch {method_speed.BATCH * method_speed.FIELDS} lookups: the trainer's "
          f"sparse Adam against a dense Adam on {device}, uniform random ids (step ms, median of {reps})", flush=True)
    gen = torch.Generator().manual_seed(0)
    for rows in rows_list:
        out = []
        for kind in ("sparse", "dense"):
            emb = torch.nn.Embedding(rows, 16, sparse=kind == "sparse").to(device)
            if kind == "sparse":
                opt = sparse_adam([emb.weight], lr=1e-3)
                prefault_sparse_state(opt)
            else:
                opt = torch.optim.Adam([emb.weight], lr=1e-3, fused=device.type == "cuda")
            ids = [torch.randint(0, rows, (method_speed.BATCH * method_speed.FIELDS,), generator=gen).to(device)
                   for _ in range(reps + 2)]
            times = []
            for b in ids:
                devices.synchronize(device)
                t = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                emb(b).pow(2).mean().backward()
                opt.step()
                devices.synchronize(device)
                times.append(time.perf_counter() - t)
            out.append(statistics.median(times[2:]) * 1000)
            del emb, opt
        name = "SparseAdam" if device.type == "cuda" else "FusedSparseAdam"
        faster = name if out[0] <= out[1] else "dense Adam"
        print(f"{rows:>11,} rows: {name} {out[0]:.2f} ms, dense Adam{' (fused)' if device.type == 'cuda' else ''} "
              f"{out[1]:.2f} ms -> {faster} faster", flush=True)


# --------------------------------------------------------------------------- 3. DLRM samples/s
def ctr_data(rows: int, cap: int, seed: int = 0):
    """Synthetic Criteo-like CTR data: 26 Zipf fields (Criteo Kaggle's sizes capped at ``cap``), 13 dense."""
    import numpy as np
    import torch

    from embadvisor.profiles.schema import FrequencySummary, TableSpec
    from embadvisor.tasks.api import TaskData
    from embadvisor.tasks.ctr import CtrTensors

    rng = np.random.default_rng(seed)
    sizes = [min(t.num_embeddings, cap) for t in tables_for(False)]
    ids = np.stack([np.minimum(rng.zipf(1.2, rows) - 1, n - 1) for n in sizes], 1).astype(np.int64)
    dense = rng.normal(size=(rows, 13)).astype(np.float32)
    labels = (rng.random(rows) < 1 / (1 + np.exp(-dense[:, 0] - (ids[:, 0] % 7 - 3) / 3))).astype(np.float32)
    counts = [np.bincount(ids[:, f], minlength=n).astype(np.int64) for f, n in enumerate(sizes)]
    tables = [TableSpec(f"C{f + 1}", n, 16, FrequencySummary.from_counts(c)) for f, (n, c) in
              enumerate(zip(sizes, counts, strict=True))]
    perm = rng.permutation(rows)
    cut = int(0.9 * rows)
    splits = {"train": torch.from_numpy(np.sort(perm[:cut])), "valid": torch.from_numpy(np.sort(perm[cut:])),
              "test": torch.from_numpy(np.zeros(0, dtype=np.int64))}
    t = CtrTensors(tables, torch.from_numpy(ids), [], torch.from_numpy(dense), torch.from_numpy(labels), splits, counts)
    return TaskData("ctr", ctr=t, name="synthetic-criteo")


def section_dlrm(args, device) -> None:
    import torch

    from embadvisor.tasks.api import train
    from embadvisor.tasks.trainer import TrainConfig

    rows, cap, batch = (4000, 1000, 512) if args.quick else (1_000_000, 1_000_000, 4096)
    steps = {"gpu": 10 if args.quick else 300, "cpu": 5 if args.quick else 40}
    cpu_threads = args.threads
    data = ctr_data(rows, cap)
    print(f"\n## 3. full DLRM training through embadvisor's trainer: {rows:,} synthetic rows, 26 fields capped at "
          f"{cap:,} ids (d=16, {sum(t.num_embeddings for t in data.ctr.tables):,} rows), 13 dense features, "
          f"batch {batch}", flush=True)
    runs = [(device, steps["gpu"], None)] if device.type != "cpu" else []
    runs.append((torch.device("cpu"), steps["cpu"], cpu_threads))
    for dev, n_steps, threads in runs:
        cfg = TrainConfig(batch_size=batch, max_steps=n_steps, eval_every=n_steps, patience=0, keep_best=False,
                          evaluate_test=False, threads=threads)
        rep = train(data, "full", config=cfg, device=dev)
        f = rep.fit
        where = f"{dev}" + (f" ({threads} threads)" if threads else "")
        print(f"{where}: {f.samples_per_second:,.0f} samples/s ({f.steps} steps, {f.train_seconds:.2f} s of training), "
              f"inference latency {f.latency_ms:.2f} ms per 4096 rows, validation AUC {f.validation['auc']:.4f}; "
              f"analytic training bytes of the tables {gib(rep.plan.memory.train_bytes)} GiB, peak device memory "
              f"{gib(f.peak_device_bytes)} GiB (training steps {gib(f.peak_train_device_bytes)} GiB)", flush=True)
        for w in rep.extra.get("warnings", []):
            print(f"  warning: {w}")


# --------------------------------------------------------------------------- 4. recommend
def recommend_has_device() -> bool:
    res = subprocess.run([sys.executable, "-m", "embadvisor", "recommend", "--help"], capture_output=True, text=True,
                         env={**os.environ, "COLUMNS": "200"})
    return "--device" in res.stdout


def section_recommend(args) -> None:
    print(f"\n## 4. embadvisor recommend --budget 64MB --task ctr --device {args.device} (built-in default workload)",
          flush=True)
    if not recommend_has_device():
        print("skipped: `embadvisor recommend` has no --device option in this checkout (the advisor part adds it); "
              "it would run on the CPU", flush=True)
        return
    if args.quick:
        print("skipped in --quick: the option is there; run without --quick for the timed search", flush=True)
        return
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "embadvisor", "recommend", "--budget", "64MB", "--task", "ctr", "--device",
               args.device, "--storage", str(Path(tmp) / "studies.log"), "--json"]
        limit = None if args.recommend_time_limit in ("none", "") else args.recommend_time_limit
        if limit:
            cmd += ["--time-limit", limit]
        t0 = time.perf_counter()
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=args.recommend_timeout)
        except subprocess.TimeoutExpired:
            print(f"stopped: no result after {args.recommend_timeout} s ({' '.join(cmd[1:])})", flush=True)
            return
        wall = time.perf_counter() - t0
    if res.returncode not in (0, 1):
        print(f"failed (exit {res.returncode}) after {wall:.0f} s: {' '.join(res.stderr.split())[-500:]}")
        return
    try:
        rec = json.loads(res.stdout)
    except json.JSONDecodeError:
        rec = {}
    pick = rec.get("method") if isinstance(rec, dict) else None
    metric = rec.get("metric", {}) if isinstance(rec, dict) else {}
    print(f"wall time {wall:.0f} s{f' (time limit {limit})' if limit else ' (no time limit)'}, exit {res.returncode}, "
          f"pick {pick} {rec.get('params', '') if isinstance(rec, dict) else ''}, "
          f"validation {metric.get('validation') if isinstance(metric, dict) else metric}; "
          f"command: {' '.join(cmd[3:])}", flush=True)


# --------------------------------------------------------------------------- main
def header(device) -> None:
    import platform

    import torch

    from embadvisor import devices

    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        print(f"GPU: {p.name}, {p.total_memory / 2**30:.1f} GiB, compute capability {p.major}.{p.minor}, "
              f"{p.multi_processor_count} SMs; torch {torch.__version__}, CUDA {torch.version.cuda}; "
              f"device {devices.describe(device)}")
    else:
        print(f"no GPU: device {device}; torch {torch.__version__}")
    print(f"host: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    ap.add_argument("--quick", action="store_true", help="small tables and data, methods in this process")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"sections to run, of {','.join(SECTIONS)}")
    ap.add_argument("--methods", help="methods of section 1 (default: every registered method)")
    ap.add_argument("--budget", type=float, default=0.5, help="share of the full tables each method is solved at")
    ap.add_argument("--reps", type=int, default=None, help="timed steps per stage (default 5; --quick 2)")
    ap.add_argument("--method-timeout", type=float, default=60.0, help="seconds per method process")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: all CPUs, at most 16): the CPU DLRM run and host-side work")
    ap.add_argument("--recommend-time-limit", default="3m", help="recommend's --time-limit (none: no limit)")
    ap.add_argument("--recommend-timeout", type=float, default=420.0, help="seconds before recommend is stopped")
    ap.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=None,
                    help="each method in its own process (default: yes, but not with --quick)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--layout", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.reps = args.reps or (2 if args.quick else 5)
    args.threads = args.threads or max(1, min(os.cpu_count() or 1, 16))
    args.isolate = not args.quick if args.isolate is None else args.isolate
    if args.worker:
        print(json.dumps(method_worker(args.worker, args.budget, args.reps, args.device, args.quick, args.layout,
                                       args.threads)))
        return
    from embadvisor import devices
    from embadvisor.errors import EmbAdvisorError

    try:
        device = devices.resolve_device(args.device)
    except EmbAdvisorError as e:
        print(f"benchmarks/gpu.py: {e}", file=sys.stderr)
        sys.exit(2)
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        print(f"benchmarks/gpu.py: --only must name sections of {','.join(SECTIONS)}, but got {','.join(unknown)}",
              file=sys.stderr)
        sys.exit(2)
    t0 = time.perf_counter()
    header(device)
    if "methods" in sections:
        section_methods(args)
    if "adam" in sections:
        section_adam(args, device)
    if "dlrm" in sections:
        section_dlrm(args, device)
    if "recommend" in sections:
        section_recommend(args)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
