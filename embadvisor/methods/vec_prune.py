"""Magnitude pruning of a frozen corpus (``vec_prune``) into a sparse format.

The entries of largest absolute value are kept, the rest set to zero:

* ``layout="csr"``: the ``nnz = max(1, floor(density·n·d))`` largest entries of the whole
  corpus (rows keep different counts), stored as CSR: values, column indices at their real
  width (``uint8`` for d <= 256, ``uint16`` for d <= 65536, else ``int32``) and ``n + 1`` row
  pointers (the narrowest unsigned/signed type that holds ``nnz``);
* ``layout="per_row"``: the ``k = max(1, floor(density·d))`` largest entries of every row, stored
  as ``[n, k]`` values and column indices, with no row pointers.

Search is a sparse-dense product per block (SciPy CSR), no decoding.

The budget solver picks the largest ``density`` that fits (``size_knob``).

Memory:
    csr: ``nnz·(v + c) + (n + 1)·p`` bytes; per_row: ``n·k·(v + c)`` bytes (v value bytes, c
    column-index bytes, p pointer bytes).

References:
    Han, Pool, Tran, Dally, "Learning both Weights and Connections for Efficient Neural Networks",
    NeurIPS 2015, arXiv:1506.02626; the ``Pruner`` compressor (magnitude pruning into CSR/COO) of
    Zhang et al., "Experimental Analysis of Large-scale Learnable Vector Storage Compression",
    VLDB 2024, arXiv:2311.15578.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution

from embadvisor._constraints import Interval, Options
from embadvisor.methods._base import MethodTags, TensorSpec
from embadvisor.methods._registry import register_method
from embadvisor.methods._vectors import CompressedIndex, VectorConfig, index_dtype, np_dtype, spec
from embadvisor.profiles.schema import TableSpec

__all__ = ["SparseIndex", "VecPruneConfig"]

LAYOUTS = ("csr", "per_row")
DTYPES = ("fp16", "fp32")


class SparseIndex(CompressedIndex):
    """CSR (or fixed-count-per-row) values and column indices."""

    config: VecPruneConfig

    def _block(self, start: int, stop: int) -> Any:
        from scipy.sparse import csr_matrix

        a = self.arrays
        if self.config.layout == "csr":
            ptr = a["indptr"][start : stop + 1].astype(np.int64)
            lo, hi = int(ptr[0]), int(ptr[-1])
            vals, cols, ptr = a["values"][lo:hi], a["indices"][lo:hi], ptr - lo
        else:
            k = a["values"].shape[1]
            vals, cols = a["values"][start:stop].ravel(), a["indices"][start:stop].ravel()
            ptr = np.arange(stop - start + 1, dtype=np.int64) * k
        return csr_matrix((vals.astype(np.float32), cols.astype(np.int64), ptr), shape=(stop - start, self.dim))

    def decode(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self._block(start, stop).toarray(), dtype=np.float32)

    def score_block(self, prepared: Any, start: int, stop: int) -> np.ndarray:
        return np.asarray((self._block(start, stop) @ prepared.T).T, dtype=np.float32)


@register_method
@dataclass(frozen=True, kw_only=True)
class VecPruneConfig(VectorConfig):
    """Keep the largest-magnitude entries (a ``density`` share) in a sparse format.

    Args:
        density: share of the ``n·d`` entries kept, in (0, 1] (the size knob).
        layout: ``"csr"`` (global threshold, row pointers) or ``"per_row"`` (same count per row).
        value_dtype: ``"fp16"`` or ``"fp32"`` storage of the kept values.

    Example:
        >>> VecPruneConfig(density=0.25, layout="per_row").memory(TableSpec("c", 1000, 64)).serve_bytes
        48000
    """

    name: ClassVar[str] = "vec_prune"
    index_class: ClassVar[type[CompressedIndex]] = SparseIndex
    tags: ClassVar[MethodTags] = MethodTags(
        category="pruning", compresses_training=False, reference="Han et al., NeurIPS 2015, arXiv:1506.02626",
        layout="global", post_training_only=True, input="vectors",
    )
    size_knob: ClassVar[str | None] = "density"
    density: float = field(default=0.25, metadata={"constraint": Interval(float, 0.0, 1.0, closed="right")})
    layout: str = field(default="csr", metadata={"constraint": Options(set(LAYOUTS))})
    value_dtype: str = field(default="fp16", metadata={"constraint": Options(set(DTYPES))})

    @classmethod
    def search_space(cls, table: TableSpec) -> dict[str, BaseDistribution]:
        return {"density": FloatDistribution(0.01, 1.0, log=True), "layout": CategoricalDistribution(LAYOUTS),
                "value_dtype": CategoricalDistribution(DTYPES)}

    @classmethod
    def example_configs(cls, table: TableSpec) -> list[VecPruneConfig]:
        return [cls(), cls(density=0.1, layout="per_row", value_dtype="fp32"), cls(density=1.0)]

    @classmethod
    def knob_bounds(cls, table: TableSpec, **fixed: Any) -> tuple[float, float]:
        return 1.0 / (table.num_embeddings * table.embedding_dim), 1.0

    def kept(self, table: TableSpec) -> int:
        """Kept entries: ``nnz`` (csr) or ``k`` per row (per_row)."""
        n, d = table.num_embeddings, table.embedding_dim
        if self.layout == "csr":
            return min(n * d, max(1, math.floor(self.density * n * d)))
        return min(d, max(1, math.floor(self.density * d)))

    def tensor_specs(self, table: TableSpec) -> list[TensorSpec]:
        n, d = table.num_embeddings, table.embedding_dim
        col = index_dtype(d - 1)
        kept = self.kept(table)
        if self.layout == "csr":
            return [spec("values", (kept,), self.value_dtype), spec("indices", (kept,), col),
                    spec("indptr", (n + 1,), index_dtype(kept))]
        return [spec("values", (n, kept), self.value_dtype), spec("indices", (n, kept), col)]

    def _fit(self, corpus: np.ndarray, table: TableSpec) -> CompressedIndex:
        n, d = corpus.shape
        kept = self.kept(table)
        col = np_dtype(index_dtype(d - 1))
        vdt = np_dtype(self.value_dtype)
        mag = np.abs(corpus)
        if self.layout == "csr":
            flat = mag.ravel()
            keep = np.arange(flat.size) if kept >= flat.size else np.argpartition(-flat, kept - 1)[:kept]
            keep = np.sort(keep)
            rows, cols = np.divmod(keep, d)
            indptr = np.zeros(n + 1, dtype=np.int64)
            np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
            arrays = {"values": corpus.ravel()[keep].astype(vdt), "indices": cols.astype(col),
                      "indptr": indptr.astype(np_dtype(index_dtype(kept)))}
        else:
            cols = np.argsort(-mag, axis=1, kind="stable")[:, :kept]
            cols.sort(axis=1)
            arrays = {"values": np.take_along_axis(corpus, cols, axis=1).astype(vdt), "indices": cols.astype(col)}
        return SparseIndex(self, n, d, arrays)
