"""CLI basics: help for every command, version, import cost, methods listing and solving."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from embadvisor.advisor.cli import app

runner = CliRunner()
COMMANDS = sorted(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


def test_help_lists_commands() -> None:
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for cmd in ("profile", "profiles", "synth", "methods"):
        assert cmd in res.output


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_command_has_help(cmd: str) -> None:
    res = runner.invoke(app, [cmd, "--help"])
    assert res.exit_code == 0, res.output


def test_version() -> None:
    from embadvisor import __version__

    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and __version__ in res.output


def test_help_does_not_import_torch_or_optuna() -> None:
    code = (
        "import sys\n"
        "from embadvisor.advisor.cli import app\n"
        "from typer.testing import CliRunner\n"
        "r = CliRunner().invoke(app, ['--help'])\n"
        "assert r.exit_code == 0\n"
        "print(sorted(m for m in ('torch', 'optuna', 'pyarrow', 'sklearn') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_methods_json_lists_registry() -> None:
    from embadvisor.methods import list_methods

    res = runner.invoke(app, ["methods", "--json"])
    assert res.exit_code == 0
    rows = json.loads(res.stdout)
    assert [r["name"] for r in rows] == list_methods(input=None)
    for r in rows:
        assert {"name", "category", "compresses_training"} <= set(r)


def test_methods_solve_json() -> None:
    res = runner.invoke(app, ["methods", "--solve", "criteo-kaggle", "--budget", "64MB", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    by_name = {r["name"]: r for r in rows}
    assert by_name["full"]["feasible"] is False  # 2.16 GB of tables
    assert by_name["hash"]["feasible"] is True
    for r in rows:
        assert {"name", "feasible", "params", "serve_bytes", "train_bytes", "min_budget_bytes"} <= set(r)
        if r["feasible"]:
            assert r["serve_bytes"] <= 64_000_000


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["methods", "--solve", "criteo-kaggle", "--budget", "64M"], "ambiguous"),
        (["methods", "--solve", "criteo-kagle", "--budget", "64MB"], "Did you mean"),
        (["methods", "--solve", "criteo-kaggle"], "--budget"),
        (["methods", "--solve", "criteo-kaggle", "--budget", "1MB", "--scope", "disk"], "--scope"),
        (["methods", "--budget", "1MB"], "--solve"),
    ],
)
def test_methods_bad_input(args: list[str], needle: str) -> None:
    res = runner.invoke(app, args)
    assert res.exit_code == 2
    assert needle in res.stderr
    assert "Traceback" not in res.output and len(res.stderr.strip().splitlines()) == 1
