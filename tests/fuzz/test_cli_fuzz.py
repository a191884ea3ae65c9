"""A fuzz suite of our own (issue #18): hundreds of hostile command lines, each clean or a failure.

Clean means exit 0 with a sensible result (strict JSON for ``--json``, a readable ``-o`` file) or
exit 2 with exactly one ``error:`` line on stderr (``warning:`` lines allowed). A traceback, a hang
(no exit within the case's timeout, 20 s) or any other exit fails the case. The case list is generated
with a fixed seed (see ``fuzzlib``); the cases run one at a time in a fork server (CLI and torch
imported once, one forked child per case, own HOME and EMBADVISOR_HOME, one torch thread).

    python -m pytest tests/fuzz -m slow -s     # prints the category table at the end
    python tests/fuzz/run_fuzz.py              # the same, and writes benchmarks/results/fuzz.txt
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fuzzlib  # noqa: E402

CASES = fuzzlib.generate_cases()


@pytest.fixture(scope="session")
def fuzz_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[fuzzlib.FuzzSession]:
    session = fuzzlib.FuzzSession(tmp_path_factory.mktemp("fuzz"), shared=None)
    session.start()
    yield session
    session.close()
    print("\n" + session.table(), end="")  # shown with -s


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_cli_case(case: fuzzlib.Case, fuzz_session: fuzzlib.FuzzSession, request: pytest.FixtureRequest) -> None:
    if case.shared:
        fuzz_session.shared = request.getfixturevalue("shared_data")  # skips (fails in CI) when missing
    out = fuzz_session.run(case)
    assert out.verdict == "clean", (
        f"{case.id}: {out.verdict}: {out.reason}\nargs: {list(case.args)!r}\nexit code: {out.rc}\n"
        f"stderr (end): {out.stderr[-3000:]}\nstdout (end): {out.stdout[-1000:]}"
    )


# -- the harness itself (fast) ------------------------------------------------------------------
def test_case_list_is_reproducible_and_large_enough() -> None:
    again = fuzzlib.generate_cases()
    assert again == CASES
    assert len(CASES) >= 500
    assert {c.category for c in CASES} == set(fuzzlib.CATEGORIES)
    assert len({c.id for c in CASES}) == len(CASES)
    for command in ("train", "recommend", "pareto", "methods", "profile", "export", "history", "plot", "worker"):
        assert any(c.args[:1] == (command,) for c in CASES), command
    assert any("--solve" in c.args for c in CASES)


def test_training_cases_use_tiny_settings() -> None:
    for c in CASES:
        args = list(c.args)
        if args[:1] == ["recommend"] and "--data" in args and "--vectors" not in args:
            assert "--time-limit" in args or any(a.startswith("--time-limit") for a in args), c.id
        if args[:1] == ["train"] and "--data" in args:
            assert "--time-limit" in args and "--threads" in args, c.id


def _case(**kw: object) -> fuzzlib.Case:
    return fuzzlib.Case(id="x", category="options", args=tuple(kw.pop("args", ("methods",))), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("res", "args", "verdict"),
    [
        ({"status": "exit", "rc": 2, "stdout": "", "stderr": "error: bad value.\n"}, (), "clean"),
        ({"status": "exit", "rc": 2, "stdout": "", "stderr": "warning: hm\nerror: bad value.\n"}, (), "clean"),
        ({"status": "exit", "rc": 2, "stdout": "", "stderr": "progress\nerror: bad value.\n"}, (), "other"),
        ({"status": "exit", "rc": 2, "stdout": "", "stderr": "error: a\nerror: b\n"}, (), "other"),
        ({"status": "exit", "rc": 1, "stdout": "", "stderr": "Traceback (most recent call last):\nX\n"}, (),
         "traceback"),
        ({"status": "exit", "rc": 1, "stdout": "", "stderr": "boom\n"}, (), "other"),
        ({"status": "hang", "rc": None}, (), "hang"),
        ({"status": "signal", "rc": None, "signal": 11, "stdout": "", "stderr": ""}, (), "other"),
        ({"status": "exit", "rc": 0, "stdout": '{"a": 1}', "stderr": ""}, ("methods", "--json"), "clean"),
        ({"status": "exit", "rc": 0, "stdout": '{"a": NaN}', "stderr": ""}, ("methods", "--json"), "other"),
        ({"status": "exit", "rc": 0, "stdout": "", "stderr": ""}, ("methods",), "other"),
        ({"status": "exit", "rc": 0, "stdout": "", "stderr": "wrote x"}, ("export", "s", "-o", "missing.toml"),
         "other"),
    ],
)
def test_classify(res: dict, args: tuple[str, ...], verdict: str, tmp_path: Path) -> None:
    assert fuzzlib.classify(_case(args=args), res, args, tmp_path)[0] == verdict


def test_classify_flags_a_leaked_password(tmp_path: Path) -> None:
    res = {"status": "exit", "rc": 2, "stdout": "", "stderr": f"error: cannot open x:{fuzzlib.SECRET}@h.\n"}
    assert fuzzlib.classify(_case(secret=fuzzlib.SECRET), res, (), tmp_path)[0] == "other"
