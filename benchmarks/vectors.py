"""Frozen-vector compressors vs faiss on vaswani-minilm (11,429 x 384, exact nDCG@10 0.4335).

For budgets of 1/4, 1/16 and 1/32 of the float32 corpus:

* every ``vec_*`` compressor solved from the budget (default settings; PQ also at nbits 4/5/8),
  fitted and evaluated on all 93 queries: nDCG@10 and Recall@100 against the qrels, Recall@10
  and Recall@100 against exact search, bytes, search latency per batch of 64 queries (k=100),
  compress time; Recall@10 vs exact is also reported on 1,000 held-out corpus rows (own row
  excluded) as a lower-noise check;
* faiss ``IndexPQ`` at every (M | d, nbits 4..8) whose real bytes (codes + float32 centroids) fit
  the budget, largest M per nbits, searched with faiss (same thread count);
* the advisor (``recommend_vectors``: validation = 46 queries, test = 47) and its pick's row,
  with the gap to the table's best nDCG@10.

Then faiss ``IndexScalarQuantizer`` QT_8bit and QT_4bit at their own bytes against our scalar
quantizers (``vec_sq``, ``vec_grouped_sq``) solved for exactly those bytes. Prints plain-text tables.

Run: ``python benchmarks/vectors.py [--trials 24] [--time-limit 300]`` (single thread; about 20
minutes on a laptop core). Data: ``$EMBADVISOR_SHARED_DATA`` or ``../shared/data``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from embadvisor.advisor.vector_search import VectorSearchSettings, recommend_vectors, vector_workload
from embadvisor.methods import list_methods
from embadvisor.methods._vectors import corpus_table, faiss_module
from embadvisor.vectors import QuerySet, compress, evaluate_index, load_vector_data
from embadvisor.vectors.evaluate import LATENCY_BATCH
from embadvisor.vectors.rebuild import vector_config

REPO = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    root = Path(os.environ.get("EMBADVISOR_SHARED_DATA", REPO.parent / "shared" / "data"))
    return root / "vectors" / "vaswani-minilm"


def faiss_eval(index: Any, qs: QuerySet, rows: QuerySet) -> dict[str, Any]:
    """The same metrics as :func:`evaluate_index`, for a faiss index (no exclusion support: search k+1)."""
    from embadvisor.vectors.evaluate import qrels_metrics

    _, ids = index.search(qs.vectors, 100)
    out: dict[str, Any] = {}
    for kk in (10, 100):
        out[f"recall@{kk}_exact"] = float(np.mean([len(set(a[:kk]) & set(b[:kk])) for a, b in
                                                   zip(ids, qs.exact, strict=True)]) / kk)
    out |= qrels_metrics(ids, qs.qrels or [])
    _, rid = index.search(rows.vectors, 11)
    rid = [[x for x in r if x != e][:10] for r, e in zip(rid, rows.exclude, strict=True)]  # type: ignore[arg-type]
    out["rows_recall@10"] = float(np.mean([len(set(a) & set(b[:10])) for a, b in zip(rid, rows.exact, strict=True)]) / 10)
    batch = np.tile(qs.vectors, (2, 1))[:LATENCY_BATCH]
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        index.search(batch, 100)
        times.append(time.perf_counter() - t0)
    out["latency_ms"] = float(np.median(times) * 1000)
    return out


def ours(cfg: Any, corpus: np.ndarray, qs: QuerySet, rows: QuerySet) -> dict[str, Any]:
    index, secs = compress(cfg, corpus)
    m = evaluate_index(index, qs)
    m["rows_recall@10"] = evaluate_index(index, rows, repeats=1)["recall@10_exact"]
    m["compress_s"] = secs
    m["bytes"] = index.nbytes
    return m


def fmt_row(name: str, settings: str, m: dict[str, Any]) -> str:
    return (f"{name:<24} {settings:<44} {m['bytes']:>10,} {m.get('ndcg@10', float('nan')):>8.4f} "
            f"{m.get('recall@100', float('nan')):>8.4f} {m['recall@10_exact']:>8.4f} {m['recall@100_exact']:>8.4f} "
            f"{m['rows_recall@10']:>8.4f} {m['latency_ms']:>9.1f} {m.get('compress_s', float('nan')):>9.1f}")


HEADER = (f"{'compressor':<24} {'settings':<44} {'bytes':>10} {'nDCG@10':>8} {'R@100':>8} {'R@10ex':>8} "
          f"{'R@100ex':>8} {'rowsR@10':>8} {'lat ms':>9} {'fit s':>9}")


def short(params: dict[str, Any]) -> str:
    skip = {"seed", "train_iters"}
    text = ", ".join(f"{k}={round(v, 4) if isinstance(v, float) else v}" for k, v in params.items() if k not in skip)
    return text[:44]


def our_rows(corpus: np.ndarray, budget: int, qs: QuerySet, rows: QuerySet,
             methods: tuple[str, ...] | None = None) -> list[tuple[str, str, dict[str, Any]]]:
    table = corpus_table(corpus)
    out = []
    names = methods or tuple(m for m in list_methods(input="vectors") if m != "vec_full")
    variants: list[tuple[str, dict[str, Any]]] = [(m, {}) for m in names]
    if "vec_pq" in names:
        variants += [("vec_pq", {"nbits": b}) for b in (4, 5, 8)]
    for name, fixed in variants:
        cls = vector_config(name).__class__
        cfg = cls.from_budget(table, budget, **fixed)
        if cfg is None and not fixed:  # e.g. grouped SQ needs its 1-bit low group at small budgets
            for ex in cls.example_configs(table):
                keys = {k: getattr(ex, k) for k in cls.search_space(table) if k != cls.size_knob}
                cfg = cls.from_budget(table, budget, **keys)
                if cfg is not None:
                    break
        if cfg is None:
            print(f"  {name} {fixed}: does not fit", flush=True)
            continue
        m = ours(cfg, corpus, qs, rows)
        out.append((name, short(cfg.to_dict()), m))
        print("  " + fmt_row(name, short(cfg.to_dict()), m), flush=True)
    return out


def faiss_pq_rows(corpus: np.ndarray, budget: int, qs: QuerySet, rows: QuerySet) -> list[tuple[str, str, dict[str, Any]]]:
    faiss = faiss_module()
    n, d = corpus.shape
    out = []
    for nbits in (4, 5, 6, 7, 8):
        fits = [m for m in range(1, d + 1) if d % m == 0 and n * (-(-m * nbits // 8)) + (2**nbits) * d * 4 <= budget]
        if not fits:
            continue
        m = max(fits)
        index = faiss.IndexPQ(d, m, nbits, faiss.METRIC_INNER_PRODUCT)
        t0 = time.perf_counter()
        index.train(corpus)
        index.add(corpus)
        secs = time.perf_counter() - t0
        nbytes = n * index.pq.code_size + index.pq.centroids.size() * 4
        res = faiss_eval(index, qs, rows) | {"bytes": nbytes, "compress_s": secs}
        out.append(("faiss IndexPQ", f"PQ{m}x{nbits}", res))
        print("  " + fmt_row("faiss IndexPQ", f"PQ{m}x{nbits}", res), flush=True)
    return out


def faiss_sq(corpus: np.ndarray, qtype: str, qs: QuerySet, rows: QuerySet) -> tuple[int, dict[str, Any]]:
    faiss = faiss_module()
    n, d = corpus.shape
    index = faiss.IndexScalarQuantizer(d, getattr(faiss.ScalarQuantizer, qtype), faiss.METRIC_INNER_PRODUCT)
    t0 = time.perf_counter()
    index.train(corpus)
    index.add(corpus)
    secs = time.perf_counter() - t0
    nbytes = n * index.sa_code_size() + index.sq.trained.size() * 4
    return nbytes, faiss_eval(index, qs, rows) | {"bytes": nbytes, "compress_s": secs}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=24, help="advisor trials per budget (the CLI's default)")
    ap.add_argument("--time-limit", type=float, default=300.0)
    ap.add_argument("--budgets", default="4,16,32", help="fractions: budget = float32 bytes / f")
    args = ap.parse_args()
    torch.set_num_threads(1)
    faiss_module()
    d = data_dir()
    if not d.is_dir():
        print(f"data folder {d} not found; set EMBADVISOR_SHARED_DATA", file=sys.stderr)
        return 2
    data = load_vector_data(d / "doc_vectors.npy", queries=d / "query_vectors.npy", qrels=d / "qrels.parquet",
                            doc_ids=d / "docs.parquet", query_ids=d / "queries.parquet")
    corpus = data.corpus
    qs = QuerySet.build("all", corpus, data.queries, None, data.qrels)  # type: ignore[arg-type]
    rng = np.random.default_rng(1)
    held = rng.choice(len(corpus), 1000, replace=False).astype(np.int64)
    rows = QuerySet.build("rows", corpus, corpus[held], held, None)
    full = data.full_bytes
    workload = vector_workload(data, seed=0)
    print(f"vaswani-minilm: {corpus.shape[0]:,} x {corpus.shape[1]}, float32 {full:,} bytes; 93 queries; torch "
          f"threads {torch.get_num_threads()}; latency = one search of {LATENCY_BATCH} queries, k=100")
    exact = ours(vector_config("vec_full"), corpus, qs, rows)
    print(HEADER)
    print(fmt_row("exact (vec_full)", "float32", exact))
    summary = []
    storage = f"sqlite:///{tempfile.mkdtemp()}/bench.db"
    for frac in (int(f) for f in args.budgets.split(",")):
        budget = full // frac
        print(f"\n=== budget 1/{frac} of float32 = {budget:,} bytes ===\n{HEADER}", flush=True)
        table = our_rows(corpus, budget, qs, rows)
        fpq = faiss_pq_rows(corpus, budget, qs, rows)
        t0 = time.perf_counter()
        rec = recommend_vectors(workload, VectorSearchSettings(budget_bytes=budget, trials=args.trials,
                                                               time_limit_s=args.time_limit), storage=storage)
        adv_s = time.perf_counter() - t0
        pick = vector_config(rec["method"], rec["params"])
        pm = ours(pick, corpus, qs, rows)
        print("  " + fmt_row("advisor pick", short(rec["params"]), pm), flush=True)
        print(f"  advisor: {rec['trials']['complete']} trials in {adv_s:.0f}s, validation nDCG@10 "
              f"{rec['metric']['validation']:.4f}, test nDCG@10 {rec['metric']['test']:.4f}")
        rows_all = table + [("advisor pick", short(rec["params"]), pm)]
        best_ndcg = max(m["ndcg@10"] for _, _, m in rows_all)
        best_ours = max(table + [("advisor pick", "", pm)], key=lambda r: r[2]["recall@10_exact"])
        best_faiss = max(fpq, key=lambda r: r[2]["recall@10_exact"]) if fpq else None
        summary.append((frac, budget, best_ours, best_faiss, pm, best_ndcg, rec["method"]))
    print("\n=== summary: our best compressor vs the best faiss IndexPQ that fits (Recall@10 vs exact, 93 queries;"
          " corpus-row queries in brackets) ===")
    for frac, budget, bo, bf, pm, best_ndcg, method in summary:
        line = (f"1/{frac:<3} {budget:>10,} B  ours {bo[0]} [{bo[1]}] {bo[2]['recall@10_exact']:.4f} "
                f"({bo[2]['rows_recall@10']:.4f}, {bo[2]['bytes']:,} B)")
        if bf is not None:
            ok = bo[2]["recall@10_exact"] >= bf[2]["recall@10_exact"]
            line += (f"  vs faiss {bf[1]} {bf[2]['recall@10_exact']:.4f} ({bf[2]['rows_recall@10']:.4f}, "
                     f"{bf[2]['bytes']:,} B)  -> {'ours >= faiss' if ok else 'FAISS BETTER'}")
        print(line)
        gap = best_ndcg - pm["ndcg@10"]
        print(f"        advisor pick {method}: nDCG@10 {pm['ndcg@10']:.4f}, table best {best_ndcg:.4f}, gap {gap:.4f} "
              f"-> {'within 0.005' if gap <= 0.005 else 'NOT within 0.005'}")
    print("\n=== faiss IndexScalarQuantizer at its own bytes vs our best compressor solved for the same bytes ===")
    print(HEADER)
    for qtype in ("QT_8bit", "QT_4bit"):
        nbytes, fm = faiss_sq(corpus, qtype, qs, rows)
        print(fmt_row(f"faiss SQ {qtype}", f"{nbytes:,} B", fm), flush=True)
        cand = our_rows(corpus, nbytes, qs, rows, methods=("vec_sq", "vec_grouped_sq"))
        bo = max(cand, key=lambda r: r[2]["recall@10_exact"])
        verdict = "ours >= faiss" if bo[2]["recall@10_exact"] >= fm["recall@10_exact"] else "FAISS BETTER"
        print(f"  -> at {nbytes:,} B: ours {bo[0]} [{bo[1]}] R@10ex {bo[2]['recall@10_exact']:.4f} "
              f"({bo[2]['bytes']:,} B) vs faiss {qtype} {fm['recall@10_exact']:.4f}: {verdict}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
