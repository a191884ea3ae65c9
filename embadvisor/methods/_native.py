"""Fused CPU kernels for the hashing lookups, built once with the system C compiler.

``_native.c`` holds two kernels (seeded hash row indices; ROBE's sign flips). Each does in one pass over the ids what the torch reference does in about
fifteen elementwise passes, with bit-identical results; the tests compare them. They are plain C
(no Python or torch headers), so the first build takes well under a second; the library is cached
under ``$EMBADVISOR_NATIVE_CACHE`` (default ``~/.cache/embadvisor/native``), keyed by a hash of the
source and compiler, and written atomically so concurrent workers can share it.

Everything has a torch fallback: without a C compiler, on other devices or dtypes, or with
``EMBADVISOR_NATIVE=0``, the callers use the torch reference. :func:`available` says which.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

__all__ = ["available", "disabled", "hash_rows", "robe_sign_flip_"]

_SOURCE = Path(__file__).with_name("_native.c")
_ABI = 2
_lib: ctypes.CDLL | None = None
_tried = False
_off = False  # set by disabled()


def _cache_dir() -> Path:
    env = os.environ.get("EMBADVISOR_NATIVE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "embadvisor" / "native"


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def _build() -> ctypes.CDLL | None:
    cc = _compiler()
    if cc is None:
        return None
    src = _SOURCE.read_bytes()
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    key = hashlib.sha256(src + version.encode() + sys.platform.encode()).hexdigest()[:16]
    out = _cache_dir() / f"embadvisor_native_{key}.so"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
        os.close(fd)
        try:
            res = subprocess.run([cc, "-O3", "-shared", "-fPIC", "-o", tmp, str(_SOURCE)],
                                 capture_output=True, text=True, timeout=120)
            if res.returncode != 0:
                raise RuntimeError(res.stderr.strip().splitlines()[-1] if res.stderr.strip() else "compiler failed")
            os.replace(tmp, out)  # atomic: concurrent builders race harmlessly
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    lib = ctypes.CDLL(str(out))
    if lib.ea_abi_version() != _ABI:
        raise RuntimeError(f"{out} has ABI {lib.ea_abi_version()}, expected {_ABI}")
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.ea_hash_rows.argtypes = [ptr, i64, ptr, i64, i64, ptr]
    lib.ea_robe_sign_flip.argtypes = [ptr, i64, ptr, i64, ptr]
    for f in (lib.ea_hash_rows, lib.ea_robe_sign_flip):
        f.restype = None
    return lib


def _get() -> ctypes.CDLL | None:
    global _lib, _tried
    if not _tried:
        _tried = True
        if os.environ.get("EMBADVISOR_NATIVE", "1") != "0":
            try:
                _lib = _build()
            except Exception as e:  # noqa: BLE001 - any build/load failure means: use the torch path
                warnings.warn(f"embadvisor: fused C kernels unavailable ({e}); using the torch path", stacklevel=2)
                _lib = None
    return _lib


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Run the torch reference paths inside this block (tests compare the two)."""
    global _off
    before, _off = _off, True
    try:
        yield
    finally:
        _off = before


def available() -> bool:
    """Whether the fused kernels are built and enabled (``EMBADVISOR_NATIVE=0`` turns them off)."""
    return _get() is not None


def _usable(*tensors: torch.Tensor) -> bool:
    if _off:
        return False
    grad = torch.is_grad_enabled()
    return all(t.device.type == "cpu" and not (grad and t.requires_grad) for t in tensors) and _get() is not None


def _c(t: torch.Tensor) -> torch.Tensor:
    return t if t.is_contiguous() else t.contiguous()


def hash_rows(ids: torch.Tensor, mixed_seeds: torch.Tensor, buckets: int) -> torch.Tensor | None:
    """``(fmix64(id ^ s) & (2**63-1)) % buckets`` for every id and mixed seed: ``[*S] -> [*S, k]``.

    Returns None where the kernel cannot run (the caller uses the torch reference).
    """
    if ids.dtype != torch.int64 or mixed_seeds.dtype != torch.int64 or not _usable(ids, mixed_seeds):
        return None
    ids, seeds = _c(ids), _c(mixed_seeds.reshape(-1))
    out = torch.empty(*ids.shape, seeds.numel(), dtype=torch.int64)
    _lib.ea_hash_rows(ids.data_ptr(), ids.numel(), seeds.data_ptr(), seeds.numel(), int(buckets),  # type: ignore[union-attr]
                      out.data_ptr())
    return out


def robe_sign_flip_(values: torch.Tensor, ids: torch.Tensor, mixed_sign_seeds: torch.Tensor) -> bool:
    """Negate ``values[i, j]`` (float32 ``[N, d]``, in place) where ROBE's sign bit ``j`` of id ``i`` is set.

    Sign ``j`` is bit ``j % 62`` of the hash of the id under sign seed ``j // 62``. Returns False
    where the kernel cannot run (the caller uses the torch reference).
    """
    if (ids.dtype != torch.int64 or values.dtype != torch.float32 or not values.is_contiguous()
            or not _usable(ids, mixed_sign_seeds, values)):
        return False
    ids, seeds = _c(ids), _c(mixed_sign_seeds.reshape(-1))
    _lib.ea_robe_sign_flip(ids.data_ptr(), ids.numel(), seeds.data_ptr(), values.shape[-1],  # type: ignore[union-attr]
                           values.data_ptr())
    return True
