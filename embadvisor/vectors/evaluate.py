"""Exact search, quality metrics and timing for compressed vector indexes.

* Exact search on the uncompressed corpus reuses :func:`embadvisor.tasks.metrics.topk_items`
  (chunked matrix products, top-k, optional exclusion of each query's own row).
* Recall@K vs exact: the overlap of the compressed index's top K with the exact top K, divided
  by K (K = 10, 100), averaged over queries.
* With qrels: nDCG@10 (linear gains, trec_eval's ``ndcg_cut``) and Recall@100 (relevant docs in
  the top 100 / relevant docs), averaged over queries with at least one relevant document.
* Latency: wall time of one ``search`` over a batch of queries (k = 100), median of repeats;
  compress time is measured around ``config.fit``.

Query sets: the given queries, or, without them, a held-out sample of corpus rows searched
with their own row excluded. :func:`split_queries` cuts them into validation (the advisor's
objective) and test (evaluated once, for the pick).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from embadvisor.errors import InvalidConfigError
from embadvisor.methods._vectors import CompressedIndex, VectorConfig
from embadvisor.tasks.metrics import topk_items
from embadvisor.vectors.data import VectorData

__all__ = ["EXACT_K", "QuerySet", "compress", "evaluate_index", "exact_search", "qrels_metrics", "split_queries"]

#: Depth of the exact neighbour lists (Recall@100 needs 100).
EXACT_K = 100
#: Queries per batch in the latency measurement.
LATENCY_BATCH = 64


def exact_search(corpus: np.ndarray, queries: np.ndarray, k: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """Exact top-``k`` corpus rows per query by inner product (``[q, k]`` int64), optionally excluding one row each."""
    indptr = items = None
    if exclude is not None:
        indptr = np.arange(len(queries) + 1, dtype=np.int64)
        items = np.asarray(exclude, dtype=np.int64)
    top = topk_items(torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)),
                     torch.from_numpy(np.ascontiguousarray(corpus, dtype=np.float32)), k,
                     seen_indptr=indptr, seen_items=items, chunk=256)
    return top.numpy()


def qrels_metrics(ids: np.ndarray, qrels: list[dict[int, float]]) -> dict[str, float]:
    """nDCG@10 and Recall@100 of ranked ``ids`` ``[q, >=100]`` against graded labels (queries with a relevant doc)."""
    discounts = 1.0 / np.log2(np.arange(2, 12))
    ndcgs, recalls = [], []
    for row, labels in zip(ids, qrels, strict=True):
        relevant = {d: r for d, r in labels.items() if r > 0}
        if not relevant:
            continue
        gains = np.array([relevant.get(int(d), 0.0) for d in row[:10]])
        ideal = np.sort(np.array(list(relevant.values())))[::-1][:10]
        ndcgs.append(float((gains * discounts[: len(gains)]).sum() / (ideal * discounts[: len(ideal)]).sum()))
        recalls.append(len(relevant.keys() & {int(d) for d in row[:100]}) / len(relevant))
    if not ndcgs:
        return {}
    return {"ndcg@10": float(np.mean(ndcgs)), "recall@100": float(np.mean(recalls))}


@dataclass
class QuerySet:
    """Queries with their exact neighbours (and labels).

    Args:
        name: ``validation`` / ``test`` / ``all``.
        vectors: ``[q, d]`` float32.
        exclude: ``[q]`` corpus row to leave out per query (corpus rows as queries), or None.
        exact: ``[q, EXACT_K]`` exact top rows on the uncompressed corpus.
        qrels: per query ``{row: relevance}`` or None.
    """

    name: str
    vectors: np.ndarray
    exclude: np.ndarray | None
    exact: np.ndarray
    qrels: list[dict[int, float]] | None = None

    def __len__(self) -> int:
        return len(self.vectors)

    @classmethod
    def build(cls, name: str, corpus: np.ndarray, vectors: np.ndarray, exclude: np.ndarray | None,
              qrels: list[dict[int, float]] | None) -> QuerySet:
        k = min(EXACT_K, len(corpus) - (1 if exclude is not None else 0))
        return cls(name, vectors, exclude, exact_search(corpus, vectors, k, exclude), qrels)


def split_queries(data: VectorData, *, seed: int = 0, validation_share: float = 0.5,
                  sample_rows: int = 1000) -> tuple[QuerySet, QuerySet]:
    """Validation and test query sets (given queries split at random; else held-out corpus rows).

    With qrels, only queries that have a relevant document are used, so every query counts
    toward nDCG and Recall@K alike.
    """
    if not 0 < validation_share < 1:
        raise InvalidConfigError(f"`validation_share` must be in (0, 1), but got validation_share={validation_share!r}.")
    rng = np.random.default_rng(seed)
    if data.queries is not None:
        rows = np.arange(len(data.queries))
        if data.qrels is not None:
            rows = np.array([i for i in rows if any(r > 0 for r in data.qrels[i].values())], dtype=np.int64)
        vectors, exclude = data.queries[rows], None
    else:
        if data.num_vectors < 3:
            raise InvalidConfigError(f"corpus rows as queries need at least 3 vectors, but got {data.num_vectors}.")
        rows = rng.choice(data.num_vectors, size=min(sample_rows, data.num_vectors), replace=False)
        vectors, exclude = data.corpus[rows], rows.astype(np.int64)
    if len(rows) < 2:
        raise InvalidConfigError(f"at least 2 queries are needed (validation and test), but got {len(rows)}.")
    perm = rng.permutation(len(rows))
    cut = min(len(rows) - 1, max(1, round(validation_share * len(rows))))
    out = []
    for name, part in (("validation", perm[:cut]), ("test", perm[cut:])):
        part = np.sort(part)
        labels = [data.qrels[int(rows[i])] for i in part] if data.qrels is not None else None
        out.append(QuerySet.build(name, data.corpus, vectors[part], exclude[part] if exclude is not None else None,
                                  labels))
    return out[0], out[1]


def compress(config: VectorConfig, corpus: np.ndarray) -> tuple[CompressedIndex, float]:
    """Fit ``config`` on ``corpus``; returns the index and the seconds it took."""
    t0 = time.perf_counter()
    index = config.fit(corpus)
    return index, time.perf_counter() - t0


def evaluate_index(index: CompressedIndex, queries: QuerySet, *, latency_batch: int = LATENCY_BATCH,
                   repeats: int = 3) -> dict[str, Any]:
    """Quality against exact search (and labels) plus search latency per query batch."""
    k = queries.exact.shape[1]
    _, ids = index.search(queries.vectors, k, exclude=queries.exclude)
    out: dict[str, Any] = {}
    for kk in (10, 100):
        if kk <= k:
            hits = [len(set(a[:kk].tolist()) & set(b[:kk].tolist())) for a, b in zip(ids, queries.exact, strict=True)]
            out[f"recall@{kk}_exact"] = float(np.mean(hits) / kk)
    if queries.qrels is not None:
        out |= qrels_metrics(ids, queries.qrels)
    reps = -(-latency_batch // len(queries))
    batch = np.tile(queries.vectors, (reps, 1))[:latency_batch]
    excl = np.tile(queries.exclude, reps)[:latency_batch] if queries.exclude is not None else None
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        index.search(batch, k, exclude=excl)
        times.append(time.perf_counter() - t0)
    out["latency_ms"] = float(np.median(times) * 1000)
    out["latency_batch"] = latency_batch
    out["serve_bytes"] = index.nbytes
    return out
