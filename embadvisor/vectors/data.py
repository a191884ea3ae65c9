"""Frozen-vector inputs: a corpus matrix, optional query vectors and relevance labels (qrels).

Formats:

* vectors (corpus or queries): ``.npy`` (a 2-D float array) or Parquet with one list column of
  floats (the vectors) and optionally an id column (``doc_id``/``query_id``/``id``);
* ids (row ``i`` = vector ``i``): Parquet (column ``doc_id``/``query_id``/``id``, else the first
  string column) or a text file with one id per line; without ids, rows are named ``"0"``,
  ``"1"``, ...;
* qrels: Parquet with ``query_id``, ``doc_id`` and optional ``relevance`` columns, or TREC text
  (``qid 0 docno rel`` per line).

Everything is validated eagerly with errors that name the problem and the fix (wrong dims
between corpus and queries, NaN or infinite rows, an empty corpus, qrels naming unknown ids).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from embadvisor.errors import DataError, InvalidConfigError

__all__ = ["SIMILARITIES", "VectorData", "load_ids", "load_matrix", "load_qrels", "load_vector_data"]

SIMILARITIES = ("cosine", "dot")
_ID_COLUMNS = ("doc_id", "query_id", "docno", "qid", "id")


def _read_parquet(path: Path, what: str):  # type: ignore[no-untyped-def]
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for non-Parquet input
        raise DataError(f"{what} file {str(path)!r} is not a readable Parquet file ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}).") from None


def _check_file(path: str | Path, what: str) -> Path:
    from embadvisor.data._text import check_file

    return check_file(path, what)


def _text_lines(path: Path, what: str) -> list[str]:
    """The lines of a UTF-8 text file (DataError naming the line when it is not UTF-8)."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"{what} file {str(path)!r} line {line} is not UTF-8 text (byte 0x{data[e.start]:02x}). "
                        "Re-encode the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`).") from None
    return text.splitlines()


def load_matrix(path: str | Path, what: str = "vectors") -> tuple[np.ndarray, list[str] | None]:
    """A float32 ``[n, d]`` matrix (and its ids when a Parquet file has an id column).

    Raises:
        DataError: missing or unreadable file, not a 2-D numeric matrix, no rows, NaN/inf rows.
    """
    p = _check_file(path, what)
    ids: list[str] | None = None
    if p.suffix.lower() == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except Exception as e:
            raise DataError(f"{what} file {str(p)!r} is not a readable .npy array ({type(e).__name__}: {e}).") from None
    elif p.suffix.lower() in (".parquet", ".pq"):
        import pyarrow as pa

        table = _read_parquet(p, what)
        list_cols = [f.name for f in table.schema if pa.types.is_list(f.type) or pa.types.is_fixed_size_list(f.type)
                     or pa.types.is_large_list(f.type)]
        if len(list_cols) != 1:
            raise DataError(f"{what} file {str(p)!r} must have exactly one list column holding the vectors, but it has "
                            f"{len(list_cols)} ({', '.join(list_cols) or 'none'}); columns: {table.column_names}.")
        col = table.column(list_cols[0]).combine_chunks()
        if col.null_count:
            raise DataError(f"{what} file {str(p)!r}: {col.null_count} rows of column {list_cols[0]!r} are null.")
        lengths = np.asarray(col.value_lengths()) if len(col) else np.zeros(0, dtype=np.int64)
        if len(lengths) and (lengths != lengths[0]).any():
            bad = int(np.flatnonzero(lengths != lengths[0])[0])
            raise DataError(f"{what} file {str(p)!r}: the vectors must all have the same length, but row 0 has "
                            f"{lengths[0]} values and row {bad} has {lengths[bad]}.")
        try:
            flat = np.asarray(col.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise DataError(f"{what} file {str(p)!r}: column {list_cols[0]!r} is not numeric ({e}).") from None
        arr = flat.reshape(len(col), int(lengths[0]) if len(lengths) else 0)
        id_col = next((c for c in _ID_COLUMNS if c in table.column_names), None)
        if id_col is not None:
            ids = [str(v) for v in table.column(id_col).to_pylist()]
    else:
        raise DataError(f"{what} file {str(p)!r} must be .npy or .parquet, but got suffix {p.suffix!r}.")
    if arr.dtype.kind not in "fiu":
        raise DataError(f"{what} in {str(p)!r} must be numeric, but got dtype {arr.dtype}.")
    if arr.ndim != 2:
        raise DataError(f"{what} in {str(p)!r} must be a 2-D [rows, dim] matrix, but got shape {tuple(arr.shape)}.")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataError(f"{what} in {str(p)!r} is empty (shape {tuple(arr.shape)}); it needs at least one row "
                        "and one dimension.")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    bad_rows = np.flatnonzero(~np.isfinite(arr).all(axis=1))
    if len(bad_rows):
        shown = ", ".join(str(int(r)) for r in bad_rows[:5])
        raise DataError(f"{what} in {str(p)!r} has {len(bad_rows)} rows with NaN or infinite values (rows {shown}"
                        f"{', ...' if len(bad_rows) > 5 else ''}); drop or repair them first.")
    return arr, ids


def load_ids(path: str | Path, what: str = "ids") -> list[str]:
    """Row ids in row order from Parquet (an id column) or a text file (one per line)."""
    p = _check_file(path, what)
    if p.suffix.lower() in (".parquet", ".pq"):
        import pyarrow as pa

        table = _read_parquet(p, what)
        col = next((c for c in _ID_COLUMNS if c in table.column_names), None)
        if col is None:
            col = next((f.name for f in table.schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)),
                       None)
        if col is None:
            raise DataError(f"{what} file {str(p)!r} has no id column (doc_id, query_id, id or a string column); "
                            f"columns: {table.column_names}.")
        return [str(v) for v in table.column(col).to_pylist()]
    return [line.strip() for line in _text_lines(p, what) if line.strip()]


def load_qrels(path: str | Path, query_ids: list[str], doc_ids: list[str]) -> list[dict[int, float]]:
    """Relevance labels per query (by query row): ``{doc row: relevance}``.

    Raises:
        DataError: unreadable file, missing columns, or ids that name no query / no document.
    """
    p = _check_file(path, "qrels")
    if p.suffix.lower() in (".parquet", ".pq"):
        table = _read_parquet(p, "qrels")
        missing = [c for c in ("query_id", "doc_id") if c not in table.column_names]
        if missing:
            raise DataError(f"qrels file {str(p)!r} must have columns query_id and doc_id (and optionally relevance), "
                            f"but {', '.join(missing)} is missing; columns: {table.column_names}.")
        qs = [str(v) for v in table.column("query_id").to_pylist()]
        ds = [str(v) for v in table.column("doc_id").to_pylist()]
        raw = table.column("relevance").to_pylist() if "relevance" in table.column_names else [1] * len(qs)
        rel = []
        for i, r in enumerate(raw):
            value = _relevance(r)
            if value is None:
                raise DataError(f"qrels file {str(p)!r} row {i + 1}: `relevance` must be a finite number, but got "
                                f"relevance={r!r} (query {qs[i]!r}, doc {ds[i]!r}). Fix the column.")
            rel.append(value)
    else:  # TREC: qid iteration docno rel
        qs, ds, rel = [], [], []
        for i, line in enumerate(_text_lines(p, "qrels"), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 4:
                raise DataError(f"qrels file {str(p)!r} line {i} must be 'qid 0 docno relevance', but got "
                                f"{line[:80]!r}.")
            value = _relevance(parts[3])
            if value is None:
                raise DataError(f"qrels file {str(p)!r} line {i}: the relevance (4th column) must be a finite "
                                f"number, but got {parts[3][:40]!r}. Fix the line ('qid 0 docno relevance').")
            qs.append(parts[0])
            ds.append(parts[2])
            rel.append(value)
    if not qs:
        raise DataError(f"qrels file {str(p)!r} has no rows.")
    qpos = {q: i for i, q in enumerate(query_ids)}
    dpos = {d: i for i, d in enumerate(doc_ids)}
    bad_q = sorted({q for q in qs if q not in qpos})
    bad_d = sorted({d for d in ds if d not in dpos})
    if bad_q or bad_d:
        parts = []
        if bad_q:
            parts.append(f"{len(bad_q)} unknown query ids (e.g. {', '.join(repr(x) for x in bad_q[:3])})")
        if bad_d:
            parts.append(f"{len(bad_d)} unknown doc ids (e.g. {', '.join(repr(x) for x in bad_d[:3])})")
        raise DataError(f"qrels file {str(p)!r} names {' and '.join(parts)}. Query ids are "
                        f"{query_ids[0]!r}..{query_ids[-1]!r}, doc ids {doc_ids[0]!r}..{doc_ids[-1]!r}; pass "
                        "--doc-ids/--query-ids files that name the rows of the vector files (row numbers are the "
                        "default ids).")
    out: list[dict[int, float]] = [{} for _ in query_ids]
    for q, d, r in zip(qs, ds, rel, strict=True):
        out[qpos[q]][dpos[d]] = r
    return out


def _relevance(value: object) -> float | None:
    """A relevance grade as a finite float, or None when it is not one."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        r = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return r if np.isfinite(r) else None


def _check_ids(ids: list[str], rows: int, what: str) -> None:
    if len(ids) != rows:
        raise DataError(f"{what} must name every vector: {len(ids)} ids for {rows} vectors.")
    if len(set(ids)) != len(ids):
        dup = next(i for i, c in _counts(ids).items() if c > 1)
        raise DataError(f"{what} must be unique, but {dup!r} appears more than once.")


def _counts(ids: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in ids:
        out[i] = out.get(i, 0) + 1
    return out


@dataclass
class VectorData:
    """A validated frozen-vector workload.

    Args:
        corpus: ``[n, d]`` float32 (L2-normalised when ``similarity == "cosine"``).
        doc_ids: the id of each corpus row.
        queries: ``[q, d]`` float32 query vectors (normalised like the corpus), or None: then
            corpus rows serve as queries.
        query_ids: the id of each query row.
        qrels: per query row, ``{corpus row: relevance}``; None without labels.
        similarity: ``"cosine"`` or ``"dot"`` (inner product).
        source: where the data came from (for reports).
        name: a short name.
    """

    corpus: np.ndarray
    doc_ids: list[str]
    queries: np.ndarray | None = None
    query_ids: list[str] = field(default_factory=list)
    qrels: list[dict[int, float]] | None = None
    similarity: str = "cosine"
    source: str = ""
    name: str = "vectors"

    @property
    def num_vectors(self) -> int:
        return int(self.corpus.shape[0])

    @property
    def dim(self) -> int:
        return int(self.corpus.shape[1])

    @property
    def full_bytes(self) -> int:
        """Bytes of the float32 corpus."""
        return self.num_vectors * self.dim * 4

    @property
    def fingerprint(self) -> str:
        """A short hash of the corpus, queries and labels (studies refuse to mix different data)."""
        h = hashlib.sha256()
        h.update(f"{self.corpus.shape}|{self.similarity}".encode())
        h.update(np.ascontiguousarray(self.corpus[:: max(1, self.num_vectors // 4096)]).tobytes())
        if self.queries is not None:
            h.update(self.queries.tobytes())
        if self.qrels is not None:
            h.update(repr([sorted(q.items()) for q in self.qrels]).encode())
        return h.hexdigest()[:16]


def normalise(x: np.ndarray, what: str) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    zero = np.flatnonzero(norms[:, 0] == 0)
    if len(zero):
        raise DataError(f"{what} has {len(zero)} all-zero rows (e.g. row {int(zero[0])}), which have no cosine "
                        "similarity; drop them or use --similarity dot.")
    return np.ascontiguousarray(x / norms, dtype=np.float32)


def load_vector_data(
    vectors: str | Path,
    *,
    queries: str | Path | None = None,
    qrels: str | Path | None = None,
    doc_ids: str | Path | None = None,
    query_ids: str | Path | None = None,
    similarity: str = "cosine",
) -> VectorData:
    """Load and validate a corpus, optional queries and qrels (see the module docstring)."""
    if similarity not in SIMILARITIES:
        raise InvalidConfigError(f"`similarity` must be one of {', '.join(SIMILARITIES)}, but got "
                                 f"similarity={similarity!r}.")
    if qrels is not None and queries is None:
        raise InvalidConfigError("qrels need query vectors: pass --queries with --qrels.")
    if query_ids is not None and queries is None:
        raise InvalidConfigError("query ids need query vectors: pass --queries with --query-ids.")
    corpus, ids = load_matrix(vectors, "corpus vectors")
    if doc_ids is not None:
        ids = load_ids(doc_ids, "doc ids")
    ids = ids if ids is not None else [str(i) for i in range(len(corpus))]
    _check_ids(ids, len(corpus), "doc ids")
    q = None
    q_ids: list[str] = []
    if queries is not None:
        q, qi = load_matrix(queries, "query vectors")
        if q.shape[1] != corpus.shape[1]:
            raise DataError(f"query vectors have dimension {q.shape[1]} but the corpus vectors have {corpus.shape[1]}; "
                            "both must come from the same embedding model.")
        if query_ids is not None:
            qi = load_ids(query_ids, "query ids")
        q_ids = qi if qi is not None else [str(i) for i in range(len(q))]
        _check_ids(q_ids, len(q), "query ids")
    labels = load_qrels(qrels, q_ids, ids) if qrels is not None else None
    if similarity == "cosine":
        corpus = normalise(corpus, "the corpus")
        q = normalise(q, "the queries") if q is not None else None
    return VectorData(corpus, ids, q, q_ids, labels, similarity, str(vectors), Path(vectors).stem)
