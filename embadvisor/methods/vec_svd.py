"""Low-rank projection of a frozen corpus (``vec_svd``): truncated SVD (or PCA) to rank r.

``X ≈ mean + C·B`` with the top-r right singular vectors ``B`` (``[r, d]``) of the (optionally
centred) corpus and the coefficients ``C = (X − mean)·Bᵀ`` (``[n, r]``). The basis comes from an
eigendecomposition of the ``d×d`` Gram matrix in float64, so the cost is ``O(n·d²)`` and
memory ``O(d²)`` for any n. Coefficients and basis are stored in float16 or float32.

Search projects the query (``q·Bᵀ``, plus ``q·mean``) and scores a block with one ``[q, r]·[r, B]``
product, without decoding.

The budget solver picks the largest rank that fits (``size_knob``).

Memory:
    ``(n·r + r·d)`` values (+ ``d`` for the mean when ``center``), 2 or 4 bytes each.

References:
    Eckart, Young, "The approximation of one matrix by another of lower rank", Psychometrika 1936;
    the ``SVDDecomposer`` compressor (rank ``n·d·cr/(n+d)``) of Zhang et al., "Experimental Analysis
    of Large-scale Learnable Vector Storage Compression", VLDB 2024, arXiv:2311.15578.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution

from embadvisor._constraints import Interval, Options
from embadvisor.methods._base import MethodTags, TensorSpec
from embadvisor.methods._registry import register_method
from embadvisor.methods._vectors import CompressedIndex, VectorConfig, np_dtype, spec
from embadvisor.profiles.schema import TableSpec

__all__ = ["LowRankIndex", "VecSvdConfig", "low_rank", "low_rank_specs"]

DTYPES = ("fp16", "fp32")


def low_rank_specs(prefix: str, rows: int, d: int, rank: int, dtype: str, center: bool) -> list[TensorSpec]:
    out = [spec(f"{prefix}coef", (rows, rank), dtype), spec(f"{prefix}basis", (rank, d), dtype)]
    return out + ([spec(f"{prefix}mean", (d,), dtype)] if center else [])


def low_rank(x: np.ndarray, rank: int, dtype: str, center: bool, prefix: str = "") -> dict[str, np.ndarray]:
    """Top-``rank`` basis of ``x`` (optionally centred) and the coefficients, rounded to ``dtype``."""
    dt = np_dtype(dtype)
    d = x.shape[1]
    mean = x.mean(axis=0, dtype=np.float64) if center else np.zeros(d)
    mean_s = mean.astype(dt)
    xc = x.astype(np.float64) - mean_s.astype(np.float64)
    gram = xc.T @ xc
    _, vecs = np.linalg.eigh(gram)
    basis = vecs[:, ::-1][:, :rank].T  # [r, d], orthonormal rows, largest eigenvalues first
    basis_s = basis.astype(dt)
    coef = xc @ basis_s.astype(np.float64).T  # least-squares coefficients for the stored basis
    out = {f"{prefix}coef": coef.astype(dt), f"{prefix}basis": basis_s}
    if center:
        out[f"{prefix}mean"] = mean_s
    return out


class LowRankIndex(CompressedIndex):
    """Coefficients ``[n, r]``, basis ``[r, d]`` and an optional mean."""

    config: VecSvdConfig

    def decode(self, start: int, stop: int) -> np.ndarray:
        a = self.arrays
        out = a["coef"][start:stop].astype(np.float32) @ a["basis"].astype(np.float32)
        return out + a["mean"].astype(np.float32)[None, :] if "mean" in a else out

    def prepare(self, queries: np.ndarray) -> Any:
        a = self.arrays
        proj = queries @ a["basis"].astype(np.float32).T
        shift = queries @ a["mean"].astype(np.float32) if "mean" in a else np.zeros(len(queries), np.float32)
        return proj, shift

    def score_block(self, prepared: Any, start: int, stop: int) -> np.ndarray:
        proj, shift = prepared
        return proj @ self.arrays["coef"][start:stop].astype(np.float32).T + shift[:, None]


@register_method
@dataclass(frozen=True, kw_only=True)
class VecSvdConfig(VectorConfig):
    """Truncated SVD / PCA to ``rank`` dimensions.

    Args:
        rank: r, kept singular directions, 1..min(n, d) (the size knob).
        dtype: storage of coefficients, basis and mean, ``"fp16"`` or ``"fp32"``.
        center: subtract the mean first (PCA) and store it.

    Example:
        >>> VecSvdConfig(rank=16, dtype="fp32").memory(TableSpec("c", 1000, 64)).serve_bytes
        68352
    """

    name: ClassVar[str] = "vec_svd"
    index_class: ClassVar[type[CompressedIndex]] = LowRankIndex
    tags: ClassVar[MethodTags] = MethodTags(
        category="dimension reduction", compresses_training=False, reference="Eckart & Young, Psychometrika 1936",
        layout="global", post_training_only=True, input="vectors",
    )
    size_knob: ClassVar[str | None] = "rank"
    rank: int = field(default=16, metadata={"constraint": Interval(int, 1, None)})
    dtype: str = field(default="fp16", metadata={"constraint": Options(set(DTYPES))})
    center: bool = field(default=True, metadata={"constraint": Options({True, False})})

    @classmethod
    def search_space(cls, table: TableSpec) -> dict[str, BaseDistribution]:
        return {"rank": IntDistribution(1, min(table.num_embeddings, table.embedding_dim), log=True),
                "dtype": CategoricalDistribution(DTYPES), "center": CategoricalDistribution((True, False))}

    @classmethod
    def example_configs(cls, table: TableSpec) -> list[VecSvdConfig]:
        r = max(1, min(table.num_embeddings, table.embedding_dim) // 4)
        return [cls(rank=r), cls(rank=r, dtype="fp32", center=False)]

    def check_feasible(self, table: TableSpec) -> str | None:
        if self.rank > min(table.num_embeddings, table.embedding_dim):
            return f"rank={self.rank} exceeds min(n, d) = {min(table.num_embeddings, table.embedding_dim)}"
        return None

    @classmethod
    def knob_bounds(cls, table: TableSpec, **fixed: Any) -> tuple[float, float]:
        return 1, min(table.num_embeddings, table.embedding_dim)

    def tensor_specs(self, table: TableSpec) -> list[TensorSpec]:
        return low_rank_specs("", table.num_embeddings, table.embedding_dim, self.rank, self.dtype, self.center)

    def _fit(self, corpus: np.ndarray, table: TableSpec) -> CompressedIndex:
        return LowRankIndex(self, table.num_embeddings, table.embedding_dim,
                            low_rank(corpus, self.rank, self.dtype, self.center))
