"""Read and write workload profiles as human-editable TOML or as JSON (chosen by suffix)."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import tomllib

from embadvisor._checks import write_text
from embadvisor.data._text import check_file
from embadvisor.errors import DataError, InvalidConfigError
from embadvisor.profiles.schema import WorkloadProfile

__all__ = ["dumps_toml", "load_profile", "profile_from_text", "save_profile"]


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):  # JSON string escapes are valid TOML basic-string escapes; TOML also forbids DEL
        return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(k: str) -> str:
    return k if _BARE.match(k) else _toml_value(k)


def dumps_toml(data: dict[str, Any], *, header: str = "") -> str:
    """Write plain data (scalars, lists, tables, lists of tables two levels deep) as TOML."""
    lines = [f"# {h}" for h in header.splitlines()] if header else []

    def table(prefix: str, d: dict[str, Any]) -> None:
        nested: list[tuple[str, Any]] = []
        for k, v in d.items():
            if isinstance(v, dict):
                nested.append((k, v))
            elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
                nested.append((k, v))
            else:
                lines.append(f"{_key(k)} = {_toml_value(v)}")
        for k, v in nested:
            name = f"{prefix}.{_key(k)}" if prefix else _key(k)
            if isinstance(v, dict):
                lines.append("")
                lines.append(f"[{name}]")
                table(name, v)
            else:
                for item in v:
                    lines.append("")
                    lines.append(f"[[{name}]]")
                    table(name, item)

    table("", data)
    return "\n".join(lines) + "\n"


def save_profile(profile: WorkloadProfile, path: str | Path) -> Path:
    """Write ``profile`` to ``path`` (``.toml`` or ``.json``)."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        text = json.dumps(profile.to_dict(), indent=2) + "\n"
    elif path.suffix.lower() == ".toml":
        text = dumps_toml(profile.to_dict(), header="embadvisor workload profile (edit freely; validated on load)")
    else:
        raise InvalidConfigError(
            f"`output` must end in .toml or .json, but got output={str(path)!r}. "
            "Name the file profile.toml or profile.json."
        )
    return write_text(path, text)


#: nesting levels a profile file may have (it uses five: profile, fields, field, frequency, list)
MAX_DEPTH = 8


def _depth(data: Any) -> int:
    """Nesting depth of parsed JSON/TOML data, without recursion (validation and repr() recurse)."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        obj, level = stack.pop()
        if isinstance(obj, dict | list):
            deepest = max(deepest, level)
            if level <= MAX_DEPTH:
                stack.extend((v, level + 1) for v in (obj.values() if isinstance(obj, dict) else obj))
    return deepest


def _too_deep(origin: str) -> DataError:
    return DataError(f"{origin} nests lists or tables more than {MAX_DEPTH} levels deep (a profile has five). "
                     "Fix the file or regenerate it with `embadvisor profile DATA -o profile.toml`.")


def profile_from_text(text: str, *, fmt: str, origin: str = "profile") -> WorkloadProfile:
    """Parse TOML or JSON text into a validated profile."""
    try:
        data = json.loads(text) if fmt == "json" else tomllib.loads(text)
    except ValueError as e:  # JSONDecodeError, TOMLDecodeError, and integers of more than 4300 digits
        raise DataError(f"{origin} is not valid {fmt.upper()}: {e}. Fix the syntax or regenerate it with "
                        "`embadvisor profile DATA -o profile.toml`.") from None
    except RecursionError:  # e.g. [[[[...]]]] a thousand deep: the parsers recurse per level
        raise _too_deep(origin) from None
    if _depth(data) > MAX_DEPTH:
        raise _too_deep(origin)
    try:
        return WorkloadProfile.from_dict(data)
    except InvalidConfigError as e:
        raise InvalidConfigError(f"{origin}: {e} Fix that value in the file.") from None


def load_profile(path: str | Path) -> WorkloadProfile:
    """Read a profile from a ``.toml`` or ``.json`` file."""
    path = Path(path)
    if not os.path.lexists(path):
        raise DataError(f"profile file {str(path)!r} does not exist. Pass a path to a .toml/.json profile "
                        "or a preset name (see `embadvisor profiles`).")
    path = check_file(path, "profile")  # links, loops, devices such as /dev/null, empty files
    fmt = "json" if path.suffix.lower() == ".json" else "toml"
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"profile file {str(path)!r} is not UTF-8 text. Pass a .toml or .json profile.") from None
    return profile_from_text(text, fmt=fmt, origin=f"profile {str(path)!r}")
