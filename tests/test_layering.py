"""Layering: no module below ``advisor/`` imports the advisor (docs/style.md, "Layering we want").

Every module under ``embadvisor/`` is parsed (nothing is imported); an import at any depth counts, lazy
ones inside functions included, and ``from embadvisor import name`` counts as an import of the module the
package's lazy map sends ``name`` to. Above the advisor sit only the top-level entry points: the Python
API (``api.py``), the package's lazy re-exports (``__init__.py``) and ``python -m embadvisor``.
"""

from __future__ import annotations

from import_graph import PACKAGE, imported, module_name

ADVISOR = "embadvisor.advisor"
#: the modules above the advisor (they may import it)
ABOVE = {"embadvisor", "embadvisor.api", "embadvisor.__main__"}


def _is_advisor(name: str) -> bool:
    return name == ADVISOR or name.startswith(ADVISOR + ".")


def test_no_module_below_the_advisor_imports_it() -> None:
    files = sorted(PACKAGE.rglob("*.py"))
    below = [f for f in files if not _is_advisor(module_name(f)) and module_name(f) not in ABOVE]
    assert {module_name(f).split(".")[1] for f in below} >= {"methods", "tasks", "data", "profiles", "vectors", "kernels",
                                                         "testing", "units", "errors", "build"}
    bad = sorted(f"{module_name(f)} imports {name}" for f in below for name in imported(f) if _is_advisor(name))
    assert not bad, "modules below embadvisor.advisor must not import it:\n" + "\n".join(bad)


def test_the_walk_sees_lazy_and_relative_imports() -> None:
    """The checker itself: a lazy import in a function, a relative import and a lazily re-exported name."""
    source = ("def f():\n    from ..advisor import search\n    from embadvisor import recommend\n"
              "    import embadvisor.advisor.cli\n")
    names = imported(PACKAGE / "vectors" / "probe.py", source)
    assert {"embadvisor.advisor", "embadvisor.advisor.search", "embadvisor.advisor.cli"} <= names
    assert "embadvisor.api" in names  # `recommend` is lazily re-exported from embadvisor.api
