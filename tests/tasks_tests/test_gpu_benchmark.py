"""``benchmarks/gpu.py``: its CPU smoke run (``--device cpu --quick``) and its refusal of CUDA without CUDA."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_exits_2_with_one_line() -> None:
    res = subprocess.run([sys.executable, str(SCRIPT), "--device", "cuda"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "this machine has no CUDA device" in lines[0], res.stderr
    assert res.stdout == ""


@pytest.mark.slow
def test_quick_cpu_run_prints_every_section() -> None:
    res = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--threads", "1"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout
    for heading in ("## 1.", "## 2.", "## 3.", "## 4."):
        assert heading in out, out
    from embadvisor.methods import list_methods

    rows = {line.split()[0] for line in out.splitlines() if line.strip()}
    missing = [m for m in list_methods() if m != "full" and m not in rows]
    assert not missing, f"methods missing from section 1: {missing}\n{out}"
    assert "failed" not in out and "crashed" not in out, out
    assert "samples/s" in out


@pytest.mark.slow
def test_methods_in_their_own_processes() -> None:
    res = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--isolate", "--threads", "1",
                          "--only", "methods", "--methods", "hash,int16"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = {line.split()[0]: line for line in res.stdout.splitlines() if line.strip()}
    assert "hash" in rows and "int16" in rows and "crashed" not in res.stdout and "timed out" not in res.stdout, res.stdout
