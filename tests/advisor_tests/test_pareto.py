"""`embadvisor pareto`: one study per budget on one workload, frontier and knee, infeasible rows."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from embadvisor.advisor.cli import app
from embadvisor.advisor.pareto import parse_budgets
from embadvisor.errors import InvalidConfigError

runner = CliRunner()


def _base(shared_data, tmp_path) -> list[str]:  # noqa: ANN001
    return ["pareto", "--data", str(shared_data / "ctr/movielens-100k/u.data"), "--storage",
            f"sqlite:///{tmp_path / 'db.sqlite'}", "--trials", "2", "--rungs", "2048", "--threads", "1"]


def test_parse_budgets() -> None:
    assert parse_budgets("32MB, 8MB,128MB") == [8_000_000, 32_000_000, 128_000_000]
    assert parse_budgets("1MiB") == [2**20]
    with pytest.raises(InvalidConfigError, match="item 2 of 3 is not a byte size.*'8M'.*ambiguous"):
        parse_budgets("1MB,8M,2MB")
    with pytest.raises(InvalidConfigError, match="empty"):
        parse_budgets("1MB,,2MB")
    with pytest.raises(InvalidConfigError, match="distinct"):
        parse_budgets("1MB,1000kB")


@pytest.mark.slow
def test_pareto_json_rows_frontier_and_infeasible_row(shared_data, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("EMBADVISOR_HOME", str(tmp_path))
    res = runner.invoke(app, [*_base(shared_data, tmp_path), "--methods", "hash,qr", "--budgets",
                              "50B,20kB,60kB,150kB", "--study", "pf", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    rows = out["rows"]
    assert [r["budget_bytes"] for r in rows] == [50, 20_000, 60_000, 150_000]
    assert rows[0]["feasible"] is False and "below every method" in rows[0]["reason"]
    assert rows[0]["min_budget_bytes"] > 50
    ok = [r for r in rows if r["feasible"]]
    assert len(ok) == 3
    for r in ok:
        assert r["method"] in ("hash", "qr") and r["serve_bytes"] <= r["budget_bytes"]
        assert r["validation"] is not None and r["test"] is not None
        assert r["study"].startswith("pf-")
    front = [r for r in ok if r["on_frontier"]]
    assert front and front[0]["serve_bytes"] == min(r["serve_bytes"] for r in ok)
    assert all(a["validation"] < b["validation"] for a, b in zip(front, front[1:], strict=False))
    assert "knee" in out and (out["knee"] is None or out["knee"]["budget_bytes"] in [r["budget_bytes"] for r in front])
    assert out["metric"] == "auc"
    # each budget is an ordinary, resumable study
    hist = runner.invoke(app, ["history", "--storage", f"sqlite:///{tmp_path / 'db.sqlite'}", "--json"])
    assert {r["study"] for r in ok} <= {s["study"] for s in json.loads(hist.stdout)}
    # the rich table renders too (resumed studies: no new trials)
    res = runner.invoke(app, [*_base(shared_data, tmp_path), "--methods", "hash,qr", "--budgets",
                              "50B,20kB,60kB,150kB", "--study", "pf"])
    assert res.exit_code == 0, res.output
    assert "infeasible" in res.stdout and "frontier" in res.stdout


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--budgets", "8MB,8 megs"], "item 2 of 2 is not a byte size"),
        (["--budgets", "8MB", "--methods", "hsah"], "Did you mean 'hash'"),
        (["--budgets", "8MB", "--task", "vision"], "--task"),
        (["--budgets", "10B,20B", "--methods", "hash"], "none of the 2 budgets"),
    ],
)
def test_pareto_bad_inputs_exit_2_with_one_line(extra, needle, shared_data, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("EMBADVISOR_HOME", str(tmp_path))
    res = runner.invoke(app, [*_base(shared_data, tmp_path), *extra])
    assert res.exit_code == 2, res.output
    assert needle in res.stderr, res.stderr
    assert "Traceback" not in res.output and len(res.stderr.strip().splitlines()) == 1
