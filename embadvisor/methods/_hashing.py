"""Seeded 64-bit hashing and exact id splitting in int64 arithmetic.

Everything here stays in integer arithmetic: no float division (the DLRM ``qr`` trap: ids above
2**24 lose precision through float32), no overflow traps (int64 multiplication wraps, which is
what a 64-bit mixer wants). Seeds are passed in as tensors so modules keep them as buffers and
the same seed gives the same module.
"""

from __future__ import annotations

import torch

from embadvisor import kernels

__all__ = ["hash_ids", "make_seeds", "mixed_seeds", "split_ids"]

_MASK63 = (1 << 63) - 1
# murmur3 fmix64 constants as signed int64
_C1 = 0xFF51AFD7ED558CCD - (1 << 64)
_C2 = 0xC4CEB9FE1A85EC53 - (1 << 64)
_GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)


def _shr(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> k).bitwise_and_((1 << (64 - k)) - 1)


def mix64(x: torch.Tensor) -> torch.Tensor:
    """murmur3's 64-bit finaliser on int64 tensors (a bijection on 64-bit words).

    The input is left alone; the rest works in place on one new tensor (fewer allocations).
    """
    x = x ^ _shr(x, 33)
    x.mul_(_C1)
    x.bitwise_xor_(_shr(x, 33))
    x.mul_(_C2)
    return x.bitwise_xor_(_shr(x, 33))


def mixed_seeds(seeds: torch.Tensor) -> torch.Tensor:
    """The per-seed words ``mix64(seed * golden)`` that :func:`hash_ids` XORs into the ids."""
    return mix64(seeds * _GOLDEN)


def hash_ids(ids: torch.Tensor, seeds: torch.Tensor, buckets: int) -> torch.Tensor:
    """Hash int64 ids into ``[0, buckets)`` once per seed.

    Args:
        ids: int64 ids of any shape ``S``.
        seeds: int64 seeds of shape ``(k,)`` (or a scalar).
        buckets: number of buckets (>= 1).

    Returns:
        int64 tensor of shape ``(*S, k)`` (or ``S`` for a scalar seed).
    """
    mixed = mixed_seeds(seeds)
    rows = kernels.hash_rows(ids, mixed, buckets)
    if rows is not None:
        return rows.squeeze(-1) if seeds.dim() == 0 else rows
    if seeds.dim() == 0:
        h = mix64(ids ^ mixed)
    else:
        h = mix64(ids.unsqueeze(-1) ^ mixed)
    return h.bitwise_and_(_MASK63).remainder_(buckets)


def make_seeds(seed: int, k: int) -> torch.Tensor:
    """``k`` distinct int64 seeds derived from one integer seed."""
    base = torch.arange(k, dtype=torch.int64) + int(seed) * 1_000_003
    return mix64(base ^ 0x5DEECE66D)


def split_ids(ids: torch.Tensor, base: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact quotient and remainder of non-negative int64 ids by ``base`` (no float division)."""
    return torch.div(ids, base, rounding_mode="floor"), torch.remainder(ids, base)
