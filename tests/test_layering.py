"""Layering: no module below ``advisor/`` imports the advisor (docs/style.md, "Layering we want").

Every module under ``embadvisor/`` is parsed (nothing is imported); an import at any depth counts, lazy
ones inside functions included, and ``from embadvisor import name`` counts as an import of the module the
package's lazy map sends ``name`` to. Above the advisor sit only the top-level entry points: the Python
API (``api.py``), the package's lazy re-exports (``__init__.py``) and ``python -m embadvisor``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import embadvisor

PACKAGE = Path(embadvisor.__file__).parent
ADVISOR = "embadvisor.advisor"
#: the modules above the advisor (they may import it)
ABOVE = {"embadvisor", "embadvisor.api", "embadvisor.__main__"}


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(path: Path, source: str | None = None) -> set[str]:
    """Every module ``path`` (or ``source`` standing at ``path``) imports, relative imports resolved;
    ``from a import b`` counts as ``a.b`` too."""
    package = _module(path) if path.name == "__init__.py" else _module(path).rpartition(".")[0]
    names: set[str] = set()
    text = path.read_text(encoding="utf-8") if source is None else source
    for node in ast.walk(ast.parse(text, str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith(ADVISOR):
            names.add(node.value)  # importlib.import_module("embadvisor.advisor...")
    lazy = getattr(embadvisor, "_LAZY", {})
    return names | {lazy[n.rpartition(".")[2]] for n in names
                    if n.rpartition(".")[0] == "embadvisor" and n.rpartition(".")[2] in lazy}


def _is_advisor(name: str) -> bool:
    return name == ADVISOR or name.startswith(ADVISOR + ".")


def test_no_module_below_the_advisor_imports_it() -> None:
    files = sorted(PACKAGE.rglob("*.py"))
    below = [f for f in files if not _is_advisor(_module(f)) and _module(f) not in ABOVE]
    assert {_module(f).split(".")[1] for f in below} >= {"methods", "tasks", "data", "profiles", "vectors", "kernels",
                                                         "testing", "units", "errors", "build"}
    bad = sorted(f"{_module(f)} imports {name}" for f in below for name in _imported(f) if _is_advisor(name))
    assert not bad, "modules below embadvisor.advisor must not import it:\n" + "\n".join(bad)


def test_the_walk_sees_lazy_and_relative_imports() -> None:
    """The checker itself: a lazy import in a function, a relative import and a lazily re-exported name."""
    source = ("def f():\n    from ..advisor import search\n    from embadvisor import recommend\n"
              "    import embadvisor.advisor.cli\n")
    names = _imported(PACKAGE / "vectors" / "probe.py", source)
    assert {"embadvisor.advisor", "embadvisor.advisor.search", "embadvisor.advisor.cli"} <= names
    assert "embadvisor.api" in names  # `recommend` is lazily re-exported from embadvisor.api
