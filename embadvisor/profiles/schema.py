"""Workload profiles: what the advisor knows about a workload without its data.

A :class:`WorkloadProfile` holds the task, the number of rows, the label rate and, per
categorical field (embedding table), its number of ids, its pooling factor and a compact
:class:`FrequencySummary` of the id frequencies. Profiles are versioned, validated eagerly and
round-trip through TOML and JSON (see :mod:`embadvisor.profiles.io`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from embadvisor.errors import InvalidConfigError
from embadvisor.units import DTYPE_BYTES

__all__ = [
    "MAX_EMBEDDING_DIM",
    "MAX_NAME_LENGTH",
    "MAX_NUM_EMBEDDINGS",
    "PROFILE_VERSION",
    "RANK_FRACTIONS",
    "TASKS",
    "FieldProfile",
    "FrequencySummary",
    "TableSpec",
    "WorkloadProfile",
]

PROFILE_VERSION = 1
TASKS = ("ctr", "retrieval")
#: largest embedding dim a profile may state (2**16): embedding widths are tens to a few thousand, and
#: the solvers' factorisations of the dim (TT-Rec's, DPQ's parts) must stay instant
MAX_EMBEDDING_DIM = 2**16
#: largest table a profile may state (2**40, about 1.1e12 rows: 100x the largest published tables), so
#: rows x dim stays within torch's int64 element counts at every dim up to MAX_EMBEDDING_DIM
MAX_NUM_EMBEDDINGS = 2**40
#: longest profile name: it is a short label (preset name, file stem) that reports print and study names
#: include; a 100,000-character name took rich a minute to print
MAX_NAME_LENGTH = 1024
#: Rank fractions (share of distinct ids, most frequent first) at which the cumulative share of
#: occurrences is recorded; log-spaced so both the head and the tail are visible.
RANK_FRACTIONS: tuple[float, ...] = (
    1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0,
)


def _bad(param: str, constraint: str, value: object) -> InvalidConfigError:
    return InvalidConfigError(f"`{param}` must be {constraint}, but got {param}={value!r}.")


def _is_int(value: object, low: int, high: int | None = None) -> bool:
    """An int (not a bool: ``true`` in a TOML/JSON file is no count) in ``[low, high]``."""
    return (isinstance(value, int) and not isinstance(value, bool) and value >= low
            and (high is None or value <= high))


@dataclass(frozen=True)
class FrequencySummary:
    """How the occurrences of one field's ids are spread over its distinct ids.

    Args:
        total: occurrences counted (non-missing values).
        missing: number of empty / missing values.
        rank_fractions: increasing fractions of the distinct ids (most frequent first), ending at 1.
        cumulative_shares: share of all occurrences covered by the ids up to each rank fraction;
            non-decreasing, ends at 1.
        powerlaw_alpha: exponent s of a power law ``count(rank) ~ rank**-s`` fitted on the
            sorted counts (0 means uniform).
        singleton_fraction: fraction of distinct ids seen exactly once.
        source: where the summary comes from (measured file, a stated assumption, ...).
    """

    total: int
    missing: int = 0
    rank_fractions: tuple[float, ...] = RANK_FRACTIONS
    cumulative_shares: tuple[float, ...] = ()
    powerlaw_alpha: float = 0.0
    singleton_fraction: float = 0.0
    source: str = ""

    def __post_init__(self) -> None:
        for key in ("rank_fractions", "cumulative_shares"):
            values = getattr(self, key)
            if isinstance(values, str | bytes) or not isinstance(values, Sequence | np.ndarray) or any(
                    isinstance(x, bool) or not isinstance(x, int | float | np.number) for x in values):
                raise _bad(key, "a list of numbers", values)
            object.__setattr__(self, key, tuple(float(x) for x in values))
        if not _is_int(self.total, 0):
            raise _bad("total", "an integer >= 0", self.total)
        if not _is_int(self.missing, 0):
            raise _bad("missing", "an integer >= 0", self.missing)
        rf, cs = self.rank_fractions, self.cumulative_shares
        if len(rf) != len(cs) or not rf:
            raise _bad("cumulative_shares", f"a list as long as rank_fractions ({len(rf)})", list(cs))
        if any(not 0 < x <= 1 for x in rf) or any(b <= a for a, b in zip(rf, rf[1:], strict=False)):
            raise _bad("rank_fractions", "strictly increasing values in (0, 1]", list(rf))
        if any(not 0 <= x <= 1 + 1e-9 for x in cs) or any(b < a - 1e-12 for a, b in zip(cs, cs[1:], strict=False)):
            raise _bad("cumulative_shares", "non-decreasing values in [0, 1]", list(cs))
        if not math.isfinite(self.powerlaw_alpha) or self.powerlaw_alpha < 0:
            raise _bad("powerlaw_alpha", "a finite number >= 0", self.powerlaw_alpha)
        if not 0 <= self.singleton_fraction <= 1:
            raise _bad("singleton_fraction", "in [0, 1]", self.singleton_fraction)

    @classmethod
    def from_counts(cls, counts: np.ndarray, *, missing: int = 0, source: str = "") -> FrequencySummary:
        """Summarise raw per-id occurrence counts (any order)."""
        c = np.sort(np.asarray(counts, dtype=np.int64))[::-1]
        c = c[c > 0]
        n = int(c.size)
        total = int(c.sum())
        if n == 0:
            return cls(total=0, missing=missing, cumulative_shares=tuple(1.0 for _ in RANK_FRACTIONS),
                       source=source)
        cum = np.cumsum(c, dtype=np.float64) / total
        idx = np.clip(np.ceil(np.asarray(RANK_FRACTIONS) * n).astype(np.int64), 1, n) - 1
        shares = cum[idx]
        shares[-1] = 1.0
        return cls(
            total=total,
            missing=int(missing),
            cumulative_shares=tuple(float(x) for x in shares),
            powerlaw_alpha=fit_powerlaw(c),
            singleton_fraction=float(np.count_nonzero(c == 1) / n),
            source=source,
        )

    @classmethod
    def zipf(cls, num_ids: int, alpha: float, *, total: int = 0, source: str = "") -> FrequencySummary:
        """The summary of an ideal Zipf law ``p(rank) ~ rank**-alpha`` over ``num_ids`` ids."""
        ranks = np.clip(np.ceil(np.asarray(RANK_FRACTIONS) * num_ids), 1, num_ids)
        shares = [_zipf_cdf(r, num_ids, alpha) for r in ranks]
        shares[-1] = 1.0
        return cls(total=total, cumulative_shares=tuple(shares), powerlaw_alpha=float(alpha),
                   source=source)

    def top_share(self, fraction: float) -> float:
        """Share of occurrences covered by the most frequent ``fraction`` of ids (interpolated)."""
        xs = np.log(np.asarray(self.rank_fractions))
        return float(np.interp(math.log(max(fraction, self.rank_fractions[0])), xs, self.cumulative_shares))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _zipf_cdf(rank: float, n: int, alpha: float) -> float:
    """Share of mass in the first ``rank`` of ``n`` Zipf(alpha) ids (integral approximation)."""
    def h(x: float) -> float:  # ~ sum_{k<=x} k**-alpha
        if abs(alpha - 1) < 1e-9:
            return math.log(x) + 0.5772 + 0.5 / x
        return (x ** (1 - alpha) - 1) / (1 - alpha) + 0.5 * (1 + x ** -alpha)
    return min(1.0, h(rank) / h(n)) if n > 1 else 1.0


def fit_powerlaw(sorted_counts: np.ndarray) -> float:
    """Least-squares slope of log(count) against log(rank) over the ids seen more than once.

    Returns 0 when there are fewer than 3 such ids (no measurable skew).
    """
    c = np.asarray(sorted_counts, dtype=np.float64)
    c = c[c > 1] if np.count_nonzero(c > 1) >= 3 else c
    if c.size < 3 or c[0] == c[-1]:
        return 0.0
    # log-spaced sample of ranks so the long tail does not dominate the fit
    idx = np.unique(np.geomspace(1, c.size, num=min(64, c.size)).astype(np.int64)) - 1
    x, y = np.log(idx + 1.0), np.log(c[idx])
    slope = float(np.polyfit(x, y, 1)[0])
    return round(max(0.0, -slope), 4)


@dataclass(frozen=True)
class TableSpec:
    """The facts a compression method needs about one embedding table (torchrec vocabulary).

    Args:
        name: table (field) name.
        num_embeddings: rows of the logical table; ids lie in ``[0, num_embeddings)``.
        embedding_dim: width of the vectors the table returns.
        frequency: id-frequency summary, or None when unknown.
        segments: for a global table merged from several fields, each field's row count in order
            (their sum is ``num_embeddings``); empty for one field's own table.
    """

    name: str
    num_embeddings: int
    embedding_dim: int
    frequency: FrequencySummary | None = None
    segments: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for key in ("num_embeddings", "embedding_dim"):
            value = getattr(self, key)
            if isinstance(value, np.integer):
                object.__setattr__(self, key, int(value))
        if not _is_int(self.num_embeddings, 1):
            raise _bad("num_embeddings", "an integer >= 1", self.num_embeddings)
        if not _is_int(self.embedding_dim, 1):
            raise _bad("embedding_dim", "an integer >= 1", self.embedding_dim)
        if self.segments and sum(self.segments) != self.num_embeddings:
            raise _bad("segments", f"row counts adding up to num_embeddings={self.num_embeddings}", self.segments)

    @property
    def full_elements(self) -> int:
        return self.num_embeddings * self.embedding_dim


@dataclass(frozen=True)
class FieldProfile:
    """One categorical field, i.e. one embedding table.

    Args:
        name: field name (column name).
        num_embeddings: rows of the field's embedding table. For profiled files this is the
            number of distinct non-empty values plus one reserved row (the last id) that empty and
            unseen values map to.
        cardinality: distinct non-empty values observed (for presets: the public count).
        pooling: mean ids per sample (1 for one-hot fields, more for multi-hot fields).
        embedding_dim: the field's dim, or None for the workload default.
        frequency: frequency summary, or None when unknown.
    """

    name: str
    num_embeddings: int
    cardinality: int | None = None
    pooling: float = 1.0
    embedding_dim: int | None = None
    frequency: FrequencySummary | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise _bad("name", "a non-empty string", self.name)
        if not _is_int(self.num_embeddings, 1, MAX_NUM_EMBEDDINGS):
            raise _bad(f"{self.name}.num_embeddings", f"an integer in [1, 2**40 = {MAX_NUM_EMBEDDINGS:,}]",
                       self.num_embeddings)
        if self.cardinality is not None and not _is_int(self.cardinality, 0):
            raise _bad(f"{self.name}.cardinality", "an integer >= 0", self.cardinality)
        if (isinstance(self.pooling, bool) or not isinstance(self.pooling, int | float)
                or not math.isfinite(self.pooling) or self.pooling <= 0):
            raise _bad(f"{self.name}.pooling", "a number > 0", self.pooling)
        if self.embedding_dim is not None and not _is_int(self.embedding_dim, 1, MAX_EMBEDDING_DIM):
            raise _bad(f"{self.name}.embedding_dim", f"an integer in [1, {MAX_EMBEDDING_DIM}] or absent",
                       self.embedding_dim)


@dataclass(frozen=True)
class WorkloadProfile:
    """A workload: task, size, label rate and its categorical fields.

    Args:
        task: ``"ctr"`` or ``"retrieval"``.
        fields: the categorical fields (for retrieval: the user and item tables).
        num_rows: samples (CTR) or interactions (retrieval).
        label_rate: share of positive labels (CTR), None for retrieval.
        num_dense: number of dense (numeric) features.
        embedding_dim: default embedding dim for fields that do not set one.
        dtype: weight dtype of the uncompressed tables (``fp32``, ``fp16``, ``bf16``).
        name: a short name (preset name, file stem).
        source: provenance: which file or public facts this profile comes from.
        version: schema version.

    Example:
        >>> p = WorkloadProfile(task="ctr", fields=(FieldProfile("c1", 1000),), num_rows=10)
        >>> p.full_table_bytes()
        64000
    """

    task: str
    fields: tuple[FieldProfile, ...]
    num_rows: int = 0
    label_rate: float | None = None
    num_dense: int = 0
    embedding_dim: int = 16
    dtype: str = "fp32"
    name: str = ""
    source: str = ""
    version: int = PROFILE_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "fields", tuple(self.fields))
        if self.version != PROFILE_VERSION:
            raise _bad("version", f"{PROFILE_VERSION} (the schema this embadvisor reads)", self.version)
        if self.task not in TASKS:
            raise _bad("task", f"one of {', '.join(TASKS)}", self.task)
        if not self.fields:
            raise _bad("fields", "a non-empty list of fields", list(self.fields))
        names = [f.name for f in self.fields]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise _bad("fields", "fields with unique names", dup)
        if not _is_int(self.num_rows, 0):
            raise _bad("num_rows", "an integer >= 0", self.num_rows)
        if self.label_rate is not None and (isinstance(self.label_rate, bool) or not 0 <= self.label_rate <= 1):
            raise _bad("label_rate", "in [0, 1] or absent", self.label_rate)
        if not _is_int(self.num_dense, 0):
            raise _bad("num_dense", "an integer >= 0", self.num_dense)
        if not _is_int(self.embedding_dim, 1, MAX_EMBEDDING_DIM):
            raise _bad("embedding_dim", f"an integer in [1, {MAX_EMBEDDING_DIM}]", self.embedding_dim)
        if not isinstance(self.name, str) or len(self.name) > MAX_NAME_LENGTH:
            shown = f"{self.name[:40]!r}... ({len(self.name):,} characters)" if isinstance(self.name, str) \
                else repr(self.name)
            raise InvalidConfigError(f"`name` must be a string of at most {MAX_NAME_LENGTH} characters, but got "
                                     f"name={shown}. Give the profile a short name.")
        if self.dtype not in ("fp32", "fp16", "bf16"):
            raise _bad("dtype", "one of fp32, fp16, bf16", self.dtype)

    # -- derived facts -------------------------------------------------------------------
    def dim_of(self, f: FieldProfile) -> int:
        return f.embedding_dim or self.embedding_dim

    @property
    def field_names(self) -> list[str]:
        return [f.name for f in self.fields]

    @property
    def total_ids(self) -> int:
        return sum(f.num_embeddings for f in self.fields)

    def field(self, name: str) -> FieldProfile:
        for f in self.fields:
            if f.name == name:
                return f
        raise _bad("field", f"one of {', '.join(self.field_names)}", name)

    def tables(self) -> list[TableSpec]:
        """One :class:`TableSpec` per field, at the field's (or the default) dim."""
        return [TableSpec(f.name, f.num_embeddings, self.dim_of(f), f.frequency) for f in self.fields]

    def table_bytes(self, f: FieldProfile) -> int:
        return f.num_embeddings * self.dim_of(f) * DTYPE_BYTES[self.dtype]

    def full_table_bytes(self) -> int:
        """Bytes of all uncompressed tables at the profile's dims and dtype."""
        return sum(self.table_bytes(f) for f in self.fields)

    def replace(self, **changes: Any) -> WorkloadProfile:
        return dataclasses.replace(self, **changes)

    # -- (de)serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["fields"] = [_drop_none(f) for f in d["fields"]]
        return {"version": d.pop("version"), **_drop_none(d)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WorkloadProfile:
        """Build and validate a profile from plain data (parsed TOML or JSON)."""
        if not isinstance(data, Mapping):
            raise _bad("profile", "a table of keys", type(data).__name__)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise _bad("profile keys", f"among {', '.join(sorted(known))}", unknown)
        if "task" not in data or "fields" not in data:
            raise _bad("profile", "a table with at least `task` and `fields`", sorted(data))
        raw_fields = data["fields"]
        if not isinstance(raw_fields, Sequence) or isinstance(raw_fields, str):
            raise _bad("fields", "a list of field tables", raw_fields)
        fields = tuple(_field_from_dict(f, i) for i, f in enumerate(raw_fields))
        kw = {k: v for k, v in data.items() if k != "fields"}
        try:
            return cls(fields=fields, **kw)
        except InvalidConfigError:  # our own message (InvalidConfigError is a TypeError too)
            raise
        except TypeError as e:  # wrong value types that dataclass init itself rejects
            raise InvalidConfigError(f"profile is not valid: {e}.") from None


def _field_from_dict(raw: Any, i: int) -> FieldProfile:
    if not isinstance(raw, Mapping):
        raise _bad(f"fields[{i}]", "a table", raw)
    known = {f.name for f in dataclasses.fields(FieldProfile)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise _bad(f"fields[{i}] keys", f"among {', '.join(sorted(known))}", unknown)
    if "name" not in raw or "num_embeddings" not in raw:
        raise _bad(f"fields[{i}]", "a table with at least `name` and `num_embeddings`", sorted(raw))
    kw = dict(raw)
    freq = kw.pop("frequency", None)
    if freq is not None:
        if not isinstance(freq, Mapping):
            raise _bad(f"fields[{i}].frequency", "a table", freq)
        fknown = {f.name for f in dataclasses.fields(FrequencySummary)}
        bad = sorted(set(freq) - fknown)
        if bad:
            raise _bad(f"fields[{i}].frequency keys", f"among {', '.join(sorted(fknown))}", bad)
        try:
            kw["frequency"] = FrequencySummary(**freq)
        except InvalidConfigError as e:
            raise InvalidConfigError(f"fields[{i}].frequency: {e}") from None
        except TypeError as e:
            raise InvalidConfigError(f"fields[{i}].frequency is not valid: {e}.") from None
    try:
        return FieldProfile(**kw)
    except InvalidConfigError as e:
        raise InvalidConfigError(f"fields[{i}]: {e}") from None
    except TypeError as e:
        raise InvalidConfigError(f"fields[{i}] is not valid: {e}.") from None


def _drop_none(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (_drop_none(v) if isinstance(v, Mapping) else v) for k, v in d.items() if v is not None}


