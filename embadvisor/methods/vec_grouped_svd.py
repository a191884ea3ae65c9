"""Magnitude-grouped low-rank projection of a frozen corpus (``vec_grouped_svd``): more rank for the larger-norm vectors.

As the paper's ``MagnitudeSVDDecomposer``: the vectors are split by L2 norm (a stand-in for the
access frequency a document index does not have) and each group gets its own truncated SVD /
PCA (:mod:`embadvisor.methods.vec_svd`): the ``floor(high_share·n)`` largest-norm rows rank
``high_rank``, the others rank ``max(1, round(high_rank·low_rank_ratio))`` (each capped by the
group's rows and d); a bitmap records the groups. The paper assigns ranks by MDE's power law
over several groups; two groups with a rank ratio is the same idea with one parameter.

The budget solver picks the largest ``high_rank`` that fits (``size_knob``).

Memory:
    ``ceil(n/8)`` bitmap bytes + per group ``(n_g·r_g + r_g·d (+ d if center))`` values of 2 or 4 bytes.

References:
    Zhang et al., "Experimental Analysis of Large-scale Learnable Vector Storage Compression",
    VLDB 2024, arXiv:2311.15578 (``MagnitudeSVDDecomposer``); Ginart et al., "Mixed Dimension
    Embeddings with Application to Memory-Efficient Recommendation Systems", ISIT 2021,
    arXiv:1909.11810.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution

from embadvisor._constraints import Interval, Options
from embadvisor.methods._base import MethodTags, TensorSpec
from embadvisor.methods._registry import register_method
from embadvisor.methods._vectors import (
    CompressedIndex,
    GroupedIndex,
    VectorConfig,
    group_rows,
    norm_groups,
    np_dtype,
    packed_row_bytes,
    spec,
)
from embadvisor.methods.vec_svd import DTYPES, low_rank, low_rank_specs
from embadvisor.profiles.schema import TableSpec

__all__ = ["GroupedLowRankIndex", "VecGroupedSvdConfig"]


class GroupedLowRankIndex(GroupedIndex):
    """Bitmap + coefficients, basis (and mean) per group."""

    config: VecGroupedSvdConfig

    def group_decode(self, group: str, rows: np.ndarray | slice) -> np.ndarray:
        a = self.arrays
        out = a[f"{group}_coef"][rows].astype(np.float32) @ a[f"{group}_basis"].astype(np.float32)
        return out + a[f"{group}_mean"].astype(np.float32)[None, :] if self.config.center else out

    def group_prepare(self, group: str, queries: np.ndarray) -> Any:
        a = self.arrays
        proj = queries @ a[f"{group}_basis"].astype(np.float32).T
        shift = (queries @ a[f"{group}_mean"].astype(np.float32) if self.config.center
                 else np.zeros(len(queries), dtype=np.float32))
        return proj, shift

    def group_scores(self, group: str, prepared: Any, rows: slice) -> np.ndarray:
        proj, shift = prepared
        return proj @ self.arrays[f"{group}_coef"][rows].astype(np.float32).T + shift[:, None]


@register_method
@dataclass(frozen=True, kw_only=True)
class VecGroupedSvdConfig(VectorConfig):
    """Two norm groups with their own low-rank projections.

    Args:
        high_rank: rank of the large-norm group (the size knob).
        high_share: share of the rows (largest norms first) in the high-rank group.
        low_rank_ratio: rank of the other group relative to ``high_rank``.
        dtype: ``"fp16"`` or ``"fp32"`` storage.
        center: centre each group (PCA) and store its mean.

    Example:
        >>> VecGroupedSvdConfig(high_rank=16).memory(TableSpec("c", 1000, 64)).serve_bytes
        23453
    """

    name: ClassVar[str] = "vec_grouped_svd"
    index_class: ClassVar[type[CompressedIndex]] = GroupedLowRankIndex
    tags: ClassVar[MethodTags] = MethodTags(
        category="dimension reduction", compresses_training=False,
        reference="Zhang et al., VLDB 2024, arXiv:2311.15578", layout="global", post_training_only=True,
        input="vectors",
    )
    size_knob: ClassVar[str | None] = "high_rank"
    high_rank: int = field(default=16, metadata={"constraint": Interval(int, 1, None)})
    high_share: float = field(default=0.25, metadata={"constraint": Interval(float, 0.0, 1.0)})
    low_rank_ratio: float = field(default=0.5, metadata={"constraint": Interval(float, 0.0, 1.0, closed="right")})
    dtype: str = field(default="fp16", metadata={"constraint": Options(set(DTYPES))})
    center: bool = field(default=True, metadata={"constraint": Options({True, False})})

    @classmethod
    def search_space(cls, table: TableSpec) -> dict[str, BaseDistribution]:
        return {"high_share": FloatDistribution(0.05, 0.95), "low_rank_ratio": FloatDistribution(0.1, 1.0),
                "dtype": CategoricalDistribution(DTYPES), "center": CategoricalDistribution((True, False))}

    @classmethod
    def example_configs(cls, table: TableSpec) -> list[VecGroupedSvdConfig]:
        r = max(1, min(table.num_embeddings, table.embedding_dim) // 4)
        return [cls(high_rank=r), cls(high_rank=r, high_share=0.5, low_rank_ratio=0.25, dtype="fp32", center=False),
                cls(high_rank=r, high_share=0.0)]

    def ranks(self, table: TableSpec) -> tuple[int, int]:
        """Effective ranks of the ``hi`` and ``lo`` groups (capped by their rows and d)."""
        hi, lo = group_rows(table.num_embeddings, self.high_share)
        d = table.embedding_dim
        low = max(1, round(self.high_rank * self.low_rank_ratio))
        return min(self.high_rank, hi, d), min(low, lo, d)

    @classmethod
    def knob_bounds(cls, table: TableSpec, **fixed: Any) -> tuple[float, float]:
        return 1, min(table.num_embeddings, table.embedding_dim)

    def tensor_specs(self, table: TableSpec) -> list[TensorSpec]:
        n, d = table.num_embeddings, table.embedding_dim
        rows = group_rows(n, self.high_share)
        ranks = self.ranks(table)
        out = [spec("group", (packed_row_bytes(n, 1),), "uint8")]
        for g, r, k in zip(("hi", "lo"), rows, ranks, strict=True):
            out += low_rank_specs(f"{g}_", r, d, k, self.dtype, self.center)
        return out

    def _fit(self, corpus: np.ndarray, table: TableSpec) -> CompressedIndex:
        n, d = corpus.shape
        rows = group_rows(n, self.high_share)
        mask = norm_groups(corpus, rows[0])
        arrays = {"group": np.packbits(mask, bitorder="little")}
        for g, sel, r in zip(("hi", "lo"), (mask, ~mask), self.ranks(table), strict=True):
            x = corpus[sel]
            if len(x):
                arrays |= low_rank(x, r, self.dtype, self.center, f"{g}_")
            else:
                for s in low_rank_specs(f"{g}_", 0, d, r, self.dtype, self.center):
                    arrays[s.name] = np.zeros(s.shape, dtype=np_dtype(s.dtype))
        return GroupedLowRankIndex(self, n, d, arrays)
