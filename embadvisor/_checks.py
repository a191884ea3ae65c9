"""Checks of user inputs that several commands share: seeds, output paths, worker counts, memory.

Each check raises an :class:`~embadvisor.errors.EmbAdvisorError` subclass whose message names the
parameter, the constraint and what to do, so the CLI prints it as one line (exit code 2).
"""

from __future__ import annotations

import os
from pathlib import Path

from embadvisor.errors import DataError, InvalidConfigError
from embadvisor.units import format_size

__all__ = [
    "MAX_SEED",
    "WORKERS_PER_CORE",
    "check_fits_memory",
    "check_output_path",
    "check_seed",
    "check_threads",
    "check_workers",
    "max_workers",
    "physical_memory_bytes",
    "write_text",
]

#: largest seed: numpy's legacy ``RandomState`` and Optuna's samplers take 32-bit seeds
MAX_SEED = 2**32 - 1
#: at most this many worker processes per CPU core
WORKERS_PER_CORE = 4
#: at most this many torch threads per CPU core (a million crashed the OpenMP runtime with a segfault)
THREADS_PER_CORE = 4


def check_seed(seed: object, *, name: str = "seed") -> int:
    """``seed`` as an int in ``[0, 2**32 - 1]`` (what torch, numpy and Optuna all accept)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise InvalidConfigError(
            f"`{name}` must be an integer in [0, {MAX_SEED}] (numpy and Optuna take 32-bit seeds), "
            f"but got {name}={seed!r}. Pass e.g. --{name} 0."
        )
    return seed


def check_output_path(path: str | Path, *, name: str = "output") -> Path:
    """``path`` as a Path if a file can be written there: its folder exists, it is not a folder itself, and
    the file can be opened for writing (a probe that leaves an existing file untouched and removes the one it
    created), which catches names too long, symbolic-link loops, links into missing folders, named pipes and
    folders nobody may write to (/proc, /sys).

    Called before long work starts, so a typo in ``-o`` costs nothing.
    """
    path = Path(path).expanduser()
    parent = path.parent
    try:  # Path.is_dir raises on some errors, e.g. a name too long
        is_dir, parent_is_dir = path.is_dir(), parent.is_dir()
    except OSError as e:
        raise DataError(f"`{name}` must be a file that can be written, but got {name}={str(path)!r} "
                        f"({e.strerror or e}). Pick another path.") from None
    if is_dir:
        raise DataError(f"`{name}` must be a file path, but got {name}={str(path)!r}, which is a directory. "
                        "Add a file name.")
    if not parent_is_dir:
        what = "is not a directory" if parent.exists() else "does not exist"
        raise DataError(f"`{name}` must be in an existing directory, but got {name}={str(path)!r} "
                        f"({str(parent)!r} {what}). Create the directory first or pick another path.")
    existed = os.path.exists(path)  # follows links: a dangling link's target is created by the probe
    try:  # append, no truncation: an existing file keeps its content; non-blocking: a pipe without reader fails
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NONBLOCK, 0o666)
    except OSError as e:
        raise DataError(f"`{name}` must be a file that can be written, but got {name}={str(path)!r} "
                        f"({e.strerror or e}). Pick another path.") from None
    os.close(fd)
    if not existed:
        os.unlink(os.path.realpath(path))
    return path


def write_text(path: Path, text: str, *, name: str = "output") -> Path:
    """Write ``text`` to ``path`` (after :func:`check_output_path`); OS errors become one clear line."""
    check_output_path(path, name=name)
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as e:
        raise DataError(f"cannot write `{name}` {str(path)!r}: {e.strerror or e}. "
                        "Pick a path you can write to.") from None
    return path


def max_workers() -> int:
    """Most worker processes allowed: :data:`WORKERS_PER_CORE` times the CPU cores."""
    return WORKERS_PER_CORE * (os.cpu_count() or 1)


def check_workers(workers: object, *, name: str = "workers") -> int:
    """``workers`` as an int in ``[1, max_workers()]``."""
    cap = max_workers()
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= cap:
        raise InvalidConfigError(
            f"`{name}` must be an integer in [1, {cap}] ({WORKERS_PER_CORE} per CPU core; this machine has "
            f"{os.cpu_count() or 1}), but got {name}={workers!r}. Use fewer workers, or start `embadvisor worker` "
            "processes on more machines."
        )
    return workers


def check_threads(threads: object, *, name: str = "threads") -> int:
    """``threads`` as an int in ``[1, THREADS_PER_CORE * cores]`` (torch threads of one process)."""
    cap = THREADS_PER_CORE * (os.cpu_count() or 1)
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= cap:
        raise InvalidConfigError(
            f"`{name}` must be an integer in [1, {cap}] ({THREADS_PER_CORE} per CPU core; this machine has "
            f"{os.cpu_count() or 1}), but got {name}={threads!r}. Pass at most the number of cores, e.g. "
            f"--{name} {os.cpu_count() or 1}."
        )
    return threads


def physical_memory_bytes() -> int | None:
    """This machine's physical memory in bytes (None where the platform does not say)."""
    try:
        n = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        if n > 0:
            return int(n)
    except (AttributeError, ValueError, OSError):
        pass
    try:  # optional: psutil where installed (e.g. Windows)
        import psutil  # type: ignore[import-untyped]

        return int(psutil.virtual_memory().total)
    except Exception:  # noqa: BLE001 - not installed or not supported: unknown
        return None


def check_fits_memory(nbytes: float, *, what: str, fix: str) -> None:
    """Refuse work whose analytic memory ``nbytes`` exceeds this machine's physical memory.

    Args:
        nbytes: the estimate (bytes).
        what: what needs it, e.g. "training full at dim 100000000".
        fix: what to do instead, e.g. "lower --dim".
    """
    total = physical_memory_bytes()
    if total is not None and nbytes > total:
        raise InvalidConfigError(
            f"{what} needs about {format_size(nbytes)} of memory (analytic estimate), but this machine has "
            f"{format_size(total)}. {fix[:1].upper() + fix[1:]}."
        )
