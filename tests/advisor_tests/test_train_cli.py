"""`embadvisor train` on real data: training to convergence by default, and warnings a user must see."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from embadvisor.advisor.cli import app

runner = CliRunner()


def test_dedup_over_budget_is_said_on_stderr_and_in_json(shared_data) -> None:
    # avazu-10k has too few similar blocks for dedup to reach 1/8 of its tables
    res = runner.invoke(app, ["train", "--task", "ctr", "--data", str(shared_data / "ctr/avazu-10k/avazu_train"),
                              "--label", "click", "--method", "dedup", "--budget", "83KB", "--epochs", "1",
                              "--threads", "1", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["serve_bytes"] > 83_000
    assert len(out["warnings"]) == 1 and "could not reach its target" in out["warnings"][0]
    assert "warning:" in res.stderr and "dedup serving form" in res.stderr


def test_a_method_within_its_budget_has_no_warning_and_trains_to_convergence(shared_data) -> None:
    res = runner.invoke(app, ["train", "--task", "ctr", "--data", str(shared_data / "ctr/avazu-10k/avazu_train"),
                              "--label", "click", "--method", "hash", "--budget", "83KB", "--threads", "1", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["warnings"] == [] and "warning" not in res.stderr
    assert out["converged"] and out["stopped"] == "early stopping on validation"
    assert out["serve_bytes"] <= 83_000
    assert out["validation"]["auc"] > 0.65  # hash learns on this file (0.69 when converged)
