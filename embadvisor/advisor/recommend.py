"""The advisor facade: workload + budget -> searched, ranked, explained recommendation.

``recommend(...)`` checks feasibility analytically, runs (or resumes) the Optuna study, re-trains
the best candidates with fresh seeds, picks one, evaluates the test split once for that pick,
solves its configuration for the target workload and stores the recommendation on the study so
``embadvisor export`` can emit it later.
"""

from __future__ import annotations

import math
import platform
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from embadvisor.advisor import rank
from embadvisor.advisor.distributed import check_parallel_storage, run_local_workers
from embadvisor.advisor.search import (
    Search,
    SearchSettings,
    default_study_name,
    heartbeat_enabled,
    make_study,
    recover_abandoned,
    run_study,
    study_key,
    trial_counts,
)
from embadvisor.advisor.workloads import Workload, cache_dir
from embadvisor.errors import EmbAdvisorError
from embadvisor.units import format_size
from embadvisor.version import __version__

__all__ = ["CONFIG_VERSION", "default_storage", "open_storage", "prepare_study", "recommend"]

CONFIG_VERSION = 1


def default_storage() -> str:
    """``sqlite:///$EMBADVISOR_HOME/studies.db`` (``~/.embadvisor/studies.db`` by default)."""
    return f"sqlite:///{cache_dir() / 'studies.db'}"


#: heartbeat interval of RDB storages (PostgreSQL, MySQL) in seconds; a trial whose worker sent none
#: for 3 intervals is failed and re-run by another worker
HEARTBEAT_S = 10


def open_storage(url: str | None, *, heartbeat_s: int | None = None) -> Any:
    """An Optuna storage for ``url`` (SQLite/PostgreSQL/MySQL URL, or a journal ``.log`` file).

    Server-backed RDB storages get heartbeats and Optuna's stale-trial retry callback, so trials of
    workers that die are failed and re-run.
    """
    url = url or default_storage()
    try:
        if url.endswith((".log", ".journal")) and "://" not in url:
            from optuna.storages import JournalStorage
            from optuna.storages.journal import JournalFileBackend

            Path(url).parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(url))
        if url.startswith("sqlite:///"):
            Path(url[len("sqlite:///"):]).expanduser().parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.RDBStorage(url)
        hb = heartbeat_s or HEARTBEAT_S
        with warnings.catch_warnings():  # heartbeats are flagged experimental; Optuna's documented way
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url, engine_kwargs={"pool_pre_ping": True}, heartbeat_interval=hb, grace_period=3 * hb,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3),
            )
    except Exception as e:  # sqlalchemy / driver errors: one clear line
        raise EmbAdvisorError(
            f"cannot open storage {url!r}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}. "
            "Use sqlite:///path/to/studies.db, a journal file path ending in .log, or a reachable "
            "postgresql://user:pass@host/db URL."
        ) from None


def _stated_epsilon(task: str, best: float) -> float:
    return 0.001 if task == "ctr" else 0.01 * max(best, 1e-9)


def recommend(
    workload: Workload,
    settings: SearchSettings,
    *,
    storage: str | None = None,
    study_name: str | None = None,
    on_trial: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
    on_phase: Callable[[str], None] | None = None,
    store: Any = None,
    workers: int = 1,
    heartbeat_s: int | None = None,
) -> dict[str, Any]:
    """Search, rank and recommend; returns the recommendation (also stored on the study).

    ``workers > 1`` runs the trials in that many local worker processes on a shareable ``storage``
    (a journal file or a database URL); the torch threads are split between them.
    """
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failures are user attrs, shown by history
    started = time.perf_counter()
    search = Search(workload, settings)
    search.check_feasible()
    key = study_key(workload, settings)
    name = study_name or default_study_name(key)
    if workers > 1:
        check_parallel_storage(storage)
        if workload.spec is None:
            raise EmbAdvisorError("--workers needs a workload loaded from a file or a built-in default (it has no "
                                  "spec other processes can rebuild it from).")
    store = store if store is not None else open_storage(storage, heartbeat_s=heartbeat_s)
    study = prepare_study(search, store, name, key)
    full_fits = search.plans.get("full") is not None and search.plans["full"].feasible

    if on_phase:
        on_phase("search")
    if not heartbeat_enabled(study):
        recover_abandoned(study)  # SQLite / journal: RUNNING trials are from a killed process
    if workers > 1:
        assert storage is not None
        run_local_workers(study, storage, workers, threads=settings.train.threads or 1, heartbeat_s=heartbeat_s,
                          on_trial=on_trial)
    else:
        run_study(search, study, on_trial=on_trial, deadline=study.user_attrs.get("deadline"))
    cands = rank.top_candidates(study, settings.retrain_top)
    if not cands:
        counts = trial_counts(study)
        raise EmbAdvisorError(f"no trial of study {name!r} completed ({counts['failed']} failed, {counts['pruned']} "
                              "pruned); see `embadvisor history " + name + "` for the reasons.")
    if on_phase:
        on_phase("re-training the best candidates with fresh seeds")
    reports: dict[str, Any] = {}
    for c in cands:
        for j in range(settings.retrain_seeds):
            rep = search.retrain(c.method, c.use, c.fixed, seed=settings.seed + 1000 + j)
            c.fresh.append(float(rep.fit.validation[workload.data.metric]))
            c.fresh_latency.append(rep.fit.latency_ms)
            reports.setdefault(c.key, rep)
    best_value = max(c.mean for c in cands)
    win, eps, why = rank.choose(cands, settings.epsilon or _stated_epsilon(workload.task, best_value))
    # the test split, once, for the pick only
    rep = reports[win.key]
    test = rep.engine.evaluate(rep.model, "test") if rep.engine.has_split("test") else None
    target_plan = search.solve_target(win.method, win.use, win.fixed)
    metric = workload.data.metric
    counts = trial_counts(study)
    if full_fits:
        why = f"The uncompressed tables fit the budget ({format_size(search.target_full)}). " + why
    rec: dict[str, Any] = {
        "method": win.method,
        "params": target_plan.params(),
        "budget_bytes": settings.budget_bytes,
        "scope": settings.scope,
        "serve_bytes": target_plan.memory.serve_bytes,
        "train_bytes": target_plan.memory.train_bytes,
        "full_bytes": search.target_full,
        "ratio": search.ratio,
        "metric": {"name": metric, "validation": win.mean, "test": test.get(metric) if test else None,
                   "validation_all": rep.fit.validation, "test_all": test},
        "noise_epsilon": eps,
        "explanation": why,
        "full_fits": full_fits,
        "study": name,
        "storage": storage or default_storage(),
        "trials": counts,
        "ranking": [c.to_dict() for c in cands],
        "workload": workload.description,
        "proxy": workload.proxy,
        "measured_on": "proxy" if workload.proxy else "target data",
        "extrapolated": (["serve_bytes", "train_bytes", "params"] if workload.proxy else []),
        "infeasible": {m: p.min_budget_bytes for m, p in search.plans.items() if not p.feasible},
        "seconds": time.perf_counter() - started,
        "config": export_config(workload, settings, target_plan, win, test, name, storage),
    }
    study.set_user_attr("recommendation", _jsonable(rec))
    return rec


def prepare_study(search: Search, store: Any, name: str, key: dict[str, Any]) -> optuna.Study:
    """Create or resume the study, store what workers elsewhere need to join it (``spec``, ``deadline``),
    and enqueue each feasible method's solver default."""
    settings = search.s
    study = make_study(search, store, name, key)
    study.set_user_attr("spec", {"workload": search.w.spec, "settings": settings.to_dict()})
    study.set_user_attr("deadline", time.time() + settings.time_limit_s if settings.time_limit_s else None)
    search.enqueue_defaults(study)
    return study


def export_config(workload: Workload, settings: SearchSettings, plan: Any, win: rank.Candidate,
                  test: dict[str, float] | None, study: str, storage: str | None) -> dict[str, Any]:
    """The self-contained config ``embadvisor.build_embedding`` rebuilds the module from."""
    import torch

    metric = workload.data.metric
    return {
        "embadvisor_config": CONFIG_VERSION,
        "task": workload.task,
        "target": workload.target.name,
        "method": win.method,
        "budget_bytes": settings.budget_bytes,
        "scope": settings.scope,
        "memory": {"serve_bytes": plan.memory.serve_bytes, "train_bytes": plan.memory.train_bytes,
                   "full_bytes": plan.full_bytes, "breakdown": dict(plan.memory.breakdown)},
        "metrics": {"name": metric, "validation": win.mean, "test": (test or {}).get(metric),
                    "measured_on": "proxy" if workload.proxy else "target data"},
        "plan": plan.to_dict(),
        "provenance": {
            "study": study, "storage": storage or default_storage(), "data": workload.data.source,
            "data_fingerprint": workload.data.fingerprint, "seed": settings.seed, "trial": win.trial,
            "versions": {"embadvisor": __version__, "torch": torch.__version__, "optuna": optuna.__version__,
                         "python": platform.python_version()},
        },
    }


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
