"""Synthetic workloads calibrated to a :class:`~embadvisor.profiles.schema.WorkloadProfile`.

``generate(profile, rows=..., output=...)`` writes a file whose categorical fields have the
profile's table sizes and id skew, and whose labels come from a *planted teacher* of known quality
(oracle AUC and logloss), so a trained model can be judged against the best achievable.

How CTR rows are made:

* **Ids.** Per field, a uniform number picks a frequency *rank* by inverting the distribution
  implied by the field's :class:`~embadvisor.profiles.schema.FrequencySummary`: the recorded
  ``(rank_fraction, cumulative_share)`` points are met exactly and inside each segment the mass
  follows a power law whose exponent is the local slope of the summary (no summary: uniform ids).
  Empty values take the summary's missing share; they map to the last id
  (``num_embeddings - 1``, the reserved row, which then carries no value) or to an empty token in
  Criteo TSV. A seeded affine bijection ``id = (a * rank + b) mod c`` with ``gcd(a, c) = 1`` maps
  ranks to ids, so the file is not sorted by frequency. Memory is O(chunk) per field, plus a small
  per-id table (40 bytes per id) for fields of at most 2**19 ids.
* **Teacher.** Each id owns a bias ``w`` and an ``k = 8`` dim vector ``v`` drawn by a counter-based
  hash of ``(seed, field, id)`` (splitmix64 mixing, 16-bit chunks through a normal quantile table),
  so nothing of size ``num_embeddings x k`` is needed. The logit is
  ``b0 + c_lin sum_f s_f w_f + c_pair sum_{f<g} <s_f v_f, s_g v_g> + c_dense sum_j u_j z_j``. The
  strength ``s = min(1, p(id) * 2e5) ** 0.5`` (``p`` the id's probability) leaves ids seen a handful
  of times in a few million rows with little signal, so a model trained on such data can approach
  the teacher; with ``learnable_rows = R`` it is ``min(1, p(id) * R / 40) ** 0.5`` instead (full
  strength from 40 expected occurrences in ``R`` rows), for workloads trained on fewer rows. On a fixed pilot sample (65,536 rows from their own stream) the three parts are
  scaled to shares 45/40/15% of the logit variance ``signal ** 2`` (default ``signal = 1.5``: an
  oracle AUC near 0.82 on a Criteo-like profile) and ``b0`` is solved by bisection so the label rate
  matches ``profile.label_rate`` (0.25 when absent). Labels are ``Bernoulli(sigmoid(logit))``.
* **Dense features** (``profile.num_dense`` columns ``I1..``): a latent ``z ~ N(0, 1)`` per cell,
  written as the non-negative integer ``x = round(exp(mu + sigma z) - 1)`` with Criteo-like scales and
  missing rates per column (empty in TSV/CSV, null in parquet; an empty cell has its own effect).
  The teacher's dense term uses the value as written, ``(log(1 + x) - mu) / sigma``, not the latent
  ``z`` (rounding would otherwise hide part of the signal from any model, oracle-unreachable).

Retrieval profiles give ``(user, item)`` interactions: the user is drawn with the user field's
skew; ``num_candidates`` items are drawn with the item field's skew and one is picked by a
Gumbel-max softmax over ``temperature * <u, v> / sqrt(k)`` of planted user and item vectors, so
item popularity keeps the item field's skew (up to the affinity re-weighting).

Each field gets one id per row (a multi-hot field's ``pooling`` is not reproduced).

Determinism: every random number is a hash of ``(seed, stream, absolute row index)``. The same
seed, profile and rows give byte-identical files (same numpy/pyarrow build and CPU family: labels
compare uniforms with float probabilities); the first ``r`` rows do not depend on how many rows
are generated; TSV and CSV bytes do not depend on ``chunk_rows`` (parquet row groups follow
``chunk_rows``, the values do not). Chunks are made by up to 4 threads (one per core) and written
in order; peak memory is about 250 MB per thread at the default 131,072-row chunks.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from embadvisor.errors import DataError, InvalidConfigError
from embadvisor.profiles.schema import FieldProfile, WorkloadProfile

__all__ = ["DEFAULT_CHUNK_ROWS", "DEFAULT_LABEL_RATE", "FORMATS", "FULL_STRENGTH_COUNT", "SynthResult", "generate"]

FORMATS = ("parquet", "criteo", "csv")
_SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".txt": "criteo", ".tsv": "criteo", ".csv": "csv"}
DEFAULT_CHUNK_ROWS = 131_072
DEFAULT_LABEL_RATE = 0.25
DEFAULT_SIGNAL = 1.5
#: bumped whenever the same (profile, rows, seed) would give other rows (cached proxies key on it)
GENERATOR_VERSION = 2

_K = 8  # latent dim of the teacher
_R0 = 2e5  # ids with p(id) >= 1 / _R0 carry full strength (default)
#: with ``learnable_rows``: expected occurrences at which an id carries full teacher strength
FULL_STRENGTH_COUNT = 40
_GAMMA = 0.5
_PILOT_ROWS = 1 << 16
_PILOT_OFFSET = 1 << 60  # pilot rows use row indices far beyond any file row
_AUC_SAMPLE_ROWS = 1 << 21
_SHARES = {"lin": 0.45, "pair": 0.40, "dense": 0.15}
_TABLE_MAX = 1 << 19  # fields with at most this many ids get a per-id teacher table
_GUIDE = 1 << 14  # buckets of the segment guide table
_MAX_WORKERS = 4

_U64 = np.uint64
_GOLDEN = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB
_MASK64 = (1 << 64) - 1

# Criteo-like dense columns I1..I13: (mu, sigma) of log(1 + x) and the share of empty cells.
_DENSE_PARAMS: tuple[tuple[float, float, float], ...] = (
    (0.6, 1.0, 0.45), (1.8, 1.9, 0.0), (1.9, 1.3, 0.21), (1.6, 0.9, 0.22), (7.6, 2.0, 0.03),
    (3.2, 1.6, 0.22), (1.7, 1.3, 0.04), (2.3, 1.0, 0.005), (3.8, 1.2, 0.04), (0.3, 0.5, 0.45),
    (1.0, 0.8, 0.04), (0.2, 0.6, 0.77), (1.8, 0.9, 0.22),
)


def _normal_table() -> np.ndarray:
    """Normal quantiles at the 65,536 mid-points ``(i + 0.5) / 2**16`` (16-bit uniforms to N(0, 1))."""
    from statistics import NormalDist

    inv = NormalDist().inv_cdf
    return np.array([inv((i + 0.5) / (1 << 16)) for i in range(1 << 16)], dtype=np.float32)


def _hex4_table() -> np.ndarray:
    """uint32 whose 4 bytes (in memory order) are the 4 lowercase hex digits of the index."""
    digits = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    i = np.arange(1 << 16)
    chars = np.stack([digits[(i >> s) & 15] for s in (12, 8, 4, 0)], axis=1).astype(np.uint8)
    return np.ascontiguousarray(chars).view(np.uint32).ravel()


_NORM16 = _normal_table()
_HEX4 = _hex4_table()


# ---------------------------------------------------------------------------------------- hashing
def _key(seed: int, *parts: object) -> int:
    """A 64-bit stream key from the seed and names (stable across processes and platforms)."""
    text = "\x1f".join([str(int(seed)), *map(str, parts)]).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, in place on a uint64 array."""
    z ^= z >> _U64(30)
    z *= _U64(_M1)
    z ^= z >> _U64(27)
    z *= _U64(_M2)
    z ^= z >> _U64(31)
    return z


def _hash(counter: np.ndarray, key: int) -> np.ndarray:
    """One well-mixed uint64 per counter value (a new array)."""
    z = counter.astype(np.uint64, copy=True)
    z += _U64(1)
    z *= _U64(_GOLDEN)
    z += _U64(key)
    return _mix(z)


def _uniform(h: np.ndarray) -> np.ndarray:
    """Uniform float64 in [0, 1) from the top 53 bits of a uint64 hash."""
    return (h >> _U64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _normals(counter: np.ndarray, key: int, count: int) -> np.ndarray:
    """``(len(counter), count)`` float32 ~N(0, 1), 16-bit quantised, from ``ceil(count / 4)`` hashes."""
    words = -(-count // 4)
    z = np.empty((counter.size, words), dtype=np.uint64)
    base = counter.astype(np.uint64) * _U64(_GOLDEN)
    for w in range(words):
        np.add(base, _U64((key + (w + 1) * _M1) & _MASK64), out=z[:, w])
    _mix(z)
    return np.take(_NORM16, z.view(np.uint16).reshape(counter.size, words * 4)[:, :count])


def _fmix32(x: np.ndarray) -> np.ndarray:
    """murmur3 32-bit finaliser (a bijection of uint32), in place."""
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x85EBCA6B)
    x ^= x >> np.uint32(13)
    x *= np.uint32(0xC2B2AE35)
    x ^= x >> np.uint32(16)
    return x


def _auc(y: np.ndarray, p: np.ndarray) -> float | None:
    """ROC AUC (Mann-Whitney, ties count one half); None when only one class is present."""
    n = y.size
    npos = int(np.count_nonzero(y))
    if npos == 0 or npos == n:
        return None
    order = np.argsort(p, kind="stable")
    ps = p[order]
    first = np.r_[True, ps[1:] != ps[:-1]]
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], n]
    avg_rank = 0.5 * (starts + ends + 1)  # 1-based mean rank of each tie group
    ranks = avg_rank[np.cumsum(first) - 1]
    pos_rank_sum = float(ranks[y[order] != 0].sum())
    return (pos_rank_sum - npos * (npos + 1) / 2) / (npos * (n - npos))


# ------------------------------------------------------------------------------------ id sampling
@dataclass(frozen=True)
class _IdSampler:
    """Inverse-CDF sampler of one field's ids (see the module docstring).

    Segment ``j`` holds the 0-based ranks ``[bounds[j], bounds[j+1])`` and the share ``mass[j]``;
    inside it the continuous 1-based rank ``y`` in ``[L, U) = [bounds[j] + 1, bounds[j+1] + 1)``
    has density ``~ y**-a``: ``y = L * exp(log1p(w * D) / e)`` with ``e = 1 - a``,
    ``D = expm1(e * log(U / L))`` and ``w`` the position of the uniform inside the segment.
    """

    name: str
    num_embeddings: int
    distinct: int  # ids [0, distinct) carry values
    missing: float  # share of empty values
    missing_id: int
    cum: np.ndarray  # (J+1,) cumulative shares, cum[0] = 0, cum[-1] = 1
    guide: np.ndarray  # (_GUIDE + 1,) segment holding v = i / _GUIDE
    inv_mass: np.ndarray  # (J,) 1 / mass (0 for empty segments)
    log_lo: np.ndarray  # (J,) log L
    d: np.ndarray  # (J,) expm1(e log(U / L))
    inv_e: np.ndarray  # (J,) 1 / e
    alpha: np.ndarray  # (J,) a
    logcoef: np.ndarray  # (J,) log(mass * e / (U**e - L**e)): log density = logcoef - a log y
    bounds: np.ndarray  # (J+1,) 0-based rank bounds
    mult: int
    add: int
    mult_inv: int

    def ranks(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Map uniforms to ``(0-based frequency rank, segment, missing mask)``."""
        miss = u < self.missing
        if self.missing > 0:
            v = (u - self.missing) * (1.0 / (1.0 - self.missing)) if self.missing < 1 else np.zeros_like(u)
            np.clip(v, 0.0, 1.0 - 2.0**-53, out=v)
        else:
            v = u
        seg = np.take(self.guide, (v * _GUIDE).astype(np.intp))
        for _ in range(self.cum.size):
            adv = v >= np.take(self.cum, seg + 1)
            if not adv.any():
                break
            seg += adv
        w = (v - np.take(self.cum, seg)) * np.take(self.inv_mass, seg)
        np.clip(w, 0.0, 1.0, out=w)
        logy = np.log1p(w * np.take(self.d, seg)) * np.take(self.inv_e, seg) + np.take(self.log_lo, seg)
        rank = np.exp(logy).astype(np.int64) - 1
        np.clip(rank, 0, self.distinct - 1, out=rank)
        return rank, seg, miss

    def ids(self, rank: np.ndarray, miss: np.ndarray) -> np.ndarray:
        """Ids (int64) of ranks; empty values get ``missing_id``."""
        ids = ((rank.astype(np.uint64) * _U64(self.mult) + _U64(self.add)) % _U64(self.distinct)).astype(np.int64)
        if self.missing > 0:
            ids[miss] = self.missing_id
        return ids

    def rank_of(self, ids: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`ids` for ids below ``distinct``."""
        x = (ids.astype(np.int64) - self.add) % self.distinct
        return ((x.astype(np.uint64) * _U64(self.mult_inv)) % _U64(self.distinct)).astype(np.int64)

    def segment_of(self, rank: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.bounds[1:], rank, side="right")

    def logp(self, rank: np.ndarray, seg: np.ndarray, miss: np.ndarray | None = None) -> np.ndarray:
        """Log probability of each id (the density at the middle of the rank's unit interval)."""
        lp = np.take(self.logcoef, seg) - np.take(self.alpha, seg) * np.log(rank + 1.5)
        if self.missing > 0:
            lp += math.log1p(-self.missing) if self.missing < 1 else -np.inf
            if miss is not None:
                lp[miss] = math.log(self.missing)
        return lp


def _segments(f: FieldProfile, distinct: int) -> tuple[np.ndarray, np.ndarray]:
    """0-based rank bounds ``K`` (K[0] = 0, K[-1] = distinct, increasing) and cumulative shares."""
    fr = f.frequency
    if fr is None:
        return np.array([0, distinct], dtype=np.int64), np.array([0.0, 1.0])
    rf = np.asarray(fr.rank_fractions, dtype=np.float64)
    cs = np.asarray(fr.cumulative_shares, dtype=np.float64)
    ks = np.clip(np.ceil(rf * distinct - 1e-9), 1, distinct).astype(np.int64)
    if ks[-1] != distinct:
        ks, cs = np.append(ks, distinct), np.append(cs, 1.0)
    cs = np.maximum.accumulate(np.clip(cs, 0.0, 1.0))
    cs[-1] = 1.0
    last = np.r_[ks[1:] != ks[:-1], True]  # keep the last share of equal rank bounds
    return np.r_[0, ks[last]], np.r_[0.0, cs[last]]


def _sampler(f: FieldProfile, seed: int, *, allow_missing: bool = True) -> _IdSampler:
    n = f.num_embeddings
    fr = f.frequency
    missing = 0.0
    if allow_missing and fr is not None and fr.missing + fr.total > 0:
        missing = fr.missing / (fr.missing + fr.total)
    distinct = n
    if f.cardinality is not None and 1 <= f.cardinality <= n:
        distinct = f.cardinality
    if missing > 0 and n >= 2:
        distinct = min(distinct, n - 1)  # the last id is the reserved row that empty values map to

    ks, cs = _segments(f, distinct)
    mass = np.diff(cs)
    lo = ks[:-1] + 1.0
    hi = ks[1:] + 1.0
    # local power-law exponent: slope of log(mean density) against log(rank) across segments
    alpha = np.zeros(mass.size)
    pos = np.flatnonzero(mass > 0)
    if pos.size >= 2:
        logd = np.log(mass[pos] / (hi[pos] - lo[pos]))
        logx = 0.5 * (np.log(lo[pos]) + np.log(hi[pos]))
        alpha[pos] = np.clip(-np.gradient(logd, logx), 0.0, 4.0)
    e = 1.0 - alpha
    e = np.where(np.abs(e) < 1e-6, np.where(e < 0, -1e-6, 1e-6), e)
    lam = np.log(hi / lo)
    d = np.expm1(e * lam)
    with np.errstate(divide="ignore"):
        # mass * e / (U**e - L**e) = mass * e / (L**e * d)
        logcoef = np.log(mass) + np.log(e / d) - e * np.log(lo)
        inv_mass = np.where(mass > 0, 1.0 / np.where(mass > 0, mass, 1.0), 0.0)
    guide = np.searchsorted(cs[1:-1], np.arange(_GUIDE + 1) / _GUIDE, side="right").astype(np.intp)

    mult, add = 1, 0
    if distinct > 1:
        h = _key(seed, "perm", f.name)
        cap = distinct if distinct < (1 << 32) else max(3, (1 << 63) // distinct)
        mult = (cap // 4 + h % max(1, cap // 2)) | 1
        while math.gcd(mult, distinct) != 1:
            mult += 2
        add = (h >> 32) % distinct
    return _IdSampler(
        name=f.name, num_embeddings=n, distinct=distinct, missing=missing, missing_id=n - 1, cum=cs,
        guide=guide, inv_mass=inv_mass, log_lo=np.log(lo), d=d, inv_e=1.0 / e, alpha=alpha, logcoef=logcoef,
        bounds=ks, mult=mult, add=add, mult_inv=pow(mult, -1, distinct) if distinct > 1 else 0,
    )


# ----------------------------------------------------------------------------------------- result
@dataclass
class SynthResult:
    """What :func:`generate` wrote and how good its planted teacher is.

    Attributes:
        path: the file written.
        format: ``parquet``, ``criteo`` or ``csv``.
        task: ``ctr`` or ``retrieval``.
        rows: rows written.
        seed: the seed.
        seconds: wall time of the generation.
        bytes: size of the file.
        chunk_rows: rows generated per chunk.
        columns: column names in file order (Criteo TSV has no header; its names for reference).
        label_rate: realised share of positive labels (CTR).
        target_label_rate: the profile's label rate, or the default 0.25 (CTR).
        oracle_auc: ROC AUC of the teacher's true probabilities against the drawn labels on the
            first ``oracle_sample_rows`` rows of the file (None when one class only).
        oracle_logloss: mean log loss of the true probabilities over all rows (CTR).
        oracle_sample_rows: rows the oracle AUC was computed on (the first rows, at most 2**21).
        signal: standard deviation of the teacher's logit before the intercept (CTR).
        num_users, num_items: table sizes of the user and item fields (retrieval).
        user_field, item_field: the profile fields used as users and items (retrieval).
        distinct_users, distinct_items: distinct users and items written (retrieval).
        num_candidates: popularity-drawn candidates per interaction (retrieval).
        oracle_candidate_accuracy: share of interactions whose item is the candidate of highest
            planted affinity (retrieval; chance is about ``1 / num_candidates``).
    """

    path: str
    format: str
    task: str
    rows: int
    seed: int
    seconds: float = 0.0
    bytes: int = 0
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    columns: list[str] = field(default_factory=list)
    label_rate: float | None = None
    target_label_rate: float | None = None
    oracle_auc: float | None = None
    oracle_logloss: float | None = None
    oracle_sample_rows: int | None = None
    signal: float | None = None
    user_field: str | None = None
    item_field: str | None = None
    num_users: int | None = None
    num_items: int | None = None
    distinct_users: int | None = None
    distinct_items: int | None = None
    num_candidates: int | None = None
    oracle_candidate_accuracy: float | None = None

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json`` and the report table (keys that do not apply are left out)."""
        d: dict[str, Any] = {
            "path": self.path, "format": self.format, "task": self.task, "rows": self.rows, "seed": self.seed,
        }
        for k in ("label_rate", "target_label_rate", "oracle_auc", "oracle_logloss", "oracle_sample_rows",
                  "signal", "user_field", "item_field", "num_users", "num_items", "distinct_users",
                  "distinct_items", "num_candidates", "oracle_candidate_accuracy"):
            v = getattr(self, k)
            if v is not None:
                d[k] = round(v, 6) if isinstance(v, float) else v
        d["bytes"] = self.bytes
        d["chunk_rows"] = self.chunk_rows
        d["seconds"] = round(self.seconds, 3)
        d["rows_per_second"] = round(self.rows_per_second, 1)
        return d


# ------------------------------------------------------------------------------------ CTR teacher
def _effects(ids: np.ndarray, logp: np.ndarray, key: int, r0: float = _R0) -> np.ndarray:
    """``(len(ids), k + 2)`` float32: ``s w``, ``s v`` (k columns), ``|s v|**2`` per id."""
    s = np.exp(_GAMMA * np.minimum(logp + math.log(r0), 0.0)).astype(np.float32)
    z = _normals(ids, key, _K + 1)
    out = np.empty((ids.size, _K + 2), dtype=np.float32)
    np.multiply(z, s[:, None], out=out[:, : _K + 1])
    vec = out[:, 1 : _K + 1]
    out[:, _K + 1] = np.einsum("ij,ij->i", vec, vec)
    return out


@dataclass
class _Field:
    sampler: _IdSampler
    key: int  # id stream
    teacher_key: int
    table: np.ndarray | None  # per-id effects for small fields
    salt: int  # Criteo token salt
    r0: float = _R0  # ids with p(id) >= 1 / r0 carry full strength


def _field(f: FieldProfile, seed: int, r0: float = _R0) -> _Field:
    smp = _sampler(f, seed)
    tkey = _key(seed, "teacher", f.name)
    table = None
    if f.num_embeddings <= _TABLE_MAX:
        ids = np.arange(f.num_embeddings, dtype=np.int64)
        logp = np.full(f.num_embeddings, -np.inf)
        rank = smp.rank_of(ids[: smp.distinct])
        logp[: smp.distinct] = smp.logp(rank, smp.segment_of(rank))
        if smp.missing > 0:
            logp[smp.missing_id] = math.log(smp.missing)
        table = _effects(ids, logp, tkey, r0)
    return _Field(smp, _key(seed, "ids", f.name), tkey, table, _key(seed, "token", f.name) & 0xFFFFFFFF, r0)


@dataclass
class _CtrModel:
    fields: list[_Field]
    dense_keys: list[int]
    dense_params: np.ndarray  # (D, 3): mu, sigma, missing share
    dense_w: np.ndarray  # (D,) weight of z
    dense_wmiss: np.ndarray  # (D,) effect of an empty cell
    label_key: int
    c_lin: float = 1.0
    c_pair: float = 1.0
    c_dense: float = 1.0
    b0: float = 0.0

    def draw(self, start: int, stop: int, *, pilot: bool = False) -> dict[str, Any]:
        """Ids, dense cells and the three raw logit parts of rows ``[start, stop)``."""
        rows = np.arange(start, stop, dtype=np.uint64)
        if pilot:
            rows += _U64(_PILOT_OFFSET)
        r = rows.size
        acc = np.zeros((r, _K + 2), dtype=np.float32)  # sum over fields of (s w, s v, |s v|**2)
        ids: list[np.ndarray] = []
        missing: list[np.ndarray] = []
        for fd in self.fields:
            smp = fd.sampler
            rank, seg, miss = smp.ranks(_uniform(_hash(rows, fd.key)))
            fid = smp.ids(rank, miss)
            if fd.table is not None:
                eff = np.take(fd.table, fid, axis=0)
            else:
                eff = _effects(fid, smp.logp(rank, seg, miss), fd.teacher_key, fd.r0)
            acc += eff
            ids.append(fid)
            missing.append(miss)
        sum_v = acc[:, 1 : _K + 1]
        pair = 0.5 * (np.einsum("ij,ij->i", sum_v, sum_v) - acc[:, _K + 1])
        lin = np.ascontiguousarray(acc[:, 0])
        dense_raw = np.zeros(r, dtype=np.float32)
        dense: list[tuple[np.ndarray, np.ndarray]] = []
        for j, key in enumerate(self.dense_keys):
            mu, sigma, share = self.dense_params[j]
            h = _hash(rows, key)
            zj = np.take(_NORM16, (h >> _U64(48)).astype(np.intp))
            miss = ((h >> _U64(16)) & _U64(0xFFFFFFFF)) < _U64(int(share * 2.0**32))
            val = np.exp(np.float32(mu) + np.float32(sigma) * zj)
            val -= np.float32(1.0)
            np.rint(val, out=val)
            np.maximum(val, np.float32(0.0), out=val)
            # the teacher sees what the file holds: the rounded value, standardised on the log scale
            zobs = (np.log1p(val) - np.float32(mu)) / np.float32(sigma)
            dense_raw += np.where(miss, np.float32(self.dense_wmiss[j]), np.float32(self.dense_w[j]) * zobs)
            dense.append((val, miss))
        return {"ids": ids, "missing": missing, "dense": dense, "lin": lin, "pair": pair, "dense_raw": dense_raw}

    def logit(self, parts: dict[str, Any]) -> np.ndarray:
        z = self.c_lin * parts["lin"].astype(np.float64) + self.c_pair * parts["pair"].astype(np.float64)
        if self.dense_keys:
            z += self.c_dense * parts["dense_raw"].astype(np.float64)
        return z + self.b0

    def labels(self, start: int, stop: int, prob: np.ndarray) -> np.ndarray:
        u = _uniform(_hash(np.arange(start, stop, dtype=np.uint64), self.label_key))
        return (u < prob).astype(np.int8)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _ctr_model(profile: WorkloadProfile, seed: int, signal: float, label_rate: float, r0: float = _R0) -> _CtrModel:
    d = profile.num_dense
    params = np.array([_DENSE_PARAMS[j % len(_DENSE_PARAMS)] for j in range(d)], dtype=np.float64).reshape(d, 3)
    wz = _normals(np.arange(2 * d, dtype=np.uint64), _key(seed, "dense-weights"), 1)[:, 0].astype(np.float64)
    model = _CtrModel(
        fields=[_field(f, seed, r0) for f in profile.fields],
        dense_keys=[_key(seed, "dense", j) for j in range(d)],
        dense_params=params, dense_w=wz[:d], dense_wmiss=0.5 * wz[d:], label_key=_key(seed, "label"),
    )
    parts = model.draw(0, _PILOT_ROWS, pilot=True)
    raw = {"lin": parts["lin"], "pair": parts["pair"], "dense": parts["dense_raw"]}
    stds = {k: float(np.std(v, dtype=np.float64)) for k, v in raw.items()}
    live = {k: share for k, share in _SHARES.items() if stds[k] > 1e-9 and (k != "dense" or d > 0)}
    total = sum(live.values()) or 1.0
    coef = {k: (signal * math.sqrt(live[k] / total) / stds[k] if k in live else 0.0) for k in _SHARES}
    model.c_lin, model.c_pair, model.c_dense = coef["lin"], coef["pair"], coef["dense"]
    model.b0 = _solve_intercept(model.logit(parts), label_rate)
    return model


def _solve_intercept(z: np.ndarray, rate: float) -> float:
    """``b0`` with ``mean(sigmoid(z + b0)) == rate`` on the pilot (bisection)."""
    lo, hi = -60.0 - float(z.max()), 60.0 - float(z.min())
    if rate <= 0:
        return lo
    if rate >= 1:
        return hi
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if float(_sigmoid(z + mid).mean()) < rate:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


# ------------------------------------------------------------------------------------------ output
def _hex_tokens(ids: np.ndarray, salt: int, missing: np.ndarray) -> pa.Array:
    """8-char lowercase hex tokens of a bijective 32-bit mix of ``ids`` (null where ``missing``).

    Distinct ids give distinct tokens within a field while ids are below 2**32.
    """
    r = ids.size
    x = ids.astype(np.uint32)
    x += np.uint32(salt)
    _fmix32(x)
    chars = np.empty((r, 2), dtype=np.uint32)
    np.take(_HEX4, x >> np.uint32(16), out=chars[:, 0])
    np.take(_HEX4, x & np.uint32(0xFFFF), out=chars[:, 1])
    offsets = np.arange(0, 8 * r + 1, 8, dtype=np.int64)
    nulls = int(np.count_nonzero(missing))
    valid = pa.py_buffer(np.packbits(~missing, bitorder="little")) if nulls else None
    return pa.LargeStringArray.from_buffers(r, pa.py_buffer(offsets), pa.py_buffer(chars), valid, nulls)


class _Sink:
    """Writes chunks in order to a temporary name, renamed to the output on success."""

    def __init__(self, fmt: str, path: Path, schema: pa.Schema) -> None:
        self.fmt, self.path = fmt, path
        self.tmp = path.with_name(f".{path.name}.partial")
        self._pq: Any = None
        self._file: Any = None
        if fmt == "parquet":
            import pyarrow.parquet as pq

            self._pq = pq.ParquetWriter(str(self.tmp), schema, compression="snappy")
        else:
            self._file = open(self.tmp, "wb")  # noqa: SIM115 - closed in close()

    def write(self, payload: Any) -> None:
        if self._pq is not None:
            self._pq.write_table(payload, row_group_size=max(1, payload.num_rows))
        else:
            self._file.write(payload)

    def close(self, ok: bool) -> None:
        (self._pq or self._file).close()
        if ok:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


def _text(table: pa.Table, *, tsv: bool, header: bool) -> pa.Buffer:
    """CSV (with optional header) or header-less Criteo TSV bytes of one chunk."""
    from pyarrow import csv

    special = any(set(name) & set(',"\t\r\n') for name in table.column_names)
    opts = csv.WriteOptions(
        include_header=header, batch_size=8192, delimiter="\t" if tsv else ",", quoting_style="none",
        quoting_header="needed" if special else "none",
    )
    sink = pa.BufferOutputStream()
    csv.write_csv(table, sink, opts)
    return sink.getvalue()


def _pipeline(sink: _Sink, rows: int, chunk_rows: int, make: Callable[[int, int], tuple[Any, Any]],
              consume: Callable[[int, int, Any], None], progress: Callable[[int, int], None] | None) -> None:
    """Make chunks on worker threads (numpy and arrow release the GIL) and write them in order."""
    workers = max(1, min(_MAX_WORKERS, os.cpu_count() or 1, -(-rows // chunk_rows)))
    starts = iter(range(0, rows, chunk_rows))
    ok = False
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            queue: deque[tuple[int, int, Future[tuple[Any, Any]]]] = deque()

            def submit() -> None:
                start = next(starts, None)
                if start is not None:
                    stop = min(rows, start + chunk_rows)
                    queue.append((start, stop, pool.submit(make, start, stop)))

            for _ in range(workers + 1):
                submit()
            try:
                while queue:
                    start, stop, fut = queue.popleft()
                    payload, info = fut.result()
                    submit()
                    consume(start, stop, info)
                    sink.write(payload)
                    del payload
                    if progress is not None:
                        progress(stop, rows)
            finally:
                for _, _, fut in queue:
                    fut.cancel()
        ok = True
    finally:
        sink.close(ok)


# ------------------------------------------------------------------------------------------ checks
def _resolve_format(output: Path, fmt: str | None) -> str:
    if fmt is None:
        guess = _SUFFIXES.get(output.suffix.lower())
        if guess is None:
            raise InvalidConfigError(
                f"`output` must end in {', '.join(_SUFFIXES)} or come with a format, but got "
                f"output={str(output)!r}. Name the file e.g. train.parquet, or pass --format {'|'.join(FORMATS)}."
            )
        return guess
    name = str(fmt).strip().lower()
    if name in ("tsv", "txt"):
        name = "criteo"
    if name not in FORMATS:
        raise InvalidConfigError(f"`format` must be one of {', '.join(FORMATS)}, but got format={fmt!r}.")
    return name


def _check_output(output: Path) -> None:
    from embadvisor._checks import check_output_path

    check_output_path(output)  # names too long, link loops, unwritable folders (/proc, /sys)
    if output.is_dir():
        raise DataError(f"`output` must be a file path, but got output={str(output)!r}, which is a directory.")
    parent = output.parent
    if not parent.is_dir():
        raise DataError(
            f"`output` must be in an existing directory, but got output={str(output)!r} "
            f"({str(parent)!r} does not exist). Create the directory first."
        )


def _check_int(name: str, value: object, minimum: int | None) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or (minimum is not None and value < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise InvalidConfigError(f"`{name}` must be an integer{bound}, but got {name}={value!r}.")
    return int(value)


def _retrieval_fields(profile: WorkloadProfile) -> tuple[FieldProfile, FieldProfile]:
    if len(profile.fields) < 2:
        raise InvalidConfigError(
            f"`fields` must hold a user and an item field for a retrieval profile, but got "
            f"fields={profile.field_names!r}."
        )

    def pick(words: tuple[str, ...], default: int) -> FieldProfile:
        for f in profile.fields:
            if any(w in f.name.lower() for w in words):
                return f
        return profile.fields[default]

    user = pick(("user",), 0)
    item = pick(("item", "movie", "product", "video", "song", "track", "news", "ad"), 1)
    if item.name == user.name:
        item = next(f for f in profile.fields if f.name != user.name)
    return user, item


# ---------------------------------------------------------------------------------------- generate
def generate(
    profile: WorkloadProfile,
    *,
    rows: int,
    output: str | Path,
    fmt: str | None = None,
    seed: int = 0,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    signal: float = DEFAULT_SIGNAL,
    num_candidates: int = 16,
    temperature: float = 2.0,
    progress: Callable[[int, int], None] | None = None,
    learnable_rows: int | None = None,
) -> SynthResult:
    """Write ``rows`` synthetic rows calibrated to ``profile`` (see the module docstring).

    Args:
        profile: the workload; CTR profiles give labelled rows, retrieval profiles interactions.
        rows: rows (CTR samples or interactions) to write.
        output: file to write (replaced if present); its suffix picks the format unless ``fmt``
            is given: ``.parquet``/``.pq``, ``.txt``/``.tsv`` (Criteo TSV) or ``.csv``.
        fmt: ``parquet`` (CTR: ``label`` int8, ``I1..`` float32 with nulls for empty cells, one
            int64 column per field named as in the profile; retrieval: ``user``, ``item`` int64),
            ``criteo`` (Criteo Kaggle TSV without header: label, integer ``I`` columns, 8-hex ``C``
            tokens, empty cells; CTR only) or ``csv`` (header and the parquet columns).
        seed: random seed; the same seed, profile and rows give a byte-identical file.
        chunk_rows: rows generated at once (bounds memory; does not change the values).
        signal: standard deviation of the teacher's logit before the intercept (CTR).
        num_candidates: candidates per interaction (retrieval).
        temperature: inverse temperature of the affinity softmax (retrieval).
        progress: optional callback ``(rows_written, rows)`` after each chunk.
        learnable_rows: calibrate the teacher for a model trained on this many rows (CTR): an id
            carries full strength when it is expected at least :data:`FULL_STRENGTH_COUNT` times in
            them, less below (``s = min(1, p * learnable_rows / FULL_STRENGTH_COUNT) ** 0.5``), so
            the oracle measures what such data can teach. Default: ``p >= 1 / 200,000`` gets full
            strength, whatever ``rows``.

    Returns:
        A :class:`SynthResult` (path, realised label rate, oracle AUC and logloss, timings, ...).

    Raises:
        InvalidConfigError: bad ``rows``, ``seed``, ``chunk_rows``, format or column names.
        DataError: the output directory does not exist or the output is a directory.

    Example:
        >>> from embadvisor.profiles.schema import FieldProfile, FrequencySummary, WorkloadProfile
        >>> f = FieldProfile("c1", 1000, frequency=FrequencySummary.zipf(1000, 1.1))
        >>> p = WorkloadProfile(task="ctr", fields=(f,), label_rate=0.2)
        >>> generate(p, rows=1000, output="x.parquet").rows  # doctest: +SKIP
        1000
    """
    t_start = time.perf_counter()
    if not isinstance(profile, WorkloadProfile):
        raise InvalidConfigError(f"`profile` must be a WorkloadProfile, but got profile={type(profile).__name__}.")
    rows = _check_int("rows", rows, 1)
    chunk_rows = min(_check_int("chunk_rows", chunk_rows, 1), rows, 1 << 23)
    seed = _check_int("seed", seed, None)
    num_candidates = _check_int("num_candidates", num_candidates, 1)
    if not isinstance(signal, int | float) or not math.isfinite(signal) or signal < 0:
        raise InvalidConfigError(f"`signal` must be a finite number >= 0, but got signal={signal!r}.")
    if not isinstance(temperature, int | float) or not math.isfinite(temperature):
        raise InvalidConfigError(f"`temperature` must be a finite number, but got temperature={temperature!r}.")
    output = Path(output)
    _check_output(output)
    fmt_name = _resolve_format(output, fmt)
    if profile.task == "retrieval" and fmt_name == "criteo":
        raise InvalidConfigError(
            "`format` must be parquet or csv for a retrieval profile, but got format='criteo'. "
            "Write a .parquet or .csv file instead."
        )
    try:
        if profile.task == "retrieval":
            result = _generate_retrieval(profile, rows, output, fmt_name, seed, chunk_rows, num_candidates,
                                         float(temperature), progress)
        else:
            if learnable_rows is not None:
                learnable_rows = _check_int("learnable_rows", learnable_rows, 1)
            r0 = _R0 if learnable_rows is None else learnable_rows / FULL_STRENGTH_COUNT
            result = _generate_ctr(profile, rows, output, fmt_name, seed, chunk_rows, float(signal), progress,
                                   r0)
    except OSError as e:  # the disk filled up, the folder went away, ...
        raise DataError(f"cannot write `output` {str(output)!r}: {e.strerror or e}. Pick a path you can write "
                        "to, with room for the file.") from None
    result.seconds = time.perf_counter() - t_start
    result.bytes = output.stat().st_size
    return result


def _generate_ctr(profile: WorkloadProfile, rows: int, output: Path, fmt: str, seed: int, chunk_rows: int,
                  signal: float, progress: Callable[[int, int], None] | None, r0: float = _R0) -> SynthResult:
    target = DEFAULT_LABEL_RATE if profile.label_rate is None else float(profile.label_rate)
    dense_names = [f"I{j + 1}" for j in range(profile.num_dense)]
    names = ["label", *dense_names, *profile.field_names]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise InvalidConfigError(
            f"`fields` must not reuse the column names label or I1..I{profile.num_dense}, but got "
            f"fields named {clash!r}. Rename those fields in the profile."
        )
    cat_names = [f"C{i + 1}" for i in range(len(profile.fields))] if fmt == "criteo" else profile.field_names
    columns = ["label", *dense_names, *cat_names]
    model = _ctr_model(profile, seed, signal, target, r0)
    schema = pa.schema(
        [pa.field("label", pa.int8())]
        + [pa.field(n, pa.float32()) for n in dense_names]
        + [pa.field(n, pa.int64()) for n in profile.field_names]
    )
    sink = _Sink(fmt, output, schema)
    auc_n = min(rows, _AUC_SAMPLE_ROWS)
    auc_p = np.empty(auc_n, dtype=np.float32)
    auc_y = np.empty(auc_n, dtype=np.int8)
    stats = {"pos": 0, "loss": 0.0}

    def make(start: int, stop: int) -> tuple[Any, Any]:
        parts = model.draw(start, stop)
        prob = _sigmoid(model.logit(parts))
        label = model.labels(start, stop, prob)
        p = np.clip(prob, 1e-12, 1 - 1e-12)
        loss = -float(np.sum(np.where(label == 1, np.log(p), np.log1p(-p))))
        info = (int(label.sum()), loss, prob[: max(0, min(stop, auc_n) - start)].astype(np.float32),
                label[: max(0, min(stop, auc_n) - start)])
        cols: list[pa.Array] = [pa.array(label, type=pa.int8())]
        if fmt == "criteo":
            for val, miss in parts["dense"]:
                cols.append(pa.array(val.astype(np.int64), type=pa.int64(), mask=miss if miss.any() else None))
            for fd, fid, miss in zip(model.fields, parts["ids"], parts["missing"], strict=True):
                cols.append(_hex_tokens(fid, fd.salt, miss))
            return _text(pa.Table.from_arrays(cols, names=columns), tsv=True, header=False), info
        for val, miss in parts["dense"]:
            cols.append(pa.array(val, type=pa.float32(), mask=miss if miss.any() else None))
        cols.extend(pa.array(fid, type=pa.int64()) for fid in parts["ids"])
        table = pa.Table.from_arrays(cols, schema=schema)
        if fmt == "csv":
            return _text(table, tsv=False, header=start == 0), info
        return table, info

    def consume(start: int, stop: int, info: Any) -> None:
        pos, loss, p, y = info
        stats["pos"] += pos
        stats["loss"] += loss
        auc_p[start:start + p.size] = p
        auc_y[start:start + y.size] = y

    _pipeline(sink, rows, chunk_rows, make, consume, progress)
    return SynthResult(
        path=str(output), format=fmt, task="ctr", rows=rows, seed=seed, chunk_rows=chunk_rows, columns=columns,
        label_rate=stats["pos"] / rows, target_label_rate=target, oracle_auc=_auc(auc_y, auc_p),
        oracle_logloss=stats["loss"] / rows, oracle_sample_rows=auc_n, signal=signal,
    )


def _generate_retrieval(profile: WorkloadProfile, rows: int, output: Path, fmt: str, seed: int, chunk_rows: int,
                        num_candidates: int, temperature: float,
                        progress: Callable[[int, int], None] | None) -> SynthResult:
    user_f, item_f = _retrieval_fields(profile)
    users = _sampler(user_f, seed, allow_missing=False)
    items = _sampler(item_f, seed, allow_missing=False)
    k_user, k_cand, k_gumbel = _key(seed, "user"), _key(seed, "candidates"), _key(seed, "gumbel")
    k_uvec, k_ivec = _key(seed, "vec", user_f.name), _key(seed, "vec", item_f.name)
    m = num_candidates
    schema = pa.schema([pa.field("user", pa.int64()), pa.field("item", pa.int64())])
    sink = _Sink(fmt, output, schema)
    seen_u = np.zeros(user_f.num_embeddings, dtype=np.bool_)
    seen_i = np.zeros(item_f.num_embeddings, dtype=np.bool_)
    stats = {"hits": 0}
    scale = np.float32(temperature / math.sqrt(_K))

    def make(start: int, stop: int) -> tuple[Any, Any]:
        r = stop - start
        rows_ = np.arange(start, stop, dtype=np.uint64)
        urank, _, umiss = users.ranks(_uniform(_hash(rows_, k_user)))
        uid = users.ids(urank, umiss)
        cells = (rows_[:, None] * _U64(m) + np.arange(m, dtype=np.uint64)[None, :]).ravel()
        irank, _, imiss = items.ranks(_uniform(_hash(cells, k_cand)))
        cand = items.ids(irank, imiss).reshape(r, m)
        uvec = _normals(uid, k_uvec, _K)
        ivec = _normals(cand.ravel(), k_ivec, _K).reshape(r, m, _K)
        aff = np.einsum("rk,rmk->rm", uvec, ivec) * scale
        g = -np.log(-np.log(np.maximum(_uniform(_hash(cells, k_gumbel)), 1e-300)))
        choice = np.argmax(aff + g.reshape(r, m).astype(np.float32), axis=1)
        hits = int(np.count_nonzero(choice == np.argmax(aff, axis=1)))
        item = cand[np.arange(r), choice]
        table = pa.Table.from_arrays([pa.array(uid, type=pa.int64()), pa.array(item, type=pa.int64())], schema=schema)
        payload = _text(table, tsv=False, header=start == 0) if fmt == "csv" else table
        return payload, (hits, uid, item)

    def consume(start: int, stop: int, info: Any) -> None:
        hits, uid, item = info
        stats["hits"] += hits
        seen_u[uid] = True
        seen_i[item] = True

    _pipeline(sink, rows, chunk_rows, make, consume, progress)
    return SynthResult(
        path=str(output), format=fmt, task="retrieval", rows=rows, seed=seed, chunk_rows=chunk_rows,
        columns=["user", "item"], user_field=user_f.name, item_field=item_f.name,
        num_users=user_f.num_embeddings, num_items=item_f.num_embeddings,
        distinct_users=int(seen_u.sum()), distinct_items=int(seen_i.sum()), num_candidates=m,
        oracle_candidate_accuracy=stats["hits"] / rows,
    )
