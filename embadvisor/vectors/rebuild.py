"""Rebuild a compressed index from an exported configuration and the corpus."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from embadvisor.errors import DataError, InvalidConfigError
from embadvisor.methods import get_method
from embadvisor.methods._vectors import CompressedIndex, VectorConfig

__all__ = ["build_index", "vector_config"]


def vector_config(method: str, params: dict[str, Any] | None = None) -> VectorConfig:
    """The config of frozen-vector compressor ``method`` (refuses table methods with a hint)."""
    cls = get_method(method)
    if cls.tags.input != "vectors" or not issubclass(cls, VectorConfig):
        raise InvalidConfigError(f"`method` must be a frozen-vector compressor (embadvisor methods: input=vectors), "
                                 f"but got method={method!r}, which compresses embedding tables.")
    return cls.from_dict(params or {})


def build_index(config: str | Path | dict[str, Any], corpus: np.ndarray | str | Path) -> CompressedIndex:
    """The compressed index an exported vector config describes, fitted on ``corpus``.

    Args:
        config: a config written by ``embadvisor export`` (path or dict) for a ``--vectors`` study.
        corpus: the ``[n, d]`` corpus (array, or a .npy/.parquet file), the same vectors the
            study searched; cosine configs normalise it as the study did.

    Returns:
        The fitted index; its ``nbytes`` equals the config's ``memory.serve_bytes``.
    """
    from embadvisor.build import load_config
    from embadvisor.vectors.data import load_matrix, normalise

    cfg = load_config(config)
    plan = cfg["plan"]
    if cfg.get("input") != "vectors":
        raise InvalidConfigError("this config is for embedding tables, not a vector corpus; rebuild it with "
                                 "embadvisor.build_embedding(path).")
    x = load_matrix(corpus, "corpus vectors")[0] if isinstance(corpus, str | Path) else np.asarray(corpus, np.float32)
    shape = (int(plan["num_vectors"]), int(plan["dim"]))
    if x.ndim != 2 or tuple(x.shape) != shape:
        raise DataError(f"the corpus must have the shape the config was solved for, {shape}, but got "
                        f"{tuple(x.shape)}.")
    if plan.get("similarity", "dot") == "cosine":
        x = normalise(x, "the corpus")
    return vector_config(plan["name"], plan["params"]).fit(x)
