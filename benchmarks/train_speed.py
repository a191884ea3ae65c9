"""Training and evaluation speed of the task engines vs plain PyTorch references, in one run.

CTR: samples/s of our full-table DLRM training step (embadvisor's trainer, EmbeddingCollection,
CtrEngine) vs a straightforward PyTorch DLRM written here (nn.Embedding per field with sparse
gradients + SparseAdam for the tables, Adam for the MLPs), same batch (4096), same Zipf ids, with
tables capped at 100k rows and with the full Criteo Kaggle tables (33.7M rows). Also the MLP's
achieved FLOP/s as a fraction of the machine's fp32 GEMM rate measured in the same run.

Retrieval: exact Recall@K evaluation (score, mask seen items, top-K) of 30,000 users x 41,000 items
at dim 64 through ``embadvisor.tasks.metrics.topk_items`` vs a plain chunked matmul + topk.

Usage: python benchmarks/train_speed.py [--steps 30] [--rounds 4] [--threads 2] [--skip-full]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

import numpy as np
import torch
from torch import nn

CRITEO = [1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27, 14992,
          5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572]
D, DENSE, BATCH = 16, 13, 4096


def zipf_ids(sizes: list[int], rows: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    cols = [np.minimum(rng.zipf(1.2, rows) - 1, n - 1) for n in sizes]
    return torch.from_numpy(np.stack(cols, 1).astype(np.int64))


def gemm_gflops(threads: int, n: int = 2048, reps: int = 5) -> float:
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    c = torch.empty(n, n)
    torch.mm(a, b, out=c)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b, out=c)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


# ----------------------------------------------------------------------- plain reference
class RefDLRM(nn.Module):
    def __init__(self, sizes: list[int]) -> None:
        super().__init__()
        self.embs = nn.ModuleList([nn.Embedding(n, D, sparse=True) for n in sizes])
        for e in self.embs:
            nn.init.uniform_(e.weight, -(1 / e.num_embeddings) ** 0.5, (1 / e.num_embeddings) ** 0.5)
        self.bottom = nn.Sequential(nn.Linear(DENSE, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(),
                                    nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, D), nn.ReLU())
        f = len(sizes) + 1
        self.li, self.lj = torch.tril_indices(f, f, offset=-1)
        self.top = nn.Sequential(nn.Linear(D + f * (f - 1) // 2, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(),
                                 nn.Linear(256, 1))

    def forward(self, ids: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        x = self.bottom(dense)
        e = torch.stack([emb(ids[:, i]) for i, emb in enumerate(self.embs)], 1)
        t = torch.cat([x.unsqueeze(1), e], 1)
        z = torch.bmm(t, t.transpose(1, 2))[:, self.li, self.lj]
        return self.top(torch.cat([x, z], 1)).squeeze(-1)


def make_ref(sizes: list[int], ids: torch.Tensor, dense: torch.Tensor, y: torch.Tensor):  # type: ignore[no-untyped-def]
    """A plain PyTorch DLRM training loop; returns a function running k timed steps."""
    torch.manual_seed(0)
    model = RefDLRM(sizes)
    sparse = [e.weight for e in model.embs]
    dense_p = [p for n, p in model.named_parameters() if not n.startswith("embs")]
    opts = [torch.optim.SparseAdam(sparse, lr=1e-3), torch.optim.Adam(dense_p, lr=1e-3)]
    from embadvisor.tasks.trainer import prefault_sparse_state

    prefault_sparse_state(opts[0])  # same warm state as ours, so the comparison is fair
    loss_fn = nn.BCEWithLogitsLoss()
    n = ids.shape[0]

    def run(k: int) -> list[float]:
        times = []
        for _ in range(k):
            idx = torch.randint(0, n, (BATCH,))
            t0 = time.perf_counter()
            loss = loss_fn(model(ids[idx], dense[idx]), y[idx])
            for o in opts:
                o.zero_grad(set_to_none=True)
            loss.backward()
            for o in opts:
                o.step()
            times.append(time.perf_counter() - t0)
        return times

    return run


# ----------------------------------------------------------------------- ours
def make_ours(sizes: list[int], ids: torch.Tensor, dense: torch.Tensor, y: torch.Tensor, layout: str | None = None):  # type: ignore[no-untyped-def]
    """embadvisor's trainer on the same data; returns (run k timed steps, the model)."""
    from embadvisor.methods import build_collection, solve
    from embadvisor.profiles.schema import TableSpec
    from embadvisor.tasks.ctr import CtrEngine, CtrTensors, build_ctr_model
    from embadvisor.tasks.trainer import TrainConfig, fit

    tables = [TableSpec(f"C{i + 1}", n, D) for i, n in enumerate(sizes)]
    n = ids.shape[0]
    data = CtrTensors(tables, ids, [], dense, y, {"train": torch.arange(n), "valid": torch.arange(4096)})
    torch.manual_seed(0)
    emb = build_collection(solve("full", tables, 1e15, layout=layout))
    model = build_ctr_model("dlrm", emb, data)
    engine = CtrEngine(data)
    step_times: list[float] = []

    class Timed(CtrEngine):
        def train_loss(self, m: nn.Module, idx: torch.Tensor) -> torch.Tensor:
            now = time.perf_counter()
            if hasattr(self, "_t"):
                step_times.append(now - self._t)
            self._t = now
            return super().train_loss(m, idx)

    engine.__class__ = Timed

    def run(k: int) -> list[float]:
        step_times.clear()
        if hasattr(engine, "_t"):
            del engine._t
        cfg = TrainConfig(batch_size=BATCH, max_steps=k + 2, epochs=1e9, eval_every=10**9, patience=0,
                          keep_best=False, evaluate_test=False)
        fit(engine, model, emb, cfg)
        return list(step_times[1:])  # interval between consecutive steps (includes every per-step overhead)

    return run, model


def mlp_gflops(model: nn.Module, reps: int = 10) -> float:
    """Achieved GFLOP/s of the DLRM's MLPs (bottom + top), forward + backward, batch 4096."""
    bottom, top = model.bottom, model.top  # type: ignore[attr-defined]
    x = torch.randn(BATCH, DENSE)
    z = torch.randn(BATCH, top[0].in_features)
    flops = 0
    for seq in (bottom, top):
        for m in seq:
            if isinstance(m, nn.Linear):
                flops += 2 * m.in_features * m.out_features * BATCH * 3  # fwd + 2x bwd
    times = []
    for _ in range(reps + 2):
        t0 = time.perf_counter()
        (bottom(x).sum() + top(z).sum()).backward()
        times.append(time.perf_counter() - t0)
    return flops / statistics.median(times[2:]) / 1e9


# ----------------------------------------------------------------------- retrieval evaluation
def retrieval_eval(users: int = 30_000, items: int = 41_000, dim: int = 64, k: int = 50) -> tuple[float, float]:
    from embadvisor.tasks.metrics import topk_items
    from embadvisor.tasks.retrieval import csr_from_pairs

    g = torch.Generator().manual_seed(0)
    uv, iv = torch.randn(users, dim, generator=g), torch.randn(items, dim, generator=g)
    rng = np.random.default_rng(0)
    seen_u = rng.integers(0, users, 800_000)
    seen_i = rng.integers(0, items, 800_000)
    indptr, seen = csr_from_pairs(seen_u, seen_i, users)

    def ours() -> torch.Tensor:
        return topk_items(uv, iv, k, seen_indptr=indptr, seen_items=seen)

    def reference() -> torch.Tensor:
        out = torch.empty(users, k, dtype=torch.int64)
        chunk = 2048
        buf = torch.empty(chunk, items)
        it = iv.t().contiguous()
        su = torch.from_numpy(np.repeat(np.arange(users), np.diff(indptr)))
        si = torch.from_numpy(seen)
        for s in range(0, users, chunk):
            e = min(s + chunk, users)
            sc = buf[: e - s]
            torch.mm(uv[s:e], it, out=sc)
            lo, hi = int(indptr[s]), int(indptr[e])
            sc[su[lo:hi] - s, si[lo:hi]] = float("-inf")
            out[s:e] = torch.topk(sc, k, dim=1).indices
        return out

    a, b = ours(), reference()
    same = (a == b).float().mean().item()
    t_ours, t_ref = [], []
    for _ in range(3):
        t0 = time.perf_counter()
        ours()
        t_ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        reference()
        t_ref.append(time.perf_counter() - t0)
    print(f"  identical top-{k} entries: {same:.4f}")
    return statistics.median(t_ours), statistics.median(t_ref)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30, help="steps per round (each of our rounds is one trainer run)")
    ap.add_argument("--rounds", type=int, default=4, help="interleaved rounds of ours and reference")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--skip-full", action="store_true", help="skip the full Criteo-size tables (needs ~8 GB)")
    ap.add_argument("--layout", choices=("per_field", "global"), default=None,
                    help="layout of our full tables (default: the method's own: global, one table for all fields)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g1 = gemm_gflops(args.threads)
    print(f"fp32 GEMM 2048^3 on {args.threads} threads: {g1:.1f} GFLOP/s")
    rng = np.random.default_rng(1)
    dense = torch.from_numpy(np.log1p(rng.exponential(3, (args.rows, DENSE))).astype(np.float32))
    y = torch.from_numpy((rng.random(args.rows) < 0.25).astype(np.float32))

    rows = []
    capped = [min(n, 100_000) for n in CRITEO]
    variants = [("capped 100k", capped)] + ([] if args.skip_full else [("full Criteo", CRITEO)])
    for label, sizes in variants:
        ids = zipf_ids(sizes, args.rows)
        ref_run = make_ref(sizes, ids, dense, y)
        ours_run, model = make_ours(sizes, ids, dense, y, args.layout)
        ref_run(3)
        ours_run(3)
        t_ref: list[float] = []
        t_ours: list[float] = []
        for _ in range(args.rounds):  # interleaved, so load changes hit both alike
            t_ref += ref_run(args.steps)
            t_ours += ours_run(args.steps)
        ref, ours = BATCH / statistics.median(t_ref), BATCH / statistics.median(t_ours)
        mlp = mlp_gflops(model)
        g1 = max(g1, gemm_gflops(args.threads))  # the machine's rate: best of repeated measurements
        del ref_run, ours_run, model
        gc.collect()
        rows.append((label, ours, ref, mlp))
        print(f"DLRM train, {label}: ours {ours:,.0f} samples/s, reference {ref:,.0f} samples/s, "
              f"ratio {ours / ref:.2f}; MLP {mlp:.1f} GFLOP/s = {mlp / g1:.0%} of GEMM ({g1:.0f} GFLOP/s, best so far)")
    if len(rows) == 2:
        print(f"full tables vs capped (ours): step time ratio {rows[0][1] / rows[1][1]:.2f} (target <= 1.2)")
    from embadvisor.tasks.trainer import peak_rss_bytes

    print(f"peak RSS: {peak_rss_bytes() / 2**30:.2f} GiB")
    t_ours, t_ref = retrieval_eval()
    print(f"retrieval eval 30,000 x 41,000 @ d=64, top-50: ours {t_ours:.2f} s, reference {t_ref:.2f} s, "
          f"ratio {t_ours / t_ref:.2f} (target <= 1.2)")


if __name__ == "__main__":
    main()
