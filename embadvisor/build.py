"""Exported configurations: write and read them, and rebuild the module one describes.

A config (written by ``embadvisor export`` or ``recommend --output``, TOML or JSON) is self-contained:
:func:`build_embedding` rebuilds the embedding tables from it, and
:func:`embadvisor.vectors.build_index` the compressed index of a ``--vectors`` config. This module sits
below the advisor (it needs only the method registry), so the vectors package and user code can use it
without importing the search.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import tomllib

from embadvisor.errors import DataError, InvalidConfigError

__all__ = ["build_embedding", "load_config", "write_config"]


def write_config(config: dict[str, Any], path: str | Path) -> Path:
    from embadvisor.profiles.io import dumps_toml

    path = Path(path)
    if path.suffix.lower() == ".json":
        text = json.dumps(config, indent=2) + "\n"
    elif path.suffix.lower() == ".toml":
        text = dumps_toml(_toml_safe(config), header="embadvisor configuration: rebuild with "
                          "embadvisor.build_embedding(path)")
    else:
        raise InvalidConfigError(f"`output` must end in .toml or .json, but got output={str(path)!r}.")
    from embadvisor._checks import write_text

    return write_text(path, text)


def _toml_safe(obj: Any) -> Any:
    """TOML has no null and no mixed arrays of tables and scalars: drop None, stringify odd keys."""
    if isinstance(obj, dict):
        return {str(k): _toml_safe(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list | tuple):
        return [_toml_safe(v) for v in obj if v is not None]
    return obj


def load_config(path_or_dict: str | Path | dict[str, Any]) -> dict[str, Any]:
    if isinstance(path_or_dict, dict):
        return path_or_dict
    path = Path(path_or_dict)
    if not path.is_file():
        raise DataError(f"config file {str(path)!r} does not exist. Export one with `embadvisor export STUDY -o "
                        "config.toml`.")
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise DataError(f"config file {str(path)!r} is not valid: {e}.") from None
    if "plan" not in data:
        raise InvalidConfigError(f"config file {str(path)!r} has no `plan` table; it is not an embadvisor config.")
    return data


def build_embedding(config: str | Path | dict[str, Any], *, device: Any = None) -> Any:
    """The ready ``nn.Module`` (an EmbeddingCollection) for the config's target workload.

    Its measured bytes equal the config's ``memory.serve_bytes`` (training form; for methods whose
    serving form differs, call ``.export()`` after training).
    """
    from embadvisor.methods import build_collection
    from embadvisor.methods._solver import Plan

    cfg = load_config(config)
    if cfg.get("input") == "vectors":
        raise InvalidConfigError("this config describes a compressed vector corpus; rebuild it with "
                                 "embadvisor.vectors.build_index(config, corpus).")
    return build_collection(Plan.from_dict(cfg["plan"]), device=device)
