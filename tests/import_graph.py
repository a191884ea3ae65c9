"""What a module of ``embadvisor`` imports, read from its source (nothing is imported): for layering tests."""

from __future__ import annotations

import ast
from pathlib import Path

import embadvisor

PACKAGE = Path(embadvisor.__file__).parent


def module_name(path: Path) -> str:
    """The dotted name of the module at ``path`` (a file under ``embadvisor/``)."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, source: str | None = None) -> set[str]:
    """Every module ``path`` (or ``source`` standing at ``path``) imports, at any depth (lazy imports inside
    functions too), relative imports resolved. ``from a import b`` counts as ``a.b`` too, and a name of
    ``embadvisor``'s lazy map (``from embadvisor import recommend``) as the module it is re-exported from;
    a string naming an advisor module (``importlib.import_module("embadvisor.advisor...")``) counts as well."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
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
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith(
                "embadvisor.advisor"):
            names.add(node.value)
    lazy = getattr(embadvisor, "_LAZY", {})
    return names | {lazy[n.rpartition(".")[2]] for n in names
                    if n.rpartition(".")[0] == "embadvisor" and n.rpartition(".")[2] in lazy}
