"""Study history: a study's stored recommendation, the studies of a storage and a study's trials.

Writing, reading and rebuilding configs lives in :mod:`embadvisor.build` (below the advisor); its names
are re-exported here.

The storage is plain Optuna, so ``optuna studies --storage URL`` and ``optuna-dashboard URL`` work
on it too.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import TrialState

from embadvisor.advisor.result import Recommendation
from embadvisor.build import build_embedding, load_config, write_config
from embadvisor.errors import EmbAdvisorError, InvalidConfigError, UnknownNameError

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


def load_recommendation(name: str, storage: str | None) -> Recommendation:
    """The recommendation stored on study ``name`` (by this or an earlier version)."""
    study = _load_study(name, storage)
    rec = study.user_attrs.get("recommendation")
    if not rec:
        raise EmbAdvisorError(f"study {name!r} has no recommendation yet (it was interrupted before the pick). "
                              "Run the same `embadvisor recommend` command again to resume it.")
    return Recommendation.from_dict(rec)


def list_studies(storage: str | None) -> list[dict[str, Any]]:
    from embadvisor.advisor.storage import open_storage

    store = open_storage(storage)
    rows = []
    for s in optuna.get_all_study_summaries(store, include_best_trial=True):
        stored = s.user_attrs.get("recommendation")
        rec = Recommendation.from_dict(stored) if stored else None
        key = s.user_attrs.get("key") or {}
        rows.append({
            "study": s.study_name, "trials": s.n_trials,
            "best_value": s.best_trial.value if s.best_trial is not None else None,
            "task": key.get("task"), "target": key.get("target"), "budget_bytes": key.get("budget_bytes"),
            "scope": key.get("scope"), "recommended": rec.method if rec is not None else None,
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
