"""Trials per hour with 1 and 2 worker processes on one study (1 torch thread each), in one run.

Same study settings for both: movielens-100k as CTR, methods hash/qr/mde at 20% of the full tables,
a fixed number of training steps per trial (no time cap, no pruning differences: the pruner sees
the same kind of trials). Each configuration runs a fresh study of ``--trials`` trials through
``run_local_workers`` (the code path of ``recommend --workers N``). Storage: PostgreSQL from
``EMBADVISOR_TEST_POSTGRES`` or ``.ci/postgres`` (started on loopback), else a journal file.

    python benchmarks/workers.py [--trials 30] [--steps 300] [--repeat 1]

Target: 2 workers >= 1.7x the trials/hour of 1 worker.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import optuna

from embadvisor.advisor.distributed import run_local_workers
from embadvisor.advisor.recommend import prepare_study
from embadvisor.advisor.search import Search, SearchSettings, is_counted, study_key
from embadvisor.advisor.storage import open_storage
from embadvisor.advisor.workloads import load_workload
from embadvisor.tasks.trainer import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def storage_url(tmp: Path) -> str:
    url = os.environ.get("EMBADVISOR_TEST_POSTGRES")
    if url:
        return url
    res = subprocess.run([str(ROOT / ".ci" / "postgres")], capture_output=True, text=True)
    if res.returncode == 0 and "=" in res.stdout:
        return res.stdout.strip().rpartition("=")[2]
    return str(tmp / "studies.log")


def run(workers: int, args: argparse.Namespace, url: str) -> dict[str, float]:
    data = Path(os.environ.get("EMBADVISOR_SHARED_DATA", ROOT.parent / "shared" / "data")) / "ctr/movielens-100k/u.data"
    w = load_workload("ctr", data)
    train = TrainConfig(batch_size=1024, max_steps=args.steps, eval_every=max(1, args.steps // 3), patience=0,
                        lr=3e-3, threads=1)
    settings = SearchSettings(budget_bytes=int(w.target.full_table_bytes() * 0.2), trials=args.trials,
                              methods=("hash", "qr", "mde"), retrain_top=1, train=train, seed=1)
    search = Search(w, settings)
    name = f"bench-workers{workers}-{uuid.uuid4().hex[:8]}"
    study = prepare_study(search, open_storage(url), name, study_key(w, settings))
    t0 = time.perf_counter()
    run_local_workers(study, url, workers, threads=workers, poll_s=0.2)
    wall = time.perf_counter() - t0
    trials = [t for t in study.get_trials() if is_counted(t)]
    assert len(trials) == args.trials, (len(trials), args.trials)
    first = min(t.datetime_start for t in trials)
    last = max(t.datetime_complete for t in trials if t.datetime_complete)
    busy = (last - first).total_seconds()
    durations = [(t.datetime_complete - t.datetime_start).total_seconds() for t in trials if t.datetime_complete]
    return {"wall_s": wall, "busy_s": busy, "per_hour": len(trials) / wall * 3600,
            "per_hour_busy": len(trials) / busy * 3600, "trial_s": statistics.median(durations)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("EMBADVISOR_HOME", tmp)
        url = storage_url(Path(tmp))
        print(f"storage: {url.split('@')[-1]}; {args.trials} trials of {args.steps} steps; cores: {os.cpu_count()}")
        res: dict[int, list[dict[str, float]]] = {1: [], 2: []}
        for _ in range(args.repeat):  # interleaved, so drifting machine load hits both alike
            for n in (1, 2):
                res[n].append(run(n, args, url))
    print(f"{'workers':>7} {'wall s':>8} {'trials/h':>9} {'trials/h (first start..last end)':>33} "
          f"{'median trial s':>15}")
    for n in (1, 2):
        med = {k: statistics.median(r[k] for r in res[n]) for k in res[n][0]}
        print(f"{n:>7} {med['wall_s']:>8.1f} {med['per_hour']:>9.0f} {med['per_hour_busy']:>33.0f} "
              f"{med['trial_s']:>15.2f}")
    r1 = statistics.median(r["per_hour"] for r in res[1])
    r2 = statistics.median(r["per_hour"] for r in res[2])
    print(f"2 workers / 1 worker: {r2 / r1:.2f}x trials/hour (target >= 1.7x): {'MET' if r2 / r1 >= 1.7 else 'NOT MET'}")


if __name__ == "__main__":
    main()
