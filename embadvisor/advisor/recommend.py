"""The advisor facade: workload + budget -> searched, ranked, explained recommendation.

:func:`run` is the one pipeline behind both inputs (trained embedding tables, :func:`recommend`; frozen
vector corpora, :func:`embadvisor.advisor.vector_search.recommend_vectors`): it checks feasibility
analytically, runs (or resumes) the Optuna study rung by rung, lets the input gather more evidence on
the finalists (tables: re-trained with fresh seeds), picks one, evaluates the test split once for that
pick, solves its configuration for the target and stores the :class:`Recommendation` on the study so
``embadvisor export`` can emit it later. What differs between the inputs is the
:class:`~embadvisor.advisor.core.Evaluator` they implement.
"""

from __future__ import annotations

import dataclasses
import platform
import time
from collections.abc import Callable
from typing import Any, TypedDict, Unpack

import optuna

from embadvisor.advisor import rank
from embadvisor.advisor.core import (
    Evaluator,
    Pick,
    default_study_name,
    heartbeat_enabled,
    make_study,
    run_study,
    trial_counts,
)
from embadvisor.advisor.distributed import check_parallel_storage, run_local_workers
from embadvisor.advisor.result import MetricSummary, Recommendation, jsonable
from embadvisor.advisor.resume import recover_abandoned
from embadvisor.advisor.search import Search, SearchSettings
from embadvisor.advisor.storage import default_storage, display_url, open_storage
from embadvisor.advisor.workloads import Workload
from embadvisor.errors import EmbAdvisorError
from embadvisor.units import format_size
from embadvisor.version import __version__

__all__ = ["CONFIG_VERSION", "RunOptions", "default_storage", "open_storage", "prepare_study", "recommend", "run"]

CONFIG_VERSION = 1


class RunOptions(TypedDict, total=False):
    """Where and how :func:`run` runs a study (every option may be left out).

    Keys:
        storage: Optuna storage URL (default: the local SQLite file).
        study_name: the study (default: derived from a hash of the study key).
        on_trial: called after every finished trial.
        on_phase: called with a line at every phase.
        store: an opened storage (else ``storage`` is opened).
        workers: local worker processes (> 1 needs a shareable storage and an input other processes can rebuild).
        heartbeat_s: heartbeat interval on database storages.
    """

    storage: str | None
    study_name: str | None
    on_trial: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None
    on_phase: Callable[[str], None] | None
    store: Any
    workers: int
    heartbeat_s: int | None


def recommend(workload: Workload, settings: SearchSettings, *, device: str = "cpu",
              **options: Unpack[RunOptions]) -> Recommendation:
    """Calibrate, search, re-train the finalists to convergence, rank and recommend (embedding tables).

    The recommendation (also stored on the study) reports the pick's validation metric as the mean and
    spread of its fresh-seed runs trained to convergence, with the samples and steps they trained; when a
    time limit stopped any of them before validation stopped improving, ``undertrained`` says so and by
    how much the metric was still rising.

    Time limit: ``settings.time_limit_s`` caps everything (calibration included). When it is None the
    limit is :data:`~embadvisor.advisor.search.BUILTIN_TIME_LIMIT_S` on a built-in workload and
    :data:`~embadvisor.advisor.search.ESTIMATE_SLACK` times the calibrated estimate on the user's data, so
    every feasible method is tried and the promising ones converge.

    ``workers > 1`` runs the trials in that many local worker processes on a shareable ``storage``
    (a journal file or a database URL); the torch threads are split between them. See :class:`RunOptions`.
    ``device`` is where this process trains (``cpu``, ``cuda``, ``cuda:N``, ``auto``); local workers on a
    machine with several GPUs take one GPU each.
    """
    return run(Search(workload, settings, device=device), **options)


def run(
    ev: Evaluator,
    *,
    storage: str | None = None,
    study_name: str | None = None,
    on_trial: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
    on_phase: Callable[[str], None] | None = None,
    store: Any = None,
    workers: int = 1,
    heartbeat_s: int | None = None,
) -> Recommendation:
    """The one search/recommend pipeline over any input (see the module docstring and :class:`RunOptions`)."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failures are user attrs, shown by history
    started = time.perf_counter()
    t_start = time.time()
    ev.check_feasible()
    key = ev.study_key()
    name = study_name or default_study_name(key)
    if workers > 1:
        check_parallel_storage(storage)
        if not ev.rebuildable:
            raise EmbAdvisorError("--workers needs a workload loaded from a file or a built-in default (it has no "
                                  "spec other processes can rebuild it from).")
    store = store if store is not None else open_storage(storage, heartbeat_s=heartbeat_s)
    study = make_study(ev, store, name, key)
    search_deadline, deadline_all = ev.start(study, on_phase=on_phase, started=started, t_start=t_start)
    study = prepare_study(ev, store, name, key, deadline=search_deadline)

    if on_phase:
        on_phase("search")
    if not heartbeat_enabled(study):
        recover_abandoned(study)  # SQLite / journal: RUNNING trials are from a killed process
    if workers > 1:
        assert storage is not None
        run_local_workers(study, storage, workers, threads=ev.worker_threads, heartbeat_s=heartbeat_s,
                          on_trial=on_trial, device=getattr(ev, "device", "cpu"))
    else:
        run_study(ev, study, on_trial=on_trial, deadline=search_deadline)
    cands = rank.top_candidates(study, ev.n_finalists)
    if not cands:
        counts = trial_counts(study)
        raise EmbAdvisorError(f"no trial of study {name!r} completed ({counts['failed']} failed, {counts['pruned']} "
                              "pruned); see `embadvisor history " + name + "` for the reasons.")
    ev.finalists(study, cands, deadline=deadline_all, on_phase=on_phase)
    win, eps, why = ev.choose(study, cands)
    pick = ev.pick(study, win, on_phase=on_phase)  # the test split, once, for the pick only
    if ev.full_fits:
        why = ev.full_note.format(format_size(ev.target_full)) + why
    metric = ev.metric
    proxy = ev.proxy
    rec = Recommendation(
        method=win.method, params=pick.plan.params(), budget_bytes=ev.s.budget_bytes, scope=ev.s.scope,
        serve_bytes=pick.serve_bytes, train_bytes=pick.train_bytes, full_bytes=ev.target_full, ratio=ev.ratio,
        metric=MetricSummary(name=metric, validation=win.mean, test=pick.test_all.get(metric) if pick.test_all else None,
                             validation_all=pick.validation_all, test_all=pick.test_all,
                             spread=win.spread if win.fresh else None, runs=len(win.fresh) or None),
        noise_epsilon=eps, explanation=why, full_fits=ev.full_fits, study=name,
        storage=display_url(storage or default_storage()) or "", trials=trial_counts(study),
        ranking=[c.to_dict() for c in cands], workload=ev.w.description, proxy=proxy,
        measured_on="proxy" if proxy else "target data",
        extrapolated=["serve_bytes", "train_bytes", "params"] if proxy else [],
        infeasible={m: p.min_budget_bytes for m, p in ev.plans.items() if not p.feasible},
        seconds=time.perf_counter() - started, **pick.extras)
    rec = dataclasses.replace(rec, config=export_config(ev, rec, win, pick))
    study.set_user_attr("recommendation", jsonable(rec.to_dict()))
    return rec


def prepare_study(search: Evaluator, store: Any, name: str, key: dict[str, Any], *,
                  deadline: float | None = None) -> optuna.Study:
    """Create or resume the study, store what workers elsewhere need to join it (``spec``, ``schedule``,
    ``deadline``), and enqueue each feasible method's default. Without ``deadline`` the settings'
    time limit counts from now."""
    settings = search.s
    study = make_study(search, store, name, key)
    if search.schedule is not None and not study.user_attrs.get("schedule"):
        study.set_user_attr("schedule", search.schedule.to_dict())
    spec = search.spec()
    if spec is not None:
        study.set_user_attr("spec", spec)
    if deadline is None and settings.time_limit_s:
        deadline = time.time() + settings.time_limit_s
    study.set_user_attr("deadline", deadline)
    search.enqueue_defaults(study)
    return study


def export_config(ev: Evaluator, rec: Recommendation, win: rank.Candidate, pick: Pick) -> dict[str, Any]:
    """The self-contained config ``embadvisor.build_embedding`` (or ``embadvisor.vectors.build_index``)
    rebuilds the pick from: what was searched, the input's entries (:meth:`Evaluator.config`) and provenance."""
    import numpy as np
    import torch

    data = ev.w.data
    head: dict[str, Any] = {"embadvisor_config": CONFIG_VERSION, "task": ev.w.task}
    if ev.input is not None:
        head["input"] = ev.input
    return head | {
        "target": ev.target_name, "method": win.method, "budget_bytes": rec.budget_bytes, "scope": rec.scope,
        **ev.config(rec, win, pick),
        "provenance": {
            "study": rec.study, "storage": rec.storage, "data": data.source, "data_fingerprint": data.fingerprint,
            "seed": ev.s.seed, "trial": win.trial,
            "versions": {"embadvisor": __version__, "torch": torch.__version__, "optuna": optuna.__version__,
                         "numpy": np.__version__, "python": platform.python_version()},
        },
    }
