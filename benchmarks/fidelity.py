"""Fidelity: does the default advisor pick what training to convergence says is best, and report what it reaches?

Per (dataset, budget), a budget being a share of the dataset's full tables (1/4, 1/16, 1/64):

Truth. Every feasible method at its solver setting, at three learning rates (the base 1e-3, 3e-3 and
1e-2), trained to convergence exactly as ``embadvisor train`` does by default (early stopping on
validation, patience 3, the data-derived batch size, at most 100 epochs) with seeds 0, 1, 2. The
truth of a configuration is its mean validation metric over the seeds; the truth of the cell is the
best configuration mean; a method's truth is its best configuration. Runs are cached in
``benchmarks/results/fidelity_runs.json`` (one entry per dataset, budget, method, lr, seed), so a re-run
only trains what is missing. The sweep's compute is the sum of its runs' wall times.

Advisor. ``recommend()`` with the default settings, exactly as ``embadvisor recommend --data F --budget
B`` (no training flags): calibration, the successive-halving search, finalists with fresh seeds. Its
pick is then trained to convergence with the truth protocol (3 seeds, cached like the sweep), which
gives:
- regret = truth of the cell - the pick's converged mean;
- evidence error = the advisor's reported validation metric - the pick's converged mean (the bound is
  max(0.003 AUC, 2 standard errors of that mean); for recall 2 standard errors);
- Kendall's tau between the methods' order in the advisor's study (each method's best value at the
  highest rung it reached) and their truth order, over methods both rank;
- compute share = the advisor's wall time / the sweep's.

Random search at equal compute, simulated from the sweep's cached runs: configurations of the truth
grid in a random order, each trained once to convergence (seed 0) as long as the summed wall time of
their seed-0 runs stays within the advisor's wall time; the pick is the best seed-0 validation value and
its regret is measured against the truth like the advisor's. Averaged over 20 random orders; "advisor >=
random" holds when the advisor's regret is at most the mean random regret.

Targets (issue #17): regret <= 0.002 AUC (CTR) or <= 2% relative Recall@20 in >= 90% of cells; evidence
error within the bound in every cell; compute <= 30% of the sweep; advisor >= random in >= 80% of cells.

``FIDELITY_PAUSE_FILE=path``: while that file exists, no new run starts.

Usage (single-threaded runs; the machine has 2 cores, so run nothing else while it runs):
    python benchmarks/fidelity.py [--datasets avazu,ml100k,criteo] [--budgets 4,16,64] [--threads 1]
        [--truth-only] [--report-only]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("EMBADVISOR_SHARED_DATA", REPO.parent / "shared" / "data"))
RESULTS = REPO / "benchmarks" / "results"
RUNS = RESULTS / "fidelity_runs.json"
LRS = (1e-3, 3e-3, 1e-2)
SEEDS = (0, 1, 2)

#: name -> (task, path, loader options)
DATASETS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "avazu": ("ctr", "ctr/avazu-10k/avazu_train", {"label": "click"}),
    "ml100k": ("ctr", "ctr/movielens-100k/u.data", {}),
    "criteo": ("ctr", "ctr/criteo-10k/criteo_train", {"fmt": "criteo"}),
    "ml1m": ("retrieval", "retrieval/movielens-1m-implicit", {}),
    "lastfm": ("retrieval", "retrieval/lastfm-hetrec2011/user_artists.dat", {}),
    "beauty": ("retrieval", "retrieval/amazon-s3rec/Beauty.txt", {}),
}


def load(name: str) -> Any:
    from embadvisor.advisor.workloads import load_workload

    task, rel, kw = DATASETS[name]
    return load_workload(task, DATA / rel, **kw)


def cache() -> dict[str, Any]:
    return json.loads(RUNS.read_text()) if RUNS.exists() else {}


def save(runs: dict[str, Any]) -> None:
    """Merge ``runs`` into the cache file under a lock (several benchmark processes may share it)."""
    import fcntl

    RUNS.parent.mkdir(parents=True, exist_ok=True)
    with open(RUNS.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        merged = cache()
        merged.update(runs)
        runs.update(merged)
        tmp = RUNS.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(merged, indent=1, sort_keys=True))
        tmp.replace(RUNS)


def run_key(ds: str, share: int, method: str, fixed: dict[str, Any], use: float, lr: float, seed: int) -> str:
    return json.dumps([ds, share, method, fixed, round(use, 6), lr, seed], sort_keys=True, default=str)


def converged_run(w: Any, search: Any, method: str, fixed: dict[str, Any], use: float, lr: float, seed: int,
                  threads: int) -> dict[str, Any]:
    """One training run with the truth protocol (``embadvisor train``'s defaults)."""
    from embadvisor.tasks.api import convergence_config, train

    plan = search.solve_proxy(method, use, fixed)
    cfg = convergence_config(w.data, lr=lr, seed=seed, threads=threads, evaluate_test=False)
    t0 = time.perf_counter()
    rep = train(w.data, plan, model="dlrm", dim=w.dim, config=cfg, seed=seed)
    f = rep.fit
    limit = plan.memory.serve_bytes
    ok = f.serve_bytes <= limit * 1.001 + 64
    return {"value": float(f.validation[w.data.metric]) if ok else None, "seconds": time.perf_counter() - t0,
            "samples": f.samples, "converged": f.converged, "over_budget": not ok}


def ensure(runs: dict[str, Any], key: str, fn: Any) -> dict[str, Any]:
    pause = os.environ.get("FIDELITY_PAUSE_FILE")
    while pause and Path(pause).exists():  # lets timed work run alone on the machine between two runs
        time.sleep(2)
    if key not in runs:
        runs[key] = fn()
        save(runs)
    return runs[key]


def truth(ds: str, share: int, w: Any, threads: int, runs: dict[str, Any]) -> dict[str, Any]:
    from embadvisor.advisor.search import Search, SearchSettings

    budget = int(w.target.full_table_bytes() / share)
    search = Search(w, SearchSettings(budget_bytes=budget))
    configs: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for m in search.feasible:
        for lr in LRS:
            for seed in SEEDS:
                key = run_key(ds, share, m, {}, 1.0, lr, seed)
                r = ensure(runs, key, lambda m=m, lr=lr, seed=seed: converged_run(w, search, m, {}, 1.0, lr, seed,
                                                                                  threads))
                configs.setdefault((m, lr), []).append(r)
                print(f"  truth {ds} 1/{share} {m} lr={lr:g} seed={seed}: {r['value']} ({r['seconds']:.1f} s)",
                      file=sys.stderr, flush=True)
    means = {k: statistics.fmean(r["value"] for r in v) for k, v in configs.items()
             if all(r["value"] is not None for r in v)}
    best = max(means, key=means.__getitem__)
    per_method: dict[str, float] = {}
    for (m, _), v in means.items():
        per_method[m] = max(per_method.get(m, -math.inf), v)
    return {"budget": budget, "configs": configs, "means": means, "best": best, "best_value": means[best],
            "per_method": per_method, "seconds": sum(r["seconds"] for v in configs.values() for r in v),
            "feasible": search.feasible}


def advisor(ds: str, share: int, w: Any, threads: int, runs: dict[str, Any], tr: dict[str, Any]) -> dict[str, Any]:
    import optuna

    from embadvisor.advisor.recommend import recommend
    from embadvisor.advisor.schedule import rung_of
    from embadvisor.advisor.search import Search, SearchSettings
    from embadvisor.tasks.api import default_batch_size
    from embadvisor.tasks.trainer import TrainConfig

    bs = default_batch_size(w.task, w.data.num_train)
    settings = SearchSettings(budget_bytes=tr["budget"], train=TrainConfig(batch_size=bs, threads=threads))
    storage = f"sqlite:///{RESULTS / 'fidelity_studies.db'}"
    name = f"{ds}-{share}-{int(time.time())}"
    t0 = time.perf_counter()
    rec = recommend(w, settings, storage=storage, study_name=name)
    seconds = time.perf_counter() - t0
    win = next(c for c in rec["ranking"] if c["trial"] == rec["evidence"]["trial"])
    search = Search(w, settings)
    fixed, use, lr = win["fixed"], win["budget_use"], win["lr"]
    study = optuna.load_study(study_name=name, storage=storage)
    vals = []
    for seed in SEEDS:
        key = run_key(ds, share, rec["method"], fixed, use, lr, seed)
        r = ensure(runs, key, lambda seed=seed: converged_run(w, search, rec["method"], fixed, use, lr, seed, threads))
        vals.append(r["value"])
    conv = statistics.fmean(v for v in vals if v is not None) if any(v is not None for v in vals) else math.nan
    se = statistics.stdev(vals) / math.sqrt(len(vals)) if all(v is not None for v in vals) else math.nan
    order: dict[str, tuple[int, float]] = {}
    for t in study.trials:
        if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None:
            m = t.params["method"]
            k = (rung_of(t), float(t.value))
            order[m] = max(order.get(m, (-1, -math.inf)), k)
    return {"method": rec["method"], "reported": rec["metric"]["validation"], "converged_mean": conv, "se": se,
            "seconds": seconds, "order": order, "undertrained": rec["undertrained"], "lr": lr,
            "estimate": rec["estimate_seconds"], "trials": rec["trials"]}


def kendall(a: dict[str, Any], b: dict[str, float]) -> float:
    from scipy.stats import kendalltau

    common = sorted(set(a) & set(b))
    if len(common) < 3:
        return math.nan
    return float(kendalltau([a[m] for m in common], [b[m] for m in common]).statistic)


def random_regret(tr: dict[str, Any], seconds: float, repeats: int = 20) -> float:
    seed0 = {k: v[0] for k, v in tr["configs"].items() if v[0]["value"] is not None and k in tr["means"]}
    keys = sorted(seed0)
    regrets = []
    for r in range(repeats):
        random.Random(r).shuffle(keys)
        spent, best = 0.0, None
        for k in keys:
            if spent + seed0[k]["seconds"] > seconds and best is not None:
                break
            spent += seed0[k]["seconds"]
            if best is None or seed0[k]["value"] > seed0[best]["value"]:
                best = k
        regrets.append(tr["best_value"] - tr["means"][best])
    return statistics.fmean(regrets)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", default="avazu,ml100k,criteo")
    ap.add_argument("--budgets", default="4,16,64", help="budgets as 1/N of the full tables")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--truth-only", action="store_true")
    ap.add_argument("--output", default=str(RESULTS / "fidelity.txt"))
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("EMBADVISOR_HOME", str(RESULTS / ".fidelity_home"))
    runs = cache()
    rows = []
    for ds in args.datasets.split(","):
        w = load(ds)
        for share in (int(x) for x in args.budgets.split(",")):
            from embadvisor.errors import InfeasibleError

            try:
                tr = truth(ds, share, w, args.threads, runs)
            except (InfeasibleError, ValueError) as e:
                print(f"{ds} 1/{share}: skipped ({e})", file=sys.stderr)
                continue
            if args.truth_only:
                print(f"{ds} 1/{share}: truth {tr['best']} {tr['best_value']:.4f}, sweep {tr['seconds']:.0f} s")
                continue
            adv = advisor(ds, share, w, args.threads, runs, tr)
            ctr = w.task == "ctr"
            regret = tr["best_value"] - adv["converged_mean"]
            ok_regret = regret <= (0.002 if ctr else 0.02 * tr["best_value"])
            err = adv["reported"] - adv["converged_mean"]
            bound = max(0.003 if ctr else 0.0, 2 * adv["se"])
            rand = random_regret(tr, adv["seconds"])
            tau = kendall({m: v[1] + 10 * v[0] for m, v in adv["order"].items()}, tr["per_method"])
            row = {"dataset": ds, "budget": f"1/{share}", "truth": f"{tr['best'][0]} lr={tr['best'][1]:g}",
                   "truth_value": tr["best_value"], "pick": f"{adv['method']} lr={adv['lr']:.2g}",
                   "reported": adv["reported"], "converged": adv["converged_mean"], "regret": regret,
                   "regret_ok": ok_regret, "evidence_error": err, "evidence_bound": bound,
                   "evidence_ok": abs(err) <= bound, "tau": tau, "compute_share": adv["seconds"] / tr["seconds"],
                   "advisor_s": adv["seconds"], "estimate_s": adv["estimate"], "sweep_s": tr["seconds"],
                   "random_regret": rand, "beats_random": regret <= rand + 1e-12,
                   "undertrained": bool(adv["undertrained"])}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if rows:
        write_report(rows, Path(args.output))


def write_report(rows: list[dict[str, Any]], path: Path) -> None:
    head = ("| dataset | budget | truth (best mean) | pick | reported | pick converged | regret | evidence error "
            "(bound) | tau | compute share | advisor s (estimate) | random regret |\n|" + "---|" * 12 + "\n")
    lines = []
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['budget']} | {r['truth']} {r['truth_value']:.4f} | {r['pick']} | "
            f"{r['reported']:.4f} | {r['converged']:.4f} | {r['regret']:+.4f}{'' if r['regret_ok'] else ' MISS'} | "
            f"{r['evidence_error']:+.4f} ({r['evidence_bound']:.4f}){'' if r['evidence_ok'] else ' MISS'} | "
            f"{r['tau']:.2f} | {r['compute_share']:.0%}{'' if r['compute_share'] <= 0.3 else ' MISS'} | "
            f"{r['advisor_s']:.0f} ({r['estimate_s']:.0f}) | {r['random_regret']:+.4f}"
            f"{'' if r['beats_random'] else ' (random better)'} |")
    n = len(rows)
    summary = (f"\nregret target met in {sum(r['regret_ok'] for r in rows)}/{n} cells (need >= 90%); evidence "
               f"within bound in {sum(r['evidence_ok'] for r in rows)}/{n} (need all); compute <= 30% in "
               f"{sum(r['compute_share'] <= 0.3 for r in rows)}/{n}; advisor >= random in "
               f"{sum(r['beats_random'] for r in rows)}/{n} (need >= 80%)\n")
    text = head + "\n".join(lines) + summary
    path.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
