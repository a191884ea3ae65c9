"""Fused CPU kernels for lookups without autograd (and SparseAdam's update), built once with the system C compiler.

``_native.c`` (shipped in the wheel as package data, beside this module) holds: seeded hash row indices (:func:`hash_rows`, behind ``hash_ids``), the hashing
trick's and ROBE's whole serving lookups (:func:`hash_gather`, :func:`robe_gather`), a prefetching
row gather (:func:`embedding`) and one grouped lookup (:class:`LookupPlan`) that embeds every field
of a per-field plan in one pass from per-field descriptors (:class:`FieldKernel`: rows, remapped
rows, QR, projected rows, int8/int16 rows, TT-Rec), plus torch's SparseAdam update of a coalesced
gradient's rows (:func:`sparse_adam`, behind :class:`~embadvisor.tasks.optim.FusedSparseAdam`). Each
gives the torch code's values (the tests compare them). They are plain C (no Python or torch headers), so the first build takes about
a second; they run on torch's own OpenMP threads (built against the ``libgomp`` torch has loaded).
The library is cached under ``$EMBADVISOR_NATIVE_CACHE`` (default ``~/.cache/embadvisor/native``),
keyed by the source, the compiler and the CPU (it is built with ``-march=native``).

The cache is per user. Loading a shared library runs its code (its constructors run inside
``dlopen``, before any check of what it exports), so nothing in the cache is loaded unless only this
user could have written it:

1. The cache folder must be owned by this user and not writable by group or others, and every folder
   above it must be owned by this user or root and not writable by group or others unless it has the
   sticky bit (as ``/tmp`` has). Folders created here are made ``0700``. A cache folder that fails
   this is not used at all: the kernels are built in a private temporary folder for this process
   instead, with a warning naming the folder and the fix. A cache folder shared between workers (or
   machines) must therefore be owned by the user who runs them and not writable by anybody else.
2. The library and its sidecar ``<library>.sha256`` are opened with ``O_NOFOLLOW`` (symbolic links are
   refused) and must be regular files owned by this user and not writable by group or others.
3. The library's sha256, recorded in the sidecar at build time, is checked on the opened file before
   ``dlopen``, which then loads that same open file (``/proc/self/fd``), so what was checked is what
   runs. A mismatch, a link or a foreign file is not loaded: it is rebuilt, with a warning. A library
   without a sidecar (from an older version, or an interrupted build) is rebuilt quietly.

The hash is no defence on its own: whoever can write the cache folder can write both files. It catches
a damaged or swapped library; the owner and permission checks of step 1 are what keep other users out.

A build compiles into a private ``0700`` folder inside the cache, sets the library to ``0600`` and
fsyncs it, then moves the library and then its sidecar into place with ``os.replace``. Builders hold an
exclusive ``flock`` on ``<library>.lock`` (readers a shared one), so concurrent workers build once and
never load a half-written or mismatched pair.

Everything has a torch fallback: without a C compiler, on other devices or dtypes, or with
``EMBADVISOR_NATIVE=0``, the callers use the torch reference. :func:`available` says which.

Why the C source is compiled at first use rather than built as an extension at install time:

- The wheel stays one pure-Python wheel (``py3-none-any``) that installs without a compiler, on any
  platform, Python version and torch version the dependencies allow; where no compiler exists the
  torch paths run (with a warning). An install-time extension would need a compiler at install time,
  or a binary wheel per platform and Python version.
- The kernels are compiled with ``-march=native`` for the CPU that runs them (the 16-lane row
  arithmetic needs the vector units of that CPU). A binary built once, at install time or on a build
  farm, would target the CPU of that machine or a portable baseline, and a virtual environment shared
  by several machines would run one machine's build everywhere; the cache key names the CPU instead,
  so every machine gets its own build.
- The library links the OpenMP runtime by name and resolves it, when loaded, to the one that torch has
  already loaded, and it uses no Python or torch headers, so nothing ties it to the Python or torch
  version it was built beside.

The price is about a second of compilation per user and machine on first use, and the cache checks
above. The wheel must therefore ship ``_native.c`` (package data in ``pyproject.toml``); CI's wheel
step (``.ci/wheel``) installs the built wheel outside the repository and fails if the kernels fall back.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

__all__ = [
    "PROJECTED", "QR_ADD", "QR_MULT", "QUANT8", "QUANT16", "REMAP", "ROWS", "TT", "FieldKernel", "LookupPlan",
    "available", "disabled", "embed", "embedding", "grouped_lookup", "hash_gather", "hash_rows", "quant_gather", "robe_gather",
    "sparse_adam", "tt_lookup", "tt_params",
]

_SOURCE = Path(__file__).with_name("_native.c")
_ABI = 16
_lib: ctypes.CDLL | None = None
_tried = False
_off = False  # set by disabled()


def _cache_dir() -> Path:
    env = os.environ.get("EMBADVISOR_NATIVE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "embadvisor" / "native"


def _cpu_id() -> str:
    """The CPU model and feature flags (Linux), or the machine name."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags"))]
        return "".join(sorted(set(lines)))
    except OSError:
        import platform

        return platform.machine() + platform.processor()


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


_SIDECAR = ".sha256"  # the library's sha256, written at build time
_OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _NOFOLLOW
_lib_fds: list[int] = []  # descriptors of loaded libraries, kept open (see _load)


class _Refused(Exception):
    """A cache folder or cached file that another user could have written: ``what`` names it, ``fix`` says what to do."""

    def __init__(self, what: str, fix: str = "") -> None:
        super().__init__(what)
        self.what, self.fix = what, fix


def _my_uid() -> int:
    return os.geteuid()


def _library_name(cc: str) -> str:
    src = _SOURCE.read_bytes()
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    # built for this CPU (-march=native), so the cache key names the CPU too
    key = hashlib.sha256(src + version.encode() + sys.platform.encode() + _cpu_id().encode()).hexdigest()[:16]
    return f"embadvisor_native_{key}.so"


def _foreign(st: os.stat_result) -> str | None:
    """Why another user could write what ``st`` describes (owner, mode), or None."""
    uid = _my_uid()
    if st.st_uid != uid:
        return f"owned by uid {st.st_uid}, not by you (uid {uid})"
    if st.st_mode & _OTHERS_WRITE:
        return f"writable by group or others (mode {oct(stat.S_IMODE(st.st_mode))})"
    return None


def _open_cache_dir(where: Path) -> tuple[int, str]:
    """An open descriptor of the cache folder (created 0700 where missing) and its real path.

    Raises _Refused where the folder or a folder above it lets another user write in it.
    """
    fix_elsewhere = ("point EMBADVISOR_NATIVE_CACHE at a folder that you own and nobody else can write "
                     "(a per-user cache; a shared folder must be owned by you and not writable by others)")
    path = os.path.abspath(str(where))
    try:
        missing = []
        p = path
        while not os.path.lexists(p) and os.path.dirname(p) != p:
            missing.append(p)
            p = os.path.dirname(p)
        for m in reversed(missing):
            with contextlib.suppress(FileExistsError):  # made by another worker: checked below as any folder is
                os.mkdir(m, 0o700)
        real = os.path.realpath(path)
        uid = _my_uid()
        for parent in reversed(Path(real).parents):
            st = os.stat(parent)
            if st.st_uid not in (uid, 0):
                raise _Refused(f"its parent folder {str(parent)!r} is owned by uid {st.st_uid} (neither you, uid "
                               f"{uid}, nor root)", fix_elsewhere)
            if st.st_mode & _OTHERS_WRITE and not st.st_mode & stat.S_ISVTX:
                raise _Refused(f"its parent folder {str(parent)!r} is writable by group or others without the "
                               f"sticky bit (mode {oct(stat.S_IMODE(st.st_mode))})",
                               f"`chmod go-w {str(parent)!r}`, or {fix_elsewhere}")
        fd = os.open(real, _DIR_FLAGS)
    except OSError as e:
        raise _Refused(f"{path!r} cannot be used ({e})", fix_elsewhere) from e
    st = os.fstat(fd)
    problem = _foreign(st) if stat.S_ISDIR(st.st_mode) else "not a folder"
    if problem is not None:
        os.close(fd)
        fix = f"`chmod go-w {real!r}`, or {fix_elsewhere}" if st.st_uid == _my_uid() else fix_elsewhere
        raise _Refused(f"{real!r} is {problem}", fix)
    return fd, real


def _open_private(dir_fd: int, name: str, folder: str) -> int:
    """A read-only descriptor of ``folder/name``, a regular file (not a link) that only we can write.

    Raises FileNotFoundError where there is none, _Refused where it must not be used.
    """
    path = os.path.join(folder, name)
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if stat.S_ISLNK(st.st_mode):
        raise _Refused(f"{path!r} is a symbolic link")
    if not stat.S_ISREG(st.st_mode):
        raise _Refused(f"{path!r} is not a regular file")
    try:  # O_NONBLOCK: a FIFO swapped in after the stat must not block the open
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW, dir_fd=dir_fd)
    except FileNotFoundError:
        raise
    except OSError as e:  # ELOOP: it became a link after the stat
        raise _Refused(f"{path!r} cannot be opened safely ({e})") from e
    opened = os.fstat(fd)
    problem = _foreign(opened)
    if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino) or not stat.S_ISREG(opened.st_mode):
        problem = "replaced while it was opened"
    if problem is not None:
        os.close(fd)
        raise _Refused(f"{path!r} is {problem}")
    return fd


def _sha256(fd: int) -> str:
    h, offset = hashlib.sha256(), 0
    while chunk := os.pread(fd, 1 << 20, offset):
        h.update(chunk)
        offset += len(chunk)
    return h.hexdigest()


def _open_verified(dir_fd: int, folder: str, name: str) -> int | None:
    """A descriptor of the cached library after its checks (see the module docstring), or None where there is
    none (or no sidecar: built by an older version or an interrupted build). Raises _Refused on a failed check."""
    try:
        sfd = _open_private(dir_fd, name + _SIDECAR, folder)
    except FileNotFoundError:
        return None
    try:
        fields = os.pread(sfd, 4096, 0).decode("ascii", "replace").split()
    finally:
        os.close(sfd)
    recorded = fields[0] if fields else ""
    if not re.fullmatch(r"[0-9a-f]{64}", recorded):
        raise _Refused(f"{os.path.join(folder, name + _SIDECAR)!r} does not hold a sha256")
    try:
        fd = _open_private(dir_fd, name, folder)
    except FileNotFoundError:
        return None
    if _sha256(fd) != recorded:
        os.close(fd)
        raise _Refused(f"the sha256 of {os.path.join(folder, name)!r} does not match the one recorded in "
                       f"{os.path.join(folder, name + _SIDECAR)!r} when it was built")
    return fd


@contextlib.contextmanager
def _locked(dir_fd: int, name: str, exclusive: bool) -> Iterator[None]:
    """``flock`` on ``<name>.lock`` in the cache; without one (a read-only folder, no flock) the checks still hold."""
    fd = None
    with contextlib.suppress(OSError):
        fd = os.open(name + ".lock", os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | _NOFOLLOW, 0o600, dir_fd=dir_fd)
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)


def _compile(cc: str, out: str) -> None:
    base = [cc, "-O3", "-shared", "-fPIC", "-o", out, str(_SOURCE)]
    for extra in (["-march=native", "-fopenmp"], ["-fopenmp"], []):  # without OpenMP: one thread
        res = subprocess.run(base + extra, capture_output=True, text=True, timeout=120)
        if res.returncode == 0:
            return
    raise RuntimeError(res.stderr.strip().splitlines()[-1] if res.stderr.strip() else "compiler failed")


def _write_private(dir_fd: int, name: str, data: bytes) -> None:
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600, dir_fd=dir_fd)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _build_into(dir_fd: int, folder: str, name: str, cc: str) -> None:
    """Compile into a private 0700 folder inside the cache, then move the library, then its sidecar, into place."""
    build = tempfile.mkdtemp(prefix=".build-", dir=folder)
    try:
        _compile(cc, os.path.join(build, name))
        bfd = os.open(build, _DIR_FLAGS)
        try:
            fd = _open_private(bfd, name, build)
            try:
                os.fchmod(fd, 0o600)  # dlopen needs read access only
                os.fsync(fd)
                digest = _sha256(fd)
            finally:
                os.close(fd)
            _write_private(bfd, name + _SIDECAR, f"{digest}  {name}\n".encode())
            os.replace(name, name, src_dir_fd=bfd, dst_dir_fd=dir_fd)
            os.replace(name + _SIDECAR, name + _SIDECAR, src_dir_fd=bfd, dst_dir_fd=dir_fd)
            with contextlib.suppress(OSError):
                os.fsync(dir_fd)
        finally:
            os.close(bfd)
    finally:
        shutil.rmtree(build, ignore_errors=True)


def _cached(dir_fd: int, folder: str, name: str, cc: str) -> int:
    """A descriptor of the checked cached library, built (once among concurrent workers) where needed."""
    warned = False
    with _locked(dir_fd, name, exclusive=False):
        try:
            fd = _open_verified(dir_fd, folder, name)
        except _Refused as e:
            warnings.warn(f"embadvisor: not loading the cached native kernels: {e}; rebuilding them. If this happens "
                          f"again, delete {folder!r} and check who else can write it.", stacklevel=4)
            fd, warned = None, True
    if fd is not None:
        return fd
    with _locked(dir_fd, name, exclusive=True):
        try:
            fd = _open_verified(dir_fd, folder, name)  # another worker may have built it meanwhile
        except _Refused as e:
            if not warned:
                warnings.warn(f"embadvisor: not loading the cached native kernels: {e}; rebuilding them. If this "
                              f"happens again, delete {folder!r} and check who else can write it.", stacklevel=4)
            fd = None
        if fd is None:
            _build_into(dir_fd, folder, name, cc)
            fd = _open_verified(dir_fd, folder, name)
            if fd is None:
                raise RuntimeError(f"{os.path.join(folder, name)!r} vanished right after it was built")
    return fd


def _load(fd: int, path: str) -> ctypes.CDLL:
    """dlopen the file open as ``fd`` (the one that was checked), through ``/proc/self/fd`` where there is one.

    The descriptor stays open while the process runs (ctypes never unloads a library): the dynamic loader
    matches libraries by name, so a ``/proc/self/fd/N`` name must not be reused for another file.
    """
    proc = f"/proc/self/fd/{fd}"
    if not os.path.exists(proc):
        os.close(fd)
        return ctypes.CDLL(path)
    try:
        lib = ctypes.CDLL(proc)
    except BaseException:
        os.close(fd)
        raise
    _lib_fds.append(fd)
    return lib


def _build() -> ctypes.CDLL | None:
    cc = _compiler()
    if cc is None or os.name != "posix":
        return None
    name = _library_name(cc)
    try:
        dir_fd, folder = _open_cache_dir(_cache_dir())
    except _Refused as e:
        warnings.warn(f"embadvisor: not using the native kernel cache: {e.what}; building the kernels in a private "
                      f"temporary folder for this process instead. Fix: {e.fix}.", stacklevel=3)
        build = tempfile.mkdtemp(prefix="embadvisor-native-")  # 0700, ours; removed once loaded
        try:
            _compile(cc, os.path.join(build, name))
            bfd = os.open(build, _DIR_FLAGS)
            try:
                problem = _foreign(os.fstat(bfd))
                if problem is not None:
                    raise RuntimeError(f"the temporary folder {build!r} is {problem}")
                lib = _load(_open_private(bfd, name, build), os.path.join(build, name))
            finally:
                os.close(bfd)
        finally:
            shutil.rmtree(build, ignore_errors=True)
    else:
        try:
            fd = _cached(dir_fd, folder, name, cc)
        finally:
            os.close(dir_fd)
        lib = _load(fd, os.path.join(folder, name))
    if lib.ea_abi_version() != _ABI:
        raise RuntimeError(f"{name} has ABI {lib.ea_abi_version()}, expected {_ABI}")
    i64, ptr, cint = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    lib.ea_hash_rows.argtypes = [ptr, i64, ptr, i64, i64, ptr, cint]
    lib.ea_robe_gather.argtypes = [ptr, i64, ptr, i64, ptr, i64, ptr, cint]
    lib.ea_hash_gather.argtypes = [ptr, i64, ptr, i64, i64, ptr, i64, ptr, cint]
    lib.ea_gather.argtypes = [ptr, i64, ptr, i64, i64, ptr, cint]
    lib.ea_hash_rows.restype = None
    lib.ea_robe_gather.restype = i64
    lib.ea_hash_gather.restype = i64
    lib.ea_gather.restype = i64
    lib.ea_quant_gather.argtypes = [ptr, i64, ptr, i64, i64, ptr, i64, i64, i64, ptr, cint]
    lib.ea_quant_gather.restype = i64
    lib.ea_grouped_lookup.argtypes = [ptr, i64, i64, ptr, i64, ptr, i64, ptr, cint]
    lib.ea_grouped_lookup.restype = i64
    lib.ea_tt_lookup.argtypes = [ptr, i64, ptr, i64, ptr, cint]
    lib.ea_tt_lookup.restype = i64
    f32 = ctypes.c_float
    lib.ea_sparse_adam_moments.argtypes = [ptr, i64, ptr, i64, i64, ptr, ptr, f32, f32, ptr, ptr, cint]
    lib.ea_sparse_adam_moments.restype = i64
    lib.ea_sparse_adam_params.argtypes = [ptr, i64, i64, i64, ptr, ptr, ptr, f32, f32, cint]
    lib.ea_sparse_adam_params.restype = i64
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


def _check(bad: int, kernel: str, total: int, bounds: str) -> None:
    """A kernel's return value: < 0 it could not allocate, > 0 that many ids were out of range (IndexError,
    as ``nn.Embedding`` raises)."""
    if bad < 0:
        raise MemoryError(f"embadvisor: the {kernel} kernel could not allocate its buffers")
    if bad:
        raise IndexError(f"index out of range in self: {bad} of {total} ids outside {bounds}")


def hash_rows(ids: torch.Tensor, mixed_seeds: torch.Tensor, buckets: int) -> torch.Tensor | None:
    """``(fmix64(id ^ s) & (2**63-1)) % buckets`` for every id and mixed seed: ``[*S] -> [*S, k]``.

    Returns None where the kernel cannot run (the caller uses the torch reference).
    """
    if ids.dtype != torch.int64 or mixed_seeds.dtype != torch.int64 or not _usable(ids, mixed_seeds):
        return None
    ids, seeds = _c(ids), _c(mixed_seeds.reshape(-1))
    out = torch.empty(*ids.shape, seeds.numel(), dtype=torch.int64)
    _lib.ea_hash_rows(ids.data_ptr(), ids.numel(), seeds.data_ptr(), seeds.numel(), int(buckets),  # type: ignore[union-attr]
                      out.data_ptr(), torch.get_num_threads())
    return out


def robe_gather(ids: torch.Tensor, seeds: torch.Tensor, array: torch.Tensor, dim: int) -> torch.Tensor | None:
    """ROBE's ``s(x, j)·A[(h(x) + j) mod M]`` for ids ``[*S]`` -> float32 ``[*S, dim]`` in one pass; None: use torch.

    ``seeds`` (int64, the module's buffer, mixed by the kernel as :func:`~embadvisor.methods._hashing.mixed_seeds`
    mixes them) holds the offset seed, then one sign seed per 62 columns.
    """
    if (ids.dtype != torch.int64 or array.dtype != torch.float32 or seeds.dtype != torch.int64
            or seeds.numel() < 1 + -(-dim // 62) or not _usable(ids, seeds, array)):
        return None
    ids, seeds, flat = _c(ids), _c(seeds.reshape(-1)), _c(array).reshape(-1)
    out = torch.empty(*ids.shape, dim, dtype=torch.float32)
    _check(_lib.ea_robe_gather(ids.data_ptr(), ids.numel(), seeds.data_ptr(), flat.numel(),  # type: ignore[union-attr]
                               flat.data_ptr(), dim, out.data_ptr(), torch.get_num_threads()), "ROBE lookup", 0, "")
    return out


def sparse_adam(param: torch.Tensor, rows: torch.Tensor, values: torch.Tensor, exp_avg: torch.Tensor,
                exp_avg_sq: torch.Tensor, beta1: float, beta2: float, eps: float, step_size: float) -> bool:
    """torch.optim.SparseAdam's update of the distinct ``rows`` (int64 ``[R]``) of ``param`` ``[N, w]`` and its
    moments with the gradient ``values`` ``[R, w]`` (a coalesced gradient's) in two passes over the rows, the
    same values bit for bit; False (nothing done): use torch (not float32 CPU 2-D tensors, or no kernel)."""
    if (_off or _get() is None or param.dtype != torch.float32 or param.dim() != 2 or values.dtype != torch.float32
            or rows.dtype != torch.int64 or rows.dim() != 1 or values.shape != (rows.shape[0], param.shape[1])
            or any(t.device.type != "cpu" or t.dtype != torch.float32 or t.shape != param.shape or not t.is_contiguous()
                   for t in (param, exp_avg, exp_avg_sq))):
        return False
    rows, values = _c(rows), _c(values)
    n, w, threads = rows.numel(), param.shape[1], torch.get_num_threads()
    numer, root = torch.empty_like(values), torch.empty_like(values)
    bounds = f"[0, {param.shape[0]})"
    _check(_lib.ea_sparse_adam_moments(rows.data_ptr(), n, values.data_ptr(), w, param.shape[0],  # type: ignore[union-attr]
                                       exp_avg.data_ptr(), exp_avg_sq.data_ptr(), 1 - beta1, 1 - beta2,
                                       numer.data_ptr(), root.data_ptr(), threads), "SparseAdam", n, bounds)
    root.sqrt_()  # torch's own sqrt, on a tensor of torch's shape: its vectorised sqrt is not correctly rounded
    _check(_lib.ea_sparse_adam_params(rows.data_ptr(), n, w, param.shape[0], param.data_ptr(),  # type: ignore[union-attr]
                                      numer.data_ptr(), root.data_ptr(), eps, -step_size, threads), "SparseAdam", n, bounds)
    return True


def hash_gather(ids: torch.Tensor, seeds: torch.Tensor, table: torch.Tensor) -> torch.Tensor | None:
    """The hashing trick's ``sum_s table[h_s(id)]`` for ids ``[*S]`` -> float32 ``[*S, d]`` in one pass; None: use torch.

    ``seeds``: the module's int64 seeds (the kernel mixes them as :func:`~embadvisor.methods._hashing.mixed_seeds`)."""
    if (ids.dtype != torch.int64 or table.dtype != torch.float32 or seeds.dtype != torch.int64
            or not 1 <= seeds.numel() <= 4 or not _usable(ids, seeds, table)):
        return None  # the kernel sums at most 4 hashes (hash's num_hashes allows 1-4)
    ids, seeds, table = _c(ids), _c(seeds.reshape(-1)), _c(table)
    out = torch.empty(*ids.shape, table.shape[1], dtype=torch.float32)
    _check(_lib.ea_hash_gather(ids.data_ptr(), ids.numel(), seeds.data_ptr(), seeds.numel(), table.shape[0],  # type: ignore[union-attr]
                               table.data_ptr(), table.shape[1], out.data_ptr(), torch.get_num_threads()),
           "hash lookup", 0, "")
    return out


def embed(module: torch.nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
    """``module(ids)``; without autograd through the prefetching C gather (:func:`embedding`)."""
    if torch.is_grad_enabled() and module.weight.requires_grad:
        return module(ids)
    return embedding(ids, module.weight)


def embedding(idx: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``F.embedding(idx, table)`` (rows ``table[idx]``, ``[*S] -> [*S, d]``), through the prefetching C gather
    where no autograd is needed; out-of-range indices raise IndexError either way."""
    if idx.dtype != torch.int64 or table.dim() != 2 or not _usable(idx, table):
        return F.embedding(idx, table)
    idx, table = _c(idx), _c(table)
    out = torch.empty(*idx.shape, table.shape[1], dtype=table.dtype)
    bad = _lib.ea_gather(idx.data_ptr(), idx.numel(), table.data_ptr(), table.shape[0],  # type: ignore[union-attr]
                         table.shape[1] * table.element_size(), out.data_ptr(), torch.get_num_threads())
    _check(bad, "row gather", idx.numel(), f"[0, {table.shape[0]})")
    return out


def tt_params(cores: Sequence[torch.Tensor], row_factors: Sequence[int], dim_factors: Sequence[int], rank: int,
              cache: torch.Tensor | None, cache_ids: torch.Tensor | None, num_ids: int) -> FieldKernel:
    """TT-Rec's serving lookup of ids in ``[0, num_ids)`` as a :class:`FieldKernel` (kind TT): the cores
    ``[n_a, d1·r]``, ``[n_b, r·d2·r]``, ``[n_c, r·d3]``, and the cache of hot rows with its sorted ids
    (int32 or int64)."""
    (_, n_b, n_c), (d1, d2, d3) = row_factors, dim_factors
    rows = 0 if cache is None or cache_ids is None else cache_ids.shape[0]
    keep = (cores[0], cores[2]) + ((cache, cache_ids) if rows else ())  # type: ignore[operator]
    params = torch.tensor([cores[0].data_ptr(), cores[1].data_ptr(), cores[2].data_ptr(), n_b, n_c, d1, d2, d3, rank,
                           cache.data_ptr() if rows else 0, cache_ids.data_ptr() if rows else 0,  # type: ignore[union-attr]
                           rows, cache_ids.element_size() if rows else 8], dtype=torch.int64)  # type: ignore[union-attr]
    return FieldKernel(TT, cores[1], num_ids, aux=params, keep=keep)  # type: ignore[arg-type]


def tt_lookup(ids: torch.Tensor, kernel: FieldKernel) -> torch.Tensor | None:
    """One TT-Rec field's serving lookup (:func:`tt_params`) of ids ``[*S]`` -> float32 ``[*S, d]``; None: use
    torch. Out-of-range ids (outside ``[0, kernel.num_ids)``) raise IndexError."""
    num_ids = kernel.num_ids
    if ids.dtype != torch.int64 or not kernel.usable() or not _usable(ids, kernel.table, *kernel.keep):
        return None
    ids = _c(ids)
    p = kernel.aux
    d = int(p[5:8].prod())  # type: ignore[index]  # d1·d2·d3 (TT_D1..TT_D3)
    out = torch.empty(*ids.shape, d, dtype=torch.float32)
    bad = _lib.ea_tt_lookup(p.data_ptr(), num_ids, ids.data_ptr(), ids.numel(), out.data_ptr(),  # type: ignore[union-attr]
                            torch.get_num_threads())
    _check(bad, "TT lookup", ids.numel(), f"[0, {num_ids})")
    return out


# field kinds of grouped_lookup: the same numbers as the C enum K_* (see _native.c); to add one, see
# "Adding a kernel kind" in the embadvisor.kernels docstring
ROWS, REMAP, QR_MULT, QR_ADD, PROJECTED, QUANT8, QUANT16, TT = range(8)
_DTYPES = {ROWS: torch.float32, REMAP: torch.float32, QR_MULT: torch.float32, QR_ADD: torch.float32,
           PROJECTED: torch.float32, QUANT8: torch.int8, QUANT16: torch.int16, TT: torch.float32}
_AUX_DTYPES = {REMAP: torch.int32, QR_MULT: torch.float32, QR_ADD: torch.float32, PROJECTED: torch.float32,
               QUANT8: torch.float32, QUANT16: torch.float32, TT: torch.int64}
_TT_PARAMS = 13  # the C side's TT_NPARAMS


@dataclass(frozen=True)
class FieldKernel:
    """How :func:`grouped_lookup` embeds one column; a module's serving lookup in kernel terms.

    ``kind`` is one of ROWS (``table[start + id]``), REMAP (``table[start + aux[id]]``, int32 remap),
    QR_MULT / QR_ADD (``table[start + id // k]`` times / plus ``aux[aux_start + id % k]``),
    PROJECTED (``aux @ table[start + id]``, ``aux`` ``[d, width]`` as nn.Linear's weight) or
    QUANT8 / QUANT16 (int codes ``table[start + id]`` times the float32 row scale ``aux[start + id]``) or
    TT (TT-Rec: ``table`` the middle core, ``aux`` the int64 parameters, ``keep`` the other tensors that
    the parameters address; see :func:`tt_params`). Ids outside ``[0, num_ids)`` raise IndexError.
    """

    kind: int
    table: torch.Tensor
    num_ids: int
    start: int = 0
    aux: torch.Tensor | None = None
    k: int = 0
    aux_start: int = 0
    keep: tuple[torch.Tensor, ...] = ()

    def usable(self) -> bool:
        """Dtypes as the kind needs; rows contiguous (row strides may be wider: packed quantized rows)."""
        t, aux = self.table, self.aux
        ok = t.dtype == _DTYPES[self.kind] and t.dim() == 2 and t.stride(1) == 1 and t.stride(0) >= t.shape[1]
        if self.kind in (ROWS, REMAP, QR_MULT, QR_ADD, PROJECTED, TT):
            ok = ok and t.is_contiguous()
        if self.kind == TT:  # cores and cache float32, cache ids int32/int64, all contiguous
            ok = ok and aux is not None and aux.shape == (_TT_PARAMS,) and all(
                x.is_contiguous() and x.dtype in (torch.float32, torch.int32, torch.int64) for x in self.keep)
        if self.kind in _AUX_DTYPES:
            ok = ok and aux is not None and aux.dtype == _AUX_DTYPES[self.kind]
            ok = ok and (aux.dim() == 1 if self.kind in (QUANT8, QUANT16, REMAP) else aux.is_contiguous())  # type: ignore[union-attr]
        return ok


def quant_gather(idx: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor | None:
    """``codes[idx] * scale[idx]`` (int8/int16 codes ``[n, d]`` with contiguous rows, float32 scales ``[n]``;
    strided rows allowed, as in packed quantized rows) -> float32 ``[*S, d]``; None: use torch."""
    if (idx.dtype != torch.int64 or codes.dtype not in (torch.int8, torch.int16) or codes.dim() != 2
            or codes.stride(1) != 1 or scale.dtype != torch.float32 or scale.dim() != 1
            or not _usable(idx, codes, scale)):
        return None
    idx = _c(idx)
    d = codes.shape[1]
    out = torch.empty(*idx.shape, d, dtype=torch.float32)
    es = codes.element_size()
    bad = _lib.ea_quant_gather(idx.data_ptr(), idx.numel(), codes.data_ptr(), codes.stride(0) * es, es,  # type: ignore[union-attr]
                               scale.data_ptr(), scale.stride(0) * 4, codes.shape[0], d, out.data_ptr(),
                               torch.get_num_threads())
    _check(bad, "quantized row gather", idx.numel(), f"[0, {codes.shape[0]})")
    return out


class LookupPlan:
    """A validated :func:`grouped_lookup` for fixed fields: the descriptor table is built once.

    It holds references to the tables it reads, so they stay alive; a module whose tensors are
    replaced (not updated in place) needs a new plan.
    """

    def __init__(self, fields: Sequence[FieldKernel], dim: int) -> None:
        self.fields, self.dim = list(fields), dim
        # width: the row stride in elements; for the quantized kinds the k slot carries the scale's stride
        self.desc = torch.tensor([[fk.kind, fk.table.data_ptr(), fk.table.stride(0), fk.start,
                                   fk.aux.data_ptr() if fk.aux is not None else 0,
                                   fk.aux.stride(0) * 4 if fk.kind in (QUANT8, QUANT16) else fk.k,  # type: ignore[union-attr]
                                   fk.aux_start, fk.num_ids]
                                  for fk in fields], dtype=torch.int64)
        self.identity = torch.arange(len(self.fields), dtype=torch.int64)

    @classmethod
    def build(cls, fields: Sequence[FieldKernel | None], dim: int) -> LookupPlan | None:
        """A plan, or None where the kernel cannot serve these fields (a field without a kernel, other
        dtypes or devices, tensors that need autograd, no C compiler)."""
        if not 0 < len(fields) <= 1024 or any(fk is None or not fk.usable() for fk in fields):
            return None
        tensors = [t for fk in fields for t in (fk.table, fk.aux, *fk.keep) if t is not None]  # type: ignore[union-attr]
        if not _usable(*tensors):
            return None
        return cls(fields, dim)  # type: ignore[arg-type]

    def __call__(self, ids: torch.Tensor, out: torch.Tensor | None = None,
                 cols: torch.Tensor | None = None) -> torch.Tensor | None:
        """``ids[B, F]`` -> float32 ``[B, F, dim]``; None where the kernel cannot run now.

        With ``out`` (float32 ``[B, W, dim]``, contiguous) and ``cols`` (int64 ``[F]``), column ``f`` is
        written to ``out[:, cols[f]]`` instead and ``out`` is returned (the other columns untouched).
        """
        if ids.dtype != torch.int64 or ids.dim() != 2 or ids.shape[1] != len(self.fields) or not _usable(ids):
            return None
        ids = _c(ids)
        if out is None:
            out = torch.empty(ids.shape[0], len(self.fields), self.dim, dtype=torch.float32)
            cols = self.identity
        assert cols is not None and out.is_contiguous() and out.dtype == torch.float32
        bad = _lib.ea_grouped_lookup(ids.data_ptr(), ids.shape[0], len(self.fields),  # type: ignore[union-attr]
                                     self.desc.data_ptr(), self.dim, out.data_ptr(), out.shape[1], cols.data_ptr(),
                                     torch.get_num_threads())
        _check(bad, "grouped lookup", ids.numel(), "their field's [0, n)")
        return out


def grouped_lookup(ids: torch.Tensor, fields: Sequence[FieldKernel | None], dim: int) -> torch.Tensor | None:
    """Embed ``ids[B, F]`` (column f as ``fields[f]``) -> float32 ``[B, F, dim]`` in one pass.

    Returns None where the kernel cannot run (a field without a kernel, other dtypes or devices, autograd).
    """
    plan = LookupPlan.build(fields, dim)
    return None if plan is None else plan(ids)
