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
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import TrialState

from embadvisor.advisor import rank
from embadvisor.advisor.distributed import check_parallel_storage, run_local_workers
from embadvisor.advisor.resume import recover_abandoned
from embadvisor.advisor.schedule import Calibration, Schedule, estimate_seconds, rung_of, schedule_from
from embadvisor.advisor.search import (
    Search,
    SearchSettings,
    default_study_name,
    heartbeat_enabled,
    make_study,
    run_study,
    study_key,
    trial_counts,
)
from embadvisor.advisor.storage import default_storage, display_url, open_storage
from embadvisor.advisor.workloads import Workload
from embadvisor.errors import EmbAdvisorError
from embadvisor.methods import get_method
from embadvisor.units import format_size
from embadvisor.version import __version__

__all__ = ["CONFIG_VERSION", "default_storage", "open_storage", "prepare_study", "recommend"]

CONFIG_VERSION = 1


def _stated_epsilon(task: str, best: float) -> float:
    return 0.001 if task == "ctr" else 0.01 * max(best, 1e-9)


#: default time limit of a recommendation on a built-in workload (seconds, calibration included): the
#: README's main job finishes within 5 minutes on 2 cores
BUILTIN_TIME_LIMIT_S = 270.0
#: default time limit on the user's data: this many times the calibrated estimate (methods slower than
#: the calibrated one need the slack); ``time_limit_s`` caps it
ESTIMATE_SLACK = 1.5
#: share of the time limit calibration may use at most (and at most CALIBRATION_MAX_S)
CALIBRATION_SHARE = 0.2
CALIBRATION_MAX_S = 600.0


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
    """Calibrate, search, re-train the finalists to convergence, rank and recommend.

    The recommendation (also stored on the study) reports the pick's validation metric as the mean and
    spread of its fresh-seed runs trained to convergence, with the samples and steps they trained; when a
    time limit stopped any of them before validation stopped improving, ``undertrained`` says so and by
    how much the metric was still rising.

    Time limit: ``settings.time_limit_s`` caps everything (calibration included). When it is None the
    limit is :data:`BUILTIN_TIME_LIMIT_S` on a built-in workload and :data:`ESTIMATE_SLACK` times the
    calibrated estimate on the user's data, so every feasible method is tried and the promising ones
    converge.

    ``workers > 1`` runs the trials in that many local worker processes on a shareable ``storage``
    (a journal file or a database URL); the torch threads are split between them.
    """
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failures are user attrs, shown by history
    started = time.perf_counter()
    t_start = time.time()
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
    study = make_study(search, store, name, key)
    full_fits = search.plans.get("full") is not None and search.plans["full"].feasible
    builtin = bool(workload.spec and workload.spec.get("kind") == "default")
    limit = settings.time_limit_s if settings.time_limit_s is not None else (
        BUILTIN_TIME_LIMIT_S if builtin else None)

    cal = study.user_attrs.get("calibration")
    if search.schedule is None:
        if study.user_attrs.get("schedule"):
            search.schedule = Schedule.from_dict(study.user_attrs["schedule"])
        else:
            if on_phase:
                on_phase("calibrating: training the simplest feasible method until validation stops improving")
            cap = CALIBRATION_MAX_S if limit is None else min(CALIBRATION_MAX_S, CALIBRATION_SHARE * limit)
            measured = search.calibrate(cap)
            cal = measured.to_dict()
            search.schedule = schedule_from(measured, settings.train.batch_size)
            study.set_user_attr("calibration", cal)
            study.set_user_attr("schedule", search.schedule.to_dict())
    sch = search.schedule
    assert sch is not None
    staged = sum(len(get_method(m).stages) > 1 for m in search.feasible) / max(1, len(search.feasible))
    estimate = None
    if cal:
        estimate = estimate_seconds(sch, Calibration(**cal), search.n_candidates, settings.retrain_top,
                                    settings.retrain_seeds, staged)
        if limit is None:
            limit = ESTIMATE_SLACK * estimate["total"] + (time.perf_counter() - started)
        study.set_user_attr("estimate", estimate)
    if on_phase and estimate is not None:
        on_phase(f"estimate: {_duration(estimate['total'])} at the calibrated speed "
                 f"({search.n_candidates} candidates, rungs of {', '.join(f'{r:,}' for r in sch.rungs)} samples; "
                 f"slower methods take longer); time limit {_duration(limit) if limit else 'none'}")
    deadline_all = None if limit is None else t_start + limit
    reserve = 0.0 if estimate is None or limit is None else min(0.5 * limit, estimate["finalists"])
    search_deadline = None if deadline_all is None else deadline_all - reserve
    study = prepare_study(search, store, name, key, deadline=search_deadline)

    if on_phase:
        on_phase("search")
    if not heartbeat_enabled(study):
        recover_abandoned(study)  # SQLite / journal: RUNNING trials are from a killed process
    if workers > 1:
        assert storage is not None
        run_local_workers(study, storage, workers, threads=settings.train.threads or 1, heartbeat_s=heartbeat_s,
                          on_trial=on_trial)
    else:
        run_study(search, study, on_trial=on_trial, deadline=search_deadline)
    cands = rank.top_candidates(study, settings.retrain_top)
    if not cands:
        counts = trial_counts(study)
        raise EmbAdvisorError(f"no trial of study {name!r} completed ({counts['failed']} failed, {counts['pruned']} "
                              "pruned); see `embadvisor history " + name + "` for the reasons.")
    if on_phase:
        on_phase(f"training the {len(cands)} finalists to convergence with {settings.retrain_seeds} fresh seeds")
    search.deadline = deadline_all
    reports: dict[str, Any] = {}
    metric = workload.data.metric
    runs_left = len(cands) * settings.retrain_seeds
    for c in cands:
        for j in range(settings.retrain_seeds):
            share = None if deadline_all is None else max(1.0, (deadline_all - time.time()) / runs_left)
            rep = search.retrain(c.method, c.use, c.fixed, seed=settings.seed + 1000 + j, lr=c.lr, time_cap_s=share)
            runs_left -= 1
            f = rep.fit
            c.fresh.append(float(f.validation[metric]))
            c.fresh_latency.append(f.latency_ms)
            c.fresh_runs.append({"seed": settings.seed + 1000 + j, "value": float(f.validation[metric]),
                                 "samples": f.samples, "steps": f.steps, "converged": f.converged,
                                 "stopped": f.stopped, "rise_last_quarter": f.rise,
                                 "curve": [[int(a), float(v)] for a, v in f.curve]})
            reports.setdefault(c.key, rep)
    best_value = max(c.mean for c in cands)
    win, eps, why = rank.choose(cands, settings.epsilon or _stated_epsilon(workload.task, best_value))
    # the test split, once, for the pick only
    rep = reports[win.key]
    test = rep.engine.evaluate(rep.model, "test") if rep.engine.has_split("test") else None
    target_plan = search.solve_target(win.method, win.use, win.fixed)
    counts = trial_counts(study)
    if full_fits:
        why = f"The uncompressed tables fit the budget ({format_size(search.target_full)}). " + why
    undertrained = undertrained_note(win)
    incomplete = search_note(search, study)
    evidence = {"trial": win.trial, "runs": len(win.fresh), "mean": win.mean, "spread": win.spread,
                "samples": [r["samples"] for r in win.fresh_runs], "steps": [r["steps"] for r in win.fresh_runs],
                "converged": win.converged}
    rec: dict[str, Any] = {
        "method": win.method,
        "params": target_plan.params(),
        "budget_bytes": settings.budget_bytes,
        "scope": settings.scope,
        "serve_bytes": target_plan.memory.serve_bytes,
        "train_bytes": target_plan.memory.train_bytes,
        "full_bytes": search.target_full,
        "ratio": search.ratio,
        "metric": {"name": metric, "validation": win.mean, "spread": win.spread, "runs": len(win.fresh),
                   "test": test.get(metric) if test else None,
                   "validation_all": rep.fit.validation, "test_all": test},
        "evidence": evidence,
        "undertrained": undertrained,
        "search_incomplete": incomplete,
        "noise_epsilon": eps,
        "explanation": why,
        "full_fits": full_fits,
        "study": name,
        "storage": display_url(storage or default_storage()),
        "trials": counts,
        "ranking": [c.to_dict() for c in cands],
        "workload": workload.description,
        "proxy": workload.proxy,
        "measured_on": "proxy" if workload.proxy else "target data",
        "extrapolated": (["serve_bytes", "train_bytes", "params"] if workload.proxy else []),
        "infeasible": {m: p.min_budget_bytes for m, p in search.plans.items() if not p.feasible},
        "calibration": cal,
        "schedule": sch.to_dict(),
        "estimate_seconds": estimate["total"] if estimate else None,
        "time_limit_s": limit,
        "seconds": time.perf_counter() - started,
        "config": export_config(workload, settings, target_plan, win, test, name, storage, undertrained),
    }
    study.set_user_attr("recommendation", _jsonable(rec))
    return rec


def undertrained_note(win: rank.Candidate) -> dict[str, Any] | None:
    """None when every fresh-seed run of the pick stopped because validation stopped improving; else how
    many a cap stopped first and how much the metric was still rising over their last quarter."""
    cut = [r for r in win.fresh_runs if not r["converged"]]
    if not cut:
        return None
    rises = [r["rise_last_quarter"] for r in cut if r.get("rise_last_quarter") is not None]
    rise = max(rises) if rises else None
    text = (f"{len(cut)} of the pick's {len(win.fresh_runs)} fresh-seed runs stopped on a cap ({cut[0]['stopped']}) "
            "before validation stopped improving")
    if rise is not None:
        text += f"; the metric rose {rise:+.4f} over the last quarter of training"
    return {"reason": text + ". Allow more time (--time-limit) for converged evidence.", "rise_last_quarter": rise,
            "runs_not_converged": len(cut)}


def search_note(search: Search, study: optuna.Study) -> str | None:
    """None when the search reached its last rung; else at what resource the candidates were compared."""
    assert search.schedule is not None
    reached = max((rung_of(t) for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE),
                  default=0)
    if reached >= search.schedule.last:
        return None
    return (f"the time limit stopped the search at rung {reached} of {search.schedule.last}: candidates were "
            f"compared after {search.schedule.rungs[reached]:,} training samples, not at convergence (the "
            "finalists were then trained to convergence)")


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.0f} s"


def prepare_study(search: Search, store: Any, name: str, key: dict[str, Any], *,
                  deadline: float | None = None) -> optuna.Study:
    """Create or resume the study, store what workers elsewhere need to join it (``spec``, ``schedule``,
    ``deadline``), and enqueue each feasible method's solver default. Without ``deadline`` the settings'
    time limit counts from now."""
    settings = search.s
    study = make_study(search, store, name, key)
    if search.schedule is not None and not study.user_attrs.get("schedule"):
        study.set_user_attr("schedule", search.schedule.to_dict())
    study.set_user_attr("spec", {"workload": search.w.spec, "settings": settings.to_dict()})
    if deadline is None and settings.time_limit_s:
        deadline = time.time() + settings.time_limit_s
    study.set_user_attr("deadline", deadline)
    search.enqueue_defaults(study)
    return study


def export_config(workload: Workload, settings: SearchSettings, plan: Any, win: rank.Candidate,
                  test: dict[str, float] | None, study: str, storage: str | None,
                  undertrained: dict[str, Any] | None = None) -> dict[str, Any]:
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
        "metrics": {"name": metric, "validation": win.mean, "spread": win.spread, "runs": len(win.fresh),
                    "samples": [r["samples"] for r in win.fresh_runs], "converged": win.converged,
                    "undertrained": (undertrained or {}).get("reason"),
                    "test": (test or {}).get(metric), "measured_on": "proxy" if workload.proxy else "target data"},
        "training": {"lr": win.lr, "batch_size": settings.train.batch_size, "optimizer": settings.train.optimizer},
        "plan": plan.to_dict(),
        "provenance": {
            "study": study, "storage": display_url(storage or default_storage()), "data": workload.data.source,
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
