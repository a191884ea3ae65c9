"""``embadvisor.kernels`` sits below ``methods/`` and ``tasks/``: it imports neither, nor the advisor."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from import_graph import imported as _imported

import embadvisor.kernels

KERNELS = Path(embadvisor.kernels.__file__).parent
# what the kernels may import from the package: themselves and the leaf modules below every layer
ALLOWED = ("embadvisor.kernels", "embadvisor.errors", "embadvisor.units", "embadvisor.version")
ABOVE = ("embadvisor.methods", "embadvisor.tasks", "embadvisor.advisor")


def test_the_kernels_import_nothing_above_them() -> None:
    files = sorted(KERNELS.glob("*.py"))
    assert {f.name for f in files} >= {"__init__.py", "native.py", "hugepages.py"}
    bad = {f"{f.name}: {name}" for f in files for name in _imported(f)
           if name.split(".")[0] == "embadvisor" and name != "embadvisor"
           and not any(name == a or name.startswith(a + ".") for a in ALLOWED)}
    assert not bad, f"embadvisor.kernels must import only {ALLOWED} from the package, but imports: {sorted(bad)}"


def test_importing_and_running_the_kernels_loads_no_layer_above() -> None:
    code = ("import sys, torch\nfrom embadvisor import kernels\nkernels.available()\n"
            "kernels.embedding(torch.arange(3), torch.ones(4, 2))\n"
            f"print(sorted(m for m in sys.modules if m.startswith({ABOVE!r})))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]", f"importing embadvisor.kernels loaded {res.stdout.strip()}"
