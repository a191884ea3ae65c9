"""Kill -9 a `recommend` at random points, resume it until it finishes, and compare with a run never killed.

A run is the CLI, in its own process group, on a fresh SQLite database or journal file. Each loop kills
it ``--kills`` times at a uniformly random moment of the reference run's duration, then lets it finish.
The study's trials in canonical order (rung, method, parameters, state, value) must equal the
reference's, and the pick must be the reference's or one of the candidates the reference's ranking
declared tied with it (within the noise level, measured latency decides, and that can differ between
any two runs).

    python benchmarks/kill_resume.py --loops 5 --kills 3            # both storages
    python benchmarks/kill_resume.py --storages journal --loops 2

Prints one line per loop and a summary; exits 1 when any loop differs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "ctr" / "avazu-10k" / "avazu_train"
#: a small real search: 4 methods, 8 candidates (4 solver defaults, then TPE), two rungs
ARGS = ["recommend", "--task", "ctr", "--label", "click", "--budget", "83KB", "--methods", "hash,qr,mde,robe",
        "--trials", "8", "--rungs", "2048,6144", "--threads", "1", "--time-limit", "2h", "--json"]


def storage_url(kind: str, folder: Path) -> str:
    return f"sqlite:///{folder / 'studies.db'}" if kind == "sqlite" else str(folder / "studies.log")


def start(storage: str, study: str, data: Path) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONHASHSEED="0")
    return subprocess.Popen([sys.executable, "-m", "embadvisor", *ARGS, "--data", str(data), "--storage", storage,
                             "--study", study], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=env, cwd=ROOT)


def finish(storage: str, study: str, data: Path, timeout: float) -> tuple[dict[str, Any], float]:
    t0 = time.perf_counter()
    p = start(storage, study, data)
    out, err = p.communicate(timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"run failed (exit {p.returncode}): {err.strip()[-2000:]}")
    return json.loads(out), time.perf_counter() - t0


def kill_at(storage: str, study: str, data: Path, after: float) -> bool:
    """Start a run and kill -9 its process group ``after`` seconds in; False if it finished first."""
    p = start(storage, study, data)
    try:
        p.wait(timeout=after)
        p.communicate()
        return False
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        return True


def trials_signature(storage: str, study: str) -> list[tuple[Any, ...]]:
    """The study's counted trials in canonical order."""
    import optuna

    from embadvisor.advisor.resume import canonical_order
    from embadvisor.advisor.schedule import rung_of
    from embadvisor.advisor.search import is_counted
    from embadvisor.advisor.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    s = optuna.load_study(study_name=study, storage=open_storage(storage))
    return [(rung_of(t), json.dumps(t.params, sort_keys=True), t.state.name, t.value)
            for t in canonical_order(s.get_trials(deepcopy=False)) if is_counted(t)]


def rec_signature(rec: dict[str, Any]) -> tuple[Any, ...]:
    return rec["method"], json.dumps(rec["params"], sort_keys=True), rec["metric"]["validation"]


def tied_signatures(rec: dict[str, Any]) -> list[tuple[Any, ...]]:
    """The candidates the ranker declared tied with the best (within its noise level): among them measured
    latency decides, so a run can pick another of them without any kill."""
    best = max(c["mean"] for c in rec["ranking"])
    return [(c["method"], json.dumps(c["params"], sort_keys=True), c["mean"]) for c in rec["ranking"]
            if c["mean"] >= best - rec["noise_epsilon"]]


def loop(kind: str, kills: int, reference: dict[str, Any], ref_seconds: float, data: Path, rng: random.Random,
         timeout: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        storage = storage_url(kind, Path(tmp))
        done = 0
        for _ in range(kills):
            done += kill_at(storage, "s", data, rng.uniform(0.5, ref_seconds))
        rec, _ = finish(storage, "s", data, timeout)
        same_trials = trials_signature(storage, "s") == reference["trials"]
        same_rec = rec_signature(rec) == reference["rec"]
        return {"storage": kind, "kills": done, "same_trials": same_trials, "same_recommendation": same_rec,
                "tied_pick": rec_signature(rec) in reference["tied"],
                "method": rec["method"], "validation": rec["metric"]["validation"]}


def reference_run(kind: str, data: Path, timeout: float) -> tuple[dict[str, Any], float]:
    with tempfile.TemporaryDirectory() as tmp:
        storage = storage_url(kind, Path(tmp))
        rec, seconds = finish(storage, "s", data, timeout)
        return {"trials": trials_signature(storage, "s"), "rec": rec_signature(rec), "tied": tied_signatures(rec)}, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--storages", default="sqlite,journal")
    ap.add_argument("--loops", type=int, default=5)
    ap.add_argument("--kills", type=int, default=3, help="kills per loop before the run is let finish")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--timeout", type=float, default=900.0)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    bad = 0
    for kind in a.storages.split(","):
        ref, seconds = reference_run(kind, a.data, a.timeout)
        print(f"{kind}: reference {ref['rec'][0]} {ref['rec'][2]:.4f}, {len(ref['trials'])} counted trials, "
              f"{seconds:.0f} s", flush=True)
        for i in range(a.loops):
            r = loop(kind, a.kills, ref, seconds, a.data, rng, a.timeout)
            bad += not (r["same_trials"] and r["tied_pick"])
            print(f"  loop {i}: {r['kills']} kills, same trials {r['same_trials']}, same recommendation "
                  f"{r['same_recommendation']}, pick among the reference's tied candidates {r['tied_pick']} "
                  f"({r['method']} {r['validation']:.4f})", flush=True)
    print("all loops matched the run without kills" if not bad else f"{bad} loop(s) differed")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
