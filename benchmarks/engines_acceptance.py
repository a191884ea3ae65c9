"""Task-engine quality on real and synthetic data (the numbers quoted in the task-engines issue).

1. Retrieval: full-table two-tower on movielens-1m-implicit (the given BARS split; validation = 5%
   of the training pairs), Recall@20 / NDCG@20 on the test split, and the time it took.
   Published on this split: NGCF 0.2513, LightGCN 0.2576, SimpleX 0.2802 Recall@20.
2. CTR: full-table DLRM on movielens-100k as CTR (label rating >= 4; user, item, demographics,
   multi-hot genres), validation and test AUC.
3. CTR: full-table DLRM on the synthetic Criteo-profile workload (`embadvisor synth criteo-kaggle`,
   real Criteo cardinalities; and the scaled proxy the advisor trains by default), test AUC as a
   share of the planted teacher's oracle lift (AUC - 0.5).

Usage: python benchmarks/engines_acceptance.py [--only retrieval,ml100k,synthetic] [--rows 2000000]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

DATA = Path(os.environ.get("EMBADVISOR_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def retrieval() -> None:
    from embadvisor.tasks.api import train
    from embadvisor.tasks.datasets import retrieval_task_data
    from embadvisor.tasks.trainer import TrainConfig

    t0 = time.perf_counter()
    data = retrieval_task_data(DATA / "retrieval/movielens-1m-implicit", seed=0)
    cfg = TrainConfig(batch_size=1024, epochs=10, lr=1e-3, patience=3, threads=2, seed=0)
    rep = train(data, "full", dim=64, config=cfg)
    f = rep.fit
    print(f"[retrieval] movielens-1m-implicit, full two-tower d=64: test recall@20 {f.test['recall@20']:.4f} "
          f"ndcg@20 {f.test['ndcg@20']:.4f} (validation recall@20 {f.validation['recall@20']:.4f}); "
          f"{f.steps} steps, train {f.train_seconds:.0f} s, total {time.perf_counter() - t0:.0f} s, {f.stopped}")


def ml100k() -> None:
    from embadvisor.tasks.api import train
    from embadvisor.tasks.datasets import ctr_task_data
    from embadvisor.tasks.trainer import TrainConfig

    data = ctr_task_data(DATA / "ctr/movielens-100k/u.data", seed=0)
    cfg = TrainConfig(batch_size=512, epochs=10, lr=1e-3, patience=3, threads=2, seed=0)
    rep = train(data, "full", model="dlrm", config=cfg)
    f = rep.fit
    print(f"[ctr] movielens-100k (label rating>=4), full DLRM: validation AUC {f.validation['auc']:.4f}, "
          f"test AUC {f.test['auc']:.4f}, logloss {f.test['logloss']:.4f}; {f.steps} steps, {f.train_seconds:.0f} s")


def synthetic(rows: int, which: tuple[str, ...] = ("real", "proxy")) -> None:
    from embadvisor.advisor.workloads import proxy_profile
    from embadvisor.profiles import get_preset
    from embadvisor.profiles.synth import generate
    from embadvisor.tasks.api import train
    from embadvisor.tasks.datasets import ctr_task_data
    from embadvisor.tasks.trainer import TrainConfig

    target = get_preset("criteo-kaggle")
    variants = {"real": ("real Criteo cardinalities", target),
                "proxy": ("advisor proxy (scaled to 300k ids)", proxy_profile(target, 300_000))}
    for label, prof in (variants[k] for k in which):
        n = rows
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "synth.txt"
            t0 = time.perf_counter()
            res = generate(prof, rows=n, output=path, fmt="criteo", seed=0)
            data = ctr_task_data(path, fmt="criteo", seed=0)
            gen_s = time.perf_counter() - t0
            cfg = TrainConfig(batch_size=4096, epochs=2, lr=1e-3, patience=2, threads=2, seed=0)
            rep = train(data, "full", model="dlrm", config=cfg)
        f = rep.fit
        lift = (f.test["auc"] - 0.5) / (res.oracle_auc - 0.5)
        print(f"[ctr] synthetic {label}, {n:,} rows: oracle AUC {res.oracle_auc:.4f}, DLRM test AUC "
              f"{f.test['auc']:.4f} -> {lift:.1%} of the oracle lift (target >= 90%); validation AUC "
              f"{f.validation['auc']:.4f}; data {gen_s:.0f} s, train {f.train_seconds:.0f} s, "
              f"{f.samples_per_second:,.0f} samples/s, peak RSS {f.peak_rss_bytes / 2**30:.1f} GiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="retrieval,ml100k,synthetic")
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--synthetic", default="real,proxy", help="synthetic variants: real Criteo cardinalities, "
                    "the advisor's 300k-id proxy")
    args = ap.parse_args()
    parts = args.only.split(",")
    if "retrieval" in parts:
        retrieval()
    if "ml100k" in parts:
        ml100k()
    if "synthetic" in parts:
        synthetic(args.rows, tuple(args.synthetic.split(",")))


if __name__ == "__main__":
    main()
