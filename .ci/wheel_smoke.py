"""Smoke test of an installed (non-editable) embadvisor wheel; ``.ci/wheel`` runs it outside the repository.

It fails where embadvisor is imported from anywhere but this interpreter's environment (an editable
install, the repository on ``sys.path``), where the C kernels fall back to the torch paths (every warning
is an error while they are built and run), or where ``embadvisor --help`` or ``embadvisor methods --solve``
exits non-zero.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import NoReturn


def fail(message: str) -> NoReturn:
    print(f"wheel smoke test FAILED: {message}", file=sys.stderr)
    raise SystemExit(1)


def main() -> None:
    import embadvisor

    pkg = Path(embadvisor.__file__).resolve().parent
    env_root = Path(sys.prefix).resolve()
    if not pkg.is_relative_to(env_root):
        fail(f"embadvisor was imported from {pkg}, not from the environment {env_root}")
    print(f"embadvisor {embadvisor.__version__} from {pkg}", file=sys.stderr)

    import torch

    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the fallback ("fused C kernels unavailable ...") is a warning
            from embadvisor import kernels

            available = kernels.available()
            gen = torch.Generator().manual_seed(0)
            tables = [torch.randn(8, 4, generator=gen), torch.randn(8, 4, generator=gen)]
            ids = torch.tensor([[0, 3], [5, 1], [7, 7]])
            out = kernels.grouped_lookup(ids, [kernels.FieldKernel(kernels.ROWS, t, 8) for t in tables], 4)
    except Warning as w:
        fail(f"a warning while the C kernels were built or run: {w}")
    if not available:
        fail("the C kernels are not available (EMBADVISOR_NATIVE=0?)")
    if out is None:  # None: the kernel could not run, the caller would use torch
        fail("the grouped-lookup kernel did not run")
    if not torch.equal(out, torch.stack([t[ids[:, f]] for f, t in enumerate(tables)], 1)):
        fail("the grouped-lookup kernel's rows differ from torch's")
    # an editable install's import hook can still serve submodules that the wheel lacks: check each one
    files = {name: getattr(mod, "__file__", None) for name, mod in list(sys.modules.items())}
    outside = sorted(f"{name} ({file})" for name, file in files.items()
                     if name.split(".")[0] == "embadvisor" and file
                     and not Path(file).resolve().is_relative_to(env_root))
    if outside:
        fail(f"embadvisor modules imported from outside the environment {env_root}: {', '.join(outside)}")
    if not (pkg / "kernels" / "_native.c").is_file():
        fail(f"the installed package has no kernels/_native.c (in {pkg})")
    print("kernels: built from the wheel's source and running", file=sys.stderr)

    cli = Path(sys.executable).parent / "embadvisor"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for args in (["--help"], ["methods", "--solve", "criteo-kaggle", "--budget", "64MB"]):
        res = subprocess.run([str(cli), *args], capture_output=True, text=True, env=env, timeout=600)
        if res.returncode != 0:
            fail(f"`embadvisor {' '.join(args)}` exited {res.returncode}:\n{res.stdout}\n{res.stderr}")
        print(f"`embadvisor {' '.join(args)}`: exit 0", file=sys.stderr)
    print("wheel smoke test passed")


if __name__ == "__main__":
    main()
