"""Metrics: AUC and log loss for CTR; exact full-corpus Recall@K / NDCG@K for retrieval.

Retrieval evaluation scores every item for every user with chunked matrix products into one
preallocated buffer (a fresh buffer per chunk halves GEMM speed here: page faults), masks each
user's training items, takes the top K and compares with the held-out items. No approximate
search is involved. :func:`topk_items` runs on the device of its vectors (CUDA included).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["auc", "logloss", "ranking_metrics", "ranking_metrics_per_user", "sampled_metric_stderr", "topk_items"]


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC (scikit-learn); 0.5 when only one class is present."""
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels)
    if labels.min() == labels.max():
        return 0.5
    return float(roc_auc_score(labels, scores))


def logloss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of probabilities."""
    p = np.clip(np.asarray(probs, dtype=np.float64), eps, 1 - eps)
    y = np.asarray(labels, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def topk_items(
    user_vecs: torch.Tensor,
    item_vecs: torch.Tensor,
    k: int,
    *,
    seen_indptr: np.ndarray | None = None,
    seen_items: np.ndarray | None = None,
    chunk: int = 2048,
) -> torch.Tensor:
    """Exact top-``k`` items per user by dot product, excluding each user's seen items.

    Args:
        user_vecs: ``[U, d]`` float.
        item_vecs: ``[I, d]`` float.
        k: how many items to return per user.
        seen_indptr, seen_items: CSR of items to exclude per user (row u: ``seen_items[indptr[u]:indptr[u+1]]``).
        chunk: users per matrix product.

    Returns:
        ``[U, k]`` int64 item indices, best first, on the vectors' device (the scores, the mask and the
        top-K are computed there; the CSR is copied there once).
    """
    n_users, n_items = user_vecs.shape[0], item_vecs.shape[0]
    dev = user_vecs.device
    k = min(k, n_items)
    out = torch.empty((n_users, k), dtype=torch.int64, device=dev)
    item_t = item_vecs.t().contiguous()
    buf = torch.empty((min(chunk, max(1, n_users)), n_items), dtype=user_vecs.dtype, device=dev)
    indptr = torch.from_numpy(np.asarray(seen_indptr, dtype=np.int64)) if seen_indptr is not None else None
    items = torch.from_numpy(np.asarray(seen_items, dtype=np.int64)).to(dev) if seen_items is not None else None
    neg_inf = float("-inf")
    for start in range(0, n_users, chunk):
        stop = min(start + chunk, n_users)
        scores = buf[: stop - start]
        torch.mm(user_vecs[start:stop], item_t, out=scores)
        if indptr is not None and items is not None:
            lo, hi = int(indptr[start]), int(indptr[stop])
            if hi > lo:
                counts = (indptr[start + 1 : stop + 1] - indptr[start:stop]).to(dev)
                rows = torch.repeat_interleave(torch.arange(stop - start, device=dev), counts)
                scores.index_put_((rows, items[lo:hi]), torch.tensor(neg_inf, dtype=scores.dtype, device=dev))
        out[start:stop] = torch.topk(scores, k, dim=1, sorted=True).indices
    return out


def ranking_metrics_per_user(
    top: torch.Tensor,
    truth_indptr: np.ndarray,
    truth_items: np.ndarray,
    ks: Sequence[int] = (10, 20, 50),
) -> dict[str, np.ndarray]:
    """Per-user Recall@K and NDCG@K for the users with at least one held-out item.

    Row ``u`` of ``top`` is scored against ``truth_items[truth_indptr[u]:truth_indptr[u+1]]``. Users with
    no held-out item are left out (they have no recall), so each array has one float64 entry per user
    with held-out items, in user order. :func:`ranking_metrics` is the mean of these arrays.
    """
    top_np = top.cpu().numpy()
    n_users = top_np.shape[0]
    indptr = np.asarray(truth_indptr, dtype=np.int64)
    sizes = np.diff(indptr)
    valid = sizes > 0
    kmax = top_np.shape[1]
    # hit matrix [U, kmax]: is the ranked item among the user's held-out items?
    rows = np.repeat(np.arange(n_users), sizes)
    key_truth = rows.astype(np.int64) * (1 << 32) + np.asarray(truth_items, dtype=np.int64)
    key_top = (np.arange(n_users, dtype=np.int64)[:, None] * (1 << 32) + top_np).ravel()
    hits = np.isin(key_top, key_truth).reshape(n_users, kmax)
    discounts = 1.0 / np.log2(np.arange(2, kmax + 2))
    out: dict[str, np.ndarray] = {}
    for k in ks:
        kk = min(k, kmax)
        h = hits[:, :kk]
        recall = h.sum(1) / np.maximum(sizes, 1)
        dcg = (h * discounts[:kk]).sum(1)
        ideal = np.cumsum(discounts[:kk])[np.minimum(sizes, kk) - 1]
        ndcg = np.where(sizes > 0, dcg / np.where(sizes > 0, ideal, 1.0), 0.0)
        out[f"recall@{k}"] = recall[valid]
        out[f"ndcg@{k}"] = ndcg[valid]
    return out


def ranking_metrics(
    top: torch.Tensor,
    truth_indptr: np.ndarray,
    truth_items: np.ndarray,
    ks: Sequence[int] = (10, 20, 50),
) -> dict[str, float]:
    """Recall@K and NDCG@K averaged over users with at least one held-out item.

    Recall@K = hits in the top K / min(K, #held-out) is NOT used; we use the common definition
    hits / #held-out (as LightGCN / SimpleX report on this split). Users without held-out items
    count neither in the numerator nor in the denominator (0.0 when no user has any).
    """
    per_user = ranking_metrics_per_user(top, truth_indptr, truth_items, ks)
    return {name: float(v.sum() / max(1, v.size)) for name, v in per_user.items()}


def sampled_metric_stderr(per_user_values: np.ndarray, n_population: int) -> float:
    """Standard error of a sample mean of a per-user metric as an estimate of the population mean.

    ``per_user_values`` are the metric values of ``n`` users drawn uniformly without replacement from
    ``n_population`` users; the mean over the whole population is the quantity estimated. The error is
    ``s / sqrt(n) * sqrt((N - n) / (N - 1))``: the sample standard deviation ``s`` (ddof=1) over
    ``sqrt(n)``, times the finite-population correction, which shrinks it to 0.0 when ``n == N`` (the
    sample is the population). It measures the sampling noise only, not training noise between runs.
    NaN when ``1 <= n < 2 <= N`` (no spread to estimate from one user).
    """
    v = np.asarray(per_user_values, dtype=np.float64).ravel()
    n, big_n = int(v.size), int(n_population)
    if n > big_n:
        raise ValueError(f"a sample without replacement cannot exceed its population, but got {n} values "
                         f"and n_population={big_n}.")
    if n == big_n:
        return 0.0
    if n < 2:
        return float("nan")
    fpc = np.sqrt((big_n - n) / (big_n - 1))
    return float(v.std(ddof=1) / np.sqrt(n) * fpc)
