"""embadvisor: choose an embedding-compression method for your workload and memory budget.

The public API is re-exported here lazily, so ``import embadvisor`` stays cheap (no torch, no
optuna) until a heavy object is actually used.
"""

from __future__ import annotations

import importlib
from typing import Any

from embadvisor.version import __version__

__all__ = [
    "FieldProfile",
    "FrequencySummary",
    "WorkloadProfile",
    "__version__",
    "build_embedding",
    "format_size",
    "load_profile",
    "parse_budget",
    "parse_size",
    "recommend",
    "train",
]

_LAZY = {
    "FieldProfile": "embadvisor.profiles",
    "FrequencySummary": "embadvisor.profiles",
    "WorkloadProfile": "embadvisor.profiles",
    "load_profile": "embadvisor.profiles",
    "build_embedding": "embadvisor.build",
    "format_size": "embadvisor.units",
    "parse_size": "embadvisor.units",
    "parse_budget": "embadvisor.units",
    "recommend": "embadvisor.api",
    "train": "embadvisor.api",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'embadvisor' has no attribute {name!r}")
