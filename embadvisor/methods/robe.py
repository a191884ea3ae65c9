"""ROBE-Z (Z = 1): every id reads a block of d consecutive values from one shared circular array.

One flat array of ``M`` floats (``num_weights``) serves all ids (the benchmark runs it as one
global table over all fields). Element ``j`` of id ``x`` is ``s(x, j)·A[(h(x) + j) mod M]``: the
block starts at a hashed offset ``h(x)`` in ``[0, M)`` and wraps around the end of the array
(also when ``M < d``), and ``s(x, j)`` is a hashed ``±1`` sign (bit ``j`` of a second seeded
hash of ``x``; one extra 62-bit hash per 62 columns). With ``Z = 1`` the embedding is not split
into chunks, as in the benchmark's setting. Hash seeds are int64 buffers.

Storage: the flat array is kept as an ``nn.Embedding(M / w, w, sparse=True)`` of ``w``-wide rows,
``w = gcd(M, 16)`` (``from_budget`` rounds ``M`` down to a multiple of 16, so normally ``w = 16``).
A lookup gathers, for each distinct id of the batch, the few consecutive rows that hold its block
(one gather, int64 index arithmetic, no loop) and cuts the ``d`` values out of them; the gradient is
a sparse tensor over those rows, so the trainer's sparse optimizer touches only them. (Row-wise
rather than element-wise sparse updates keep the sparse optimizer's sort over ~2 rows per id
instead of d elements; with a lazy optimizer such as SparseAdam the up to ``w - 1`` neighbouring
values sharing a row with a used value get a zero-gradient update too, as the unused columns of
an embedding row would.)

Deviation from the benchmark: its position hash is ``(B·x + D + j) mod P mod M`` with
``P = 2,038,074,743`` (a universal hash, exact only for ids below ``P``); here ``h`` is a seeded
64-bit mixer, exact for any int64 id. The optional per-field term is not used (global ids are
already distinct).

Memory:
    ``M`` weights, independent of ``n`` (``d`` only changes the lookups), plus
    ``1 + ceil(d/62)`` int64 hash seeds (buffer) and the optimizer state of the ``M`` weights
    in training.

References:
    Desai, Chou, Shrivastava, "Random Offset Block Embedding (ROBE) for compressed embedding
    tables in deep learning recommendation systems", MLSys 2022, arXiv:2108.02191.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from optuna.distributions import IntDistribution
from torch import nn

from embadvisor import kernels
from embadvisor._constraints import Interval
from embadvisor.methods._base import CompressedEmbedding, MethodConfig, MethodTags, TensorSpec
from embadvisor.methods._hashing import hash_ids, make_seeds, split_ids
from embadvisor.methods._registry import register_method
from embadvisor.methods.full import init_bound
from embadvisor.profiles.schema import TableSpec

__all__ = ["ROBEConfig", "ROBEEmbedding"]

SIGN_BITS = 62
ROW = 16  # preferred row width of the stored array
_INT32_SIGN = -(1 << 31)  # bit 31: the sign bit of a float32
_FLOAT32_ONE = 0x3F800000  # the bits of 1.0f


def row_width(num_weights: int) -> int:
    """Width ``w = gcd(M, 16)`` of the rows the ``M`` values are stored in."""
    return math.gcd(num_weights, ROW)


def num_sign_hashes(d: int) -> int:
    return -(-d // SIGN_BITS)


class ROBEEmbedding(CompressedEmbedding):
    """One shared circular array; ids ``[*S]`` -> ``[*S, d]``."""

    seeds: torch.Tensor

    def __init__(self, config: ROBEConfig, table: TableSpec, *, device: Any = None, dtype: Any = None) -> None:
        super().__init__(config, table, device=device, dtype=dtype)
        m, d = config.num_weights, table.embedding_dim
        w = row_width(m)
        self.num_weights = m
        self.row_width = w
        self.rows_per_id = (d + w - 1 + w - 1) // w  # rows spanned by d values starting anywhere in a row
        self.array = nn.Embedding(m // w, w, sparse=True, **self._factory)
        seeds = make_seeds(config.seed, 1 + num_sign_hashes(d))  # [offset, sign...]
        self.register_buffer("seeds", seeds.to(device) if device is not None else seeds)
        if self.array.weight.device.type != "meta":
            b = init_bound(table)
            nn.init.uniform_(self.array.weight, -b, b)

    def offsets(self, ids: torch.Tensor) -> torch.Tensor:
        """Block starts ``h(x)`` in ``[0, M)`` of int64 ids."""
        return hash_ids(ids, self.seeds[0], self.num_weights)

    def positions(self, ids: torch.Tensor) -> torch.Tensor:
        """Flat array positions ``(h(x) + j) mod M`` of int64 ids ``[N]`` -> ``[N, d]`` (reference form)."""
        pos = self.offsets(ids).unsqueeze(-1) + torch.arange(self.embedding_dim, device=ids.device)
        return pos % self.num_weights

    def values(self, ids: torch.Tensor) -> torch.Tensor:
        """``A[(h(x) + j) mod M]`` of int64 ids ``[N]`` -> ``[N, d]``: one row gather, then the block."""
        w, k, d = self.row_width, self.rows_per_id, self.embedding_dim
        first_row, col = split_ids(self.offsets(ids), w)
        rows = first_row.unsqueeze(-1) + torch.arange(k, device=ids.device)
        num_rows = self.array.num_embeddings
        if num_rows >= k:  # circular array: one wrap at most
            rows = torch.where(rows >= num_rows, rows - num_rows, rows)
        else:
            rows = rows % num_rows
        window = self.array(rows).flatten(-2)  # [N, k·w]: flat positions from first_row·w on
        return window.gather(-1, col.unsqueeze(-1) + torch.arange(d, device=ids.device))

    def serve_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """``s(x) ⊙ A[h(x) : h(x) + d]`` of int64 ids ``[N]`` -> ``[N, d]`` without autograd (serving, evaluation).

        The same values as the training path, with fewer passes: each id's block is one row of a
        strided window view of the array (no copy), and the signs flip the float sign bits in place.
        """
        m, d = self.num_weights, self.embedding_dim
        flat = self.array.weight.reshape(-1)
        start = self.offsets(ids)
        if m < d:  # the block wraps more than once: the reference form
            out = flat[(start.unsqueeze(-1) + torch.arange(d, device=ids.device)) % m]
        else:
            out = flat.as_strided((m - d + 1, d), (1, 1)).index_select(0, start.clamp(max=m - d))
            wrap = (start > m - d).nonzero().squeeze(1)
            if wrap.numel():
                out[wrap] = flat[(start[wrap].unsqueeze(-1) + torch.arange(d, device=ids.device)) % m]
        if out.dtype == torch.float32:
            out.view(torch.int32).bitwise_xor_(self._sign_bits(ids))
        else:
            out.mul_(self.signs(ids))
        return out

    def _sign_bits(self, ids: torch.Tensor) -> torch.Tensor:
        """int32 ``[N, d]`` with only bit 31 set where ``s(x, j) = -1`` (a float32 sign-bit mask)."""
        d = self.embedding_dim
        h = hash_ids(ids, self.seeds[1:], 1 << SIGN_BITS)  # [N, ceil(d/62)]
        parts = []
        for i in range(h.shape[-1]):
            cols = min(SIGN_BITS, d - SIGN_BITS * i)
            for lo in range(0, cols, 32):
                word = (h[:, i] >> lo) & 0xFFFFFFFF
                word = (word - ((word >> 31) << 32)).to(torch.int32)  # the same 32 bits, as an exact int32
                shifts = 31 - torch.arange(min(32, cols - lo), dtype=torch.int32, device=ids.device)
                parts.append((word.unsqueeze(-1) << shifts) & _INT32_SIGN)
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)

    def signs(self, ids: torch.Tensor) -> torch.Tensor:
        """The ``±1`` signs ``s(x, j)`` of int64 ids ``[N]`` -> ``[N, d]``: bit ``j % 62`` of hash ``j // 62``.

        Built from the sign-bit mask: ``1.0`` with the sign bit set where the sign is negative.
        """
        return (self._sign_bits(ids) | _FLOAT32_ONE).view(torch.float32).to(self.array.weight.dtype)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        serving = not (torch.is_grad_enabled() and self.array.weight.requires_grad)
        if serving:  # one fused pass (hash, block, signs) where the C kernels are available
            out = kernels.robe_gather(flat, self.seeds, self.array.weight, self.embedding_dim)
            if out is not None:
                return out.view(*ids.shape, self.embedding_dim)
        uniq, inv = torch.unique(flat, return_inverse=True)  # skewed ids: several times fewer blocks to read
        if serving:
            return self.serve_rows(uniq).index_select(0, inv).view(*ids.shape, self.embedding_dim)
        rows = self.values(uniq) * self.signs(uniq)
        return rows.index_select(0, inv).view(*ids.shape, self.embedding_dim)


@register_method
@dataclass(frozen=True, kw_only=True)
class ROBEConfig(MethodConfig):
    """ROBE-Z with Z = 1 (one block of d consecutive values per id).

    Args:
        num_weights: ``M``, floats in the shared array (the size knob).
        seed: hash seed (stored as a buffer, so the same seed gives the same module).

    Example:
        >>> from embadvisor.profiles.schema import TableSpec
        >>> ROBEConfig(num_weights=10**5).memory(TableSpec("c", 10**6, 16)).serve_bytes  # 10**5*4 + 2*8
        400016
    """

    name: ClassVar[str] = "robe"
    module_class: ClassVar[type[CompressedEmbedding]] = ROBEEmbedding
    tags: ClassVar[MethodTags] = MethodTags(
        category="inter-feature static", compresses_training=True, layout="global", hash_based=True,
        supports_unseen_ids=True,
        reference="Desai et al., Random Offset Block Embedding (ROBE), MLSys 2022, arXiv:2108.02191",
    )
    size_knob: ClassVar[str | None] = "num_weights"

    num_weights: int = field(default=1 << 16, metadata={"constraint": Interval(int, 1, None)})
    seed: int = field(default=0, metadata={"constraint": Interval(int, 0, 2**31 - 1)})

    @classmethod
    def search_space(cls, table: TableSpec) -> dict[str, Any]:
        return {"num_weights": IntDistribution(1, table.num_embeddings * table.embedding_dim, log=True)}

    @classmethod
    def example_configs(cls, table: TableSpec) -> list[ROBEConfig]:
        d = table.embedding_dim
        return [cls(num_weights=max(1, table.num_embeddings * d // 8)), cls(num_weights=max(1, d // 2 - 1), seed=7)]

    @classmethod
    def knob_bounds(cls, table: TableSpec, **fixed: Any) -> tuple[float, float]:
        return 1, table.num_embeddings * table.embedding_dim

    @classmethod
    def from_budget(
        cls,
        table: TableSpec,
        budget_bytes: float,
        *,
        scope: str = "serve",
        weight_dtype: str = "fp32",
        optimizer: str = "adam",
        **fixed: Any,
    ) -> ROBEConfig | None:
        """The base bisection over ``num_weights``, rounded down to a multiple of 16 (fast row storage)."""
        cfg = super().from_budget(table, budget_bytes, scope=scope, weight_dtype=weight_dtype,
                                  optimizer=optimizer, **fixed)
        if cfg is not None and cfg.num_weights > ROW:
            cfg = dataclasses.replace(cfg, num_weights=cfg.num_weights // ROW * ROW)
        return cfg

    def tensor_specs(self, table: TableSpec) -> list[TensorSpec]:
        return [
            TensorSpec("array.weight", (self.num_weights // row_width(self.num_weights), row_width(self.num_weights))),
            TensorSpec("seeds", (1 + num_sign_hashes(table.embedding_dim),), "int64", trainable=False),
        ]
