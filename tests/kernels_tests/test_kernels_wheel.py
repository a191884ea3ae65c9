"""The built wheel ships the C source of the kernels (they are compiled from it at first use)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_wheel_contains_the_kernel_source(tmp_path: Path) -> None:
    src = tmp_path / "src"  # a copy: the build's own build/ folder must not land in the repository
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "embadvisor", src / "embadvisor",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so", "*.egg-info"))
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                          "-q", "-w", str(tmp_path / "dist"), str(src)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    (wheel,) = (tmp_path / "dist").glob("embadvisor-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        assert "embadvisor/kernels/_native.c" in names, sorted(n for n in names if "kernels" in n)
        assert zf.read("embadvisor/kernels/_native.c") == (REPO / "embadvisor/kernels/_native.c").read_bytes()
    assert {"embadvisor/kernels/__init__.py", "embadvisor/kernels/native.py", "embadvisor/kernels/hugepages.py",
            "embadvisor/py.typed"} <= names
    assert not any(n.startswith("embadvisor/methods/_native") for n in names)
