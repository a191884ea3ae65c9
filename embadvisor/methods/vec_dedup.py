"""Block deduplication of a frozen corpus (``vec_dedup``): similar blocks share one stored copy.

Every vector is cut into ``segments`` blocks of ``d / segments`` consecutive dimensions. Exactly
equal blocks are always merged (lossless: a corpus with duplicate passages shrinks for free).
When more than ``unique_blocks`` distinct blocks remain, similar blocks are merged into groups by
faiss k-means and each group is served by its mean block. The index stores the unique blocks
(``[U, d/segments]`` float32) and, per vector and segment, the id of its block at the narrowest
integer width that holds ``U − 1``. Search uses per-query lookup tables over the unique blocks
(as PQ's ADC), without decoding.

Deviation from the benchmark's ``Deduplicator`` (2-D blocks of 10,000 rows x 100 columns found
by LSH and a similarity threshold): a block is a segment of one vector, since a 2-D block of
10,000 consecutive dense passage vectors never repeats, and merging is by k-means so any target
count can be met. Memory is data dependent only downward: with fewer distinct blocks than
``unique_blocks`` all of them are kept and the index is smaller than the estimate.

The budget solver picks the largest ``unique_blocks`` that fits (``size_knob``).

Memory:
    ``U·(d/segments)·4`` bytes of unique blocks + ``n·segments`` block ids of ``w`` bytes
    (``w`` = 1, 2 or 4 for ``U <= 2**8``, ``2**16``, ``2**31``).

References:
    Zhou et al., "Serving Deep Learning Models with Deduplication from Relational Databases",
    VLDB 2022, arXiv:2201.10442; the ``Deduplicator`` compressor of Zhang et al., "Experimental
    Analysis of Large-scale Learnable Vector Storage Compression", VLDB 2024, arXiv:2311.15578.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution

from embadvisor._constraints import Interval
from embadvisor.methods._base import MethodTags, TensorSpec
from embadvisor.methods._registry import register_method
from embadvisor.methods._vectors import CompressedIndex, VectorConfig, index_dtype, kmeans, nearest, np_dtype, spec
from embadvisor.methods.vec_pq import adc_scores
from embadvisor.profiles.schema import TableSpec

__all__ = ["DedupIndex", "VecDedupConfig"]


class DedupIndex(CompressedIndex):
    """Unique blocks and one block id per (vector, segment)."""

    config: VecDedupConfig

    def decode(self, start: int, stop: int) -> np.ndarray:
        ids = self.arrays["remap"][start:stop].astype(np.int64)
        return self.arrays["blocks"][ids].reshape(stop - start, self.dim)

    def prepare(self, queries: np.ndarray) -> Any:
        s = self.config.segments
        c = self.dim // s
        blocks = self.arrays["blocks"]
        lut = np.stack([blocks @ queries[:, j * c : (j + 1) * c].T for j in range(s)])  # [S, U, q]
        return torch.from_numpy(np.ascontiguousarray(lut, dtype=np.float32))

    def score_block(self, prepared: Any, start: int, stop: int) -> np.ndarray:
        return adc_scores(prepared, self.arrays["remap"][start:stop].astype(np.int64))


@register_method
@dataclass(frozen=True, kw_only=True)
class VecDedupConfig(VectorConfig):
    """Merge similar blocks until ``unique_blocks`` remain.

    Args:
        unique_blocks: U, stored blocks (the size knob), 1..n·segments.
        segments: blocks per vector (must divide d).
        train_iters: k-means iterations of the merging.
        seed: k-means seed.

    Example:
        >>> VecDedupConfig(unique_blocks=100).memory(TableSpec("c", 1000, 64)).serve_bytes
        26600
    """

    name: ClassVar[str] = "vec_dedup"
    index_class: ClassVar[type[CompressedIndex]] = DedupIndex
    tags: ClassVar[MethodTags] = MethodTags(
        category="inter-feature adaptive", compresses_training=False,
        reference="Zhou et al., VLDB 2022, arXiv:2201.10442", layout="global", post_training_only=True,
        data_dependent_memory=True, input="vectors",
    )
    size_knob: ClassVar[str | None] = "unique_blocks"
    unique_blocks: int = field(default=256, metadata={"constraint": Interval(int, 1, None)})
    segments: int = field(default=1, metadata={"constraint": Interval(int, 1, None)})
    train_iters: int = field(default=10, metadata={"constraint": Interval(int, 1, 200)})
    seed: int = field(default=0, metadata={"constraint": Interval(int, 0, None)})

    @classmethod
    def search_space(cls, table: TableSpec) -> dict[str, BaseDistribution]:
        segs = tuple(s for s in (1, 2, 4, 8) if table.embedding_dim % s == 0)
        return {"unique_blocks": IntDistribution(1, table.num_embeddings, log=True),
                "segments": CategoricalDistribution(segs)}

    @classmethod
    def example_configs(cls, table: TableSpec) -> list[VecDedupConfig]:
        n = table.num_embeddings
        segs = 2 if table.embedding_dim % 2 == 0 else 1
        return [cls(unique_blocks=max(1, n // 8)), cls(unique_blocks=max(1, n // 4), segments=segs)]

    def check_feasible(self, table: TableSpec) -> str | None:
        if table.embedding_dim % self.segments:
            return f"segments={self.segments} does not divide the dimension {table.embedding_dim}"
        if self.unique_blocks > table.num_embeddings * self.segments:
            return f"unique_blocks={self.unique_blocks} exceeds the {table.num_embeddings * self.segments} blocks"
        return None

    @classmethod
    def knob_bounds(cls, table: TableSpec, **fixed: Any) -> tuple[float, float]:
        return 1, table.num_embeddings * fixed.get("segments", 1)

    def tensor_specs(self, table: TableSpec) -> list[TensorSpec]:
        n, d, s = table.num_embeddings, table.embedding_dim, self.segments
        return [spec("blocks", (self.unique_blocks, d // s), "fp32"),
                spec("remap", (n, s), index_dtype(self.unique_blocks - 1))]

    def _fit(self, corpus: np.ndarray, table: TableSpec) -> CompressedIndex:
        n, d, s = table.num_embeddings, table.embedding_dim, self.segments
        blocks = corpus.reshape(n * s, d // s)
        uniq, inverse = np.unique(blocks, axis=0, return_inverse=True)
        if len(uniq) <= self.unique_blocks:  # exact duplicates only: lossless
            stored, remap = uniq, inverse.reshape(-1)
        else:
            stored = kmeans(blocks, self.unique_blocks, iters=self.train_iters, seed=self.seed)
            remap = nearest(blocks, stored)
        dt = np_dtype(index_dtype(self.unique_blocks - 1))
        return DedupIndex(self, n, d, {"blocks": np.ascontiguousarray(stored, dtype=np.float32),
                                       "remap": remap.reshape(n, s).astype(dt)})
