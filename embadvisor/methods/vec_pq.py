"""Product quantization of a frozen corpus (``vec_pq``): M sub-vectors, each replaced by the id of its nearest centroid.

The d dimensions are split into M contiguous sub-vectors (the first ``d mod M`` get one
dimension more, so any M <= d works, unlike faiss's ``IndexPQ`` which needs M | d). Each
sub-space gets its own codebook of ``K = 2**nbits`` centroids, trained by Lloyd's k-means over
all sub-spaces at once (batched in torch: faster than faiss's one-call-per-sub-space for PQ's narrow
sub-spaces; the benchmark measures both against faiss ``IndexPQ``); a
vector is stored as M codes of ``nbits`` bits packed into ``ceil(M·nbits / 8)`` bytes (one
little-endian bit string per row, faiss's layout). The M codebooks together form one
``[K, d]`` array (sub-vector m owns its columns), stored in float16 or float32.

Search is asymmetric distance computation (ADC): per query batch, a lookup table of the
query's inner product with every centroid (``[M, K, q]``), then each row's score is the sum of
its M table entries, gathered block by block from the packed codes.

The budget solver picks the largest M that fits (``size_knob``); ``nbits`` and the codebook
dtype are searched.

Memory:
    ``n·ceil(M·nbits / 8)`` bytes of codes + ``2**nbits·d`` codebook values (2 or 4 bytes each).

References:
    Jégou, Douze, Schmid, "Product Quantization for Nearest Neighbor Search", IEEE TPAMI 2011
    (doi:10.1109/TPAMI.2010.57); faiss (arXiv:1702.08734); the ``ProductQuantizer`` compressor of
    Zhang et al., "Experimental Analysis of Large-scale Learnable Vector Storage Compression",
    VLDB 2024, arXiv:2311.15578.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution

from embadvisor._constraints import Interval, Options
from embadvisor.methods._base import MethodTags, TensorSpec
from embadvisor.methods._registry import register_method
from embadvisor.methods._vectors import (
    CompressedIndex,
    VectorConfig,
    np_dtype,
    pack_bits,
    packed_row_bytes,
    spec,
    subspace_kmeans,
    subspace_nearest,
    unpack_bits,
)
from embadvisor.profiles.schema import TableSpec

__all__ = ["PQIndex", "VecPqConfig", "adc_scores", "split_dims"]

#: Code widths the advisor searches (wider codebooks are allowed but slow to train).
SEARCH_NBITS = (4, 5, 6, 7, 8)
CODEBOOK_DTYPES = ("fp16", "fp32")


def split_dims(d: int, m: int) -> list[tuple[int, int]]:
    """``(start, stop)`` columns of the ``m`` sub-vectors: the first ``d mod m`` get one more dimension."""
    base, extra = divmod(d, m)
    out, start = [], 0
    for j in range(m):
        width = base + (1 if j < extra else 0)
        out.append((start, start + width))
        start += width
    return out


def adc_scores(lut: torch.Tensor, codes: np.ndarray) -> np.ndarray:
    """``Σ_m lut[m, codes[:, m], :]`` -> scores ``[q, B]`` (lut ``[M, K, q]``, codes ``[B, M]``)."""
    c = torch.from_numpy(codes)
    out = torch.zeros((c.shape[0], lut.shape[2]), dtype=torch.float32)
    for m in range(c.shape[1]):
        out.add_(lut[m].index_select(0, c[:, m]))
    return out.t().numpy()


class PQIndex(CompressedIndex):
    """Packed PQ codes and one ``[K, d]`` array of M sub-codebooks; ADC search."""

    config: VecPqConfig

    def _codes(self, start: int, stop: int) -> np.ndarray:
        return unpack_bits(self.arrays["codes"][start:stop], self.config.num_subvectors, self.config.nbits)

    def decode(self, start: int, stop: int) -> np.ndarray:
        codes = self._codes(start, stop)
        cb = self.arrays["codebook"].astype(np.float32)
        out = np.empty((stop - start, self.dim), dtype=np.float32)
        for m, (a, b) in enumerate(split_dims(self.dim, self.config.num_subvectors)):
            out[:, a:b] = cb[codes[:, m], a:b]
        return out

    def prepare(self, queries: np.ndarray) -> Any:
        cb = self.arrays["codebook"].astype(np.float32)
        parts = split_dims(self.dim, self.config.num_subvectors)
        lut = np.stack([cb[:, a:b] @ queries[:, a:b].T for a, b in parts])  # [M, K, q]
        return torch.from_numpy(np.ascontiguousarray(lut, dtype=np.float32))

    def score_block(self, prepared: Any, start: int, stop: int) -> np.ndarray:
        return adc_scores(prepared, self._codes(start, stop))


@register_method
@dataclass(frozen=True, kw_only=True)
class VecPqConfig(VectorConfig):
    """Product quantization with M sub-vectors of ``nbits``-bit codes.

    Args:
        num_subvectors: M, sub-vectors per vector, 1..d (the size knob).
        nbits: bits per code (codebooks of ``2**nbits`` centroids); the default 6 trades codebook
            bytes for more sub-vectors, which wins at tight budgets on vaswani-minilm.
        codebook_dtype: ``"fp16"`` or ``"fp32"`` storage of the codebooks.
        train_iters: k-means iterations per codebook.
        seed: k-means seed.

    Example:
        >>> VecPqConfig(num_subvectors=8, nbits=8).memory(TableSpec("c", 1000, 64)).serve_bytes
        40768
    """

    name: ClassVar[str] = "vec_pq"
    index_class: ClassVar[type[CompressedIndex]] = PQIndex
    tags: ClassVar[MethodTags] = MethodTags(
        category="inter-feature adaptive", compresses_training=False,
        reference="Jégou et al., IEEE TPAMI 2011 (doi:10.1109/TPAMI.2010.57)", layout="global",
        post_training_only=True, input="vectors",
    )
    size_knob: ClassVar[str | None] = "num_subvectors"
    num_subvectors: int = field(default=8, metadata={"constraint": Interval(int, 1, None)})
    nbits: int = field(default=6, metadata={"constraint": Interval(int, 1, 12)})
    codebook_dtype: str = field(default="fp16", metadata={"constraint": Options(set(CODEBOOK_DTYPES))})
    train_iters: int = field(default=25, metadata={"constraint": Interval(int, 1, 200)})
    seed: int = field(default=0, metadata={"constraint": Interval(int, 0, None)})

    @classmethod
    def search_space(cls, table: TableSpec) -> dict[str, BaseDistribution]:
        return {"num_subvectors": IntDistribution(1, table.embedding_dim, log=True),
                "nbits": CategoricalDistribution(SEARCH_NBITS),
                "codebook_dtype": CategoricalDistribution(CODEBOOK_DTYPES)}

    @classmethod
    def example_configs(cls, table: TableSpec) -> list[VecPqConfig]:
        d = table.embedding_dim
        return [cls(num_subvectors=max(1, d // 4), nbits=4), cls(num_subvectors=min(d, 5), nbits=6, codebook_dtype="fp32"),
                cls(num_subvectors=1, nbits=3)]

    def check_feasible(self, table: TableSpec) -> str | None:
        if self.num_subvectors > table.embedding_dim:
            return f"num_subvectors={self.num_subvectors} exceeds the dimension {table.embedding_dim}"
        if 2**self.nbits > table.num_embeddings:
            return (f"{2**self.nbits} centroids (nbits={self.nbits}) need at least as many vectors, but the corpus "
                    f"has {table.num_embeddings}")
        return None

    @classmethod
    def knob_bounds(cls, table: TableSpec, **fixed: Any) -> tuple[float, float]:
        return 1, table.embedding_dim

    def tensor_specs(self, table: TableSpec) -> list[TensorSpec]:
        n, d = table.num_embeddings, table.embedding_dim
        return [spec("codes", (n, packed_row_bytes(self.num_subvectors, self.nbits)), "uint8"),
                spec("codebook", (2**self.nbits, d), self.codebook_dtype)]

    def _fit(self, corpus: np.ndarray, table: TableSpec) -> CompressedIndex:
        k = 2**self.nbits
        dt = np_dtype(self.codebook_dtype)
        spans = split_dims(table.embedding_dim, self.num_subvectors)
        parts = [corpus[:, a:b] for a, b in spans]
        cents = subspace_kmeans(parts, k, iters=self.train_iters, seed=self.seed)
        codebook = np.concatenate(cents, axis=1).astype(dt)
        # codes against the stored (rounded) centroids
        codes = subspace_nearest(parts, [codebook[:, a:b].astype(np.float32) for a, b in spans])
        return PQIndex(self, table.num_embeddings, table.embedding_dim,
                       {"codes": pack_bits(codes, self.nbits), "codebook": codebook})
