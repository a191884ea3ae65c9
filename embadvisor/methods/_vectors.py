"""The frozen-vector compressors' contract: config, compressed index, exact bytes, brute-force search.

A retrieval-augmented model keeps a large corpus of already-trained vectors (documents, items);
nothing is trained any more, the vectors are compressed after training and must still retrieve
the right documents. The ``vec_*`` methods do this. They live in the same registry as the
table methods, marked ``tags.input == "vectors"``, and share the config half of the contract
(frozen fields with constraints, search space as data, analytic memory, ``from_budget``). The
table facts are a :class:`TableSpec` of the corpus: ``num_embeddings`` = n vectors,
``embedding_dim`` = d.

Instead of ``build(table)`` a vector config has ``fit(corpus) -> CompressedIndex``:

* :meth:`VectorConfig.tensor_specs` lists every array the index stores (name, shape, dtype).
  ``memory(table).serve_bytes`` is their sum, and the contract suite checks that the fitted
  index holds exactly these arrays, so the byte figure cannot drift from the code. Codes are
  stored at their real width (int4 = two per byte; b-bit PQ codes packed into
  ``ceil(M·b / 8)`` bytes per row); nothing derived at search time is stored or counted.
* :class:`CompressedIndex` is the serving form: ``reconstruct()`` decodes vectors,
  ``search(queries, k)`` is brute force over the compressed codes. Each index scores a block of
  rows straight from its codes (asymmetric distance: the query stays in float32; PQ and dedup
  use per-query lookup tables, scalar quantization folds the scales into the query, low-rank
  projects the query), so a search never decodes the whole corpus. Scores are inner products;
  cosine similarity is inner product on L2-normalised vectors (the caller normalises).

faiss (``faiss-cpu``) is used where it is the better implementation: k-means and nearest-block
assignment over wide blocks (dedup). PQ's many narrow sub-spaces are trained by one batched
Lloyd's k-means in torch (:func:`subspace_kmeans`), which is faster there than faiss's one call
per sub-space (384 sub-spaces x 256 centroids on 11,429 vectors: 16 s against faiss
``IndexPQ``'s 57-66 s on one thread); ``benchmarks/vectors.py`` compares the results with faiss.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from embadvisor.errors import DataError, InvalidConfigError
from embadvisor.methods._base import MethodConfig, TensorSpec
from embadvisor.profiles.schema import TableSpec

__all__ = [
    "CompressedIndex",
    "GroupedIndex",
    "VectorConfig",
    "affine_quantize",
    "corpus_table",
    "faiss_module",
    "subspace_kmeans",
    "subspace_nearest",
    "group_rows",
    "index_dtype",
    "kmeans",
    "nearest",
    "norm_groups",
    "pack_bits",
    "packed_row_bytes",
    "unpack_bits",
]

#: Rows scored per block in :meth:`CompressedIndex.search` (bounds the temporaries).
BLOCK_ROWS = 16384
_NP_DTYPES: dict[str, Any] = {
    "fp32": np.float32, "fp16": np.float16, "uint8": np.uint8, "uint16": np.uint16,
    "int32": np.int32, "int64": np.int64,
}
_DTYPE_NAMES = {np.dtype(v): k for k, v in _NP_DTYPES.items()}


def corpus_table(corpus: np.ndarray | tuple[int, int], name: str = "corpus") -> TableSpec:
    """The :class:`TableSpec` of an ``[n, d]`` corpus (or of its shape)."""
    n, d = corpus.shape if isinstance(corpus, np.ndarray) else corpus
    return TableSpec(name, int(n), int(d))


def np_dtype(name: str) -> Any:
    return _NP_DTYPES[name]


def index_dtype(max_value: int) -> str:
    """The narrowest unsigned/signed integer dtype name that holds ``0 .. max_value``."""
    if max_value < 2**8:
        return "uint8"
    if max_value < 2**16:
        return "uint16"
    return "int32" if max_value < 2**31 else "int64"


def faiss_module() -> Any:
    """``import faiss`` with an install hint; faiss uses as many threads as torch."""
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - faiss-cpu is a dependency
        raise InvalidConfigError("this compressor needs faiss: pip install faiss-cpu") from e
    faiss.omp_set_num_threads(max(1, torch.get_num_threads()))
    return faiss


# --------------------------------------------------------------------------- bit packing
def packed_row_bytes(count: int, bits: int) -> int:
    """Bytes per row of ``count`` codes of ``bits`` bits each: ``ceil(count·bits / 8)``."""
    return -(-count * bits // 8)


def pack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """``[R, m]`` codes (< 2**bits) -> ``[R, ceil(m·bits/8)]`` uint8, one little-endian bit string per row.

    Code ``j`` of a row occupies the row's bits ``[j·bits, (j+1)·bits)``, least significant
    bit first (bit ``t`` is bit ``t mod 8`` of byte ``t // 8``), as faiss's PQ encoder does.
    """
    codes = np.asarray(codes)
    rows, m = codes.shape
    if bits == 8:
        return codes.astype(np.uint8)
    shifts = np.arange(bits, dtype=np.uint32)
    bitmat = ((codes.astype(np.uint32)[:, :, None] >> shifts) & 1).astype(np.uint8).reshape(rows, m * bits)
    return np.packbits(bitmat, axis=1, bitorder="little")


def unpack_bits(packed: np.ndarray, count: int, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``[R, bytes]`` uint8 -> ``[R, count]`` int64 codes."""
    if bits == 8:
        return packed[:, :count].astype(np.int64)
    rows = packed.shape[0]
    bitmat = np.unpackbits(packed, axis=1, count=count * bits, bitorder="little").reshape(rows, count, bits)
    weights = (1 << np.arange(bits, dtype=np.int64))
    return bitmat.astype(np.int64) @ weights


# --------------------------------------------------------------------------- scalar quantization
#: Clipping candidates of :func:`affine_quantize`: the range of a column (row) is its
#: ``[p, 1 − p]`` quantiles for the ``p`` with the least squared error (``p = 0``: min/max).
#: Wide codes keep nearly the full range; 1-2 bit codes clip hard (a Gaussian's optimal 1-bit
#: levels sit at about its 5.5 % / 94.5 % quantiles).
CLIP_QUANTILES = (0.0, 1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.06, 0.1)


def _mid_rise(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, levels: int, shape: tuple[int, int]
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    step = np.maximum((hi - lo) / levels, 1e-12).astype(np.float32)
    lo32 = lo.astype(np.float32)
    codes = np.clip(np.floor((x - lo32.reshape(shape)) / step.reshape(shape)), 0, levels - 1)
    return codes, (lo32 + 0.5 * step).astype(np.float32), step


def affine_quantize(x: np.ndarray, bits: int, axis: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Uniform mid-rise quantization with one range per column (``axis=0``) or per row (``axis=1``).

    Each column's (row's) range is chosen among its :data:`CLIP_QUANTILES` ranges by least
    squared reconstruction error (MSE-optimal clipping, as post-training quantizers do).

    Returns ``(codes uint8 in [0, 2**bits), offset, step)`` with the reconstruction
    ``offset + codes·step`` (``offset`` is the centre of the lowest level), in float32.
    """
    x = np.asarray(x, dtype=np.float32)
    levels = 2**bits
    shape = (1, -1) if axis == 0 else (-1, 1)
    qs = np.quantile(x, [p for p in CLIP_QUANTILES] + [1 - p for p in CLIP_QUANTILES], axis=axis)
    k = len(CLIP_QUANTILES)
    best_err = best = None
    for i in range(k):
        codes, offset, step = _mid_rise(x, qs[i], qs[k + i], levels, shape)
        err = ((offset.reshape(shape) + codes * step.reshape(shape) - x) ** 2).sum(axis=axis)
        if best_err is None:
            best_err, best = err, (codes, offset, step)
        else:
            better = err < best_err
            best_err = np.where(better, err, best_err)
            bc = np.where(better.reshape(shape), codes, best[0])  # type: ignore[index]
            best = (bc, np.where(better, offset, best[1]), np.where(better, step, best[2]))  # type: ignore[index]
    codes, offset, step = best  # type: ignore[misc]
    return codes.astype(np.uint8), offset.astype(np.float32), step.astype(np.float32)


# --------------------------------------------------------------------------- clustering
def kmeans(x: np.ndarray, k: int, *, iters: int, seed: int) -> np.ndarray:
    """faiss k-means: ``k`` float32 centroids of the rows of ``x`` (``k <= len(x)``)."""
    faiss = faiss_module()
    x = np.ascontiguousarray(x, dtype=np.float32)
    if k >= len(x):
        return x[:k].copy()
    km = faiss.Kmeans(x.shape[1], k, niter=iters, seed=seed, verbose=False, max_points_per_centroid=256,
                        min_points_per_centroid=1)
    km.train(x)
    return np.asarray(km.centroids, dtype=np.float32).reshape(k, x.shape[1])


#: Score elements (parts x rows x centroids) per step of :func:`subspace_kmeans`.
_KMEANS_CHUNK = 1 << 24


def _assign(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Nearest centroid per row for a batch of sub-spaces: ``x [P, n, w]``, ``c [P, K, w]`` -> ``[P, n]``.

    One-dimensional sub-spaces use a binary search over the sorted centroids' midpoints
    (``O(n log K)``); wider ones a batched ``‖c‖² − 2·x·c`` product and an argmin.
    """
    if x.shape[2] == 1:
        cs, order = c[:, :, 0].sort(dim=1)
        mids = ((cs[:, 1:] + cs[:, :-1]) / 2).contiguous()
        return order.gather(1, torch.searchsorted(mids, x[:, :, 0].contiguous()))
    out = torch.empty(x.shape[:2], dtype=torch.int64)
    step = max(1, _KMEANS_CHUNK // max(1, x.shape[0] * c.shape[1]))
    cn = (c * c).sum(-1)  # [P, K]
    for s in range(0, x.shape[1], step):
        d = torch.baddbmm(cn[:, None, :], x[:, s : s + step], c.transpose(1, 2), alpha=-2.0)
        out[:, s : s + step] = d.argmin(-1)
    return out


def subspace_kmeans(parts: list[np.ndarray], k: int, *, iters: int, seed: int) -> list[np.ndarray]:
    """Lloyd's k-means in every sub-space (PQ codebooks), batched over sub-spaces of equal width.

    Initial centroids are ``k`` distinct random rows per part (seeded per width group); an empty
    cluster is re-seeded with a random row. faiss trains one sub-space per call, which for PQ's
    narrow sub-spaces is slower than this batched form.

    Returns:
        ``[k, width_m]`` float32 centroids per part.
    """
    out: list[np.ndarray] = [np.empty(0)] * len(parts)
    for width in sorted({p.shape[1] for p in parts}):
        idx = [i for i, p in enumerate(parts) if p.shape[1] == width]
        for i, c in zip(idx, _kmeans_same_width([parts[i] for i in idx], k, iters, seed + width), strict=True):
            out[i] = c
    return out


def _kmeans_same_width(parts: list[np.ndarray], k: int, iters: int, seed: int) -> list[np.ndarray]:
    n = parts[0].shape[0]
    width = max(p.shape[1] for p in parts)
    x = torch.zeros((len(parts), n, width), dtype=torch.float32)
    for i, p in enumerate(parts):
        x[i, :, : p.shape[1]] = torch.from_numpy(np.ascontiguousarray(p, dtype=np.float32))
    gen = torch.Generator().manual_seed(seed)
    init = torch.stack([torch.randperm(n, generator=gen)[:k] for _ in parts])  # [P, k]
    c = torch.gather(x, 1, init[:, :, None].expand(-1, -1, width)).clone()
    group = max(1, _KMEANS_CHUNK // max(1, n * k))
    for _ in range(iters):
        for s in range(0, len(parts), group):
            xs = x[s : s + group]
            codes = _assign(xs, c[s : s + group])
            sums = torch.zeros_like(c[s : s + group]).scatter_add_(1, codes[:, :, None].expand(-1, -1, width), xs)
            counts = torch.zeros(codes.shape[0], k).scatter_add_(1, codes, torch.ones_like(codes, dtype=torch.float32))
            new = sums / counts.clamp(min=1)[:, :, None]
            empty = counts == 0
            if empty.any():
                fill = torch.randint(0, n, (int(empty.sum()),), generator=gen)
                part_idx = empty.nonzero()[:, 0]
                new[empty] = xs[part_idx, fill]
            c[s : s + group] = new
    return [c[i].numpy().copy() for i in range(len(parts))]


def subspace_nearest(parts: list[np.ndarray], centroids: list[np.ndarray]) -> np.ndarray:
    """Codes ``[n, len(parts)]``: the nearest centroid of every row in every sub-space (batched)."""
    n = parts[0].shape[0]
    k = centroids[0].shape[0]
    out = np.empty((n, len(parts)), dtype=np.int64)
    group = max(1, _KMEANS_CHUNK // max(1, n * k))
    for width in sorted({p.shape[1] for p in parts}):
        idx = [i for i, p in enumerate(parts) if p.shape[1] == width]
        for s in range(0, len(idx), group):
            sel = idx[s : s + group]
            x = torch.from_numpy(np.stack([np.asarray(parts[i], dtype=np.float32) for i in sel]))
            c = torch.from_numpy(np.stack([np.asarray(centroids[i], dtype=np.float32) for i in sel]))
            out[:, sel] = _assign(x, c).T.numpy()
    return out


def nearest(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid (squared L2) of every row of ``x`` (faiss flat search)."""
    faiss = faiss_module()
    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    _, ids = index.search(np.ascontiguousarray(x, dtype=np.float32), 1)
    return ids[:, 0].astype(np.int64)


def norm_groups(corpus: np.ndarray, high_rows: int) -> np.ndarray:
    """Boolean mask of the ``high_rows`` rows with the largest L2 norm (ties by lower row id)."""
    norms = np.linalg.norm(np.asarray(corpus, dtype=np.float32), axis=1)
    order = np.lexsort((np.arange(len(norms)), -norms))
    mask = np.zeros(len(norms), dtype=bool)
    mask[order[:high_rows]] = True
    return mask


# --------------------------------------------------------------------------- the index
class CompressedIndex:
    """The serving form of a compressed corpus: stored arrays, decoding and brute-force search.

    Subclasses implement :meth:`decode` (rows ``[start, stop)`` as float32) and usually
    :meth:`prepare` + :meth:`score_block` (scores straight from the codes). Only the arrays in
    :attr:`arrays` are stored; :attr:`nbytes` is their exact size.

    Args:
        config: the config that produced the index.
        num_vectors: n, the rows of the corpus.
        dim: d, the width of the vectors.
        arrays: the stored arrays by name (the names of ``config.tensor_specs``).
    """

    def __init__(self, config: VectorConfig, num_vectors: int, dim: int, arrays: dict[str, np.ndarray]) -> None:
        self.config = config
        self.num_vectors = int(num_vectors)
        self.dim = int(dim)
        self.arrays = arrays

    @property
    def nbytes(self) -> int:
        """Bytes of every stored array (what the budget covers)."""
        return int(sum(a.nbytes for a in self.arrays.values()))

    def specs(self) -> list[TensorSpec]:
        """The stored arrays in the form of :meth:`VectorConfig.tensor_specs`."""
        return [TensorSpec(k, tuple(int(s) for s in a.shape), _DTYPE_NAMES[a.dtype], trainable=False)
                for k, a in self.arrays.items()]

    # -- decoding --------------------------------------------------------------------------
    def decode(self, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` reconstructed as float32 ``[stop - start, d]``."""
        raise NotImplementedError

    def reconstruct(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """The reconstructed corpus (or rows ``[start, stop)``), float32."""
        stop = self.num_vectors if stop is None else stop
        if not 0 <= start <= stop <= self.num_vectors:
            raise InvalidConfigError(f"rows must satisfy 0 <= start <= stop <= {self.num_vectors}, but got "
                                     f"start={start}, stop={stop}.")
        return self.decode(start, stop)

    # -- scoring ---------------------------------------------------------------------------
    def prepare(self, queries: np.ndarray) -> Any:
        """Per-batch query preprocessing (lookup tables, projections); default: the queries."""
        return queries

    def score_block(self, prepared: Any, start: int, stop: int) -> np.ndarray:
        """Inner products ``[q, stop - start]`` of the prepared queries with rows ``[start, stop)``.

        Default: the decoded path (decode the block, one matrix product).
        """
        return prepared @ self.decode(start, stop).T

    def blocks(self, prepared: Any, block_rows: int) -> Iterator[tuple[np.ndarray | int, np.ndarray]]:
        """Yield ``(first row id or row ids, scores [q, rows])`` covering every row once."""
        for start in range(0, self.num_vectors, block_rows):
            stop = min(start + block_rows, self.num_vectors)
            yield start, self.score_block(prepared, start, stop)

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        exclude: np.ndarray | None = None,
        block_rows: int = BLOCK_ROWS,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Brute-force top-``k`` rows per query by inner product over the compressed codes.

        Args:
            queries: ``[q, d]`` float.
            k: results per query (at most n, or n − 1 with ``exclude``).
            exclude: ``[q]`` row id to leave out per query (a corpus row used as its own query),
                or -1 for none.
            block_rows: rows scored per block.

        Returns:
            ``(scores [q, k] float32, ids [q, k] int64)``, best first.
        """
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise DataError(f"queries must have shape [q, {self.dim}], but got shape {tuple(q.shape)}.")
        k = min(int(k), self.num_vectors - (1 if exclude is not None else 0))
        prepared = self.prepare(q)
        best_v = torch.full((len(q), 0), -math.inf)
        best_i = torch.zeros((len(q), 0), dtype=torch.int64)
        ex = torch.from_numpy(np.asarray(exclude, dtype=np.int64)) if exclude is not None else None
        for where, scores in self.blocks(prepared, block_rows):
            s = torch.from_numpy(np.ascontiguousarray(scores, dtype=np.float32))
            if isinstance(where, int):
                ids = torch.arange(where, where + s.shape[1], dtype=torch.int64)
            else:
                ids = torch.from_numpy(np.asarray(where, dtype=np.int64))
            if ex is not None:
                s = s.masked_fill(ids[None, :] == ex[:, None], -math.inf)
            kk = min(k, s.shape[1])
            v, j = torch.topk(s, kk, dim=1)
            best_v = torch.cat([best_v, v], dim=1)
            best_i = torch.cat([best_i, ids[j]], dim=1)
            if best_v.shape[1] > k:
                v, j = torch.topk(best_v, k, dim=1)
                best_v, best_i = v, torch.gather(best_i, 1, j)
        order = torch.argsort(best_v, dim=1, descending=True, stable=True)
        return (torch.gather(best_v, 1, order).numpy(), torch.gather(best_i, 1, order).numpy())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.num_vectors}x{self.dim}, {self.nbytes:,} bytes, {self.config!r})"


GROUPS = ("hi", "lo")


class GroupedIndex(CompressedIndex):
    """Rows split into a large-norm group ``hi`` and the rest ``lo``, each stored in its own arrays.

    The stored ``group`` array is a bitmap of ``ceil(n / 8)`` bytes (bit ``i`` set: row ``i`` is in
    ``hi``); within a group rows keep their corpus order. Subclasses implement the per-group
    :meth:`group_decode`, :meth:`group_prepare` and :meth:`group_scores`.
    """

    def mask(self) -> np.ndarray:
        return np.unpackbits(self.arrays["group"], count=self.num_vectors, bitorder="little").astype(bool)

    def group_decode(self, group: str, rows: np.ndarray | slice) -> np.ndarray:
        raise NotImplementedError

    def group_prepare(self, group: str, queries: np.ndarray) -> Any:
        raise NotImplementedError

    def group_scores(self, group: str, prepared: Any, rows: slice) -> np.ndarray:
        raise NotImplementedError

    def decode(self, start: int, stop: int) -> np.ndarray:
        mask = self.mask()
        out = np.empty((stop - start, self.dim), dtype=np.float32)
        sel = mask[start:stop]
        for group, rows_in in (("hi", sel), ("lo", ~sel)):
            if rows_in.any():
                member = mask if group == "hi" else ~mask
                pos = (np.cumsum(member) - 1)[start:stop][rows_in]
                out[rows_in] = self.group_decode(group, pos)
        return out

    def prepare(self, queries: np.ndarray) -> Any:
        return {g: self.group_prepare(g, queries) for g in GROUPS}

    def blocks(self, prepared: Any, block_rows: int) -> Iterator[tuple[np.ndarray | int, np.ndarray]]:
        mask = self.mask()
        for group, ids in (("hi", np.flatnonzero(mask)), ("lo", np.flatnonzero(~mask))):
            for start in range(0, len(ids), block_rows):
                stop = min(start + block_rows, len(ids))
                yield ids[start:stop], self.group_scores(group, prepared[group], slice(start, stop))


def group_rows(num_vectors: int, high_share: float) -> tuple[int, int]:
    """Rows of the ``hi`` and ``lo`` groups: ``floor(high_share·n)`` and the rest."""
    high = min(num_vectors, max(0, math.floor(high_share * num_vectors)))
    return high, num_vectors - high


@dataclass(frozen=True, kw_only=True)
class VectorConfig(MethodConfig):
    """Base of the frozen-vector compressors (``tags.input == "vectors"``).

    Subclasses set ``index_class`` and implement :meth:`tensor_specs` (the stored arrays, fixed
    dtypes, ``trainable=False``) and :meth:`_fit`. ``memory(table).serve_bytes`` is then the
    exact size of the fitted index; ``from_budget`` bisects ``size_knob`` as for table methods.
    """

    index_class: ClassVar[type[CompressedIndex]]

    def build(self, table: TableSpec, *, device: Any = None, dtype: Any = None) -> Any:
        raise InvalidConfigError(f"{self.name} compresses a frozen vector corpus: call fit(corpus) instead of "
                                 "build(table).")

    def fit(self, corpus: np.ndarray) -> CompressedIndex:
        """Compress ``corpus`` (``[n, d]`` float) into the index this config describes."""
        x = np.asarray(corpus)
        if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
            raise DataError(f"the corpus must be a non-empty [n, d] matrix, but got shape {tuple(x.shape)}.")
        x = np.ascontiguousarray(x, dtype=np.float32)
        table = corpus_table(x)
        reason = self.check_feasible(table)
        if reason is not None:
            raise InvalidConfigError(f"{self.name} cannot compress a {x.shape[0]}x{x.shape[1]} corpus: {reason}")
        index = self._fit(x, table)
        return index

    def _fit(self, corpus: np.ndarray, table: TableSpec) -> CompressedIndex:
        raise NotImplementedError


def spec(name: str, shape: tuple[int, ...], dtype: str) -> TensorSpec:
    """A stored array of a vector index (a buffer, fixed dtype)."""
    return TensorSpec(name, tuple(int(s) for s in shape), dtype, trainable=False)
