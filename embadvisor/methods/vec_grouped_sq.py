"""Magnitude-grouped scalar quantization of a frozen corpus (``vec_grouped_sq``): more bits for the larger-norm vectors.

The paper's magnitude-grouped compressors split the vectors by L2 norm, a stand-in for the
access frequency a document index does not have: large-norm vectors dominate inner-product
scores, so they get the finer code. Here the ``floor(high_share·n)`` largest-norm rows are
quantized to ``high_bits`` and the rest to ``low_bits`` (each group with its own ranges, as in
:mod:`embadvisor.methods.vec_sq`); a bitmap records the groups. Solving ``high_share`` from the
budget also makes any budget between the two plain widths reachable.

The budget solver picks the largest ``high_share`` that fits (``size_knob``).

Memory:
    ``ceil(n/8)`` bitmap bytes + ``n_hi·ceil(d·b_hi/8) + n_lo·ceil(d·b_lo/8)`` code bytes + float32
    offset and step per group and dimension (``4·2·2·d``) or per row (``4·2·n``).

References:
    Zhang et al., "Experimental Analysis of Large-scale Learnable Vector Storage Compression",
    VLDB 2024, arXiv:2311.15578 (magnitude-grouped compressors for retrieval corpora); Jacob et al.,
    CVPR 2018, arXiv:1712.05877 (uniform quantization).
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
    packed_row_bytes,
    spec,
)
from embadvisor.methods.vec_sq import SCALES, SQ_BITS, sq_decode, sq_encode, sq_prepare, sq_scores, sq_specs
from embadvisor.profiles.schema import TableSpec

__all__ = ["GroupedSQIndex", "VecGroupedSqConfig"]


class GroupedSQIndex(GroupedIndex):
    """Bitmap + a scalar-quantized array set per group."""

    config: VecGroupedSqConfig

    def _bits(self, group: str) -> int:
        return self.config.high_bits if group == "hi" else self.config.low_bits

    def group_decode(self, group: str, rows: np.ndarray | slice) -> np.ndarray:
        return sq_decode(self.arrays, rows, self.dim, self._bits(group), self.config.scale, f"{group}_")  # type: ignore[arg-type]

    def group_prepare(self, group: str, queries: np.ndarray) -> Any:
        return sq_prepare(self.arrays, queries, self.config.scale, f"{group}_")

    def group_scores(self, group: str, prepared: Any, rows: slice) -> np.ndarray:
        return sq_scores(self.arrays, prepared, rows, self.dim, self._bits(group), self.config.scale, f"{group}_")


@register_method
@dataclass(frozen=True, kw_only=True)
class VecGroupedSqConfig(VectorConfig):
    """Two norm groups quantized to ``high_bits`` and ``low_bits``.

    Args:
        high_share: share of the rows (largest norms first) in the high-bit group, in [0, 1] (the size knob).
        high_bits: code width of the large-norm group (8, 4, 2 or 1).
        low_bits: code width of the other rows (narrower than ``high_bits``).
        scale: ``"per_dim"`` or ``"per_row"`` ranges (per group).

    Example:
        >>> VecGroupedSqConfig(high_share=0.5).memory(TableSpec("c", 1000, 64)).serve_bytes
        49149
    """

    name: ClassVar[str] = "vec_grouped_sq"
    index_class: ClassVar[type[CompressedIndex]] = GroupedSQIndex
    tags: ClassVar[MethodTags] = MethodTags(
        category="quantization", compresses_training=False, reference="Zhang et al., VLDB 2024, arXiv:2311.15578",
        layout="global", post_training_only=True, input="vectors",
    )
    size_knob: ClassVar[str | None] = "high_share"
    high_share: float = field(default=0.5, metadata={"constraint": Interval(float, 0.0, 1.0)})
    high_bits: int = field(default=8, metadata={"constraint": Options(set(SQ_BITS))})
    low_bits: int = field(default=4, metadata={"constraint": Options(set(SQ_BITS))})
    scale: str = field(default="per_dim", metadata={"constraint": Options(set(SCALES))})

    @classmethod
    def search_space(cls, table: TableSpec) -> dict[str, BaseDistribution]:
        return {"high_share": FloatDistribution(0.0, 1.0), "high_bits": CategoricalDistribution((8, 4)),
                "low_bits": CategoricalDistribution((4, 2, 1)), "scale": CategoricalDistribution(SCALES)}

    @classmethod
    def example_configs(cls, table: TableSpec) -> list[VecGroupedSqConfig]:
        return [cls(), cls(high_share=0.2, high_bits=4, low_bits=1, scale="per_row"), cls(high_share=0.0),
                cls(high_share=1.0, high_bits=2, low_bits=1)]

    def check_feasible(self, table: TableSpec) -> str | None:
        if self.low_bits >= self.high_bits:
            return f"low_bits={self.low_bits} must be narrower than high_bits={self.high_bits}"
        return None

    @classmethod
    def knob_bounds(cls, table: TableSpec, **fixed: Any) -> tuple[float, float]:
        return 0.0, 1.0

    def tensor_specs(self, table: TableSpec) -> list[TensorSpec]:
        n, d = table.num_embeddings, table.embedding_dim
        hi, lo = group_rows(n, self.high_share)
        return [spec("group", (packed_row_bytes(n, 1),), "uint8"),
                *sq_specs("hi_", hi, d, self.high_bits, self.scale), *sq_specs("lo_", lo, d, self.low_bits, self.scale)]

    def _fit(self, corpus: np.ndarray, table: TableSpec) -> CompressedIndex:
        n, d = corpus.shape
        hi, _ = group_rows(n, self.high_share)
        mask = norm_groups(corpus, hi)
        arrays = {"group": np.packbits(mask, bitorder="little")}
        for group, rows, bits in (("hi", mask, self.high_bits), ("lo", ~mask, self.low_bits)):
            x = corpus[rows]
            if len(x):
                arrays |= sq_encode(x, bits, self.scale, f"{group}_")
            else:  # an empty group keeps its (empty or per-dim) arrays so the layout is fixed
                for s in sq_specs(f"{group}_", 0, d, bits, self.scale):
                    arrays[s.name] = np.zeros(s.shape, dtype=np.uint8 if s.dtype == "uint8" else np.float32)
        return GroupedSQIndex(self, n, d, arrays)
