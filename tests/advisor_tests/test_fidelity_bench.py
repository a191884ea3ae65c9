"""The fidelity benchmark's scoring: random search at equal compute, rank agreement, the report's verdicts."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import fidelity  # noqa: E402


def _truth() -> dict:
    runs = {("a", 1e-3): [{"value": 0.70, "seconds": 10.0}] * 3, ("b", 1e-3): [{"value": 0.75, "seconds": 10.0}] * 3,
            ("c", 1e-3): [{"value": 0.72, "seconds": 10.0}] * 3}
    means = {k: v[0]["value"] for k, v in runs.items()}
    return {"configs": runs, "means": means, "best_value": 0.75}


def test_random_search_gets_only_the_compute_it_is_given() -> None:
    tr = _truth()
    assert fidelity.random_regret(tr, 1e9) == pytest.approx(0.0)  # enough for every configuration
    one = fidelity.random_regret(tr, 10.0, repeats=60)  # one configuration per order: mean regret of a random pick
    assert one == pytest.approx((0.05 + 0.0 + 0.03) / 3, abs=0.01)


def test_kendall_over_common_methods() -> None:
    assert fidelity.kendall({"a": 1, "b": 2, "c": 3, "x": 9}, {"a": 0.1, "b": 0.2, "c": 0.3}) == pytest.approx(1.0)
    assert fidelity.kendall({"a": 3, "b": 2, "c": 1}, {"a": 0.1, "b": 0.2, "c": 0.3}) == pytest.approx(-1.0)
    assert fidelity.kendall({"a": 1, "b": 2}, {"a": 0.1, "b": 0.2}) != fidelity.kendall({"a": 1, "b": 2}, {"a": 0.1, "b": 0.2})  # NaN


def test_report_marks_misses(tmp_path) -> None:
    row = {"dataset": "d", "budget": "1/4", "truth": "hash lr=0.001", "truth_value": 0.7, "pick": "qr lr=0.001",
           "reported": 0.69, "converged": 0.69, "regret": 0.01, "regret_ok": False, "evidence_error": 0.0,
           "evidence_bound": 0.003, "evidence_ok": True, "tau": 0.5, "compute_share": 0.2, "advisor_s": 10.0,
           "estimate_s": 9.0, "sweep_s": 50.0, "random_regret": 0.02, "beats_random": True, "undertrained": False}
    out = tmp_path / "r.txt"
    fidelity.write_report([row], out)
    text = out.read_text()
    assert "+0.0100 MISS" in text and "regret target met in 0/1" in text and "advisor >= random in 1/1" in text
