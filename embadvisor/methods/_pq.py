"""Shared product-quantisation machinery of ``dpq`` and ``mgqe``.

* Per-part codebooks ``[D, K, d/D]`` and the nearest-centroid assignment (squared L2), computed
  in cache-sized chunks of rows (no Python loop over rows): one batched product
  ``[x, 1] @ [−2c; ‖c‖² + C]`` per chunk, then one integer ``amin`` whose low bits carry the
  centroid index (``K <= 256``); one-dimensional parts (``d/D = 1``) use a vectorised binary
  search over the sorted centroids' midpoints instead (``log2 K`` steps).
  The assignment is *batch-independent*: a BLAS product may round a row's scores differently
  depending on how many rows share the call, so (row, part) pairs whose two best scores lie
  within a rounding bound of each other are re-decided exactly in float64 with element-wise
  operations. A row therefore gets the same code in a training batch, in eval mode and in
  :meth:`PQEmbedding.export`, which makes the exported module bit-identical to the trained one.
* Straight-through output: the forward value is exactly the chosen centroid; the gradient flows
  to the query (straight-through) *and* to the centroid.
* The DPQ regulariser ``mean‖c − sg(q)‖² + β·mean‖q − sg(c)‖²`` (centroids follow their queries,
  the commitment term β keeps queries near their centroids), weighted per lookup.
* Code packing into one contiguous little-endian bit stream of ``ceil(count·bits / 8)`` bytes
  (``bits = ceil(log2 K)``; not padded per row): code ``i`` occupies stream bits
  ``[i·bits, (i+1)·bits)``, least significant bit first, stream bit ``t`` being bit ``t mod 8``
  of byte ``t // 8``. Serving reads a row's codes with one row gather when a row takes whole
  bytes (``D·bits`` a multiple of 8), else code by code (at most three bytes per code).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn

from embadvisor.methods._base import CompressedEmbedding, MethodConfig
from embadvisor.methods.full import init_bound
from embadvisor.profiles.schema import TableSpec

__all__ = [
    "CODEBOOK_SIZES",
    "MAX_CODE_BITS",
    "SOLVER_MAX_BITS",
    "PQEmbedding",
    "PackedPQ",
    "cached_ranking",
    "code_bits",
    "divisors",
    "gather_centroids",
    "nearest_codes",
    "pack_codes",
    "packed_nbytes",
    "unpack_codes",
    "unpack_rows",
]

#: Largest code width supported (codebooks of up to 65536 centroids per part).
MAX_CODE_BITS = 16
#: Allowed codebook sizes: the powers of two 2 .. 2**16 (every bit of a code is used).
CODEBOOK_SIZES = tuple(2**b for b in range(1, MAX_CODE_BITS + 1))
#: The budget solvers consider codebooks of at most 2**8 = 256 centroids (as MGQE's hot
#: codebook); larger ones must be asked for explicitly (training cost grows with K).
SOLVER_MAX_BITS = 8
#: Codes packed per chunk (a multiple of 8, so every chunk starts on a byte boundary).
PACK_CHUNK = 1 << 18
#: Score elements (rows x parts x centroids) per chunk of the nearest-centroid search.
SCORE_CHUNK = 1 << 19
#: Elements per chunk of the scalar (one-dimensional parts) search.
SCALAR_CHUNK = 1 << 15
#: Rows whose codes are computed per chunk in ``export()``.
EXPORT_CHUNK = 1 << 16
_EPS32 = float(torch.finfo(torch.float32).eps)
_RANKINGS: dict[tuple[Any, ...], list[Any]] = {}
T = TypeVar("T")


def cached_ranking(key: tuple[Any, ...], build: Callable[[], list[T]]) -> list[T]:
    """``build()`` memoised under ``key`` (the budget solvers ask for the same candidate list often)."""
    hit = _RANKINGS.get(key)
    if hit is None:
        if len(_RANKINGS) >= 4096:
            _RANKINGS.clear()
        hit = _RANKINGS[key] = build()
    return hit


def code_bits(codebook_size: int) -> int:
    """Bits per code: ``ceil(log2 K)`` (1 for K = 2)."""
    return max(1, math.ceil(math.log2(codebook_size)))


def packed_nbytes(count: int, bits: int) -> int:
    """Bytes of ``count`` codes of ``bits`` bits in one bit stream: ``ceil(count·bits / 8)``."""
    return (count * bits + 7) // 8


def divisors(d: int) -> list[int]:
    """The divisors of ``d`` in increasing order (the possible numbers of parts); O(sqrt d) steps."""
    small = [p for p in range(1, math.isqrt(d) + 1) if d % p == 0]
    return small + [d // p for p in reversed(small) if p * p != d]


# --------------------------------------------------------------------------- packing
def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes in ``[0, 2**bits)`` (any shape, flattened row-major) -> ``uint8`` stream of ``packed_nbytes`` bytes."""
    if not 1 <= bits <= MAX_CODE_BITS:
        raise ValueError(f"`bits` must be in [1, {MAX_CODE_BITS}], but got bits={bits}.")
    flat = codes.reshape(-1)
    total = flat.numel()
    out = torch.empty(packed_nbytes(total, bits), dtype=torch.uint8, device=flat.device)
    if bits == 8:
        out.copy_(flat.to(torch.uint8))
        return out
    shifts = torch.arange(bits, device=flat.device)
    weights = (1 << torch.arange(8, device=flat.device)).to(torch.int32)
    for start in range(0, total, PACK_CHUNK):
        chunk = flat[start : start + PACK_CHUNK].long()
        m = chunk.numel()
        pad = (-m) % 8
        if pad:
            chunk = torch.cat([chunk, chunk.new_zeros(pad)])
        bit_matrix = ((chunk.unsqueeze(1) >> shifts) & 1).to(torch.int32)  # [m', bits], LSB first
        stream = bit_matrix.reshape(-1, 8)  # 8 consecutive stream bits per byte
        chunk_bytes = (stream * weights).sum(1).to(torch.uint8)
        begin = start * bits // 8  # start is a multiple of 8: byte aligned
        end = begin + packed_nbytes(m, bits)
        out[begin:end] = chunk_bytes[: end - begin]
    return out


def unpack_codes(packed: torch.Tensor, positions: torch.Tensor, bits: int) -> torch.Tensor:
    """The codes at flat ``positions`` (int64, any shape) of a stream made by :func:`pack_codes` -> int64."""
    if bits == 8:
        return packed[positions].long()
    bitpos = positions * bits
    byte = bitpos >> 3
    if 8 % bits == 0:  # 1, 2 or 4 bits: a code never straddles a byte
        return (packed[byte].long() >> (bitpos & 7)) & ((1 << bits) - 1)
    last = max(0, packed.numel() - 1)
    word = packed[byte].int()
    # a code spans at most ceil((7 + bits) / 8) bytes; bytes past the end only feed masked-off bits
    for k in range(1, (7 + bits + 7) // 8):
        word |= packed[(byte + k).clamp_(max=last)].int() << (8 * k)
    return ((word >> (bitpos & 7).int()) & ((1 << bits) - 1)).long()


def unpack_rows(packed: torch.Tensor, rows: torch.Tensor, num_parts: int, bits: int) -> torch.Tensor:
    """Codes ``[N, D]`` (int64) of the rows ``rows [N]`` of a row-major ``[rows, D]`` code stream.

    When a row takes whole bytes (``D·bits`` a multiple of 8), the row's bytes are gathered at
    once (one gather, as a table lookup) and its codes cut out of 64-bit words; otherwise every
    code is read on its own (:func:`unpack_codes`).
    """
    row_bits = num_parts * bits
    if row_bits % 8 or sys.byteorder != "little":
        pos = rows.unsqueeze(1) * num_parts + torch.arange(num_parts, device=rows.device)
        return unpack_codes(packed, pos, bits)
    row_bytes = row_bits // 8
    if bits == 8:
        return packed.view(-1, row_bytes).index_select(0, rows).long()
    g = packed.view(-1, row_bytes).index_select(0, rows)  # [N, row_bytes]
    pad = (-row_bytes) % 8
    if pad:
        g = torch.cat([g, g.new_zeros(g.shape[0], pad)], dim=1)
    words = g.view(torch.int64)  # [N, W], little endian: stream bit t of a row = bit t % 64 of word t // 64
    start = torch.arange(num_parts, device=rows.device) * bits
    word, off = start // 64, start % 64
    mask = (1 << bits) - 1
    # arithmetic shifts sign-extend: keep only the 64 - off bits that came from this word
    keep = torch.where(off > 0, (1 << (64 - off).clamp(max=63)) - 1, torch.full_like(off, -1))
    codes = (words.index_select(1, word) >> off) & keep
    straddle = off + bits > 64
    if bool(straddle.any()):
        nxt = (word + 1).clamp(max=words.shape[1] - 1)
        codes |= (words.index_select(1, nxt) << (64 - off).clamp(max=63)) * straddle.long()
    return codes & mask


# --------------------------------------------------------------------------- assignment
def gather_centroids(codebooks: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """``codebooks [D, K, s]``, ``codes [N, D]`` -> the chosen centroids concatenated, ``[N, D·s]``."""
    num_parts, k, s = codebooks.shape
    offsets = torch.arange(num_parts, device=codes.device) * k
    flat = (codes + offsets).reshape(-1)
    return codebooks.reshape(num_parts * k, s).index_select(0, flat).reshape(codes.shape[0], num_parts * s)


@torch.no_grad()
def nearest_codes(x: torch.Tensor, codebooks: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid (squared L2) per part: ``x [N, D, s]``, ``codebooks [D, K, s]`` -> ``[N, D]`` int64.

    Computed in fp32 for any weight dtype. Batch-independent (see the module docstring): ties
    within the fp32 rounding bound of the batched product are decided in float64, element-wise;
    exact ties go to the lowest index.
    One-dimensional parts (``s = 1``) use a binary search between the sorted centroids'
    midpoints instead (``O(log K)`` per part, element-wise, so batch-independent as well).
    """
    n, num_parts, s = x.shape
    k = codebooks.shape[1]
    out = torch.empty(n, num_parts, dtype=torch.int64, device=x.device)
    if n == 0:
        return out
    if k == 1:
        return out.zero_()
    # scores in fp32 whatever the weight dtype (the index packing below relies on fp32 bit patterns)
    x = x.detach().float()
    cb = codebooks.detach().float()
    if s == 1:
        return _nearest_scalar(x[..., 0], cb[..., 0], out)
    csq = cb.pow(2).sum(-1)  # [D, K]
    cmax = csq.amax(-1, keepdim=True)  # [D, 1]
    cb_t = cb.transpose(1, 2).mul(-2.0).contiguous()  # [D, s, K]; scaling by -2 is exact
    bits = (k - 1).bit_length()
    packed = bits <= 8  # index packed into the low mantissa bits (see below)
    # bound on the fp32 rounding error of a score, times 4 (two scores, two computations)
    rel = 16.0 * (s + 5) * _EPS32
    rows = max(1, SCORE_CHUNK // (num_parts * k))
    for start in range(0, n, rows):
        xc = x[start : start + rows].transpose(0, 1).contiguous()  # [D, m, s]
        xsq = xc.pow(2).sum(-1)  # [D, m]
        # shift by C >= max ||x||^2 so that every score ||c||^2 - 2 x.c + C >= ||x - c||^2 >= 0
        shift = xsq.amax(-1, keepdim=True) * 1.001 + 1e-30  # [D, 1]
        # one product with the bias folded in: [x, 1] @ [-2c; ||c||^2 + C] (no separate bias pass)
        xa = torch.cat([xc, xc.new_ones(num_parts, xc.shape[1], 1)], dim=-1)  # [D, m, s+1]
        scores = torch.bmm(xa, torch.cat([cb_t, (csq + shift).unsqueeze(1)], dim=1))  # [D, m, K]
        tol = rel * (xsq + cmax + shift)
        if packed:
            # non-negative fp32 scores order like their int32 bit patterns: clear the low `bits`
            # mantissa bits, put the centroid index there, and one integer amin gives both the
            # (truncated) best score and its index; truncation is covered by the tie test below
            iv = scores.view(torch.int32)
            iv.bitwise_and_(~((1 << bits) - 1)).bitwise_or_(torch.arange(k, dtype=torch.int32, device=x.device))
            best_i = iv.amin(-1)
            codes = (best_i & ((1 << bits) - 1)).long()
            second_i = iv.scatter_(-1, codes.unsqueeze(-1), 2**31 - 1).amin(-1)
            best = (best_i & ~((1 << bits) - 1)).view(torch.float32)
            second = (second_i & ~((1 << bits) - 1)).view(torch.float32)
            tol = tol + second.abs() * 2.0 ** (bits - 22)
            near = (second - best).abs() <= tol
        else:
            best, codes = scores.min(-1)
            second = scores.scatter_(-1, codes.unsqueeze(-1), math.inf).amin(-1)
            near = second - best <= tol
        if bool(near.any()):
            part, row = near.nonzero(as_tuple=True)
            xv = xc[part, row].double()  # [t, s]
            cv = cb[part].double()  # [t, K, s]
            dist = torch.zeros(xv.shape[0], k, dtype=torch.float64, device=x.device)
            for j in range(s):  # element-wise: the same result whatever the batch
                dist += (xv[:, j : j + 1] - cv[:, :, j]).pow(2)
            codes[part, row] = dist.argmin(-1)
        out[start : start + rows] = codes.t()
    return out


def _nearest_scalar(x: torch.Tensor, centroids: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Nearest of ``K`` scalars per part: ``x [N, D]``, ``centroids [D, K]`` -> ``out [N, D]`` (ties: the lower value).

    A branch-free binary search over the sorted centroids' midpoints, vectorised over all
    elements (``log2 K`` gather-compare steps; ``K`` is a power of two), in cache-sized chunks.
    """
    num_parts, k = centroids.shape
    values, order = centroids.sort(dim=-1, stable=True)
    mids = ((values[:, 1:] + values[:, :-1]) * 0.5).reshape(-1)  # [D·(K-1)], non-decreasing per part
    order = order.reshape(-1)  # flat [D·K]: sorted rank -> centroid index, per part
    rows = max(1, SCALAR_CHUNK // num_parts)
    for start in range(0, x.shape[0], rows):
        xc = x[start : start + rows].reshape(-1)
        base = torch.arange(num_parts, device=x.device).repeat(xc.numel() // num_parts)
        pos = base * (k - 1)  # flat index of the first mid not yet known to be < x
        step = k // 2
        while step >= 1:
            probe = mids.index_select(0, pos + (step - 1) if step > 1 else pos)
            pos.add_((probe < xc).long(), alpha=step)  # x <= mid keeps the lower centroid
            step //= 2
        rank = pos - base * (k - 1)  # #mids < x: the rank of the nearest centroid among the sorted ones
        out[start : start + rows] = order.index_select(0, rank + base * k).view(-1, num_parts)
    return out


# --------------------------------------------------------------------------- training form
class _StraightThrough(torch.autograd.Function):
    """Forward: the centroids ``c``; backward: the output gradient to both ``c`` and the queries ``q``."""

    @staticmethod
    def forward(ctx: Any, c: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return c.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return grad, grad


class _Regulariser(torch.autograd.Function):
    """DPQ's ``Σ w·‖c − sg(q)‖² / denom + β·Σ w·‖q − sg(c)‖² / denom`` (``w``: lookups per row), fused."""

    @staticmethod
    def forward(ctx: Any, c: torch.Tensor, q: torch.Tensor, weights: torch.Tensor, beta: float,
                denom: float) -> torch.Tensor:
        diff = c.detach() - q.detach()
        wdiff = diff * (weights / denom).unsqueeze(1)
        ctx.save_for_backward(wdiff)
        ctx.beta = beta
        return (wdiff * diff).sum() * (1.0 + beta)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None, None, None]:
        (wdiff,) = ctx.saved_tensors
        g = wdiff * (2.0 * grad)
        return g, g * -ctx.beta, None, None, None


class PQEmbedding(CompressedEmbedding):
    """Training form shared by dpq and mgqe: a full query table (sparse grads) + per-part codebooks.

    ids ``[*S]`` -> ``[*S, d]``. Each looked-up query row is split into ``D`` parts of ``d/D``;
    each part is replaced by its nearest centroid (:meth:`assign`, computed on the fly, once per
    distinct id of the batch). Subclasses restrict the usable centroids per id (MGQE).
    """

    def __init__(self, config: MethodConfig, table: TableSpec, *, num_parts: int, codebook_size: int,
                 commitment: float, device: Any = None, dtype: Any = None) -> None:
        super().__init__(config, table, device=device, dtype=dtype)
        n, d = table.num_embeddings, table.embedding_dim
        self.num_parts = num_parts
        self.sub_dim = d // num_parts
        self.codebook_size = codebook_size
        self.commitment = float(commitment)
        self.query = nn.Embedding(n, d, sparse=True, **self._factory)
        self.codebooks = nn.Parameter(torch.empty(num_parts, codebook_size, self.sub_dim, **self._factory))
        self._pending: torch.Tensor | None = None
        if self.codebooks.device.type != "meta":
            b = init_bound(table)
            nn.init.uniform_(self.query.weight, -b, b)
            nn.init.uniform_(self.codebooks, -b, b)

    # -- assignment ------------------------------------------------------------------------------
    def assign(self, ids: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """Codes ``[N, D]`` of the distinct ``ids [N]`` with query parts ``queries [N, D, s]``."""
        return nearest_codes(queries, self.codebooks)

    def codes_for(self, ids: torch.Tensor) -> torch.Tensor:
        """Codes of the given ids (int64 ``[N]``) from the current query table and codebooks."""
        with torch.no_grad():
            q = self.query.weight.index_select(0, ids).view(-1, self.num_parts, self.sub_dim)
            return self.assign(ids, q)

    def all_codes(self) -> torch.Tensor:
        """Codes of every id, ``[n, D]`` (int16, or int32 above 15 bits), computed in chunks."""
        n = self.num_embeddings
        dt = torch.int16 if code_bits(self.codebook_size) <= 15 else torch.int32
        out = torch.empty(n, self.num_parts, dtype=dt, device=self.query.weight.device)
        for start in range(0, n, EXPORT_CHUNK):
            ids = torch.arange(start, min(n, start + EXPORT_CHUNK), device=out.device)
            out[start : start + ids.numel()] = self.codes_for(ids).to(dt)
        return out

    # -- forward ---------------------------------------------------------------------------------
    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        uniq, inv = torch.unique(flat, return_inverse=True)
        q = self.query(uniq)  # [U, d]
        codes = self.assign(uniq, q.detach().view(-1, self.num_parts, self.sub_dim))
        c = gather_centroids(self.codebooks, codes)  # [U, d]
        # value = c exactly; gradient to the centroid and, straight through, to the query
        out = _StraightThrough.apply(c, q)
        if self.training and torch.is_grad_enabled():
            counts = torch.bincount(inv, minlength=uniq.numel()).to(q.dtype)
            reg = _Regulariser.apply(c, q, counts, self.commitment, float(flat.numel() * self.embedding_dim))
            self._pending = reg if self._pending is None else self._pending + reg
        return out.index_select(0, inv).reshape(*ids.shape, self.embedding_dim)

    # -- hooks -----------------------------------------------------------------------------------
    def regularization_loss(self) -> torch.Tensor | None:
        """Codebook + commitment loss of the training forwards since the last call (then cleared)."""
        reg, self._pending = self._pending, None
        return reg

    def on_step(self, step: int) -> None:
        self._pending = None  # never keep a graph past an optimizer step


# --------------------------------------------------------------------------- serving form
class PackedPQ(nn.Module):
    """Serving form of DPQ: ``codes`` (one packed bit stream, row-major ``[n, D]``) + ``codebooks [D, K, s]``."""

    codes: torch.Tensor
    codebooks: torch.Tensor

    def __init__(self, codes: torch.Tensor, codebooks: torch.Tensor, *, num_embeddings: int, bits: int) -> None:
        super().__init__()
        self.num_embeddings = num_embeddings
        self.num_parts, _, sub = codebooks.shape
        self.embedding_dim = self.num_parts * sub
        self.bits = bits
        self.register_buffer("codes", codes)
        self.register_buffer("codebooks", codebooks)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        codes = unpack_rows(self.codes, flat, self.num_parts, self.bits)
        return gather_centroids(self.codebooks, codes).reshape(*ids.shape, self.embedding_dim)
