"""Configs and study history: export a recommendation, rebuild its module, list studies and trials.

The storage is plain Optuna, so ``optuna studies --storage URL`` and ``optuna-dashboard URL`` work
on it too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import tomllib
from optuna.trial import TrialState

from embadvisor.errors import DataError, EmbAdvisorError, InvalidConfigError, UnknownNameError

__all__ = ["build_embedding", "list_studies", "load_config", "load_recommendation", "study_trials", "write_config"]


def _load_study(name: str, storage: str | None) -> optuna.Study:
    from embadvisor.advisor.storage import open_storage

    store = open_storage(storage)
    names = [s.study_name for s in optuna.get_all_study_summaries(store, include_best_trial=False)]
    if name not in names:
        raise UnknownNameError(f"`study` must be one of the studies in this storage ({_study_listing(name, names)}), "
                               f"but got study={name!r}. List them with `embadvisor history`"
                               f"{'' if storage is None else ' and the same --storage'}.")
    return optuna.load_study(study_name=name, storage=store)


def _study_listing(name: str, names: list[str], *, show: int = 3) -> str:
    """A short account of the studies for an unknown-name error: all of a few, else the count and close matches."""
    import difflib

    if len(names) <= show:
        return ", ".join(names) or "none"
    close = difflib.get_close_matches(name, names, n=show)
    return f"{len(names)} studies" + (f"; closest: {', '.join(close)}" if close else "")


def load_recommendation(name: str, storage: str | None) -> dict[str, Any]:
    study = _load_study(name, storage)
    rec = study.user_attrs.get("recommendation")
    if not rec:
        raise EmbAdvisorError(f"study {name!r} has no recommendation yet (it was interrupted before the pick). "
                              "Run the same `embadvisor recommend` command again to resume it.")
    return dict(rec)


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


def list_studies(storage: str | None) -> list[dict[str, Any]]:
    from embadvisor.advisor.storage import open_storage

    store = open_storage(storage)
    rows = []
    for s in optuna.get_all_study_summaries(store, include_best_trial=True):
        rec = s.user_attrs.get("recommendation") or {}
        key = s.user_attrs.get("key") or {}
        rows.append({
            "study": s.study_name, "trials": s.n_trials,
            "best_value": s.best_trial.value if s.best_trial is not None else None,
            "task": key.get("task"), "target": key.get("target"), "budget_bytes": key.get("budget_bytes"),
            "scope": key.get("scope"), "recommended": rec.get("method"),
            "created": s.datetime_start.isoformat(timespec="seconds") if s.datetime_start else None,
        })
    return rows


_STATES = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "fail": TrialState.FAIL,
           "running": TrialState.RUNNING, "waiting": TrialState.WAITING}


def study_trials(name: str, storage: str | None, *, state: str | None = None,
                 method: str | None = None) -> list[dict[str, Any]]:
    if state is not None and state not in _STATES:
        raise InvalidConfigError(f"`state` must be one of {', '.join(_STATES)}, but got state={state!r}.")
    study = _load_study(name, storage)
    rows = []
    for t in study.trials:
        m = t.params.get("method") or t.user_attrs.get("method")
        if state is not None and t.state != _STATES[state]:
            continue
        if method is not None and m != method:
            continue
        rows.append({
            "number": t.number, "state": t.state.name.lower(), "method": m,
            "params": t.user_attrs.get("params") or {k: v for k, v in t.params.items() if k != "method"},
            "serve_bytes": t.user_attrs.get("serve_bytes"), "train_bytes": t.user_attrs.get("train_bytes"),
            "value": t.value, "validation": t.user_attrs.get("validation"),
            "duration_s": t.duration.total_seconds() if t.duration else None,
            "latency_ms": t.user_attrs.get("latency_ms"), "failure": t.user_attrs.get("failure"),
            "rung": t.user_attrs.get("rung", 0), "samples": t.user_attrs.get("samples"),
            "converged": t.user_attrs.get("converged"), "lr": t.user_attrs.get("lr"),
        })
    return rows
