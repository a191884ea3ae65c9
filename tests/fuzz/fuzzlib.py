"""The CLI fuzz suite (issue #18): generated cases, their input files, a fork server client, verdicts.

A *case* is one ``embadvisor`` command line. Cases are generated from pools of hostile values
(budgets, profiles, data files, storage URLs, study names, output paths, option values) crossed with
the commands that take them, with a fixed seed (:data:`SEED`), so the list is the same on every run.
Every case must end in exit 0 with a sensible result (valid strict JSON for ``--json``, a readable
output file for ``-o``) or in exit 2 with exactly one ``error:`` line on stderr (``warning:`` lines
allowed besides); a traceback, a hang (more than the case's timeout) or any other exit is a failure.

Arguments may hold placeholders, filled in when the case runs: ``{F}`` the folder of generated input
files, ``{T}`` the case's own working folder (also its current directory), ``{H}`` the case's
``EMBADVISOR_HOME``, ``{S}`` the shared real-data folder (read only, never copied into the repo).

Cases run one at a time in a fork server (:mod:`forkserver`): the CLI and torch are imported once,
each case is a forked child with its own HOME and ``EMBADVISOR_HOME``, one torch thread, and a
SIGKILL after its timeout. Cases that train use tiny settings (small files, ``--methods hash``,
``--rungs 512``, ``--trials 1``, ``--epochs 1``, ``--threads 1``, a time limit).
"""

from __future__ import annotations

import gzip
import json
import math
import os
import random
import selectors
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

SEED = 18  # issue #18
CASE_TIMEOUT = 20.0
REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SECRET = "s3cr3t-Pw-4711"
CATEGORIES = ("control", "budgets", "profiles", "data", "storage", "study", "output", "options")
VERDICTS = ("clean", "traceback", "hang", "other")

# tiny settings: whatever trains must finish in a few seconds on 2 cores
TINY_SEARCH = ("--methods", "hash", "--rungs", "512", "--trials", "1", "--threads", "1", "--time-limit", "8s")
TINY_TRAIN = ("--method", "hash", "--epochs", "1", "--threads", "1", "--time-limit", "8s")
CTR = "{F}/ctr.csv"
SEED_STUDY = "seed-study"
JOURNAL_STUDY = "seed-journal"


# --------------------------------------------------------------------------- cases
@dataclass(frozen=True)
class Case:
    """One command line and what it needs.

    Args:
        id: unique, stable name (category, number, short description).
        category: one of :data:`CATEGORIES`.
        args: the arguments after ``embadvisor`` (with placeholders).
        seeded: the case's home starts with a copy of the seeded studies (sqlite ``seed-study`` in the
            default storage, journal ``seed-journal`` in ``{H}/studies.log``).
        env: extra environment variables (with placeholders).
        shared: reads the shared real-data folder.
        expect_ok: a control: must exit 0.
        secret: a string (password) that must not appear in the output.
        timeout: seconds before the case counts as a hang.
    """

    id: str
    category: str
    args: tuple[str, ...]
    seeded: bool = False
    env: tuple[tuple[str, str], ...] = ()
    shared: bool = False
    expect_ok: bool = False
    secret: str | None = None
    timeout: float = CASE_TIMEOUT


def _slug(text: str, n: int = 40) -> str:
    out = "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "_" for c in text)
    return out[:n].strip("_") or "x"


class _Builder:
    def __init__(self) -> None:
        self.cases: list[Case] = []

    def add(self, category: str, desc: str, args: Sequence[str], **kw: Any) -> None:
        n = sum(1 for c in self.cases if c.category == category)
        self.cases.append(Case(f"{category}-{n:03d}-{_slug(desc)}", category, tuple(args), **kw))


# values ----------------------------------------------------------------------------------------
BUDGETS = [
    "64MB", "1.5GiB", "4KB", "16kB", "1KiB", "1B", "1", "100", "0.5B", "3.7KB", "64MiB", "1e6", "1E6B", "2e3KB",
    "1PB", "1e30TB", "99999999999999999999999999999999PB", "9" * 400, "1e400", "1e400MB", "1e-400MB", "1e308TB",
    "1.7976931348623157e308", "0", "0B", "-1", "-64MB", "-0", "-inf", "inf", "infGB", "Infinity", "nan", "NaN",
    "nanMB", "64M", "64Mb", "64mb", "64 MB", " 64MB ", "64MB\n", "64\tMB", "+64MB", "0x40MB", "1_000KB",
    "\uff16\uff14MB", "\u0663KB", "10%", "50%", "100%", "%", "50 %", "", " ", "garbage", "MB", "64XB", "64MBB",
    "64MB,32MB", "1/2GB", "2**20", "e", "64KB; rm -rf /", "\u200b64KB", "1e3B", "0.0001KB", "5e-324KB",
]
DURATIONS = ["10s", "1m", "0", "0s", "-1s", "1e400s", "nan", "inf", "garbage", "1ms", "10y", "1.5", "", "5e-324s",
             "99999999999999999999h", "1h30m"]
STORAGES_BAD = [
    "sqlite://", "sqlite:///", "sqlite:///:memory:", "sqlite:///?mode=memory", "", " ", "garbage", "foo://bar",
    "http://example.com/studies", "file:///tmp/x.db", ":memory:", "-", "postgresql://", "postgresql:///",
    f"postgresql://fuzz:{SECRET}@127.0.0.1:1/embadvisor", f"postgres://fuzz:{SECRET}@127.0.0.1:1/x",
    f"postgresql://fuzz:{SECRET}@db.invalid/embadvisor", f"postgresql+psycopg://fuzz:{SECRET}@127.0.0.1:1/x",
    f"mysql://fuzz:{SECRET}@127.0.0.1:1/x", f"postgresql://fuzz:{SECRET}@[::1:1/x",
    "sqlite:///{T}/binary.bin", "sqlite:///{T}/self.csv", "sqlite:///{T}", "sqlite:///{F}/loop_a",
    "sqlite:////proc/fuzz/x.db", "sqlite:///{T}/" + "a" * 300 + ".db", "/proc/fuzz/studies.log",
    "{T}/missing/deeper/studies.log", "{T}/self.csv.log", "{T}/" + "b" * 300 + ".log", "{T}/binary.log",
]
STORAGES_OK = [
    "sqlite:///{T}/studies.db", "{T}/studies.log", "studies.log", "sqlite:///studies.db",
    "sqlite:///{T}/missing/sub/studies.db", "sqlite:///{T}/st\u00fcdi\u00e9s \u540d.db", "{T}/x.journal",
    "sqlite:///~/x.db",
]
STUDIES = [
    "../../etc/passwd", "/abs/path/study", "a/b", "..", ".", "", " ", "x" * 300, "y" * 5000,
    "\u00fcnic\u00f6de-\u540d\u524d-\U0001f680", "new\nline", "tab\tname", "-", "*", "%s%s%n", "{}", "' OR 1=1 --",
    "DROP TABLE studies;", "\u202eevil", "--json", "seed-study", "con", "a" * 64,
]
OUTPUTS = [
    ("{T}/missing/x.{ext}", "missing folder"), ("{T}", "a directory"), ("{T}/", "a directory, trailing slash"),
    ("{T}/noext", "no suffix"), ("{T}/x.yaml", "wrong suffix"), ("/proc/fuzz.{ext}", "unwritable /proc"),
    ("/sys/fuzz.{ext}", "unwritable /sys"), ("{T}/full.{ext}", "symlink to /dev/full"),
    ("{F}/ctr.csv/x.{ext}", "parent is a file"), ("{T}/" + "n" * 300 + ".{ext}", "name too long"),
    ("{T}/\u00fcn\u00efc\u00f6d\u00e9 \u540d.{ext}", "unicode name"), ("{T}/X.{EXT}", "upper-case suffix"),
    ("", "empty"), ("{T}/loop.{ext}", "symlink loop"), ("{T}/dangling.{ext}", "dangling symlink"),
    ("{T}/ok.{ext}", "plain"), (".{ext}", "suffix only"), ("{T}/x.{ext}/", "file with trailing slash"),
    ("/dev/null", "/dev/null"), ("{T}/ro/x.{ext}", "read-only folder"),
]


def _int_opts(name: str, values: Iterable[str]) -> list[tuple[str, str]]:
    return [(name, v) for v in values]


INTS = ["0", "-1", "1", "2", "1e3", "1.5", "abc", "", "99999999999999999999999", "9223372036854775808",
        "-9223372036854775809", "0x10", "\u0663"]
FLOATS = ["0", "-1", "1e-9", "nan", "inf", "-inf", "1e400", "abc", "", "1e308", "5e-324"]
TRAIN_OPTS = (
    _int_opts("--dim", ["0", "-1", "1", "3", "100000", "1000000000", "abc"])
    + _int_opts("--batch-size", ["0", "-1", "1", "3", "1000000000000", "9223372036854775808"])
    + _int_opts("--patience", ["-1", "0", "1000000000"])
    + _int_opts("--epochs", ["0", "-1", "1e-9", "0.0001", "nan", "inf", "1e400", "1e308"])
    + _int_opts("--lr", ["0", "-1", "nan", "inf", "1e300", "1e-300"])
    + _int_opts("--threads", ["0", "-1", "1000000"])
    + _int_opts("--seed", ["-1", "4294967296", "18446744073709551616", "1" + "0" * 30, "abc", "1.5"])
    + _int_opts("--method", ["nope", "", "hash,qr", "HASH", "vec_sq", "full", "qr", "tt_rec", "int8", "pep", "dhe",
                             "mde", "robe", "dedup", "alpt"])
    + _int_opts("--model", ["dcn", "wdl", "deepfm", "two-tower", "nope", ""])
    + _int_opts("--optimizer", ["sgd", "adagrad", "rowwise_adagrad", "nope", ""])
    + _int_opts("--time-limit", DURATIONS)
    + _int_opts("--scope", ["train", "nope", ""])
    + _int_opts("--format", ["csv", "criteo", "avazu", "parquet", "libfm", "libffm", "movielens", "interactions",
                             "nope", "", "CSV"])
    + _int_opts("--label", ["nope", "", "C1", "I1", "label,label"])
    + _int_opts("--fields", ["", ",,,", "nope", "C1,C1", "label", "C1", " C1 , C2 "])
    + _int_opts("--protocol", ["given", "random", "leave-last-out", "nope"])
    + _int_opts("--test", ["{F}/missing.txt", "{F}/ctr.csv", "{F}"])
    + _int_opts("--task", ["nope", "CTR", "", "retrieval"])
)
SEARCH_OPTS = (
    _int_opts("--workers", ["0", "-1", "2", "1000000"])
    + _int_opts("--heartbeat", ["0", "-1", "1", "1000000000"])
    + _int_opts("--trials", ["0", "-1", "2", "1000000000"])
    + _int_opts("--rungs", ["0", "-1", "abc", "1e400", "", ",", "512,256", "512,512", "1,2,3,4,5,6,7,8,9,10",
                            "1e30", "nan", "inf", "9223372036854775808", "256,,512"])
    + _int_opts("--methods", ["", "nope", "hash,hash", "vec_sq", "full", "hash,nope", ",", "hash,qr", "HASH"])
    + _int_opts("--lr", ["0", "-1", "nan", "inf", "1e300"])
    + _int_opts("--batch-size", ["0", "1", "1000000000000", "9223372036854775808"])
    + _int_opts("--model", ["dcn", "wdl", "deepfm", "nope", "two-tower"])
    + _int_opts("--budget-scope", ["train", "nope", ""])
    + _int_opts("--time-limit", DURATIONS)
    + _int_opts("--seed", ["-1", "4294967296", "18446744073709551616", "abc"])
    + _int_opts("--threads", ["0", "-1", "1000000"])
    + _int_opts("--task", ["retrieval", "nope", ""])
    + _int_opts("--format", ["criteo", "parquet", "nope"])
    + _int_opts("--label", ["nope", ""])
    + _int_opts("--fields", ["", "nope", "C1,C1"])
    + _int_opts("--profile", ["criteo-kaggle", "nope", "{F}/prof_ok.toml", "{F}/prof_ok.json", "{F}/missing.toml"])
)


def _tiny_search(skip: Iterable[str] = ()) -> list[str]:
    skip = set(skip)
    out: list[str] = []
    for i in range(0, len(TINY_SEARCH), 2):
        if TINY_SEARCH[i] not in skip:
            out += TINY_SEARCH[i:i + 2]
    return out


def _tiny_train(skip: Iterable[str] = ()) -> list[str]:
    skip = set(skip)
    out: list[str] = []
    for i in range(0, len(TINY_TRAIN), 2):
        if TINY_TRAIN[i] not in skip:
            out += TINY_TRAIN[i:i + 2]
    return out


def _recommend(budget: str = "4KB", data: str = CTR, extra: Sequence[str] = (), skip: Iterable[str] = ()) -> list[str]:
    skip = set(skip) | {o for o in extra if o.startswith("--")}
    args = ["recommend", "--budget", budget, "--data", data, *_tiny_search(skip)]
    return [*args, *extra]


def _pareto(budgets: str = "2KB,4KB", data: str = CTR, extra: Sequence[str] = (), skip: Iterable[str] = ()) -> list[str]:
    skip = set(skip) | {o for o in extra if o.startswith("--")}
    return ["pareto", "--budgets", budgets, "--data", data, *_tiny_search(skip), *extra]


def _train(data: str = CTR, task: str = "ctr", extra: Sequence[str] = (), skip: Iterable[str] = ()) -> list[str]:
    skip = set(skip) | {o for o in extra if o.startswith("--")}
    args = ["train", "--task", task, "--data", data] if "--task" not in skip else ["train", "--data", data]
    return [*args, *_tiny_train(skip), *extra]


def generate_cases(seed: int = SEED) -> list[Case]:
    """The full case list (deterministic for a given seed)."""
    rng = random.Random(seed)
    b = _Builder()
    _control(b)
    _budgets(b, rng)
    _profiles(b, rng)
    _data(b, rng)
    _storage(b, rng)
    _study(b, rng)
    _output(b, rng)
    _options(b, rng)
    ids = [c.id for c in b.cases]
    assert len(ids) == len(set(ids)), "duplicate case ids"
    return b.cases


def _control(b: _Builder) -> None:
    ok = {"expect_ok": True}
    b.add("control", "methods", ["methods", "--json"], **ok)
    b.add("control", "methods solve", ["methods", "--solve", "criteo-kaggle", "--budget", "64MB", "--json"], **ok)
    b.add("control", "methods solve file", ["methods", "--solve", "{F}/prof_ok.toml", "--budget", "4KB"], **ok)
    b.add("control", "profiles", ["profiles"], **ok)
    b.add("control", "profile csv", ["profile", CTR, "--json"], **ok)
    b.add("control", "profile criteo", ["profile", "{F}/criteo.txt", "-o", "{T}/p.toml"], **ok)
    b.add("control", "train ctr", _train(extra=["--budget", "2KB", "--json"]), **ok)
    b.add("control", "train retrieval", _train("{F}/inter.txt", "retrieval", ["--json"]), **ok)
    b.add("control", "recommend", _recommend(extra=["-o", "{T}/best.toml", "--json"]), **ok)
    b.add("control", "recommend profile", _recommend(extra=["--profile", "{F}/prof_ok.json"]), **ok)
    b.add("control", "recommend vectors", ["recommend", "--task", "retrieval", "--vectors", "{F}/docs.npy",
                                           "--budget", "2KB", "--trials", "2", "--time-limit", "5s", "--json"], **ok)
    b.add("control", "pareto", _pareto(extra=["--json"]), **ok)
    b.add("control", "history", ["history", "--json"], seeded=True, **ok)
    b.add("control", "history study", ["history", SEED_STUDY], seeded=True, **ok)
    b.add("control", "export", ["export", SEED_STUDY, "-o", "{T}/c.json"], seeded=True, **ok)
    b.add("control", "export journal", ["export", JOURNAL_STUDY, "--storage", "{H}/studies.log", "-o",
                                        "{T}/c.toml"], seeded=True, **ok)
    b.add("control", "plot html", ["plot", SEED_STUDY, "-o", "{T}/s.html"], seeded=True, **ok)
    b.add("control", "synth", ["synth", "{F}/prof_ok.toml", "--rows", "50", "-o", "{T}/s.parquet"], **ok)
    b.add("control", "shared criteo", ["profile", "{S}/ctr/criteo-10k/criteo_train", "--json"], shared=True, **ok)


def _budgets(b: _Builder, rng: random.Random) -> None:
    for v in rng.sample(BUDGETS, 45):
        extra = ["--json"] if rng.random() < 0.5 else []
        scope = ["--scope", "train"] if rng.random() < 0.3 else []
        b.add("budgets", f"solve {v}", ["methods", "--solve", "{F}/prof_ok.toml", "--budget", v, *scope, *extra])
    for v in rng.sample(BUDGETS, 22):
        extra = ["--budget-scope", "train"] if rng.random() < 0.2 else []
        b.add("budgets", f"recommend {v}", _recommend(v, extra=extra))
    for v in rng.sample(BUDGETS, 10):
        lst = rng.choice([v, f"{v},4KB", f"2KB,{v}", f"{v},{v}", f"{v},,4KB"])
        b.add("budgets", f"pareto {lst}", _pareto(lst))
    for v in rng.sample(BUDGETS, 8):
        b.add("budgets", f"train {v}", _train(extra=["--budget", v]))
    for v in rng.sample(BUDGETS, 5):
        b.add("budgets", f"vectors {v}", ["recommend", "--task", "retrieval", "--vectors", "{F}/docs.npy", "--budget",
                                           v, "--trials", "1", "--time-limit", "5s"])
    b.add("budgets", "methods budget without solve", ["methods", "--budget", "64MB"])
    b.add("budgets", "solve without budget", ["methods", "--solve", "criteo-kaggle"])
    b.add("budgets", "recommend without budget", ["recommend", "--data", CTR, *_tiny_search()])
    b.add("budgets", "budget twice", _recommend("4KB", extra=["--budget", "8KB"]))
    b.add("budgets", "pareto 40 budgets, 39 infeasible", _pareto(",".join([*(f"{k}B" for k in range(1, 40)), "4KB"])))
    b.add("budgets", "recommend 1 B", _recommend("1B"))


# profiles ----------------------------------------------------------------------------------------
_RANKS = [1e-06, 3e-06, 1e-05, 3e-05, 0.0001, 0.0003, 0.001, 0.003, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0]


def base_profile() -> dict[str, Any]:
    """A valid CTR profile whose fields are those of ``ctr.csv`` (I1, I2, C1, C2, C3)."""
    fields = []
    for name, n in (("I1", 30), ("I2", 20), ("C1", 12), ("C2", 60), ("C3", 150)):
        shares = [min(1.0, 0.05 + 0.95 * (r ** 0.5)) for r in _RANKS]
        shares[-1] = 1.0
        fields.append({"name": name, "num_embeddings": n, "cardinality": n - 1, "pooling": 1.0,
                       "frequency": {"total": 400, "missing": 0, "rank_fractions": list(_RANKS),
                                     "cumulative_shares": shares, "powerlaw_alpha": 0.8,
                                     "singleton_fraction": 0.3, "source": "fuzz"}})
    return {"version": 1, "task": "ctr", "num_rows": 400, "label_rate": 0.25, "num_dense": 0,
            "embedding_dim": 16, "dtype": "fp32", "name": "fuzz", "source": "fuzz fixture", "fields": fields}


def _deep(n: int) -> Any:
    obj: Any = 1
    for _ in range(n):
        obj = [obj]
    return obj


def _profile_mutations() -> list[tuple[str, Any]]:
    """(name, mutate(dict) -> dict | bytes | str) pairs; a str/bytes result is written as is."""
    muts: list[tuple[str, Any]] = []

    def top(key: str, value: Any) -> None:
        def f(d: dict[str, Any]) -> dict[str, Any]:
            d[key] = value
            return d
        muts.append((f"{key}={value!r}"[:40], f))

    def drop(key: str) -> None:
        muts.append((f"no {key}", lambda d: {k: v for k, v in d.items() if k != key}))

    def fld(key: str, value: Any, i: int = 0) -> None:
        def f(d: dict[str, Any]) -> dict[str, Any]:
            d["fields"][i][key] = value
            return d
        muts.append((f"field {key}={value!r}"[:40], f))

    def freq(key: str, value: Any) -> None:
        def f(d: dict[str, Any]) -> dict[str, Any]:
            d["fields"][0]["frequency"][key] = value
            return d
        muts.append((f"freq {key}={value!r}"[:40], f))

    for k in ("task", "fields"):
        drop(k)
    for v in ("regression", 1, "", None, True):
        top("task", v)
    for v in ([], {}, "abc", 5, [1, 2], [[]], None):
        top("fields", v)
    for v in (0, -1, True, 2, "1", 1.0, None):
        top("version", v)
    for v in (0, -1, True, 10**6, 2**31, 2**63 - 1, "16", 16.5, float("nan"), float("inf"), None):
        top("embedding_dim", v)
    for v in (-5, True, "x", 1e30, 0, float("inf")):
        top("num_rows", v)
    for v in (2, -0.1, float("nan"), "x", True, float("inf")):
        top("label_rate", v)
    for v in ("fp64", "int8", 3, "", "FP32"):
        top("dtype", v)
    for v in (-1, True, 10**6, 2.5):
        top("num_dense", v)
    top("unknown_key", 1)
    top("name", "x" * 100_000)
    top("name", "\u540d\u524d\n\u202e")
    for v in (0, -1, True, False, "100", 1.5, None, 2**40, 2**40 + 1, 2**63 - 1, float("inf"), float("nan"), [5]):
        fld("num_embeddings", v)
    for v in (-1, 10**9, True, "x"):
        fld("cardinality", v)
    for v in (0, -1, float("nan"), float("inf"), "x", 1e308, True):
        fld("pooling", v)
    for v in ("", "x" * 10_000, "a\nb", 5, None, "\U0001f680"):
        fld("name", v)
    fld("extra", 1)
    fld("embedding_dim", 0)
    fld("frequency", "zipf")
    fld("frequency", None)
    muts.append(("field no name", lambda d: (d["fields"][0].pop("name"), d)[1]))
    muts.append(("field no num_embeddings", lambda d: (d["fields"][0].pop("num_embeddings"), d)[1]))
    muts.append(("field is a list", lambda d: (d["fields"].__setitem__(0, [1, 2]), d)[1]))
    muts.append(("duplicate field names", lambda d: (d["fields"].append(dict(d["fields"][0])), d)[1]))
    muts.append(("300 fields", lambda d: {**d, "fields": [
        {"name": f"f{i}", "num_embeddings": 10 + i} for i in range(300)]}))
    muts.append(("all fields 2**40", lambda d: {**d, "fields": [
        {"name": f"f{i}", "num_embeddings": 2**40} for i in range(64)]}))
    for v in ([0.1, 0.2], [1.0] * 17, [0.9] * 16 + [0.5], [float("nan")] * 17, "x", [None] * 17):
        freq("cumulative_shares", v)
    for v in ([1.0, 0.5], list(reversed(_RANKS)), [0.0] * 17, []):
        freq("rank_fractions", v)
    for v in (-1, True, 1.5, 2**70):
        freq("total", v)
    for v in (float("inf"), -1, float("nan"), "x"):
        freq("powerlaw_alpha", v)
    for v in (2.0, -0.5):
        freq("singleton_fraction", v)
    freq("unknown", 1)
    muts.append(("deep nesting 20", lambda d: {**d, "source": _deep(20)}))
    muts.append(("deep nesting field", lambda d: (d["fields"][0].__setitem__("pooling", _deep(50)), d)[1]))
    muts.append(("top-level list", lambda d: [d]))
    muts.append(("top-level string", lambda d: "profile"))
    muts.append(("top-level null", lambda d: None))
    return muts


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items() if x is not None) + "}"
    raise TypeError(type(v))


def to_toml(d: dict[str, Any]) -> str:
    """A minimal TOML writer for profile dicts (inline tables; ``None`` values left out, as TOML has none)."""
    lines = []
    for k, v in d.items():
        if v is None:
            continue
        if k == "fields" and isinstance(v, list) and all(isinstance(x, dict) for x in v) and v:
            continue
        lines.append(f"{json.dumps(k)} = {_toml_value(v)}")
    if isinstance(d.get("fields"), list) and d["fields"] and all(isinstance(x, dict) for x in d["fields"]):
        for f in d["fields"]:
            lines.append("\n[[fields]]")
            for k, v in f.items():
                if v is not None:
                    lines.append(f"{json.dumps(k)} = {_toml_value(v)}")
    return "\n".join(lines) + "\n"


RAW_PROFILES: list[tuple[str, str, bytes]] = [
    ("toml syntax", "toml", b"version = 1\ntask = \"ctr\"\nfields = [\n"),
    ("json syntax", "json", b'{"version": 1, "task": "ctr", "fields": [}'),
    ("empty toml", "toml", b""),
    ("empty json", "json", b""),
    ("binary toml", "toml", bytes(range(256)) * 4),
    ("latin1 toml", "toml", 'task = "ctr"\nname = "caf\u00e9"\nfields = []\n'.encode("latin-1")),
    ("bom json", "json", b"\xef\xbb\xbf" + json.dumps(base_profile()).encode()),
    ("bom toml", "toml", b"\xef\xbb\xbf" + to_toml(base_profile()).encode()),
    ("deep json 100000", "json", b"[" * 100_000 + b"]" * 100_000),
    ("deep json object", "json", b'{"a":' * 50_000 + b"1" + b"}" * 50_000),
    ("deep toml 100000", "toml", b"x = " + b"[" * 100_000 + b"]" * 100_000 + b"\n"),
    ("deep toml tables", "toml", b"[" + b".".join(b"t%d" % i for i in range(3000)) + b"]\nx = 1\n"),
    ("toml int overflow", "toml", to_toml(base_profile()).replace('"num_embeddings" = 30',
                                                                   '"num_embeddings" = 99999999999999999999999')
     .encode()),
    ("json huge int", "json", json.dumps(base_profile()).replace('"num_embeddings": 30', '"num_embeddings": '
                                                                  + "9" * 5000).encode()),
    ("json 1e400", "json", json.dumps(base_profile()).replace('"pooling": 1.0', '"pooling": 1e400').encode()),
    ("json NaN literal", "json", json.dumps(base_profile()).replace('"label_rate": 0.25', '"label_rate": NaN')
     .encode()),
    ("json duplicate keys", "json", b'{"task": "ctr", "task": "retrieval", "fields": []}'),
    ("yaml content", "toml", b"task: ctr\nfields:\n  - name: a\n"),
    ("json 20MB string", "json", json.dumps({**base_profile(), "source": "s" * 20_000_000}).encode()),
]


# data files ------------------------------------------------------------------------------------
DATA_FILES = [
    # (name, description); written by build_fixtures
    ("ctr.csv", "valid csv"), ("criteo.txt", "valid criteo tsv"), ("inter.txt", "valid interactions"),
    ("trunc.csv", "truncated mid-line"), ("trunc_criteo.txt", "criteo truncated mid-line"),
    ("binary.bin", "random binary"), ("binary_nonul.dat", "binary without NUL"), ("semicolon.csv", "wrong delimiter"),
    ("nolabel.csv", "no label column"), ("nan.csv", "NaN/inf values"), ("nan_label.csv", "NaN labels"),
    ("label_range.csv", "labels 2 and -1"), ("label_text.csv", "text labels"), ("one_class.csv", "one class"),
    ("hugefield.csv", "4 MB field"), ("longline.txt", "one 8 MB line"), ("latin1.csv", "non-UTF-8"),
    ("utf16.csv", "UTF-16 with BOM"), ("bom.csv", "UTF-8 BOM"), ("crlf.csv", "CRLF line ends"),
    ("corrupt.csv.gz", "corrupt gzip"), ("trunc.csv.gz", "truncated gzip"), ("ok.csv.gz", "valid gzip"),
    ("notgzip.gz", "plain text named .gz"), ("nolabel.parquet", "parquet without label"),
    ("nested.parquet", "parquet struct column"), ("nulls.parquet", "parquet all-null column"),
    ("strlabel.parquet", "parquet string label"), ("empty.parquet", "parquet zero rows"),
    ("corrupt.parquet", "corrupt parquet"), ("ok.parquet", "valid parquet"), ("floatids.parquet", "parquet float ids"),
    ("dir", "a directory"), ("loop_a", "symlink loop"), ("dangling", "dangling symlink"), ("empty.csv", "empty"),
    ("header_only.csv", "header only"), ("blank.csv", "blank lines"), ("one_row.csv", "one row"),
    ("two_rows.csv", "two rows"), ("ragged.csv", "ragged rows"), ("dup_cols.csv", "duplicate columns"),
    ("wide.csv", "6000 columns"), ("quoted.csv", "quoted newlines"), ("fifo", "a named pipe"),
    ("/dev/null", "/dev/null"), ("/dev/zero", "/dev/zero"), ("/proc/self/status", "a proc file"),
    ("missing.csv", "missing file"), ("inter_neg.txt", "negative ids"), ("inter_huge.txt", "ids beyond int64"),
    ("inter_float.txt", "float ids"), ("inter_one.txt", "one user"), ("inter_self.txt", "single column"),
    ("retdir", "train/test folder"), ("retdir_empty", "folder without train.txt"), ("libfm.txt", "bad libfm"),
    ("criteo_39.txt", "criteo 39 columns, bad ints"), ("avazu.csv", "avazu header, junk"), ("u.data", "bad u.data"),
    ("nul_in_text.csv", "NUL in the middle"), ("spaces name.csv", "space in name"),
]
VECTOR_FILES = [
    ("docs.npy", "valid"), ("docs_nan.npy", "NaN vectors"), ("docs_inf.npy", "inf vectors"), ("docs_1d.npy", "1-D"),
    ("docs_obj.npy", "object array (pickle)"), ("docs_empty.npy", "zero rows"), ("docs_trunc.npy", "truncated"),
    ("docs_int.npy", "integer"), ("docs_3d.npy", "3-D"), ("docs_zero.npy", "all zeros"), ("docs_f16.npy", "float16"),
    ("docs_wide.npy", "0 columns"), ("docs_list.parquet", "parquet list column"),
    ("docs_ragged.parquet", "ragged lists"), ("binary.bin", "binary"), ("ctr.csv", "a csv"),
]


def _data(b: _Builder, rng: random.Random) -> None:
    for name, desc in DATA_FILES:
        path = name if name.startswith("/") else "{F}/" + name
        b.add("data", f"profile {desc}", ["profile", path, "--json"])
        if rng.random() < 0.7:
            b.add("data", f"train ctr {desc}", _train(path))
        pick = rng.choice(["recommend", "retrieval", "format", "label", "pareto", "profile-o", "none", "none"])
        if pick == "recommend":
            b.add("data", f"recommend {desc}", _recommend(data=path))
        elif pick == "retrieval":
            b.add("data", f"train retrieval {desc}", _train(path, "retrieval"))
        elif pick == "format":
            fmt = rng.choice(["csv", "criteo", "avazu", "parquet", "libfm", "libffm", "movielens", "interactions"])
            b.add("data", f"profile --format {fmt} {desc}", ["profile", path, "--format", fmt])
        elif pick == "label":
            b.add("data", f"profile --label {desc}", ["profile", path, "--label", "label", "--fields", "C1,C2"])
        elif pick == "pareto":
            b.add("data", f"pareto {desc}", _pareto(data=path))
        elif pick == "profile-o":
            b.add("data", f"profile -o {desc}", ["profile", path, "-o", "{T}/p.json"])
    for name, desc in VECTOR_FILES:
        b.add("data", f"vectors {desc}", ["recommend", "--task", "retrieval", "--vectors", "{F}/" + name,
                                          "--budget", "2KB", "--trials", "1", "--time-limit", "5s"])
    for flag, name, desc in [
        ("--queries", "q_wrongdim.npy", "queries of another dim"), ("--queries", "q_nan.npy", "NaN queries"),
        ("--queries", "docs_empty.npy", "zero queries"), ("--queries", "binary.bin", "binary queries"),
        ("--doc-ids", "ids_short.txt", "too few doc ids"), ("--doc-ids", "ids_dup.txt", "duplicate doc ids"),
        ("--doc-ids", "binary.bin", "binary doc ids"), ("--doc-ids", "empty.csv", "empty doc ids"),
    ]:
        b.add("data", f"vectors {desc}", ["recommend", "--task", "retrieval", "--vectors", "{F}/docs.npy",
                                          flag, "{F}/" + name, "--budget", "2KB", "--trials", "1",
                                          "--time-limit", "5s"])
    for name, desc in [("qrels_bad.parquet", "qrels missing columns"), ("qrels.txt", "qrels text, unknown ids"),
                       ("binary.bin", "binary qrels"), ("empty.csv", "empty qrels"), ("qrels_neg.txt", "bad grades")]:
        b.add("data", f"vectors {desc}", ["recommend", "--task", "retrieval", "--vectors", "{F}/docs.npy",
                                          "--queries", "{F}/q.npy", "--qrels", "{F}/" + name, "--budget", "2KB",
                                          "--trials", "1", "--time-limit", "5s"])
    b.add("data", "query ids without queries", ["recommend", "--task", "retrieval", "--vectors", "{F}/docs.npy",
                                                "--query-ids", "{F}/ids_short.txt", "--budget", "2KB"])
    b.add("data", "vectors with ctr", ["recommend", "--task", "ctr", "--vectors", "{F}/docs.npy", "--budget", "2KB"])
    b.add("data", "vectors and data", ["recommend", "--task", "retrieval", "--vectors", "{F}/docs.npy", "--data",
                                       CTR, "--budget", "2KB"])
    b.add("data", "vectors similarity", ["recommend", "--task", "retrieval", "--vectors", "{F}/docs.npy",
                                         "--similarity", "l2", "--budget", "2KB"])
    # real files from the shared folder, read in place
    for rel, fmt in [("ctr/criteo-10k/criteo_test", None), ("ctr/avazu-10k/avazu_test", None),
                     ("ctr/avazu-10k/avazu_train", None), ("ctr/movielens-100k/u.data", None),
                     ("ctr/movielens-100k/u.item", None), ("ctr/census-income-kdd/census-income.test.gz", None),
                     ("retrieval/amazon-s3rec/LastFM.txt", None), ("retrieval/lastfm-hetrec2011/user_artists.dat", None),
                     ("retrieval/movielens-latest-small/ratings.csv", None),
                     ("retrieval/amazon-s3rec/Beauty_item2attributes.json", None),
                     ("vectors/vaswani-minilm/qrels.parquet", None), ("vectors/vaswani-minilm/docs.parquet", None),
                     ("text/vaswani-npl/doc-text.trec", None), ("ctr/criteo-10k/criteo_test", "avazu"),
                     ("ctr/movielens-100k/u.data", "criteo"), ("retrieval/movielens-1m-implicit", None)]:
        args = ["profile", "{S}/" + rel, "--json"] + (["--format", fmt] if fmt else [])
        b.add("data", f"shared {rel.split('/')[-1]} {fmt or ''}", args, shared=True)
    b.add("data", "shared train criteo", _train("{S}/ctr/criteo-10k/criteo_test", extra=["--epochs", "0.2"]),
          shared=True)
    b.add("data", "shared train ml1m dir", _train("{S}/retrieval/movielens-1m-implicit", "retrieval",
                                                  ["--epochs", "0.01"]), shared=True)
    b.add("data", "shared census", _train("{S}/ctr/census-income-kdd/census-income.test.gz",
                                          extra=["--epochs", "0.05"]), shared=True)


def _storage(b: _Builder, rng: random.Random) -> None:
    cmds = ["recommend", "history", "export", "plot", "worker", "pareto"]
    for url in STORAGES_BAD + STORAGES_OK:
        secret = SECRET if SECRET in url else None
        picks = rng.sample(cmds, 1) if url in STORAGES_OK else rng.sample(cmds, 2)
        for cmd in picks:
            if cmd == "recommend":
                args = _recommend(extra=["--storage", url])
            elif cmd == "pareto":
                args = _pareto(extra=["--storage", url])
            elif cmd == "history":
                args = ["history", "--storage", url]
            elif cmd == "export":
                args = ["export", SEED_STUDY, "--storage", url, "-o", "{T}/c.toml"]
            elif cmd == "plot":
                args = ["plot", SEED_STUDY, "--storage", url, "-o", "{T}/p.html"]
            else:
                args = ["worker", "--storage", url, "--study", SEED_STUDY, "--threads", "1"]
            b.add("storage", f"{cmd} {url}", args, secret=secret, seeded=cmd in ("export", "plot", "worker"))
    for url in (f"postgresql://fuzz:{SECRET}@127.0.0.1:1/x", "sqlite://", "garbage", ""):
        b.add("storage", f"env {url}", _recommend(), env=(("EMBADVISOR_STORAGE", url),),
              secret=SECRET if SECRET in url else None)
        b.add("storage", f"env worker {url}", ["worker", "--study", "x"], env=(("EMBADVISOR_STORAGE", url),),
              secret=SECRET if SECRET in url else None)
    b.add("storage", "workers with sqlite", _recommend(extra=["--workers", "2", "--storage", "sqlite:///{T}/s.db"]))
    b.add("storage", "workers default storage", _recommend(extra=["--workers", "2"]))
    b.add("storage", "journal seeded worker", ["worker", "--storage", "{H}/studies.log", "--study", JOURNAL_STUDY,
                                               "--threads", "1", "--quiet"], seeded=True)
    b.add("storage", "journal history", ["history", JOURNAL_STUDY, "--storage", "{H}/studies.log", "--json"],
          seeded=True)
    b.add("storage", "sqlite db as journal", ["history", "--storage", "{H}/studies.db"], seeded=True)
    b.add("storage", "journal as sqlite", ["history", "--storage", "sqlite:///{H}/studies.log"], seeded=True)
    b.add("storage", "worker heartbeat 0", ["worker", "--storage", "{T}/s.log", "--study", "x", "--heartbeat", "0"])
    b.add("storage", "worker no storage", ["worker", "--study", "x"])
    b.add("storage", "worker threads 0", ["worker", "--storage", "{T}/s.log", "--study", "x", "--threads", "0"])


def _study(b: _Builder, rng: random.Random) -> None:
    with_search = set(rng.sample(STUDIES, 15))
    for name in STUDIES:
        if name in with_search:
            b.add("study", f"recommend {name}", _recommend(extra=["--study", name]))
        picks = rng.sample(["export", "history", "plot", "worker", "pareto", "journal"], 1)
        for cmd in picks:
            if cmd == "export":
                args = ["export", name, "-o", "{T}/c.toml"]
            elif cmd == "history":
                args = ["history", name, "--json"]
            elif cmd == "plot":
                args = ["plot", name, "-o", "{T}/p.png"]
            elif cmd == "worker":
                args = ["worker", "--storage", "{H}/studies.log", "--study", name, "--threads", "1"]
            elif cmd == "pareto":
                args = _pareto(extra=["--study", name])
            else:
                args = _recommend(extra=["--study", name, "--storage", "{T}/j.log"])
            b.add("study", f"{cmd} {name}", args, seeded=cmd != "pareto")
    b.add("study", "reuse with other budget", _recommend("3KB", extra=["--study", SEED_STUDY]), seeded=True)
    b.add("study", "reuse with other data", _recommend("4KB", "{F}/ok.parquet", extra=["--study", SEED_STUDY]),
          seeded=True)
    b.add("study", "reuse journal other budget", _recommend("3KB", extra=["--study", JOURNAL_STUDY, "--storage",
                                                                          "{H}/studies.log"]), seeded=True)
    b.add("study", "resume same", _recommend("4KB", extra=["--study", SEED_STUDY]), seeded=True)


def _output(b: _Builder, rng: random.Random) -> None:
    for path, desc in OUTPUTS:
        picks = rng.sample(["recommend", "export", "plot", "profile", "synth"], 3)
        if desc == "plain":
            picks = ["recommend", "export", "plot", "profile", "synth"]
        for cmd in picks:
            ext = {"plot": "html", "synth": "parquet"}.get(cmd, rng.choice(["toml", "json"]))
            p = path.replace("{ext}", ext).replace("{EXT}", ext.upper())
            if cmd == "recommend":
                args = _recommend(extra=["-o", p])
            elif cmd == "export":
                args = ["export", SEED_STUDY, "-o", p]
            elif cmd == "plot":
                args = ["plot", SEED_STUDY, "-o", p]
            elif cmd == "profile":
                args = ["profile", CTR, "-o", p]
            else:
                args = ["synth", "{F}/prof_ok.toml", "--rows", "20", "-o", p]
            b.add("output", f"{cmd} {desc}", args, seeded=cmd in ("export", "plot"))
    for p in ("{T}/p.svg", "{T}/p.png", "{T}/p.PNG", "{T}/p.html.txt", "{T}/p"):
        b.add("output", f"plot {p[4:]}", ["plot", SEED_STUDY, "-o", p], seeded=True)
    for p in ("{T}/s.txt", "{T}/s.csv", "{T}/s.tsv", "{T}/s.xlsx", "{T}/s.parquet.gz"):
        b.add("output", f"synth {p[4:]}", ["synth", "{F}/prof_ok.toml", "--rows", "20", "-o", p])
    b.add("output", "export without -o", ["export", SEED_STUDY], seeded=True)
    b.add("output", "export missing study", ["export", "nope", "-o", "{T}/c.toml"], seeded=True)
    b.add("output", "profile -o over input", ["profile", "{T}/self.csv", "-o", "{T}/self.csv"])


def _options(b: _Builder, rng: random.Random) -> None:
    for opt, val in rng.sample(TRAIN_OPTS, 62):
        data = "{F}/inter.txt" if opt == "--protocol" else CTR
        task = "retrieval" if opt == "--protocol" else "ctr"
        b.add("options", f"train {opt} {val}", _train(data, task, [opt, val]))
    for opt, val in rng.sample(SEARCH_OPTS, 42):
        cmd = "pareto" if rng.random() < 0.25 else "recommend"
        args = _pareto(extra=[opt, val]) if cmd == "pareto" else _recommend(extra=[opt, val])
        b.add("options", f"{cmd} {opt} {val}", args)
    # random pairs of search options
    for _ in range(8):
        (o1, v1), (o2, v2) = rng.sample(SEARCH_OPTS, 2)
        if o1 == o2:
            continue
        b.add("options", f"recommend {o1} {v1} {o2} {v2}", _recommend(extra=[o1, v1, o2, v2]))
    for opt, val in [("--scope", "nope"), ("--scope", "train"), ("--optimizer", "nope"), ("--optimizer", "sgd"),
                     ("--optimizer", "rowwise_adagrad"), ("--json", None), ("--solve", "nope"), ("--solve", ""),
                     ("--solve", "{F}/missing.toml"), ("--solve", "{F}/dir"), ("--solve", "retrieval-catalog"),
                     ("--solve", "movielens-1m")]:
        args = ["methods", "--solve", "criteo-kaggle", "--budget", "64MB"]
        if opt == "--solve":
            args[2] = val  # type: ignore[call-overload]
        else:
            args += [opt] if val is None else [opt, val]
        b.add("options", f"methods {opt} {val}", args)
    for extra in (["--preset", "nope"], ["--preset", "avazu"], ["--preset", ""], ["--dim", "0"],
                  ["--dim", "1000000000"], ["--dim", "70000"], ["--preset", "avazu", CTR], ["--format", "nope", CTR],
                  ["--fields", "nope", CTR], ["--fields", "", CTR], ["--label", "nope", CTR], ["--dim", "-5", CTR],
                  ["--json", "-o", "{T}/x.toml", CTR], ["--format", "parquet", CTR], ["--format", "libffm", CTR]):
        b.add("options", "profile " + " ".join(extra), ["profile", *extra])
    for extra in (["--state", "nope"], ["--state", "complete"], ["--state", "fail", "--method", "hash"],
                  ["--method", "nope"], ["--json"], ["--state", ""]):
        b.add("options", "history study " + " ".join(extra), ["history", SEED_STUDY, *extra], seeded=True)
    b.add("options", "history empty", ["history"])
    b.add("options", "history empty json", ["history", "--json"])
    b.add("options", "history missing study", ["history", "nope"])
    for rows in ("0", "-1", "1", "100000", "abc"):
        b.add("options", f"synth rows {rows}", ["synth", "{F}/prof_ok.toml", "--rows", rows, "-o", "{T}/s.parquet"])
    for seed in ("-1", "4294967296", "4294967295"):
        b.add("options", f"synth seed {seed}", ["synth", "{F}/prof_ok.toml", "--rows", "5", "--seed", seed, "-o",
                                                "{T}/s.parquet"])
    b.add("options", "synth format nope", ["synth", "criteo-kaggle", "--rows", "5", "-o", "{T}/s.parquet", "-f", "x"])
    b.add("options", "synth retrieval csv", ["synth", "retrieval-catalog", "--rows", "5", "-o", "{T}/s.csv"])
    for args in (["nope"], ["--version"], ["--help"], [], ["recommend"], ["train"], ["recommend", "--nope"],
                 ["recommend", "--budget"], ["train", "--task", "ctr"], ["methods", "extra-arg"],
                 ["--", "recommend"], ["profile", "a", "b"], ["history", "--state"], ["recommend", "--budget", "--json"],
                 ["worker"], ["export"], ["plot", "x"], ["pareto"], ["methods", "--json", "--json"],
                 ["recommend", "--budget=4KB", "--data=" + CTR, "--methods=hash", "--rungs=512", "--trials=1",
                  "--threads=1", "--time-limit=8s"]):
        b.add("options", "cli " + " ".join(args)[:30], args)
    b.add("options", "recommend built-in with bad data flag", ["recommend", "--budget", "4KB", "--format", "nope"])
    b.add("options", "recommend built-in bad methods", ["recommend", "--budget", "4KB", "--methods", "nope"])
    b.add("options", "recommend built-in, budget too small for its proxy", ["recommend", "--budget", "4KB",
                                                                            "--threads", "1"], timeout=60.0)
    b.add("options", "pareto built-in bad budgets", ["pareto", "--budgets", "x"])
    b.add("options", "recommend profile without data", ["recommend", "--budget", "4KB", "--profile", "criteo-kaggle",
                                                        *_tiny_search()])
    b.add("options", "recommend retrieval profile ctr data", _recommend(extra=["--task", "retrieval", "--profile",
                                                                               "retrieval-catalog"]))
    b.add("options", "recommend criteo profile on csv", _recommend(extra=["--profile", "criteo-kaggle"]))
    b.add("options", "heartbeat with sqlite", _recommend(extra=["--heartbeat", "5"]))


# --------------------------------------------------------------------------- fixtures
def _write(path: Path, data: bytes | str) -> None:
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


def _ctr_rows(rng: random.Random, n: int) -> list[list[str]]:
    rows = []
    for _ in range(n):
        c1 = rng.randrange(12)
        c2 = min(59, int(rng.paretovariate(1.2)) - 1)
        c3 = rng.randrange(150)
        i1, i2 = rng.randrange(30), rng.randrange(20)
        p = 0.1 + 0.5 * (c1 < 3) + 0.2 * (c2 < 2)
        rows.append([str(int(rng.random() < p)), str(i1), str(i2), f"c{c1}", f"d{c2}", f"e{c3}"])
    return rows


def _csv(header: Sequence[str], rows: Iterable[Sequence[str]], sep: str = ",", end: str = "\n") -> str:
    return end.join(sep.join(r) for r in [list(header), *rows]) + end


def build_fixtures(root: Path) -> None:
    """Write every input file the cases name (in ``root``); deterministic, a few MB."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(SEED)
    head = ["label", "I1", "I2", "C1", "C2", "C3"]
    rows = _ctr_rows(rng, 400)
    good = _csv(head, rows)
    _write(root / "ctr.csv", good)
    _write(root / "spaces name.csv", good)
    _write(root / "self.csv", good)
    crit = []
    for r in rows:
        ints = [str(rng.randrange(100)) if rng.random() < 0.8 else "" for _ in range(13)]
        cats = [f"{rng.randrange(40 * (j + 1)):08x}" if rng.random() < 0.95 else "" for j in range(26)]
        crit.append("\t".join([r[0], *ints, *cats]))
    _write(root / "criteo.txt", "\n".join(crit) + "\n")
    _write(root / "trunc_criteo.txt", ("\n".join(crit))[: len("\n".join(crit)) // 2 + 17])
    _write(root / "criteo_39.txt", "\n".join("\t".join(["1", *["x1.5e"] * 13, *["zz"] * 25]) for _ in range(50)))
    _write(root / "trunc.csv", good[: len(good) // 2 + 5])
    _write(root / "binary.bin", bytes(random.Random(1).randrange(256) for _ in range(50_000)))
    _write(root / "binary.log", bytes(random.Random(2).randrange(256) for _ in range(5_000)))
    _write(root / "binary_nonul.dat", bytes(random.Random(3).randrange(128, 256) for _ in range(50_000)))
    _write(root / "semicolon.csv", _csv(head, rows, sep=";"))
    _write(root / "nolabel.csv", _csv(head[1:], [r[1:] for r in rows]))
    nan_rows = [[r[0], rng.choice(["nan", "inf", "-inf", "NaN", "1e400", r[1]]), r[2], r[3], r[4], r[5]] for r in rows]
    _write(root / "nan.csv", _csv(head, nan_rows))
    _write(root / "nan_label.csv", _csv(head, [[rng.choice(["nan", "inf", "0", "1"]), *r[1:]] for r in rows]))
    _write(root / "label_range.csv", _csv(head, [[rng.choice(["2", "-1", "0.5", "1", "0"]), *r[1:]] for r in rows]))
    _write(root / "label_text.csv", _csv(head, [[rng.choice(["yes", "no"]), *r[1:]] for r in rows]))
    _write(root / "one_class.csv", _csv(head, [["0", *r[1:]] for r in rows]))
    _write(root / "hugefield.csv", _csv(head, [*rows[:50], ["1", "1", "1", "c" * 4_000_000, "d1", "e1"], *rows[50:]]))
    _write(root / "longline.txt", "x" * 8_000_000 + "\n")
    _write(root / "latin1.csv", good.replace("c1,", "caf\u00e9,", 40).encode("latin-1") + b"\xff\xfe\x80,\x81\n")
    _write(root / "utf16.csv", good.encode("utf-16"))
    _write(root / "bom.csv", b"\xef\xbb\xbf" + good.encode())
    _write(root / "crlf.csv", _csv(head, rows, end="\r\n"))
    gz = gzip.compress(good.encode())
    _write(root / "ok.csv.gz", gz)
    _write(root / "trunc.csv.gz", gz[: len(gz) // 2])
    _write(root / "corrupt.csv.gz", gz[:10] + bytes(random.Random(4).randrange(256) for _ in range(2000)))
    _write(root / "notgzip.gz", good)
    cols = list(zip(*rows, strict=True))
    table = pa.table({"label": [int(x) for x in cols[0]], **{h: list(c) for h, c in zip(head[1:], cols[1:],
                                                                                       strict=True)}})
    pq.write_table(table, root / "ok.parquet")
    pq.write_table(table.drop(["label"]), root / "nolabel.parquet")
    pq.write_table(pa.table({"label": [1, 0] * 20, "s": [{"a": 1, "b": "x"}] * 40, "C1": ["a"] * 40}),
                   root / "nested.parquet")
    pq.write_table(pa.table({"label": [1, 0] * 20, "C1": pa.nulls(40, pa.string()), "C2": ["x"] * 40}),
                   root / "nulls.parquet")
    pq.write_table(pa.table({"label": ["yes", "no"] * 20, "C1": ["a", "b"] * 20}), root / "strlabel.parquet")
    pq.write_table(table.slice(0, 0), root / "empty.parquet")
    pq.write_table(pa.table({"label": [1, 0] * 20, "C1": [float("nan"), 1.5] * 20, "C2": [float("inf"), 2.0] * 20}),
                   root / "floatids.parquet")
    raw = (root / "ok.parquet").read_bytes()
    _write(root / "corrupt.parquet", raw[:4] + bytes(len(raw) // 2) + raw[-8:])
    (root / "dir").mkdir(exist_ok=True)
    for a, t in (("loop_a", "loop_b"), ("loop_b", "loop_a"), ("dangling", "nowhere/at/all")):
        if not (root / a).is_symlink():
            os.symlink(root / t, root / a)
    if not (root / "fifo").exists():
        os.mkfifo(root / "fifo")
    _write(root / "empty.csv", b"")
    _write(root / "header_only.csv", ",".join(head) + "\n")
    _write(root / "blank.csv", "\n\n   \n\t\n")
    _write(root / "one_row.csv", _csv(head, rows[:1]))
    _write(root / "two_rows.csv", _csv(head, rows[:2]))
    _write(root / "ragged.csv", _csv(head, [r[: rng.randrange(1, 9)] + ["x"] * rng.randrange(3) for r in rows]))
    _write(root / "dup_cols.csv", _csv(["label", "C1", "C1", "C2", "C2", "C3"], [r for r in rows]))
    _write(root / "wide.csv", _csv(["label", *[f"c{i}" for i in range(6000)]],
                                   [[str(i % 2), *[str((i * j) % 7) for j in range(6000)]] for i in range(60)]))
    _write(root / "quoted.csv", _csv(head, [[r[0], r[1], r[2], f'"{r[3]}\n{r[3]},"', r[4], r[5]] for r in rows]))
    _write(root / "nul_in_text.csv", good[:3000] + "\x00" * 10 + good[3000:])
    inter = [(u, i) for u in range(80) for i in random.Random(u).sample(range(60), 10)]
    _write(root / "inter.txt", "".join(f"{u}\t{i}\n" for u, i in inter))
    _write(root / "inter_neg.txt", "".join(f"{-u - 1}\t{-i}\n" for u, i in inter))
    _write(root / "inter_huge.txt", "".join(f"{u + 2**70}\t{i * 10**25}\n" for u, i in inter))
    _write(root / "inter_float.txt", "".join(f"{u}.5\t{i}.25\n" for u, i in inter))
    _write(root / "inter_one.txt", "".join(f"0\t{i}\n" for i in range(40)))
    _write(root / "inter_self.txt", "".join(f"{u}\n" for u, _ in inter))
    (root / "retdir").mkdir(exist_ok=True)
    _write(root / "retdir" / "train.txt", "".join(f"{u} " + " ".join(str(i) for i in random.Random(u).sample(
        range(60), 8)) + "\n" for u in range(80)))
    _write(root / "retdir" / "test.txt", "".join(f"{u} {rng.randrange(60, 70)}\n" for u in range(80)))
    (root / "retdir_empty").mkdir(exist_ok=True)
    _write(root / "retdir_empty" / "readme.txt", "nothing here\n")
    _write(root / "libfm.txt", "1 3:1 5:x\n0 a:b\n1\n-1 2:1e400\n" * 20)
    _write(root / "avazu.csv", "id,click,hour,C1\n" + "x,2,notanhour,\n" * 30 + "1,1,14102100,5\n")
    _write(root / "u.data", "1\t2\t5\t881250949\nnot\ta\tvalid\tline\n" * 20 + "1\t2\n")
    # vectors
    vr = np.random.default_rng(SEED)
    docs = vr.standard_normal((400, 8)).astype("float32")
    np.save(root / "docs.npy", docs)
    np.save(root / "q.npy", vr.standard_normal((20, 8)).astype("float32"))
    np.save(root / "q_wrongdim.npy", vr.standard_normal((20, 5)).astype("float32"))
    q_nan = vr.standard_normal((20, 8)).astype("float32")
    q_nan[3, 2] = np.nan
    np.save(root / "q_nan.npy", q_nan)
    d_nan = docs.copy()
    d_nan[::7, 1] = np.nan
    np.save(root / "docs_nan.npy", d_nan)
    d_inf = docs.copy()
    d_inf[5, :] = np.inf
    np.save(root / "docs_inf.npy", d_inf)
    np.save(root / "docs_1d.npy", docs[:, 0].copy())
    np.save(root / "docs_obj.npy", np.array([{"a": 1}, [1, 2]], dtype=object), allow_pickle=True)
    np.save(root / "docs_empty.npy", np.zeros((0, 8), dtype="float32"))
    raw = (root / "docs.npy").read_bytes()
    _write(root / "docs_trunc.npy", raw[: len(raw) // 3])
    np.save(root / "docs_int.npy", (docs * 100).astype("int64"))
    np.save(root / "docs_3d.npy", docs.reshape(100, 4, 8))
    np.save(root / "docs_zero.npy", np.zeros((400, 8), dtype="float32"))
    np.save(root / "docs_f16.npy", docs.astype("float16"))
    np.save(root / "docs_wide.npy", np.zeros((400, 0), dtype="float32"))
    pq.write_table(pa.table({"doc_id": [f"d{i}" for i in range(400)], "vec": [list(map(float, r)) for r in docs]}),
                   root / "docs_list.parquet")
    ragged = [list(map(float, r[: 1 + i % 8])) if i % 11 else None for i, r in enumerate(docs)]
    pq.write_table(pa.table({"vec": ragged}), root / "docs_ragged.parquet")
    _write(root / "ids_short.txt", "".join(f"d{i}\n" for i in range(10)))
    _write(root / "ids_dup.txt", "".join("d1\n" for _ in range(400)))
    pq.write_table(pa.table({"query": [1, 2], "doc": [3, 4]}), root / "qrels_bad.parquet")
    _write(root / "qrels.txt", "q1 0 nodoc 1\nq2 0 d5 1\n")
    _write(root / "qrels_neg.txt", "".join(f"{i} 0 {i} {g}\n" for i, g in enumerate(["-1", "nan", "x", "1e400"] * 5)))
    # profiles
    base = base_profile()
    _write(root / "prof_ok.json", json.dumps(base))
    _write(root / "prof_ok.toml", to_toml(base))
    tomllib.loads(to_toml(base))  # the writer's own check
    for i, (_name, mut) in enumerate(_profile_mutations()):
        d = mut(json.loads(json.dumps(base)))
        stem = f"prof_m{i:03d}"
        _write(root / f"{stem}.json", json.dumps(d, allow_nan=True))
        if isinstance(d, dict):
            try:
                _write(root / f"{stem}.toml", to_toml(d))
            except TypeError:
                pass
    for i, (_name, ext, data) in enumerate(RAW_PROFILES):
        _write(root / f"prof_r{i:03d}.{ext}", data)
    (root / "dir.toml").mkdir(exist_ok=True)
    _write(root / "prof.yaml", json.dumps(base))


def _profiles(b: _Builder, rng: random.Random) -> None:
    muts = _profile_mutations()
    files: list[tuple[str, str]] = []
    base = base_profile()
    for i, (name, mut) in enumerate(muts):
        d = mut(json.loads(json.dumps(base)))
        files.append((f"{{F}}/prof_m{i:03d}.json", f"{name} json"))
        if isinstance(d, dict):
            try:
                to_toml(d)
                files.append((f"{{F}}/prof_m{i:03d}.toml", f"{name} toml"))
            except TypeError:
                pass
    for i, (name, ext, _data) in enumerate(RAW_PROFILES):
        files.append((f"{{F}}/prof_r{i:03d}.{ext}", name))
    files += [("{F}/dir.toml", "a directory"), ("{F}/missing.toml", "missing"), ("{F}/prof.yaml", "yaml suffix"),
              ("{F}/loop_a", "symlink loop"), ("/dev/null", "/dev/null"), ("{F}/fifo", "a named pipe"),
              ("{F}/binary.bin", "binary"), ("", "empty spec")]
    for path, desc in rng.sample(files, 80):
        b.add("profiles", f"solve {desc}", ["methods", "--solve", path, "--budget", "64KB", "--json"])
    for path, desc in rng.sample(files, 22):
        cmd = rng.choice(["recommend", "synth", "pareto", "recommend"])
        if cmd == "recommend":
            args = _recommend(extra=["--profile", path])
        elif cmd == "pareto":
            args = _pareto(extra=["--profile", path])
        else:
            args = ["synth", path, "--rows", "30", "-o", "{T}/s.parquet"]
        b.add("profiles", f"{cmd} {desc}", args)


def prepare_case_dir(case_dir: Path, fixtures: Path) -> None:
    """The per-case folder: work folder (cwd, ``{T}``) with the links some output cases need."""
    work = case_dir / "work"
    work.mkdir(parents=True, exist_ok=True)
    for name, target in (("full.toml", "/dev/full"), ("full.json", "/dev/full"), ("full.html", "/dev/full"),
                         ("full.parquet", "/dev/full"), ("loop.toml", "loop2.toml"), ("loop2.toml", "loop.toml"),
                         ("loop.json", "loop2.json"), ("loop2.json", "loop.json"), ("loop.html", "loop2.html"),
                         ("loop2.html", "loop.html"), ("loop.parquet", "loop2.parquet"),
                         ("loop2.parquet", "loop.parquet")):
        os.symlink(target, work / name)
    for ext in ("toml", "json", "html", "parquet"):
        os.symlink(work / "nowhere" / "x", work / f"dangling.{ext}")
    ro = work / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    # inputs a case may write to (storages, outputs): copies, so that no case changes the shared fixtures
    shutil.copy(fixtures / "ctr.csv", work / "self.csv")
    shutil.copy(fixtures / "binary.bin", work / "binary.bin")
    shutil.copy(fixtures / "binary.log", work / "binary.log")


# --------------------------------------------------------------------------- fork server client
class ForkServer:
    """Client of :mod:`forkserver` (one server process, one case at a time)."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}

    def start(self, timeout: float = 300.0) -> None:
        self.logfh = open(self.log, "ab")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen([sys.executable, str(HERE / "forkserver.py")], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.logfh, env=self.env, cwd=str(REPO))
        line = self._readline(timeout)
        if line is None:
            raise RuntimeError(f"fork server did not start; see {self.log}")
        self.info = json.loads(line)

    def _readline(self, timeout: float) -> str | None:
        assert self.proc is not None and self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        buf = b""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                sel.close()
                return None
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                sel.close()
                return None
            buf += chunk
        sel.close()
        return buf.decode()

    def run(self, req: dict[str, Any]) -> dict[str, Any]:
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(req) + "\n").encode())
        self.proc.stdin.flush()
        line = self._readline(float(req.get("timeout", CASE_TIMEOUT)) + 60)
        if line is None:
            self.close(kill=True)
            return {"status": "refused", "error": "the fork server died or did not answer"}
        return json.loads(line)

    def close(self, kill: bool = False) -> None:
        if self.proc is not None:
            if kill:
                self.proc.kill()
            else:
                try:
                    assert self.proc.stdin is not None
                    self.proc.stdin.write(b'{"quit": true}\n')
                    self.proc.stdin.close()
                except OSError:
                    pass
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
            self.logfh.close()


# --------------------------------------------------------------------------- verdicts
_VALUE_OPTIONS = {"--budget", "--budgets", "--study", "--storage", "--data", "--profile", "--format", "-f", "--label",
                  "--fields", "--methods", "--method", "--solve", "--preset", "--state", "--rungs", "--output", "-o"}


def _flag(args: Sequence[str], *names: str) -> bool:
    return any(a in names and (i == 0 or args[i - 1] not in _VALUE_OPTIONS) for i, a in enumerate(args))


def _output_arg(args: Sequence[str]) -> str | None:
    for i, a in enumerate(args[:-1]):
        if a in ("-o", "--output") and (i == 0 or args[i - 1] not in _VALUE_OPTIONS):
            return args[i + 1]
    return None


def _strict_json(text: str) -> Any:
    def bad(token: str) -> Any:
        raise ValueError(f"non-standard JSON constant {token}")

    return json.loads(text, parse_constant=bad)


def _result_problem(args: Sequence[str], out: str, err: str, cwd: Path) -> str | None:
    """Why an exit-0 result is not sensible (None when it is)."""
    if _flag(args, "--json"):
        try:
            _strict_json(out)
        except ValueError as e:
            return f"--json output is not strict JSON: {e}"
    target = _output_arg(args)
    if target and target not in ("/dev/null",):
        p = Path(target) if os.path.isabs(target) else cwd / target
        if not p.is_file() or p.stat().st_size == 0:
            return f"exit 0 but the output {target!r} is missing or empty"
        suffix = p.suffix.lower()
        try:
            if suffix == ".json":
                _strict_json(p.read_text(encoding="utf-8"))
            elif suffix == ".toml":
                tomllib.loads(p.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            return f"the output {target!r} does not parse: {e}"
    if not out.strip() and not err.strip():
        return "exit 0 without any output"
    return None


def classify(case: Case, res: dict[str, Any], args: Sequence[str], cwd: Path) -> tuple[str, str]:
    """(verdict, reason): verdict is one of :data:`VERDICTS`."""
    status = res.get("status")
    if status == "hang":
        return "hang", f"no exit within {case.timeout:.0f}s"
    out, err = res.get("stdout", ""), res.get("stderr", "")
    if "Traceback (most recent call last)" in out or "Traceback (most recent call last)" in err:
        tail = [ln for ln in err.splitlines() if ln.strip()][-1:] or ["?"]
        return "traceback", tail[0][:300]
    if status == "refused":
        return "other", str(res.get("error"))
    if status == "signal":
        return "other", f"killed by signal {res.get('signal')}"
    if case.secret and (case.secret in out or case.secret in err):
        return "other", "the storage password appears in the output"
    if "Exception ignored" in err:
        return "other", "an 'Exception ignored' message on stderr"
    rc = res.get("rc")
    if rc == 0:
        problem = _result_problem(args, out, err, cwd)
        return ("other", problem) if problem else ("clean", "")
    if case.expect_ok:
        return "other", f"control case exited {rc}: {err.strip()[-300:]}"
    if rc == 2:
        lines = [ln for ln in err.splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("error:")]
        rest = [ln for ln in lines if not ln.startswith(("error:", "warning:"))]
        if len(errors) == 1 and not rest:
            return "clean", ""
        return "other", f"exit 2 with {len(errors)} error line(s) and {len(rest)} other line(s): {lines[:3]!r}"[:400]
    return "other", f"exit code {rc}: {err.strip()[-300:]!r}"


# --------------------------------------------------------------------------- session
@dataclass
class Outcome:
    case: Case
    verdict: str
    reason: str
    rc: int | None
    seconds: float
    stdout: str = ""
    stderr: str = ""


@dataclass
class FuzzSession:
    """Fixtures, the seeded home and the fork server for one run of the suite."""

    root: Path
    shared: Path | None
    keep_failures: bool = True
    outcomes: list[Outcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.fixtures = self.root / "fixtures"
        self.cases_dir = self.root / "cases"
        self.seed_home = self.root / "seed-home"
        self.common = self.root / "common"
        self.server: ForkServer | None = None
        self.seed_error: str | None = None
        self.started = time.monotonic()

    def start(self) -> None:
        build_fixtures(self.fixtures)
        self.cases_dir.mkdir(parents=True, exist_ok=True)
        for sub in ("native", "mpl"):
            (self.common / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.common, 0o700)
        os.chmod(self.common / "native", 0o700)
        env = {k: v for k, v in os.environ.items() if not k.startswith("EMBADVISOR_") and k not in ("PYTHONWARNINGS",)}
        env.update({
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
            "JE_ARROW_MALLOC_CONF": "background_thread:false", "PYTHONHASHSEED": "0",
            "EMBADVISOR_NATIVE_CACHE": str(self.common / "native"), "MPLCONFIGDIR": str(self.common / "mpl"),
            "MPLBACKEND": "Agg", "PYTHONPATH": os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        })
        self.server = ForkServer(env, self.root / "forkserver.log")
        self.server.start()
        self._seed()

    def _seed(self) -> None:
        """Create the studies that ``seeded`` cases find in their home (a finished tiny search)."""
        home = self.seed_home
        (home / "work").mkdir(parents=True, exist_ok=True)
        for args in (_recommend(extra=["--study", SEED_STUDY]),
                     _recommend(extra=["--study", JOURNAL_STUDY, "--storage", "{H}/studies.log"])):
            res = self._exec(args, home, timeout=120)
            if res.get("rc") != 0:
                self.seed_error = f"seeding {args} failed: {res}"
                return

    def _env(self, case_dir: Path) -> tuple[dict[str, str], Path]:
        emb_home = case_dir / "home" / ".embadvisor"
        emb_home.mkdir(parents=True, exist_ok=True)
        return {"HOME": str(case_dir / "home"), "EMBADVISOR_HOME": str(emb_home),
                "TMPDIR": str(case_dir / "home"), "COLUMNS": "120"}, emb_home

    def fill(self, text: str, work: Path, emb_home: Path) -> str:
        return (text.replace("{F}", str(self.fixtures)).replace("{T}", str(work)).replace("{H}", str(emb_home))
                .replace("{S}", str(self.shared) if self.shared else "/nonexistent-shared-data"))

    def _exec(self, args: Sequence[str], case_dir: Path, timeout: float, extra_env: Sequence[tuple[str, str]] = (),
              ) -> dict[str, Any]:
        env, emb_home = self._env(case_dir)
        work = case_dir / "work"
        env.update({k: self.fill(v, work, emb_home) for k, v in extra_env})
        filled = [self.fill(a, work, emb_home) for a in args]
        assert self.server is not None
        res = self.server.run({"args": filled, "cwd": str(work), "logdir": str(case_dir), "env": env,
                               "unset": ["EMBADVISOR_STORAGE"], "timeout": timeout})
        res["args"] = filled
        return res

    def run(self, case: Case) -> Outcome:
        case_dir = self.cases_dir / case.id
        if case_dir.exists():
            _rmtree(case_dir)
        case_dir.mkdir(parents=True)
        prepare_case_dir(case_dir, self.fixtures)
        if case.seeded:
            if self.seed_error:
                out = Outcome(case, "other", f"no seeded studies: {self.seed_error}", None, 0.0)
                self.outcomes.append(out)
                return out
            shutil.copytree(self.seed_home / "home" / ".embadvisor", case_dir / "home" / ".embadvisor",
                            dirs_exist_ok=True)
        res = self._exec(case.args, case_dir, case.timeout, case.env)
        verdict, reason = classify(case, res, res["args"], case_dir / "work")
        out = Outcome(case, verdict, reason, res.get("rc"), float(res.get("seconds", 0.0)), res.get("stdout", ""),
                      res.get("stderr", ""))
        self.outcomes.append(out)
        if verdict == "clean" or not self.keep_failures:
            _rmtree(case_dir)
        return out

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None

    def table(self) -> str:
        return format_table(self.outcomes, time.monotonic() - self.started, code_version())


def _rmtree(path: Path) -> None:
    for p in path.rglob("*"):  # read-only folders (the 'ro' output case)
        if p.is_dir() and not p.is_symlink():
            try:
                p.chmod(0o755)
            except OSError:
                pass
    shutil.rmtree(path, ignore_errors=True)


def code_version() -> str:
    """The commit the suite ran against, and whether embadvisor/ had uncommitted changes."""
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "embadvisor"],
                               capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head or "unknown") + (" with uncommitted changes in embadvisor/" if dirty else "")


def format_table(outcomes: Sequence[Outcome], seconds: float | None = None, code: str | None = None) -> str:
    """The category table (tried / clean / traceback / hang / other) and the failures, one per line."""
    rows = []
    total: Counter[str] = Counter()
    for cat in CATEGORIES:
        got = [o for o in outcomes if o.case.category == cat]
        if not got:
            continue
        c = Counter(o.verdict for o in got)
        total.update(c)
        total["tried"] += len(got)
        rows.append((cat, len(got), *(c[v] for v in VERDICTS)))
    rows.append(("total", total["tried"], *(total[v] for v in VERDICTS)))
    head = ("category", "tried", *VERDICTS)
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    lines = [f"embadvisor CLI fuzz suite: seed {SEED}, {CASE_TIMEOUT:.0f} s per case, one case at a time"]
    if seconds is not None:
        lines[0] += f", {seconds:.0f} s in all"
    if code:
        lines[0] += f"; code {code}"
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    lines.append(fmt.format(*head))
    lines += [fmt.format(*r) for r in rows]
    bad = [o for o in outcomes if o.verdict != "clean"]
    if bad:
        lines.append("")
        lines.append("failures:")
        lines += [f"  {o.case.id}: {o.verdict}: {o.reason}" for o in bad]
    return "\n".join(lines) + "\n"


def default_shared() -> Path | None:
    env = os.environ.get("EMBADVISOR_SHARED_DATA")
    path = Path(env) if env else REPO.parent / "shared" / "data"
    return path if path.is_dir() else None
