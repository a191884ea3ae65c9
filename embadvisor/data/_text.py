"""Low-level helpers shared by the readers: file checks, newline-aligned byte chunks, UTF-8 checks
and an ordered parallel map that keeps a bounded number of chunks in flight."""

from __future__ import annotations

import errno
import os
import re
import stat
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pyarrow as pa

from embadvisor.errors import DataError

T = TypeVar("T")
R = TypeVar("R")

#: Longest line any text reader accepts (a longer "line" means the file is not line-based text).
MAX_LINE_BYTES = 64 << 20
MIN_CHUNK_BYTES = 1 << 16
MAX_CHUNK_BYTES = 256 << 20
PARQUET_MAGIC = b"PAR1"
UTF8_BOM = b"\xef\xbb\xbf"


def default_threads() -> int:
    """Worker threads for parsing and counting: the CPUs this process may use (at most 8)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        n = os.cpu_count() or 1
    return max(1, min(8, n))


def _kind(mode: int) -> str:
    """What a non-regular, non-directory file is, in words."""
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def check_file(path: str | Path, what: str = "data") -> Path:
    """The path as a :class:`Path` if it is an existing, readable, non-empty regular file, else a DataError.

    ``what`` names the file in the messages (``"data"``, ``"qrels"``, ...). Symbolic-link loops,
    broken links, devices such as ``/dev/null`` and pipes get their own messages.
    """
    p = Path(path)
    try:
        st = os.stat(p)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise DataError(f"{what} path {str(p)!r} is a symbolic link loop (following it leads back to itself). "
                            "Point it at a data file.") from None
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            if os.path.islink(p):
                raise DataError(f"{what} file {str(p)!r} does not exist: it is a broken symbolic link (to "
                                f"{os.readlink(p)!r}). Check the path.") from None
            raise DataError(f"{what} file {str(p)!r} does not exist. Check the path.") from None
        raise DataError(f"{what} path {str(p)!r} cannot be accessed ({e.strerror}). Check the path and its "
                        "permissions.") from None
    if stat.S_ISDIR(st.st_mode):
        raise DataError(f"{what} path {str(p)!r} is a directory, not a file. Pass one data file inside it.")
    if not stat.S_ISREG(st.st_mode):
        raise DataError(f"{what} path {str(p)!r} exists but is {_kind(st.st_mode)}, not a regular file. "
                        "Pass a data file.")
    try:
        with open(p, "rb"):
            pass
    except OSError as e:
        raise DataError(f"{what} file {str(p)!r} cannot be read ({e.strerror}). Check its permissions.") from None
    if st.st_size == 0:
        raise DataError(f"{what} file {str(p)!r} is empty. Pass a file with at least one row.")
    return p


def resolve_path(path: str | Path, what: str = "data") -> Path:
    """``path`` made absolute with symbolic links resolved (DataError on a link loop)."""
    p = Path(path).expanduser()
    try:
        return p.resolve()
    except (RuntimeError, OSError):  # Python < 3.13 raises RuntimeError on a loop, later versions OSError
        raise DataError(f"{what} path {str(p)!r} is a symbolic link loop (following it leads back to itself). "
                        "Point it at a data file.") from None


def read_head(path: Path, size: int = 1 << 16) -> bytes:
    """The first bytes of a file: at least ``size`` (or the whole file), and for text files at least
    its first two complete lines, so a header longer than ``size`` is never cut (DataError when it
    cannot be read, or when the first line is longer than :data:`MAX_LINE_BYTES`)."""
    try:
        with open(path, "rb") as f:
            head = f.read(size)
            if len(head) < size or head.startswith(PARQUET_MAGIC) or b"\x00" in head:
                return head
            block = size
            while head.count(b"\n", 0, MAX_LINE_BYTES) < 2 and len(head) < MAX_LINE_BYTES + size:
                more = f.read(block)
                if not more:
                    return head
                head += more
                block = min(2 * block, 16 << 20)
    except OSError as e:
        raise DataError(f"data file {str(path)!r} cannot be read ({e.strerror}).") from None
    if b"\n" not in head[:MAX_LINE_BYTES]:
        raise DataError(f"{str(path)!r} has a first line longer than {MAX_LINE_BYTES >> 20} MiB: it is not "
                        "line-based text. Pass a text data file or the right --format.")
    return head


def first_lines(head: bytes, n: int = 20) -> list[str]:
    """Up to ``n`` complete non-empty lines of ``head`` decoded as UTF-8 (undecodable bytes replaced)."""
    lines = head.split(b"\n")
    if len(lines) > 1 and len(head) >= (1 << 16):  # the last piece may be cut off
        lines = lines[:-1]
    if lines and lines[0].startswith(UTF8_BOM):
        lines[0] = lines[0][len(UTF8_BOM):]
    out = [ln.rstrip(b"\r").decode("utf-8", errors="replace") for ln in lines if ln.strip()]
    return out[:n]


def check_text_head(path: Path, head: bytes, fmt: str) -> None:
    """Reject files that are obviously not text in the ``fmt`` text format (Parquet, binary)."""
    if head.startswith(PARQUET_MAGIC):
        raise DataError(f"{str(path)!r} is a Parquet file, not {fmt} text. Pass --format parquet "
                        "(or leave --format out to guess it).")
    if b"\x00" in head:
        raise DataError(f"{str(path)!r} contains NUL bytes: it is a binary file, not {fmt} text. "
                        "Pass a text file or the right --format.")


def skip_lines_offset(head: bytes, lines: int) -> int:
    """Byte offset just after the first ``lines`` lines of ``head``."""
    off = 0
    for _ in range(lines):
        nl = head.find(b"\n", off)
        if nl < 0:
            return len(head)
        off = nl + 1
    return off


def count_newlines(path: Path, end: int) -> int:
    """Newlines in the first ``end`` bytes of a file (used only to put a line number on an error)."""
    n = 0
    with open(path, "rb") as f:
        left = end
        while left > 0:
            block = f.read(min(left, 16 << 20))
            if not block:
                break
            n += block.count(b"\n")
            left -= len(block)
    return n


@dataclass(frozen=True)
class Chunk:
    """A run of whole lines of a text file.

    Args:
        raw: bytes read from the file; only ``raw[:end]`` belongs to the chunk (the rest is the
            start of the next line, read again with the next chunk; no copy is made to cut it).
        end: number of bytes of ``raw`` in the chunk (each line ends with a newline, except
            possibly the file's last line).
        offset: byte offset of ``raw[0]`` in the file.
        index: position of the chunk in the file (0 = first).
    """

    raw: bytes
    end: int
    offset: int
    index: int

    @property
    def buffer(self) -> pa.Buffer:
        """The chunk's bytes as a zero-copy Arrow buffer."""
        return pa.py_buffer(self.raw).slice(0, self.end)

    @property
    def data(self) -> bytes:
        """The chunk's bytes (a copy when the chunk is shorter than ``raw``; error paths only)."""
        return self.raw if self.end == len(self.raw) else self.raw[: self.end]

    def line_number(self, path: Path, line_in_chunk: int) -> int:
        """1-based file line number of the ``line_in_chunk``-th (1-based) line of this chunk."""
        return count_newlines(path, self.offset) + line_in_chunk


def iter_chunks(path: Path, chunk_bytes: int, start: int = 0) -> Iterator[Chunk]:
    """Read ``path`` from byte ``start`` in chunks of about ``chunk_bytes`` that end on a newline."""
    chunk_bytes = max(MIN_CHUNK_BYTES, min(MAX_CHUNK_BYTES, int(chunk_bytes)))
    offset = start
    index = 0
    with open(path, "rb") as f:
        while True:
            f.seek(offset)
            raw = f.read(chunk_bytes)
            if not raw:
                return
            if len(raw) < chunk_bytes:  # the end of the file
                end = len(raw)
            else:
                end = raw.rfind(b"\n") + 1
                if end == 0:  # a line longer than the chunk: read on to its end
                    tail = f.readline(MAX_LINE_BYTES)
                    if len(tail) >= MAX_LINE_BYTES and not tail.endswith(b"\n"):
                        raise DataError(f"{str(path)!r} has a line longer than {MAX_LINE_BYTES >> 20} MiB: it is "
                                        "not line-based text. Pass a text data file or the right --format.")
                    raw += tail
                    end = len(raw)
            yield Chunk(raw, end, offset, index)
            offset += end
            index += 1


def check_utf8(path: Path, chunk: Chunk) -> None:
    """DataError (with the line number) when the chunk is not valid UTF-8."""
    if chunk.raw.isascii():
        return
    try:
        str(memoryview(chunk.raw)[: chunk.end], "utf-8")
    except UnicodeDecodeError as e:
        data = chunk.raw
        line_start = data.rfind(b"\n", 0, e.start) + 1
        line = chunk.line_number(path, data.count(b"\n", 0, e.start) + 1)
        raise DataError(
            f"{str(path)!r} line {line} is not UTF-8 text (byte 0x{data[e.start]:02x} at column "
            f"{e.start - line_start + 1}). Re-encode the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)."
        ) from None


def find_line(data: bytes, bad: Callable[[bytes], bool]) -> tuple[int, bytes] | None:
    """The first (1-based line, line) of ``data`` for which ``bad(line)`` is true; blank lines skipped."""
    for i, raw in enumerate(data.split(b"\n"), start=1):
        line = raw.rstrip(b"\r")
        if line.strip() and bad(line):
            return i, line
    return None


def natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that orders embedded numbers numerically (``f2`` before ``f10``)."""
    return tuple((0, int(t)) if t.isdigit() else (1, t) for t in re.split(r"(\d+)", name) if t)


def shorten(text: str, limit: int = 60) -> str:
    """``text`` cut to ``limit`` characters with an ellipsis."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def ordered_map(fn: Callable[[T], R], items: Iterable[T], threads: int) -> Iterator[R]:
    """``map(fn, items)`` computed by ``threads`` worker threads, results in input order.

    At most ``threads + 1`` items are in flight, so memory stays bounded; the items are produced
    (read) by the calling thread while the workers run. The first error, in input order, is raised.
    """
    if threads <= 1:
        for item in items:
            yield fn(item)
        return
    pending: deque[Future[R]] = deque()
    ex = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="embadvisor-read")
    try:
        for item in items:
            pending.append(ex.submit(fn, item))
            if len(pending) > threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for fut in pending:
            fut.cancel()
        ex.shutdown(wait=True, cancel_futures=True)
