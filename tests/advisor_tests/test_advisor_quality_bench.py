"""Smoke run of benchmarks/advisor_quality.py --quick (sweep, advisor and random search end to end)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "advisor_quality.py"


@pytest.mark.slow
def test_quick_mode_prints_the_table(shared_data, tmp_path) -> None:
    env = os.environ | {"EMBADVISOR_SHARED_DATA": str(shared_data), "EMBADVISOR_HOME": str(tmp_path)}
    out = tmp_path / "runs.json"
    res = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--quiet", "--json", str(out)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "sweep best" in res.stdout and "advisor pick" in res.stdout and "adv>=rnd" in res.stdout
    assert "regret within target" in res.stdout
    (cell,) = json.loads(out.read_text())
    assert cell["dataset"] == "ml100k" and cell["sweep"]
    sweep_steps = sum(r["steps"] for r in cell["sweep"])
    assert 0 < cell["advisor"]["steps"] <= sweep_steps  # the advisor trains at most half the sweep (quick share)
    assert cell["random"]["steps"] <= cell["advisor"]["steps"]  # random search never gets more compute
    assert cell["advisor"]["method"] in {"hash", "qr", "robe"}
