"""In-memory datasets with frequency-ordered ids, and deterministic, recorded splits.

Id convention (every field): ids are ranks by frequency: id 0 is the most frequent value, ties
are broken by value (ascending) so the mapping is deterministic. Empty / missing values map to
one reserved id, the *last* one (= the number of distinct non-empty values), so a field's table
needs ``num_embeddings = distinct + 1`` rows. Interaction datasets have no missing values and no
reserved id.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embadvisor.data._counts import count_values, frequency_order, split_missing
from embadvisor.data._text import natural_key
from embadvisor.data.formats import DEFAULT_BATCH_ROWS, Batch, Source, check_id_column, open_source
from embadvisor.errors import DataError, InvalidConfigError

__all__ = [
    "CtrDataset",
    "InteractionDataset",
    "Split",
    "encode_frequency",
    "encode_interaction_ids",
    "load_ctr",
    "load_interactions",
    "split_leave_last_out",
    "split_ordered",
    "split_random",
]


# --------------------------------------------------------------------------- encoding
def encode_frequency(values: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, pa.Array, np.ndarray]:
    """Map values to frequency-ordered ids.

    Args:
        values: any Arrow array; null and ``""`` are missing.

    Returns:
        ``(ids, vocabulary, counts)``: int64 ids aligned with ``values`` (missing -> ``len(vocabulary)``),
        the distinct non-empty values most frequent first (ties by value), and the int64
        occurrences of every id including the reserved last one (``len(vocabulary) + 1`` entries).

    Example:
        >>> import pyarrow as pa
        >>> ids, vocab, counts = encode_frequency(pa.array(["b", "a", "", "b", None, "c"]))
        >>> ids.tolist(), vocab.to_pylist(), counts.tolist()
        ([0, 1, 3, 0, 3, 2], ['b', 'a', 'c'], [2, 1, 1, 2])
    """
    table, missing = split_missing(count_values(values))
    vocab, counts = frequency_order(table)
    n = len(vocab)
    if len(values) == 0:
        return np.zeros(0, dtype=np.int64), vocab, np.append(counts, missing).astype(np.int64)
    idx = pc.index_in(values, value_set=vocab)
    ids = np.asarray(idx.fill_null(n).to_numpy(zero_copy_only=False), dtype=np.int64) if n else \
        np.full(len(values), 0, dtype=np.int64)
    return ids, vocab, np.append(counts, missing).astype(np.int64)


def _encode_multi(lists: pa.ChunkedArray, num_rows: int) -> tuple[np.ndarray, pa.Array, np.ndarray, float, int]:
    """Multi-hot lists -> (padded ids [rows, max_len] with -1 padding, vocab, counts, pooling, max_len).

    A row without any id holds the reserved id in its first slot; pooling counts real ids only.
    """
    arr = lists.combine_chunks() if isinstance(lists, pa.ChunkedArray) else lists
    flat = pc.list_flatten(arr)
    parents = pc.list_parent_indices(arr).to_numpy(zero_copy_only=False).astype(np.int64)
    ids, vocab, counts = encode_frequency(flat)
    reserved = len(vocab)
    valid = ids != reserved
    rows, ids = parents[valid], ids[valid]
    lengths = np.bincount(rows, minlength=num_rows)
    max_len = int(lengths.max()) if lengths.size else 0
    out = np.full((num_rows, max(1, max_len)), -1, dtype=np.int64)
    starts = np.cumsum(lengths) - lengths
    out[rows, np.arange(rows.size) - starts[rows]] = ids
    empty = lengths == 0
    out[empty, 0] = reserved
    counts = counts.copy()
    counts[reserved] = int(np.count_nonzero(empty))
    pooling = float(rows.size / num_rows) if num_rows else 0.0
    return out, vocab, counts, pooling, max_len


def _concat(arrays: Sequence[pa.Array | pa.ChunkedArray]) -> pa.ChunkedArray:
    if not arrays:
        return pa.chunked_array([], type=pa.string())
    pieces = [c for a in arrays for c in (a.chunks if isinstance(a, pa.ChunkedArray) else [a])]
    return pa.chunked_array(pieces, type=arrays[0].type)


def _list_nulls(n: int, like: pa.DataType) -> pa.Array:
    return pa.nulls(n, type=like)


# --------------------------------------------------------------------------- CTR dataset
@dataclass
class CtrDataset:
    """A labelled CTR dataset in memory, ids frequency-ordered per field.

    Attributes:
        field_names: single-valued categorical fields, in the column order of ``ids``.
        ids: int64 ``[rows, len(field_names)]``; the reserved last id marks missing values.
        multi_hot: multi-hot fields: name -> int64 ``[rows, max_len]`` padded with -1 (a row with
            no id holds the reserved id in slot 0).
        pooling: multi-hot field -> mean number of (real) ids per row.
        num_embeddings: every field (single and multi-hot) -> distinct non-empty values + 1.
        counts: every field -> int64 occurrences per id (``num_embeddings`` entries; the last
            is the number of missing values / empty rows).
        vocabularies: every field -> the distinct values, most frequent first (Arrow array).
        labels: float32 0/1 labels (1 where the file's label is > 0), or None for unlabelled files.
        dense: float32 ``[rows, len(dense_names)]`` (Criteo: ``log(x + 1)`` for x > 0 else 0;
            empty = 0), or None.
        dense_names: names of the dense columns.
        path: the source file.
        format: its format name.
        label_name: the label column, or None.
    """

    field_names: list[str]
    ids: np.ndarray
    multi_hot: dict[str, np.ndarray]
    pooling: dict[str, float]
    num_embeddings: dict[str, int]
    counts: dict[str, np.ndarray]
    vocabularies: dict[str, pa.Array]
    labels: np.ndarray | None
    dense: np.ndarray | None
    dense_names: list[str] = field(default_factory=list)
    path: Path = Path()
    format: str = ""
    label_name: str | None = None

    @property
    def num_rows(self) -> int:
        return int(self.ids.shape[0])  # ids is [rows, 0] when every field is multi-hot

    @property
    def all_fields(self) -> list[str]:
        """Single-valued fields, then multi-hot fields."""
        return list(self.field_names) + list(self.multi_hot)

    def column(self, name: str) -> np.ndarray:
        """The ids of one field: ``[rows]`` for single-valued, ``[rows, max_len]`` for multi-hot."""
        if name in self.multi_hot:
            return self.multi_hot[name]
        if name not in self.field_names:
            raise InvalidConfigError(f"`field` must be one of {', '.join(self.all_fields)}, but got field={name!r}.")
        return self.ids[:, self.field_names.index(name)]


def _dense_matrix(batches: list[Batch], names: Sequence[str], fmt: str) -> np.ndarray | None:
    if not names:
        return None
    cols = []
    for name in names:
        x = _concat([b.dense[name] for b in batches]).to_numpy().astype(np.float64, copy=False)
        x = np.nan_to_num(x, nan=0.0)
        if fmt == "criteo":
            x = np.where(x > 0, np.log1p(np.maximum(x, 0)), 0.0)
        cols.append(x.astype(np.float32))
    return np.column_stack(cols) if cols else None


def _collect(source: Source, batch_rows: int, threads: int | None) -> list[Batch]:
    return list(source.batches(batch_rows=batch_rows, threads=threads, dense=True))


def load_ctr(path: str | Path, fmt: str | None = None, label: str | None = None, fields: Sequence[str] | None = None,
             *, batch_rows: int = DEFAULT_BATCH_ROWS, threads: int | None = None) -> CtrDataset:
    """Load a labelled data file into memory with frequency-ordered ids.

    Args:
        path: the data file (criteo, avazu, csv, parquet, movielens, libfm or libffm).
        fmt: format name; guessed from the file when None.
        label: label column (csv / parquet).
        fields: categorical fields to load (default: all).
        batch_rows: rows parsed per batch while reading.
        threads: parsing threads (default: the usable CPUs).

    Raises:
        DataError: bad file, unknown column, or an interactions file (use :func:`load_interactions`).

    Example:
        >>> ds = load_ctr("criteo_train", fmt="criteo")  # doctest: +SKIP
        >>> ds.ids.shape, ds.dense.shape  # doctest: +SKIP
        ((8000, 26), (8000, 13))
    """
    source = open_source(path, fmt, label=label, fields=fields)
    lay = source.layout
    if lay.task != "ctr":
        raise DataError(f"{source.describe()} holds user-item interactions, not labelled samples. "
                        "Use load_interactions() for it.")
    batches = _collect(source, batch_rows, threads)
    rows = sum(b.num_rows for b in batches)
    if rows == 0:
        raise DataError(f"{source.describe()} has no data rows. Pass a file with at least one row.")
    names: list[str] = []
    columns: list[np.ndarray] = []
    multi: dict[str, np.ndarray] = {}
    pooling: dict[str, float] = {}
    num_emb: dict[str, int] = {}
    counts: dict[str, np.ndarray] = {}
    vocabs: dict[str, pa.Array] = {}
    for f in lay.fields:
        ids, vocab, cnt = encode_frequency(_concat([b.fields[f] for b in batches]))
        names.append(f)
        columns.append(ids)
        num_emb[f], counts[f], vocabs[f] = len(vocab) + 1, cnt, vocab
    multi_names = list(lay.multi_hot)
    if lay.dynamic:
        seen: dict[str, pa.DataType] = {}
        for b in batches:
            for k, a in b.multi.items():
                seen.setdefault(k, a.type)
        found = sorted((k for k in seen if k not in multi_names), key=natural_key)
        absent = [k for k in lay.requested if k not in found]
        if absent:
            raise DataError(f"`fields` must be fields of {source.describe()}, but got fields={absent!r}; its fields "
                            f"are: {', '.join(found) or '(none)'}.")
        multi_names += list(lay.requested) if lay.requested else found
    for f in multi_names:
        like = next((b.multi[f].type for b in batches if f in b.multi), pa.list_(pa.string()))
        lists = pa.chunked_array([b.multi[f] if f in b.multi else _list_nulls(b.num_rows, like) for b in batches],
                                 type=like)
        padded, vocab, cnt, pool, max_len = _encode_multi(lists, rows)
        num_emb[f], counts[f], vocabs[f] = len(vocab) + 1, cnt, vocab
        if lay.dynamic and max_len <= 1:  # a one-hot field of a libffm file
            names.append(f)
            columns.append(padded[:, 0].copy())
        else:
            multi[f] = padded
            pooling[f] = pool
    ids = np.column_stack(columns).astype(np.int64, copy=False) if columns else np.zeros((rows, 0), dtype=np.int64)
    labels = None
    if lay.label is not None:
        lab = _concat([b.label for b in batches if b.label is not None]).cast(pa.float64()).fill_null(0.0)
        labels = (lab.to_numpy() > 0).astype(np.float32)
    return CtrDataset(field_names=names, ids=ids, multi_hot=multi, pooling=pooling, num_embeddings=num_emb,
                      counts=counts, vocabularies=vocabs, labels=labels,
                      dense=_dense_matrix(batches, lay.dense, lay.format), dense_names=list(lay.dense),
                      path=source.path, format=lay.format, label_name=lay.label)


# --------------------------------------------------------------------------- interactions
@dataclass
class InteractionDataset:
    """User-item interactions in memory, user and item ids frequency-ordered (no reserved id).

    Attributes:
        users: int64 user id per interaction (0 = the most active user).
        items: int64 item id per interaction (0 = the most popular item).
        num_users: distinct users.
        num_items: distinct items.
        order: int64 position of each interaction in its user's history (0 = first); time order
            (timestamp when the file has one, else the row order in the file, which is the
            time order of sequence files).
        counts: ``{"user": ..., "item": ...}`` int64 occurrences per id.
        vocabularies: ``{"user": ..., "item": ...}`` the original ids, most frequent first.
        weights: float32 weight / rating per interaction, or None.
        timestamps: int64 timestamp per interaction, or None.
        path: the source file.
        format: its format name.
    """

    users: np.ndarray
    items: np.ndarray
    num_users: int
    num_items: int
    order: np.ndarray
    counts: dict[str, np.ndarray]
    vocabularies: dict[str, pa.Array]
    weights: np.ndarray | None = None
    timestamps: np.ndarray | None = None
    path: Path = Path()
    format: str = ""

    @property
    def num_rows(self) -> int:
        return int(self.users.shape[0])


def encode_interaction_ids(values: pa.Array | pa.ChunkedArray, path: Path, column: str,
                           what: str) -> tuple[np.ndarray, pa.Array, np.ndarray]:
    """:func:`encode_frequency` for the user or item ids of interactions, which have no missing ids.

    Args:
        values: the ids, one per interaction.
        path: the source file (named in errors).
        column: the column the ids come from.
        what: ``"user"`` or ``"item"``.

    Returns:
        ``(ids, vocabulary, counts)`` with ``counts`` holding one entry per id (no reserved one).

    Raises:
        DataError: the column holds nested values (structs, lists), or some ids are null or empty.
    """
    check_id_column(path, column, values.type, lists=False)
    if pa.types.is_dictionary(values.type):
        values = values.cast(values.type.value_type)
    ids, vocab, counts = encode_frequency(values)
    missing = int(counts[-1])
    if missing:
        first = int(np.flatnonzero(ids == len(vocab))[0])
        raise DataError(f"{str(path)!r}: {missing} interactions have no {what} id (null or empty in column "
                        f"{column!r}, first at row {first + 1}), but every interaction needs a user and an item. "
                        "Drop those rows or fill in the ids.")
    return ids, vocab, counts[:-1]


def _positions(users: np.ndarray, key: np.ndarray | None = None) -> np.ndarray:
    """Position of every row within its user's rows, ordered by ``key`` then row (vectorised)."""
    n = users.shape[0]
    rows = np.arange(n)
    perm = np.lexsort((rows, users)) if key is None else np.lexsort((rows, key, users))
    su = users[perm]
    starts = np.flatnonzero(np.r_[True, su[1:] != su[:-1]]) if n else np.zeros(0, dtype=np.int64)
    group_start = np.repeat(starts, np.diff(np.r_[starts, n]))
    pos = np.empty(n, dtype=np.int64)
    pos[perm] = np.arange(n) - group_start
    return pos


def load_interactions(path: str | Path, fmt: str | None = None, *, batch_rows: int = DEFAULT_BATCH_ROWS,
                      threads: int | None = None) -> InteractionDataset:
    """Load user-item interactions (``interactions`` or ``movielens`` files) into memory.

    Raises:
        DataError: bad file, or a format without users and items.

    Example:
        >>> ds = load_interactions("train.txt", fmt="interactions")  # doctest: +SKIP
        >>> ds.num_users, ds.num_items  # doctest: +SKIP
        (6022, 3043)
    """
    source = open_source(path, fmt)
    lay = source.layout
    if lay.format == "interactions":
        ucol, icol = "user", "item"
    elif lay.format == "movielens":
        ucol, icol = "user_id", "item_id"
    else:
        raise DataError(f"{source.describe()} has no user and item columns. load_interactions() reads "
                        "interactions and movielens files; use load_ctr() for it.")
    if lay.format == "movielens":
        source = open_source(path, "movielens", fields=["user_id", "item_id"])
    batches = _collect(source, batch_rows, threads)
    if sum(b.num_rows for b in batches) == 0:
        raise DataError(f"{source.describe()} has no interactions. Pass a file with at least one.")
    users, uvocab, ucounts = encode_interaction_ids(_concat([b.fields[ucol] for b in batches]), source.path, ucol,
                                                    "user")
    items, ivocab, icounts = encode_interaction_ids(_concat([b.fields[icol] for b in batches]), source.path, icol,
                                                    "item")
    weights = timestamps = None
    if all(b.weight is not None for b in batches):
        weights = _concat([b.weight for b in batches]).cast(pa.float32()).fill_null(0).to_numpy()  # type: ignore[misc]
    if all(b.time is not None for b in batches):
        timestamps = _concat([b.time for b in batches]).cast(pa.int64()).fill_null(0).to_numpy()  # type: ignore[misc]
    return InteractionDataset(
        users=users, items=items, num_users=len(uvocab), num_items=len(ivocab),
        order=_positions(users, timestamps), counts={"user": ucounts, "item": icounts},
        vocabularies={"user": uvocab, "item": ivocab}, weights=weights, timestamps=timestamps,
        path=source.path, format=lay.format,
    )


# --------------------------------------------------------------------------- splits
@dataclass(frozen=True)
class Split:
    """Row indices of a train / validation / test split and the policy that produced it.

    Attributes:
        train: sorted int64 row indices.
        valid: sorted int64 row indices.
        test: sorted int64 row indices.
        policy: JSON-able description (``kind`` plus its parameters) to record with results.
    """

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    policy: dict[str, Any]

    def sizes(self) -> tuple[int, int, int]:
        return int(self.train.size), int(self.valid.size), int(self.test.size)


def _check_n(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
        raise InvalidConfigError(f"`n` must be an integer >= 0, but got n={n!r}.")
    return int(n)


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    fr = tuple(fractions) if isinstance(fractions, Sequence) and not isinstance(fractions, str) else ()
    if len(fr) != 3 or any(isinstance(x, bool) or not isinstance(x, int | float) for x in fr) \
            or any(not math.isfinite(x) or x < 0 for x in fr) or abs(sum(fr) - 1.0) > 1e-6:
        raise InvalidConfigError(f"`fractions` must be 3 numbers >= 0 (train, valid, test) summing to 1, "
                                 f"but got fractions={fractions!r}.")
    return float(fr[0]), float(fr[1]), float(fr[2])


def _sizes(n: int, fr: tuple[float, float, float]) -> tuple[int, int, int]:
    n_valid = int(round(fr[1] * n))
    n_test = min(n - n_valid, int(round(fr[2] * n)))
    return n - n_valid - n_test, n_valid, n_test


def split_random(n: int, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0) -> Split:
    """Shuffle rows ``0..n-1`` with ``seed`` and cut them into train / valid / test.

    Example:
        >>> s = split_random(10, seed=1)
        >>> s.sizes(), s.policy["kind"]
        ((8, 1, 1), 'random')
    """
    n = _check_n(n)
    fr = _check_fractions(fractions)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise InvalidConfigError(f"`seed` must be an integer, but got seed={seed!r}.")
    perm = np.random.default_rng(int(seed)).permutation(n)
    a, b, _ = _sizes(n, fr)
    train, valid, test = (np.sort(p).astype(np.int64) for p in (perm[:a], perm[a:a + b], perm[a + b:]))
    return Split(train, valid, test,
                 policy={"kind": "random", "n": n, "fractions": list(fr), "seed": int(seed),
                         "rng": "numpy.random.default_rng(seed).permutation(n)"})


def split_ordered(n: int, fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> Split:
    """Contiguous split in row order: the first rows train, then valid, then test (e.g. by time).

    Example:
        >>> split_ordered(10).test.tolist()
        [9]
    """
    n = _check_n(n)
    fr = _check_fractions(fractions)
    a, b, _ = _sizes(n, fr)
    r = np.arange(n, dtype=np.int64)
    return Split(r[:a], r[a:a + b], r[a + b:], policy={"kind": "ordered", "n": n, "fractions": list(fr)})


def split_leave_last_out(users: np.ndarray, order: np.ndarray | None = None) -> Split:
    """Per user: the last interaction is test, the second last validation, the rest train.

    Users with two interactions give one to train and one to test; users with one keep it in
    train.

    Args:
        users: user id per row.
        order: a time key per row (e.g. :attr:`InteractionDataset.order` or timestamps); rows of a
            user are ordered by it, then by row index. Default: row order.

    Example:
        >>> s = split_leave_last_out(np.array([0, 0, 0, 1, 1, 2]))
        >>> s.train.tolist(), s.valid.tolist(), s.test.tolist()
        ([0, 3, 5], [1], [2, 4])
    """
    u = np.asarray(users)
    if u.ndim != 1:
        raise InvalidConfigError(f"`users` must be a 1-d array, but got users with shape {u.shape}.")
    key = None
    if order is not None:
        key = np.asarray(order)
        if key.shape != u.shape:
            raise InvalidConfigError(f"`order` must have the shape of `users` {u.shape}, but got order with shape "
                                     f"{key.shape}.")
    pos = _positions(u, key)
    _, inverse, sizes = np.unique(u, return_inverse=True, return_counts=True)
    size = sizes[inverse]
    test = (pos == size - 1) & (size >= 2)
    valid = (pos == size - 2) & (size >= 3)
    train = ~(test | valid)
    return Split(np.flatnonzero(train), np.flatnonzero(valid), np.flatnonzero(test),
                 policy={"kind": "leave_last_out", "test": "last interaction of each user",
                         "valid": "second last interaction of users with >= 3",
                         "order": "given time key, then row" if key is not None else "row order"})
