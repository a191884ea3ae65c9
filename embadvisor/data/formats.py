"""Data-file formats: readers that stream a file as Arrow batches, a registry and format guessing.

A :class:`Format` (``criteo``, ``avazu``, ``csv``, ``parquet``, ``movielens``, ``interactions``,
``libfm``, ``libffm``) opens a file as a :class:`Source`. The source describes what the file holds
(:class:`Layout`: label, categorical fields, multi-hot fields, dense features) and streams it as
:class:`Batch` objects: text files are cut into newline-aligned byte chunks that worker threads
parse with ``pyarrow.csv`` (or Arrow string kernels for line formats) and hand to a consumer
function in the same thread, so parsing and counting run on all cores and memory stays bounded by
the chunks in flight. Nothing on the hot path loops over rows in Python.

Conventions every reader follows:

* categorical values keep their file representation (strings for text formats, the column type
  for Parquet); null and ``""`` mean *missing*;
* labels are numbers; a row is positive when its label is > 0;
* every bad input raises :class:`~embadvisor.errors.DataError` (or ``UnknownNameError``) with one
  line that names the problem and the fix; no raw Arrow or OS error escapes.
"""

from __future__ import annotations

import csv
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from embadvisor.data import _text
from embadvisor.data._text import Chunk
from embadvisor.errors import DataError, InvalidConfigError, UnknownNameError, suggest

__all__ = [
    "AVAZU_COLUMNS",
    "CRITEO_CATEGORICAL",
    "CRITEO_DENSE",
    "DEFAULT_BATCH_ROWS",
    "FORMATS",
    "Batch",
    "Format",
    "Layout",
    "Source",
    "check_id_column",
    "format_names",
    "get_format",
    "guess_format",
    "open_source",
]

T = TypeVar("T")

#: Rows per batch (text formats: the byte-chunk size is this times the mean line length).
DEFAULT_BATCH_ROWS = 65_536
#: Arrow CSV block size inside a chunk: small blocks keep the tokenizer output in the CPU cache.
_CSV_BLOCK_BYTES = 1 << 20

CRITEO_DENSE = tuple(f"I{i}" for i in range(1, 14))
CRITEO_CATEGORICAL = tuple(f"C{i}" for i in range(1, 27))
AVAZU_COLUMNS = (
    "id", "click", "hour", "C1", "banner_pos", "site_id", "site_domain", "site_category", "app_id",
    "app_domain", "app_category", "device_id", "device_ip", "device_model", "device_type",
    "device_conn_type", "C14", "C15", "C16", "C17", "C18", "C19", "C20", "C21",
)
#: Column names tried, in order, as the label of a generic CSV / Parquet file when none is given.
LABEL_CANDIDATES = ("label", "click", "clicked", "target", "y")
_INT_RE = re.compile(r"^[+-]?\d+$")
_NUM_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


# --------------------------------------------------------------------------- data model
@dataclass(frozen=True)
class Layout:
    """What a source holds.

    Args:
        format: the format name.
        task: ``"ctr"`` (labelled samples) or ``"retrieval"`` (user-item interactions).
        label: label column name, or None when the file has no label.
        fields: single-valued categorical fields (one id per row, possibly missing).
        multi_hot: multi-valued categorical fields (a list of ids per row).
        dense: dense numeric features.
        dynamic: True when more fields are discovered while reading (libffm).
        requested: for dynamic layouts, the fields asked for (empty: all that appear).
    """

    format: str
    task: str
    label: str | None
    fields: tuple[str, ...]
    multi_hot: tuple[str, ...] = ()
    dense: tuple[str, ...] = ()
    dynamic: bool = False
    requested: tuple[str, ...] = ()

    @property
    def categorical(self) -> tuple[str, ...]:
        """All categorical fields: single-valued first, then multi-hot."""
        return self.fields + self.multi_hot


@dataclass
class Batch:
    """Consecutive rows of a source, as Arrow arrays of equal length ``num_rows``.

    Args:
        num_rows: rows (samples; interactions for retrieval sources).
        label: numeric labels (positive when > 0), or None.
        fields: single-valued categorical arrays, possibly chunked (null or ``""`` = missing).
        multi: multi-hot fields as list arrays (null or empty list = missing).
        dense: dense features as float64 arrays (null = missing), raw values.
        weight: interaction weight / rating, if the file has one.
        time: interaction timestamp, if the file has one.
    """

    num_rows: int
    label: pa.Array | None = None
    fields: dict[str, pa.Array | pa.ChunkedArray] = field(default_factory=dict)
    multi: dict[str, pa.Array] = field(default_factory=dict)
    dense: dict[str, pa.Array] = field(default_factory=dict)
    weight: pa.Array | None = None
    time: pa.Array | None = None


class Source(ABC):
    """An opened data file: its :class:`Layout` and a way to stream it."""

    def __init__(self, path: Path, layout: Layout) -> None:
        self.path = path
        self.layout = layout

    @property
    def format(self) -> str:
        return self.layout.format

    def describe(self) -> str:
        """``'<path> (<format>)'``, the provenance text used in profiles."""
        return f"{self.path} ({self.layout.format})"

    @abstractmethod
    def map(self, fn: Callable[[Batch], T], *, batch_rows: int = DEFAULT_BATCH_ROWS, threads: int | None = None,
            dense: bool = True) -> Iterator[T]:
        """Apply ``fn`` to every batch, in worker threads, and yield the results in file order.

        Args:
            fn: called once per batch, in a worker thread (it may run concurrently with itself).
            batch_rows: about how many rows per batch.
            threads: worker threads (default: the usable CPUs).
            dense: also parse dense features (skip them when only counting ids).
        """

    def batches(self, *, batch_rows: int = DEFAULT_BATCH_ROWS, threads: int | None = None,
                dense: bool = True) -> Iterator[Batch]:
        """The batches themselves, in file order."""
        return self.map(_identity, batch_rows=batch_rows, threads=threads, dense=dense)


def _identity(b: Batch) -> Batch:
    return b


class Format(ABC):
    """A file format: its name, how to recognise it and how to open a file as a :class:`Source`."""

    name: str = ""
    description: str = ""

    @abstractmethod
    def open(self, path: Path, head: bytes, *, label: str | None, fields: Sequence[str] | None) -> Source:
        """Open ``path`` (``head`` = its first bytes) with the given label / field selection."""

    def __repr__(self) -> str:
        return f"<format {self.name}>"


# --------------------------------------------------------------------------- shared helpers
def _q(path: Path) -> str:
    return repr(str(path))


def _listing(names: Sequence[str], limit: int = 20) -> str:
    """``names`` joined with commas; a long list cut to its first ``limit`` names and a count."""
    names = list(names)
    if len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[:limit]) + f", ... ({len(names)} in all)"


def _select_fields(path: Path, fmt: str, available: Sequence[str], fields: Sequence[str] | None) -> tuple[str, ...]:
    """The requested fields, checked against the ones the file has."""
    if fields is None:
        return tuple(available)
    if isinstance(fields, str):
        fields = [f.strip() for f in fields.split(",") if f.strip()]
    fields = list(fields)
    if not fields:
        raise DataError(f"`fields` must name at least one column, but got fields={fields!r}. "
                        f"Leave it out to use all of them: {_listing(available)}.")
    unknown = [f for f in fields if f not in available]
    if unknown:
        raise DataError(f"`fields` must be columns of {_q(path)}, but got fields={_text.shorten(repr(unknown), 200)}; "
                        f"its {fmt} columns are: {_listing(available)}.{suggest(unknown[0], list(available))}")
    dup = sorted({f for f in fields if fields.count(f) > 1})
    if dup:
        raise DataError(f"`fields` must not repeat a column, but got fields={fields!r}. Remove the duplicates {dup}.")
    return tuple(fields)


def _fixed_label(path: Path, fmt: str, label: str | None, actual: str | None, columns: str = "") -> str | None:
    """The format's own label column (``actual``); ``label``, when given, must name it.

    ``columns`` describes the file's columns for the message when it has no label column.
    """
    if label is None or label == actual:
        return actual
    if actual is None:
        what = f" ({columns})" if columns else ""
        raise DataError(f"{_q(path)} has no label column{what}, so label={label!r} cannot apply. Leave --label out "
                        "to read it unlabelled (profiling only), or pass the file that holds the labels.")
    raise DataError(f"`label` must be {actual!r} for the {fmt} format (it is fixed), but got label={label!r}. "
                    "Leave --label out, or pass --format csv to choose columns freely.")


def _mean_line_bytes(head: bytes) -> float:
    lines = head.count(b"\n")
    return max(8.0, len(head) / max(1, lines)) if lines else float(max(len(head), 64))


def _as_array(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(col, pa.ChunkedArray):
        return col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    return col


def _check_batch_rows(batch_rows: object) -> None:
    if isinstance(batch_rows, bool) or not isinstance(batch_rows, int) or batch_rows < 1:
        raise InvalidConfigError(f"`batch_rows` must be an integer >= 1, but got batch_rows={batch_rows!r}.")


def _is_numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_decimal(t)


# --------------------------------------------------------------------------- text sources
class _TextSource(Source):
    """A line-based text file streamed as newline-aligned byte chunks parsed in worker threads."""

    def __init__(self, path: Path, layout: Layout, *, head: bytes, start: int) -> None:
        super().__init__(path, layout)
        self._start = len(_text.UTF8_BOM) if start == 0 and head.startswith(_text.UTF8_BOM) else start
        self._line_bytes = _mean_line_bytes(head)

    @abstractmethod
    def _parse(self, chunk: Chunk, dense: bool) -> Batch:
        """Parse one chunk (raises DataError on bad content)."""

    def map(self, fn: Callable[[Batch], T], *, batch_rows: int = DEFAULT_BATCH_ROWS, threads: int | None = None,
            dense: bool = True) -> Iterator[T]:
        _check_batch_rows(batch_rows)
        n_threads = threads or _text.default_threads()
        size = self.path.stat().st_size - self._start
        # about batch_rows rows per chunk, but at least 4 chunks per thread on mid-sized files
        chunk_bytes = int(min(batch_rows * self._line_bytes, max(1 << 20, size / (4 * n_threads))))
        path = self.path

        def work(chunk: Chunk) -> T:
            _text.check_utf8(path, chunk)
            return fn(self._parse(chunk, dense))

        return _text.ordered_map(work, _text.iter_chunks(path, chunk_bytes, self._start), n_threads)

    def _line_error(self, chunk: Chunk, line_in_chunk: int, problem: str, fix: str) -> DataError:
        line = chunk.line_number(self.path, line_in_chunk)
        sep = " " if problem.startswith("has ") else ": "
        return DataError(f"{_q(self.path)} line {line}{sep}{problem}. {fix}")


class _CsvSource(_TextSource):
    """A delimited text file parsed with ``pyarrow.csv`` (one ``read_csv`` per chunk)."""

    def __init__(self, path: Path, layout: Layout, *, head: bytes, start: int, names: Sequence[str], delimiter: str,
                 quoted: bool, types: Mapping[str, pa.DataType], label_col: str | None,
                 field_cols: Mapping[str, str], dense_cols: Sequence[str] = (), fixed_what: str = "",
                 extra_cols: Sequence[str] = ()) -> None:
        super().__init__(path, layout, head=head, start=start)
        self._names = list(names)
        self._delimiter = delimiter
        self._quoted = quoted
        self._types = dict(types)
        self._label_col = label_col
        self._field_cols = dict(field_cols)  # field name -> column name
        self._dense_cols = list(dense_cols)
        self._extra_cols = list(extra_cols)
        self._fixed_what = fixed_what  # e.g. "label, I1-I13, C1-C26"
        self._parse_opts = pacsv.ParseOptions(delimiter=delimiter, quote_char='"' if quoted else False,
                                              double_quote=quoted, escape_char=False, newlines_in_values=False,
                                              ignore_empty_lines=True)

    def _include(self, dense: bool) -> list[str]:
        cols = ([self._label_col] if self._label_col else []) + list(self._field_cols.values()) + self._extra_cols
        if dense:
            cols += self._dense_cols
        seen: set[str] = set()
        return [c for c in cols if not (c in seen or seen.add(c))]  # type: ignore[func-returns-value]

    def _read_table(self, chunk: Chunk, dense: bool) -> pa.Table:
        include = self._include(dense)

        def read(block_size: int) -> pa.Table:
            return pacsv.read_csv(
                pa.BufferReader(chunk.buffer),
                read_options=pacsv.ReadOptions(column_names=self._names, use_threads=False, block_size=block_size),
                parse_options=self._parse_opts,
                convert_options=pacsv.ConvertOptions(
                    column_types={c: self._types[c] for c in include if c in self._types},
                    include_columns=include, null_values=[""], strings_can_be_null=False,
                    quoted_strings_can_be_null=False, check_utf8=False),
            )

        try:
            try:
                return read(_CSV_BLOCK_BYTES)
            except pa.ArrowInvalid as e:
                if "straddl" not in str(e):
                    raise
                # a row longer than the tokenizer block (a field of megabytes): parse the chunk as one block
                return read(max(_CSV_BLOCK_BYTES, chunk.end + 1))
        except pa.ArrowException as e:
            raise self._diagnose(chunk, str(e)) from None

    def _split(self, line: bytes) -> list[str]:
        text = line.decode("utf-8", errors="replace")
        if self._quoted:
            return next(csv.reader([text], delimiter=self._delimiter), [])
        return text.split(self._delimiter)

    def _diagnose(self, chunk: Chunk, msg: str) -> DataError:
        """Turn an Arrow parse/convert error into a one-line DataError naming the file line."""
        fmt = self.layout.format
        n = len(self._names)
        what = f" ({self._fixed_what})" if self._fixed_what else ""
        m = re.search(r"Expected (\d+) columns, got (\d+)", msg)
        if m:
            hit = _text.find_line(chunk.data, lambda ln: len(self._split(ln)) != n)
            got = len(self._split(hit[1])) if hit else int(m.group(2))
            sep = {"\t": "tab", ",": "comma"}.get(self._delimiter, repr(self._delimiter))
            problem = f"has {got} {sep}-separated columns, but {fmt} rows have {n}{what}"
            fix = "Check the file, or pass the right --format (see `embadvisor profile --help`)."
            if hit:
                return self._line_error(chunk, hit[0], problem, fix)
            return DataError(f"{_q(self.path)}: a row {problem}. {fix}")
        if "straddl" in msg:  # a row longer than any block (only after the one-block retry failed)
            return DataError(f"{_q(self.path)} has a row too long to parse as one block (a field of about "
                             f"{chunk.end >> 20} MiB or more). Shorten the longest fields, or drop those columns "
                             "with --fields.")
        m = re.search(r"column #(\d+).*conversion error to (\w+): invalid value '(.*)'", msg)
        if m:
            k, typ, value = int(m.group(1)), m.group(2), m.group(3)
            col = self._names[k] if k < len(self._names) else f"#{k}"
            kind = "an integer" if "int" in typ else "a number"
            hit = _text.find_line(chunk.data, lambda ln: (lambda p: len(p) > k and p[k] == value)(self._split(ln)))
            problem = f"column {col!r} holds {_text.shorten(value)!r}, which is not {kind}"
            fix = f"Fix the file, or pass the right --format (is it really {fmt}?)."
            if hit:
                return self._line_error(chunk, hit[0], problem, fix)
            return DataError(f"{_q(self.path)}: {problem}. {fix}")
        first = msg.strip().splitlines()[0] if msg.strip() else "unknown error"
        return DataError(f"{_q(self.path)} cannot be read as {fmt}: {_text.shorten(first, 160)}. "
                         "Check the file or pass the right --format.")

    def _parse(self, chunk: Chunk, dense: bool) -> Batch:
        t = self._read_table(chunk, dense)
        label = _as_array(t.column(self._label_col)) if self._label_col else None
        fields = {name: t.column(col) for name, col in self._field_cols.items()}  # chunked: no copy
        dense_cols = {c: _as_array(t.column(c)).cast(pa.float64()) for c in self._dense_cols} if dense else {}
        return self._finish(Batch(t.num_rows, label=label, fields=fields, dense=dense_cols), t)

    def _finish(self, batch: Batch, table: pa.Table) -> Batch:
        """Hook for format-specific additions (MovieLens side information)."""
        return batch


def _first_line_tokens(path: Path, head: bytes, delimiter: str) -> list[str]:
    lines = _text.first_lines(head, 1)
    if not lines:
        raise DataError(f"{_q(path)} has no data lines (only blank lines). Pass a file with at least one row.")
    return lines[0].split(delimiter)


# --------------------------------------------------------------------------- criteo
class CriteoFormat(Format):
    """Criteo Kaggle/Terabyte TSV: ``label I1..I13 C1..C26`` without header (39 columns: no label)."""

    name = "criteo"
    description = "Criteo TSV, no header: label, I1-I13 (ints), C1-C26 (hex tokens); empty = missing"

    def open(self, path: Path, head: bytes, *, label: str | None, fields: Sequence[str] | None) -> Source:
        _text.check_text_head(path, head, self.name)
        tokens = _first_line_tokens(path, head, "\t")
        if len(tokens) == 40:
            names = ["label", *CRITEO_DENSE, *CRITEO_CATEGORICAL]
            label_col: str | None = "label"
        elif len(tokens) == 39:
            names = [*CRITEO_DENSE, *CRITEO_CATEGORICAL]
            label_col = None
        else:
            raise DataError(f"{_q(path)} line 1 has {len(tokens)} tab-separated columns, but criteo rows have 40 "
                            "(label, I1-I13, C1-C26) or 39 (no label). Check the file or pass the right --format.")
        label_col = _fixed_label(path, self.name, label, label_col, "its criteo rows have 39 columns: I1-I13, C1-C26")
        chosen = _select_fields(path, self.name, CRITEO_CATEGORICAL, fields)
        types: dict[str, pa.DataType] = {c: pa.string() for c in CRITEO_CATEGORICAL}
        types.update({c: pa.float64() for c in CRITEO_DENSE})
        if label_col:
            types[label_col] = pa.int32()
        layout = Layout(self.name, "ctr", label_col, chosen, dense=CRITEO_DENSE)
        return _CsvSource(path, layout, head=head, start=0, names=names, delimiter="\t", quoted=False, types=types,
                          label_col=label_col, field_cols={c: c for c in chosen}, dense_cols=CRITEO_DENSE,
                          fixed_what="label, I1-I13, C1-C26" if label_col else "I1-I13, C1-C26")


# --------------------------------------------------------------------------- avazu
class AvazuFormat(Format):
    """Avazu CSV (``id,click,hour,C1,...,C21``), with or without the header line."""

    name = "avazu"
    description = "Avazu CSV: id, click, hour, C1, banner_pos, ... C21 (header optional); label = click"

    def open(self, path: Path, head: bytes, *, label: str | None, fields: Sequence[str] | None) -> Source:
        _text.check_text_head(path, head, self.name)
        tokens = [t.strip() for t in _first_line_tokens(path, head, ",")]
        has_header = bool(tokens) and not _INT_RE.match(tokens[0])
        if has_header:
            names = tokens
            if "click" not in names and len(names) != len(AVAZU_COLUMNS) - 1:
                raise DataError(f"{_q(path)} header has no 'click' column: {_text.shorten(','.join(names), 80)!r}. "
                                "Pass --format csv --label COLUMN for other CSV files.")
        elif len(tokens) == len(AVAZU_COLUMNS):
            names = list(AVAZU_COLUMNS)
        elif len(tokens) == len(AVAZU_COLUMNS) - 1:
            names = [c for c in AVAZU_COLUMNS if c != "click"]
        else:
            raise DataError(f"{_q(path)} line 1 has {len(tokens)} comma-separated columns, but avazu rows have 24 "
                            "(id, click, hour, C1, ..., C21) or 23 (no click). Check the file or pass the right "
                            "--format.")
        label_col = _fixed_label(path, self.name, label, "click" if "click" in names else None,
                                 f"its avazu rows have {len(names)} columns and no 'click'")
        available = [c for c in names if c not in ("id", "click")]
        chosen = _select_fields(path, self.name, available, fields)
        types: dict[str, pa.DataType] = {c: pa.string() for c in chosen}
        if label_col:
            types[label_col] = pa.int32()
        layout = Layout(self.name, "ctr", label_col, chosen)
        return _CsvSource(path, layout, head=head, start=_text.skip_lines_offset(head, 1) if has_header else 0,
                          names=names, delimiter=",", quoted=False, types=types, label_col=label_col,
                          field_cols={c: c for c in chosen}, fixed_what="id, click, hour, C1, ..., C21")


# --------------------------------------------------------------------------- generic csv
def _sniff_delimiter(line: str) -> str:
    counts = {d: line.count(d) for d in (",", "\t", ";", "|")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


def _default_label(names: Sequence[str]) -> str | None:
    lower = {n.lower(): n for n in names}
    for cand in LABEL_CANDIDATES:
        if cand in lower:
            return lower[cand]
    return None


def _resolve_label(path: Path, names: Sequence[str], label: str | None) -> str | None:
    if label is None:
        return _default_label(names)
    if label not in names:
        raise DataError(f"`label` must be a column of {_q(path)}, but got label={label!r}; its columns are: "
                        f"{_listing(names)}.{suggest(label, list(names))}")
    return label


class CsvFormat(Format):
    """Any delimited text file with a header line; label and categorical fields chosen by name.

    The delimiter (``,``, tab, ``;`` or ``|``) is sniffed from the header. Double-quoted values are
    supported, but not newlines inside them (files are cut into chunks at newlines).
    """

    name = "csv"
    description = ("CSV/TSV with a header; --label COLUMN (default: label/click/target/y if present), "
                   "--fields a,b,c (default: every other column)")

    def open(self, path: Path, head: bytes, *, label: str | None, fields: Sequence[str] | None) -> Source:
        _text.check_text_head(path, head, self.name)
        lines = _text.first_lines(head, 1)
        if not lines:
            raise DataError(f"{_q(path)} has no lines (only blank lines). Pass a CSV file with a header and rows.")
        delimiter = _sniff_delimiter(lines[0])
        names = [n.strip() for n in next(csv.reader([lines[0]], delimiter=delimiter))]
        if all(_NUM_RE.match(n) for n in names if n):
            raise DataError(f"{_q(path)} has no header line (line 1 is data: {_text.shorten(lines[0])!r}). "
                            "Add a header naming the columns, or pass the right --format.")
        names = [n or f"column{i + 1}" for i, n in enumerate(names)]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise DataError(f"{_q(path)} header repeats the column names {dup}. Give every column a unique name.")
        label_col = _resolve_label(path, names, label)
        available = [c for c in names if c != label_col]
        if not available:
            raise DataError(f"{_q(path)} has no column besides the label {label_col!r}. "
                            "Pass a file with categorical columns.")
        chosen = _select_fields(path, self.name, available, fields)
        types: dict[str, pa.DataType] = {c: pa.string() for c in chosen}
        if label_col:
            types[label_col] = pa.float64()
        layout = Layout(self.name, "ctr", label_col, chosen)
        return _CsvSource(path, layout, head=head, start=_text.skip_lines_offset(head, 1), names=names,
                          delimiter=delimiter, quoted=True, types=types, label_col=label_col,
                          field_cols={c: c for c in chosen})


# --------------------------------------------------------------------------- parquet
class _ParquetSource(Source):
    def __init__(self, path: Path, layout: Layout, pf: Any, columns: list[str]) -> None:
        super().__init__(path, layout)
        self._pf = pf
        self._columns = columns

    def _error(self, e: Exception) -> DataError:
        first = (str(e).strip().splitlines() or ["unknown error"])[0].rstrip(".")
        return DataError(f"{_q(self.path)} is not a readable Parquet file ({_text.shorten(first, 120)}). "
                         "It may be corrupt or truncated: rewrite it, or pass the right --format.")

    def _raw_batches(self, batch_rows: int) -> Iterator[pa.RecordBatch]:
        try:
            yield from self._pf.iter_batches(batch_size=batch_rows, columns=self._columns, use_threads=True)
        except (pa.ArrowException, OSError) as e:
            raise self._error(e) from None

    def _convert(self, rb: pa.RecordBatch) -> Batch:
        lay = self.layout

        def col(name: str) -> pa.Array:
            a = rb.column(name)
            if pa.types.is_dictionary(a.type):
                a = a.cast(a.type.value_type)
            return a

        label = col(lay.label).cast(pa.float64()) if lay.label else None
        fields = {f: col(f) for f in lay.fields}
        multi = {}
        for f in lay.multi_hot:
            a = col(f)
            vt = a.type.value_type
            if pa.types.is_dictionary(vt):
                a = pa.ListArray.from_arrays(a.offsets, a.flatten().cast(vt.value_type), mask=a.is_null())
            multi[f] = a
        return Batch(rb.num_rows, label=label, fields=fields, multi=multi)

    def map(self, fn: Callable[[Batch], T], *, batch_rows: int = DEFAULT_BATCH_ROWS, threads: int | None = None,
            dense: bool = True) -> Iterator[T]:
        _check_batch_rows(batch_rows)

        def work(rb: pa.RecordBatch) -> T:
            return fn(self._convert(rb))

        return _text.ordered_map(work, self._raw_batches(batch_rows), threads or _text.default_threads())


class ParquetFormat(Format):
    """A Parquet file; label and categorical fields chosen by name; list columns are multi-hot."""

    name = "parquet"
    description = ("Parquet; --label COLUMN (default: label/click/target/y if present), --fields a,b,c "
                   "(default: every other column; list columns are multi-hot)")

    def open(self, path: Path, head: bytes, *, label: str | None, fields: Sequence[str] | None) -> Source:
        import pyarrow.parquet as pq

        if not head.startswith(_text.PARQUET_MAGIC):
            raise DataError(f"{_q(path)} is not a Parquet file (it does not start with the Parquet magic bytes "
                            "'PAR1'). Pass the right --format (or leave it out to guess it).")
        try:
            pf = pq.ParquetFile(path)
            schema = pf.schema_arrow
        except (pa.ArrowException, OSError) as e:
            first = (str(e).strip().splitlines() or ["unknown error"])[0].rstrip(".")
            raise DataError(f"{_q(path)} is not a readable Parquet file ({_text.shorten(first, 120)}). It may be "
                            "corrupt or truncated: rewrite it, or pass the right --format.") from None
        names = list(schema.names)
        if not names:
            raise DataError(f"{_q(path)} has no columns. Pass a Parquet file with data.")
        label_col = _resolve_label(path, names, label)
        if label_col is not None and not _is_numeric(schema.field(label_col).type):
            raise DataError(f"label column {label_col!r} of {_q(path)} must hold numbers (0/1), but it is "
                            f"{schema.field(label_col).type}. Pass --label with a numeric column.")
        available = [c for c in names if c != label_col]
        if not available:
            raise DataError(f"{_q(path)} has no column besides the label {label_col!r}. "
                            "Pass a file with categorical columns.")
        chosen = _select_fields(path, self.name, available, fields)
        for c in chosen:
            check_id_column(path, c, schema.field(c).type)
        single = tuple(c for c in chosen if not _is_list(schema.field(c).type))
        multi = tuple(c for c in chosen if _is_list(schema.field(c).type))
        if pf.metadata.num_rows == 0:
            raise DataError(f"data file {_q(path)} has no rows. Pass a file with at least one row.")
        layout = Layout(self.name, "ctr", label_col, single, multi_hot=multi)
        return _ParquetSource(path, layout, pf, ([label_col] if label_col else []) + list(chosen))


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t)


def check_id_column(path: Path, column: str, t: pa.DataType, *, lists: bool = True) -> None:
    """DataError unless a column of type ``t`` can hold categorical ids (with ``lists``: or lists of them).

    Ids are counted by value, so any flat type works (integers, strings, floats, dates, ...); nested
    values (structs, maps, lists of lists) cannot be ids.
    """
    inner = t.value_type if lists and _is_list(t) else t
    if pa.types.is_dictionary(inner):
        inner = inner.value_type
    if pa.types.is_nested(inner):
        kinds = "integers or strings" + (" (or lists of them)" if lists else "")
        fix = "Flatten it into plain columns, or leave it out with --fields." if lists else \
            "Write the ids as one integer or string column."
        raise DataError(f"column {column!r} of {_q(path)} is {t}, but id columns must hold {kinds}. {fix}")


# --------------------------------------------------------------------------- movielens
ML_GENRES_100K = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)


def _read_side(path: Path, names: list[str], delimiter: str, encoding: str, types: dict[str, pa.DataType],
               header: bool = False) -> pa.Table:
    try:
        return pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=None if header else names, encoding=encoding,
                                           use_threads=False),
            parse_options=pacsv.ParseOptions(delimiter=delimiter, quote_char='"' if header else False),
            convert_options=pacsv.ConvertOptions(column_types=types, include_columns=names,
                                                 strings_can_be_null=False, null_values=[""]),
        )
    except (pa.ArrowException, OSError) as e:
        first = (str(e).strip().splitlines() or ["unknown error"])[0].rstrip(".")
        raise DataError(f"MovieLens side file {_q(path)} cannot be read ({_text.shorten(first, 120)}). "
                        "Fix it or move it away from the ratings file.") from None


class _MovieLensSource(_CsvSource):
    """MovieLens ratings as CTR samples (label = rating >= 4) joined with user / item side data."""

    def __init__(self, *args: Any, users: pa.Table | None, items: pa.Table | None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._users = users  # user_id, age, gender, occupation, zip
        self._items = items  # item_id, genres (list<string>)

    def _finish(self, batch: Batch, table: pa.Table) -> Batch:
        rating = _as_array(table.column("rating")).cast(pa.float64())
        batch.weight = rating
        batch.time = _as_array(table.column("timestamp"))
        if self.layout.label:
            batch.label = pc.cast(pc.greater_equal(rating, 4.0), pa.float64())
        user = _as_array(table.column("user_id"))
        item = _as_array(table.column("item_id"))
        wanted = set(self.layout.categorical)
        batch.fields = {k: v for k, v in {"user_id": user, "item_id": item}.items() if k in wanted}
        if self._users is not None:
            idx = pc.index_in(user, value_set=self._users.column("user_id"))
            for c in ("age", "gender", "occupation", "zip"):
                if c in wanted:
                    batch.fields[c] = pc.take(self._users.column(c), idx)
        if self._items is not None and "genres" in wanted:
            idx = pc.index_in(item, value_set=self._items.column("item_id"))
            batch.multi["genres"] = _as_array(pc.take(self._items.column("genres"), idx))
        batch.fields = {f: batch.fields[f] for f in self.layout.fields}
        return batch


class MovieLensFormat(Format):
    """MovieLens ratings: ``u.data`` (tab: user item rating ts) or ``ratings.csv`` (with header).

    As CTR samples: label = rating >= 4; fields ``user_id``, ``item_id`` and, when ``u.user`` /
    ``u.item`` lie beside ``u.data``, ``age``, ``gender``, ``occupation``, ``zip`` and the multi-hot
    ``genres`` (from u.item's 19 genre flags; from movies.csv beside ratings.csv).
    """

    name = "movielens"
    description = ("MovieLens u.data (user item rating ts) or ratings.csv; label = rating >= 4; "
                   "u.user / u.item (or movies.csv) beside it add age, gender, occupation, zip, genres")

    def open(self, path: Path, head: bytes, *, label: str | None, fields: Sequence[str] | None) -> Source:
        _text.check_text_head(path, head, self.name)
        lines = _text.first_lines(head, 1)
        if not lines:
            raise DataError(f"{_q(path)} has no data lines. Pass a MovieLens ratings file.")
        first = lines[0]
        int_t, ts_t = pa.int64(), pa.int64()
        if first.replace(" ", "").lower().startswith("userid,movieid,rating"):
            header = [h.strip() for h in first.split(",")]
            names = ["user_id", "item_id", "rating", "timestamp", *header[4:]]
            delimiter, start, variant = ",", _text.skip_lines_offset(head, 1), "csv"
        else:
            toks = first.split("\t")
            if len(toks) != 4 or not all(_NUM_RE.match(t.strip()) for t in toks):
                raise DataError(f"{_q(path)} line 1 is not a MovieLens rating (expected 'user<TAB>item<TAB>rating"
                                f"<TAB>timestamp' or a ratings.csv header), got {_text.shorten(first)!r}. "
                                "Pass the right --format.")
            names = ["user_id", "item_id", "rating", "timestamp"]
            delimiter, start, variant = "\t", 0, "udata"
        users, items = self._side(path, variant)
        available = ["user_id", "item_id"]
        if users is not None:
            available += ["age", "gender", "occupation", "zip"]
        if items is not None:
            available.append("genres")
        chosen = _select_fields(path, self.name, available, fields)
        label_col = _fixed_label(path, self.name, label, "rating")
        layout = Layout(self.name, "ctr", label_col, tuple(c for c in chosen if c != "genres"),
                        multi_hot=("genres",) if "genres" in chosen else ())
        types = {"user_id": int_t, "item_id": int_t, "rating": pa.float64(), "timestamp": ts_t}
        return _MovieLensSource(path, layout, head=head, start=start, names=names, delimiter=delimiter,
                                quoted=False, types=types, label_col=None, field_cols={}, users=users, items=items,
                                extra_cols=["user_id", "item_id", "rating", "timestamp"],
                                fixed_what="user, item, rating, timestamp")

    @staticmethod
    def _side(path: Path, variant: str) -> tuple[pa.Table | None, pa.Table | None]:
        d = path.parent
        users = items = None
        if variant == "udata":
            if (d / "u.user").is_file():
                users = _read_side(d / "u.user", ["user_id", "age", "gender", "occupation", "zip"], "|", "utf8",
                                   {"user_id": pa.int64(), "age": pa.string(), "gender": pa.string(),
                                    "occupation": pa.string(), "zip": pa.string()})
            if (d / "u.item").is_file():
                genre_names = list(ML_GENRES_100K)
                if (d / "u.genre").is_file():
                    g = _read_side(d / "u.genre", ["name", "idx"], "|", "latin1", {"name": pa.string(),
                                                                                   "idx": pa.int64()})
                    if g.num_rows == len(ML_GENRES_100K):
                        order = np.argsort(g.column("idx").to_numpy())
                        genre_names = [str(x) for x in np.asarray(g.column("name").to_pylist(), dtype=object)[order]]
                flags = [f"g{i}" for i in range(len(genre_names))]
                names = ["item_id", "title", "date", "video_date", "url", *flags]
                t = _read_side(d / "u.item", names, "|", "latin1",
                               {"item_id": pa.int64(), **{f: pa.int8() for f in flags}})
                items = pa.table({"item_id": t.column("item_id"),
                                  "genres": _flags_to_lists(t, flags, genre_names)})
        else:
            if (d / "movies.csv").is_file():
                t = _read_side(d / "movies.csv", ["movieId", "genres"], ",", "utf8",
                               {"movieId": pa.int64(), "genres": pa.string()}, header=True)
                g = _as_array(t.column("genres"))
                genres = pc.split_pattern(pc.if_else(pc.equal(g, "(no genres listed)"), "", g), "|")
                flat = pc.list_flatten(genres)
                parents = pc.list_parent_indices(genres)
                keep = pc.not_equal(flat, "")
                lengths = np.bincount(parents.filter(keep).to_numpy(), minlength=t.num_rows)
                offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
                items = pa.table({"item_id": t.column("movieId"),
                                  "genres": pa.ListArray.from_arrays(pa.array(offsets), flat.filter(keep))})
        return users, items


def _flags_to_lists(t: pa.Table, flags: list[str], names: list[str]) -> pa.Array:
    """Genre flag columns -> list<string> of the set genres per row (vectorised)."""
    m = np.column_stack([t.column(f).fill_null(0).to_numpy() for f in flags]) > 0
    rows, cols = np.nonzero(m)  # row-major: genres of a row are contiguous and in flag order
    lengths = np.bincount(rows, minlength=t.num_rows)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    values = pa.array(np.asarray(names, dtype=object)[cols], type=pa.string())
    return pa.ListArray.from_arrays(pa.array(offsets), values)


# --------------------------------------------------------------------------- line formats
def _lines(chunk: Chunk) -> tuple[pa.Array, np.ndarray]:
    """Non-blank lines of a chunk as a trimmed string array, and their 0-based line indices."""
    arr = np.frombuffer(chunk.raw, dtype=np.uint8, count=chunk.end)
    ends = np.flatnonzero(arr == 10) + 1
    if chunk.end and arr[-1] != 10:
        ends = np.append(ends, chunk.end)
    offsets = np.concatenate([[0], ends]).astype(np.int32)
    lines = pa.Array.from_buffers(pa.string(), len(ends), [None, pa.py_buffer(offsets), chunk.buffer])
    lines = pc.ascii_trim_whitespace(lines)
    keep = pc.greater(pc.binary_length(lines), 0)
    idx = np.flatnonzero(keep.to_numpy(zero_copy_only=False))
    return lines.filter(keep), idx


def _tokens(lines: pa.Array) -> pa.Array:
    return pc.ascii_split_whitespace(lines)


def _offsets_from_lengths(lengths: np.ndarray) -> pa.Array:
    return pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))


class _LineSource(_TextSource):
    """Whitespace-separated line formats parsed with Arrow string kernels."""

    def _bad_row(self, chunk: Chunk, line_idx: np.ndarray, bad_rows: np.ndarray, problem: str, fix: str) -> DataError:
        row = int(bad_rows[0]) if len(bad_rows) else 0
        text = self._line_text(chunk, int(line_idx[row]))
        return self._line_error(chunk, int(line_idx[row]) + 1, f"{problem} ({_text.shorten(text)!r})", fix)

    @staticmethod
    def _line_text(chunk: Chunk, i: int) -> str:
        data = chunk.data
        start = 0
        for _ in range(i):
            start = data.index(b"\n", start) + 1
        end = data.find(b"\n", start)
        return data[start: end if end >= 0 else len(data)].decode("utf-8", errors="replace").strip()

    def _cast_tokens(self, chunk: Chunk, line_idx: np.ndarray, values: pa.Array, parents: np.ndarray,
                     to: pa.DataType, what: str) -> pa.Array:
        try:
            return values.cast(to)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pattern = r"^[+-]?\d+$" if pa.types.is_integer(to) else r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"
            ok = pc.match_substring_regex(values, pattern).to_numpy(zero_copy_only=False)
            bad = parents[np.flatnonzero(~ok)]
            kind = "an integer" if pa.types.is_integer(to) else "a number"
            err = self._bad_row(chunk, line_idx, bad, f"{what} is not {kind}",
                                f"Fix the file, or pass the right --format (is it really {self.layout.format}?).")
        raise err from None


class _InteractionSource(_LineSource):
    """``user item item ...`` sequences (space-separated) or ``user item [weight]`` pairs (tab-separated)."""

    def __init__(self, path: Path, layout: Layout, *, head: bytes, start: int, pairs: bool, ncols: int,
                 numeric: bool) -> None:
        super().__init__(path, layout, head=head, start=start)
        self._pairs = pairs
        self._ncols = ncols
        self._numeric = numeric

    def _parse(self, chunk: Chunk, dense: bool) -> Batch:
        lines, line_idx = _lines(chunk)
        toks = _tokens(lines)
        lengths = pc.list_value_length(toks).to_numpy(zero_copy_only=False)
        weight = None
        if self._pairs:
            bad = np.flatnonzero(lengths != self._ncols)
            if bad.size:
                raise self._bad_row(chunk, line_idx, bad, f"has {lengths[bad[0]]} columns, but this interactions "
                                    f"file has {self._ncols} per line (user item{' weight' if self._ncols == 3 else ''})",
                                    "Fix the line, or pass the right --format.")
            users = pc.list_element(toks, 0)
            items = pc.list_element(toks, 1)
            parents = np.arange(len(toks))
            if self._ncols == 3:
                weight = self._cast_tokens(chunk, line_idx, pc.list_element(toks, 2), parents, pa.float64(), "weight")
        else:
            rest = pc.list_slice(toks, 1)
            items = pc.list_flatten(rest)
            parents = pc.list_parent_indices(rest).to_numpy()
            users = pc.take(pc.list_element(toks, 0), pa.array(parents))
        if self._numeric:
            users = self._cast_tokens(chunk, line_idx, users, parents, pa.int64(), "a user id")
            items = self._cast_tokens(chunk, line_idx, items, parents, pa.int64(), "an item id")
        cols = {"user": users, "item": items}
        return Batch(len(items), fields={f: cols[f] for f in self.layout.fields}, weight=weight)


class InteractionsFormat(Format):
    """Interaction lists: ``user item item ...`` per line, or ``user item [weight]`` pair files."""

    name = "interactions"
    description = ("user-item interactions: 'user item item ...' per line (space-separated, in time order) or "
                   "'user<TAB>item[<TAB>weight]' pairs; fields user, item")

    def open(self, path: Path, head: bytes, *, label: str | None, fields: Sequence[str] | None) -> Source:
        _text.check_text_head(path, head, self.name)
        if label is not None:
            raise DataError(f"`label` does not apply to interaction files, but got label={label!r}. "
                            "Leave --label out (every listed user-item pair is a positive).")
        chosen = _select_fields(path, self.name, ["user", "item"], fields)
        lines = _text.first_lines(head, 50)
        if not lines:
            raise DataError(f"{_q(path)} has no data lines. Pass a file with 'user item ...' lines.")
        skip = 0
        first_tok = lines[0].split()
        if first_tok and not _NUM_RE.match(first_tok[0]) and len(lines) > 1:
            nxt = lines[1].split()
            if nxt and _NUM_RE.match(nxt[0]):
                skip = 1  # a header line such as "userID<TAB>artistID<TAB>weight"
        data_lines = lines[skip:]
        pairs = "\t" in data_lines[0] if data_lines else False
        widths = {len(ln.split()) for ln in data_lines}
        if pairs:
            if len(widths) != 1 or not widths <= {2, 3}:
                raise DataError(f"{_q(path)} is tab-separated, but its lines do not all have 2 or 3 columns "
                                f"(user item [weight]), got widths {sorted(widths)}. Pass the right --format.")
            ncols = widths.pop()
        else:
            ncols = 0
            if min(widths, default=0) < 2 and max(widths, default=0) < 2:
                raise DataError(f"{_q(path)} lines hold a single token, but interaction lines are 'user item ...'. "
                                "Pass the right --format.")
        numeric = all(_INT_RE.match(t) for ln in data_lines for t in ln.split()[:2] if t)
        layout = Layout(self.name, "retrieval", None, chosen)
        return _InteractionSource(path, layout, head=head, start=_text.skip_lines_offset(head, skip), pairs=pairs,
                                  ncols=ncols, numeric=numeric)


class _LibfmSource(_LineSource):
    """``label idx:val ...`` (libfm, one multi-hot field) or ``label field:idx:val ...`` (libffm)."""

    def __init__(self, path: Path, layout: Layout, *, head: bytes, ffm: bool) -> None:
        super().__init__(path, layout, head=head, start=0)
        self._ffm = ffm

    def _parse(self, chunk: Chunk, dense: bool) -> Batch:
        lines, line_idx = _lines(chunk)
        toks = _tokens(lines)
        n = len(toks)
        label = self._cast_tokens(chunk, line_idx, pc.list_element(toks, 0), np.arange(n), pa.float64(), "the label")
        feats = pc.list_slice(toks, 1)
        flat = pc.list_flatten(feats)
        parents = pc.list_parent_indices(feats).to_numpy()
        parts = pc.split_pattern(flat, ":")
        nparts = pc.list_value_length(parts).to_numpy(zero_copy_only=False)
        want = 3 if self._ffm else 2
        shape = "field:index:value" if self._ffm else "index:value"
        bad = np.flatnonzero(nparts != want)
        if bad.size:
            raise self._bad_row(chunk, line_idx, parents[bad], f"a feature is not '{shape}'",
                                f"Fix the line, or pass the right --format ({'libfm' if self._ffm else 'libffm'}?).")
        idx = pc.list_element(parts, want - 2)
        keys = [idx, pc.list_element(parts, 0)] if self._ffm else [idx]
        for key, what in zip(keys, ("index", "field"), strict=False):
            empty = np.flatnonzero(pc.equal(pc.binary_length(key), 0).to_numpy(zero_copy_only=False))
            if empty.size:
                raise self._bad_row(chunk, line_idx, parents[empty], f"a feature has an empty {what}",
                                    f"Write every feature as '{shape}'.")
        # values are ignored, but must be numbers: 'idx:x' means the file is not what it claims to be
        self._cast_tokens(chunk, line_idx, pc.list_element(parts, want - 1), parents, pa.float64(),
                          "a feature value")
        if not self._ffm:
            lengths = np.bincount(parents, minlength=n)
            return Batch(n, label=label, multi={"features": pa.ListArray.from_arrays(_offsets_from_lengths(lengths),
                                                                                      idx)})
        fld = pc.list_element(parts, 0)
        enc = pc.dictionary_encode(fld)
        codes = enc.indices.to_numpy()
        names = [f"f{v}" for v in enc.dictionary.to_pylist()]
        order = np.lexsort((parents, codes))
        codes_s, parents_s = codes[order], parents[order]
        idx_s = idx.take(pa.array(order))
        bounds = np.searchsorted(codes_s, np.arange(len(names) + 1))
        multi = {}
        for k, name in enumerate(names):
            lo, hi = bounds[k], bounds[k + 1]
            lengths = np.bincount(parents_s[lo:hi], minlength=n)
            multi[name] = pa.ListArray.from_arrays(_offsets_from_lengths(lengths), idx_s.slice(lo, hi - lo))
        return Batch(n, label=label, multi=multi)


class _LibfmFormatBase(Format):
    ffm = False

    def open(self, path: Path, head: bytes, *, label: str | None, fields: Sequence[str] | None) -> Source:
        _text.check_text_head(path, head, self.name)
        _fixed_label(path, self.name, label, "label")
        lines = _text.first_lines(head, 1)
        if not lines:
            raise DataError(f"{_q(path)} has no data lines. Pass a {self.name} file.")
        toks = lines[0].split()
        want = 2 if self.ffm else 1
        if not toks or not _NUM_RE.match(toks[0]) or any(t.count(":") != want for t in toks[1:]):
            shape = "label field:index:value ..." if self.ffm else "label index:value ..."
            raise DataError(f"{_q(path)} line 1 is not {self.name} ('{shape}'), got {_text.shorten(lines[0])!r}. "
                            "Pass the right --format.")
        if self.ffm:
            if isinstance(fields, str):
                fields = [f.strip() for f in fields.split(",") if f.strip()]
            wanted = None if fields is None else tuple(fields)
            if wanted is not None and (not wanted or len(set(wanted)) != len(wanted)):
                raise DataError(f"`fields` must name distinct libffm fields such as f0, f1, but got fields={fields!r}.")
            layout = Layout(self.name, "ctr", "label", (), dynamic=True, requested=wanted or ())
        else:
            _select_fields(path, self.name, ["features"], fields)
            layout = Layout(self.name, "ctr", "label", (), multi_hot=("features",))
        return _LibfmSource(path, layout, head=head, ffm=self.ffm)


class LibfmFormat(_LibfmFormatBase):
    """libfm / libsvm: ``label idx:val idx:val ...``; all indices form one multi-hot field ``features``."""

    name = "libfm"
    description = "libfm/libsvm: 'label index:value ...'; one multi-hot field 'features' (values ignored)"


class LibffmFormat(_LibfmFormatBase):
    """libffm: ``label field:idx:val ...``; one field ``f<field>`` per field number."""

    name = "libffm"
    description = "libffm: 'label field:index:value ...'; one field 'f<field>' per field number (values ignored)"
    ffm = True


# --------------------------------------------------------------------------- registry
FORMATS: dict[str, Format] = {
    f.name: f
    for f in (CriteoFormat(), AvazuFormat(), CsvFormat(), ParquetFormat(), MovieLensFormat(), InteractionsFormat(),
              LibfmFormat(), LibffmFormat())
}


def format_names() -> list[str]:
    """The registered format names (the values ``--format`` accepts)."""
    return list(FORMATS)


def get_format(name: str) -> Format:
    """The :class:`Format` registered as ``name`` (UnknownNameError listing the valid names)."""
    if not isinstance(name, str) or name.lower() not in FORMATS:
        names = format_names()
        raise UnknownNameError(f"`format` must be one of {', '.join(names)}, but got format={name!r}."
                               f"{suggest(str(name).lower(), names)}")
    return FORMATS[name.lower()]


def guess_format(path: str | Path, head: bytes | None = None) -> str:
    """Guess a file's format from its suffix, magic bytes, header and first line shape."""
    p = _text.check_file(path)
    head = _text.read_head(p) if head is None else head
    name = p.name.lower()
    if head.startswith(_text.PARQUET_MAGIC) or p.suffix.lower() in (".parquet", ".pq"):
        return "parquet"
    if b"\x00" in head:
        raise DataError(f"{_q(p)} contains NUL bytes: it is a binary file, not a supported data file "
                        f"({', '.join(format_names())}). Pass a text or Parquet file.")
    lines = _text.first_lines(head, 5)
    if not lines:
        raise DataError(f"{_q(p)} has no data lines (only blank lines). Pass a file with at least one row.")
    first = lines[0]
    fix = f"Pass --format (one of {', '.join(format_names())})."
    if name == "u.data" or first.replace(" ", "").lower().startswith("userid,movieid,rating"):
        return "movielens"
    if "\t" in first:
        toks = first.split("\t")
        if len(toks) in (39, 40):
            return "criteo"
        if len(toks) == 4 and all(_NUM_RE.match(t) for t in toks):
            rating, ts = float(toks[2]), toks[3]
            if 0 <= rating <= 10 and len(ts) >= 9:
                return "movielens"
        if len(toks) in (2, 3) and all(_NUM_RE.match(t) for t in toks):
            return "interactions"
        if len(toks) in (2, 3) and len(lines) > 1 and all(_NUM_RE.match(t) for t in lines[1].split("\t")):
            return "interactions"  # a header line, then pairs
        if not all(_NUM_RE.match(t) for t in toks if t):
            return "csv"
        raise DataError(f"cannot guess the format of {_q(p)} from its first line ({len(toks)} tab-separated "
                        f"numbers). {fix}")
    if "," in first:
        toks = [t.strip() for t in first.split(",")]
        if toks[:2] == ["id", "click"] or (toks[:1] == ["id"] and "hour" in toks):
            return "avazu"
        if len(toks) in (23, 24) and all(_INT_RE.match(t) for t in toks[:3]) and any(len(t) == 8 for t in toks[1:3]):
            return "avazu"
        return "csv"
    toks = first.split()
    if len(toks) >= 2 and _NUM_RE.match(toks[0]) and all(":" in t for t in toks[1:]):
        colons = {t.count(":") for t in toks[1:]}
        if colons == {2}:
            return "libffm"
        if colons == {1}:
            return "libfm"
    if len(toks) >= 2 and all(_NUM_RE.match(t) for t in toks):
        return "interactions"
    if len(toks) >= 2 and all(_INT_RE.match(t) for t in lines[min(1, len(lines) - 1)].split()):
        return "interactions"
    raise DataError(f"cannot guess the format of {_q(p)} from its first line {_text.shorten(first)!r}. {fix}")


def open_source(path: str | Path, fmt: str | None = None, *, label: str | None = None,
                fields: Sequence[str] | None = None) -> Source:
    """Open a data file as a streaming :class:`Source` (format guessed when ``fmt`` is None).

    Raises:
        DataError: missing / empty / unreadable file, wrong format, unknown column.
        UnknownNameError: ``fmt`` is not a registered format name.
    """
    spec = get_format(fmt) if fmt is not None else None
    p = _text.check_file(path)
    head = _text.read_head(p)
    if spec is None:
        spec = FORMATS[guess_format(p, head)]
    return spec.open(p, head, label=label, fields=fields)
