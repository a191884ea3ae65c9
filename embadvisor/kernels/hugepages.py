"""Back large CPU embedding tables with transparent huge pages (Linux ``madvise(MADV_HUGEPAGE)``).

A lookup into a table of hundreds of MiB touches rows on random 4 KiB pages, and on this class of
machine (a VM) the page walks (TLB misses), not the bytes, dominate: a gather of 106k hashed rows
from a 1 GiB table took 1.85 ms on 4 KiB pages and 0.48 ms on 2 MiB pages (2 cores, same process,
one batch repeated so that the rows themselves were cached: the difference is the page walks). Where
the kernel's THP mode is ``madvise`` (the Debian default), memory gets huge pages only when asked,
before it is first touched; so large tensors are moved once, at build and export, into freshly
mapped memory advised for huge pages. The values are unchanged (a copy) and so are the byte counts.
Elsewhere (other platforms, THP ``never``, tensors below ``min_bytes``) nothing happens.
``EMBADVISOR_HUGEPAGES=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import weakref

import torch
from torch import nn

__all__ = ["advise_hugepages_", "hugepage_empty"]

_MADV_HUGEPAGE = 14
_HUGE = 2 << 20
MIN_BYTES = 32 << 20  # glibc maps allocations this large freshly (its mmap threshold tops out at 32 MiB)
_madvise = None
_advised: weakref.WeakValueDictionary[int, torch.Tensor] = weakref.WeakValueDictionary()  # data_ptr -> tensor


def _libc_madvise():  # type: ignore[no-untyped-def]
    global _madvise
    if _madvise is None:
        f = None
        if sys.platform.startswith("linux") and os.environ.get("EMBADVISOR_HUGEPAGES", "1") != "0":
            try:
                with open("/sys/kernel/mm/transparent_hugepage/enabled") as fh:
                    mode = fh.read()
                if "[never]" not in mode:
                    f = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).madvise
                    f.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
                    f.restype = ctypes.c_int
            except OSError:
                f = None
        _madvise = f or False
    return _madvise or None


def hugepage_empty(shape: tuple[int, ...] | torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised CPU tensor whose whole 2 MiB pages are advised for huge pages (where supported)."""
    t = torch.empty(tuple(shape), dtype=dtype)
    madvise = _libc_madvise()
    if madvise is not None and t.nbytes >= MIN_BYTES:
        start = (t.data_ptr() + _HUGE - 1) & ~(_HUGE - 1)
        end = (t.data_ptr() + t.nbytes) & ~(_HUGE - 1)
        if end > start and madvise(start, end - start, _MADV_HUGEPAGE) == 0:  # advisory: else 4 KiB pages
            _advised[t.untyped_storage().data_ptr()] = t
    return t


def _is_advised(t: torch.Tensor) -> bool:
    return _advised.get(t.untyped_storage().data_ptr()) is not None


def advise_hugepages_(module: nn.Module, min_bytes: int = MIN_BYTES) -> int:
    """Move ``module``'s CPU parameters and buffers of at least ``min_bytes`` onto huge pages, in place.

    Parameters keep their identity (``.data`` is swapped), so optimizers and references stay valid.
    Returns the number of bytes moved (0 where huge pages are unavailable).
    """
    if _libc_madvise() is None:
        return 0
    moved, seen = 0, set()
    for mod in module.modules():
        for t in list(mod._parameters.values()) + list(mod._buffers.values()):
            if (t is None or id(t) in seen or t.device.type != "cpu" or t.nbytes < min_bytes or t.is_sparse
                    or _is_advised(t) or t.untyped_storage().nbytes() != t.nbytes):  # views share their storage
                continue
            seen.add(id(t))
            new = hugepage_empty(t.shape, t.dtype)
            new.copy_(t.detach())
            t.data = new
            moved += t.nbytes
    return moved
