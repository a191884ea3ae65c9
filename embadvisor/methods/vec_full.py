"""Uncompressed float32 corpus (``vec_full``): the reference every frozen-vector compressor is measured against.

Exact brute-force inner-product search (faiss ``IndexFlatIP`` does the same); recommended when
the whole corpus fits the budget.

Memory:
    ``4·n·d`` bytes (the float32 vectors).

References:
    Johnson, Douze, Jégou, "Billion-scale similarity search with GPUs", IEEE Trans. Big Data 2019,
    arXiv:1702.08734 (faiss, flat index); the uncompressed baseline of Zhang et al.,
    "Experimental Analysis of Large-scale Learnable Vector Storage Compression", VLDB 2024,
    arXiv:2311.15578.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from embadvisor.methods._base import MethodTags, TensorSpec
from embadvisor.methods._registry import register_method
from embadvisor.methods._vectors import CompressedIndex, VectorConfig, spec
from embadvisor.profiles.schema import TableSpec

__all__ = ["FlatIndex", "VecFullConfig"]


class FlatIndex(CompressedIndex):
    """The float32 vectors themselves."""

    def decode(self, start: int, stop: int) -> np.ndarray:
        return self.arrays["vectors"][start:stop]


@register_method
@dataclass(frozen=True, kw_only=True)
class VecFullConfig(VectorConfig):
    """The uncompressed corpus.

    Args:
        (none): the baseline has no settings.

    Example:
        >>> VecFullConfig().memory(TableSpec("c", 1000, 16)).serve_bytes
        64000
    """

    name: ClassVar[str] = "vec_full"
    index_class: ClassVar[type[CompressedIndex]] = FlatIndex
    tags: ClassVar[MethodTags] = MethodTags(
        category="baseline", compresses_training=False, reference="faiss IndexFlatIP (arXiv:1702.08734)",
        layout="global", post_training_only=True, input="vectors",
    )

    def tensor_specs(self, table: TableSpec) -> list[TensorSpec]:
        return [spec("vectors", (table.num_embeddings, table.embedding_dim), "fp32")]

    def _fit(self, corpus: np.ndarray, table: TableSpec) -> CompressedIndex:
        return FlatIndex(self, table.num_embeddings, table.embedding_dim, {"vectors": corpus.copy()})
