"""Many workers on one study: Optuna's standard distributed mode, no home-made coordination.

A study created by ``recommend`` stores everything a worker needs (``spec``: how to rebuild the
workload, the search settings; ``key``: the data fingerprint and budget), so a worker needs only
the storage URL and the study name::

    embadvisor worker --storage postgresql://user:pass@db/embadvisor --study NAME

Workers share the trial budget (a trial starts only while counted + running trials are fewer than
the study's ``trials``) and the time budget (the study's ``deadline``). On RDB storages
(PostgreSQL, MySQL) each worker sends heartbeats; a worker killed mid-trial has its trial failed
by the next worker that looks (``fail_stale_trials``) and re-run as a new trial (Optuna's
``RetryHeartbeatStaleTrialCallback``). SQLite is one process only; several processes on one
machine without a server use a journal file (a path ending in ``.log``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from embadvisor.advisor.core import StudyMismatch, make_study, run_study, trial_counts
from embadvisor.advisor.schedule import Schedule
from embadvisor.advisor.search import Search, SearchSettings, study_key
from embadvisor.advisor.storage import display_url
from embadvisor.advisor.workloads import cache_dir, workload_from_spec
from embadvisor.errors import DataError, EmbAdvisorError, InvalidConfigError, UnknownNameError, suggest

__all__ = ["DataMismatch", "check_parallel_storage", "load_study_spec", "run_worker", "run_local_workers"]


class DataMismatch(DataError):
    """A worker's data is not the data the study was created with."""


def check_parallel_storage(url: str | None) -> None:
    """Refuse storages that cannot take several processes (SQLite, the default)."""
    if url is None or url.startswith("sqlite"):
        raise InvalidConfigError(
            f"--workers needs a storage several processes can share, but the storage is "
            f"{display_url(url) or 'the default SQLite file'}: SQLite is for one process. Use --storage "
            "path/to/studies.log (a journal file, one machine) or --storage postgresql://user:pass@host/db "
            "(many machines)."
        )


def log_name(study: str) -> str:
    """A file name for ``study``'s worker logs that stays inside the logs folder: characters other than
    letters, digits, ``.``, ``_`` and ``-`` become ``_``, no leading dot, at most 80 characters, and a
    short hash of the name when it had to change (so distinct studies keep distinct logs)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", study).lstrip(".")[:80]
    if safe == study and safe:
        return safe
    return f"{safe or 'study'}-{hashlib.sha256(study.encode()).hexdigest()[:8]}"


def worker_device(device: str, i: int) -> str:
    """The device of local worker ``i``: ``cuda:{i mod GPUs}`` when ``device`` means CUDA without an index,
    else ``device`` itself."""
    from embadvisor.devices import resolve_device

    if device == "cpu" or ":" in device:
        return device
    resolved = resolve_device(device)
    if resolved.type != "cuda":
        return "cpu"
    import torch

    return f"cuda:{i % max(1, torch.cuda.device_count())}"


def load_study_spec(store: Any, name: str) -> tuple[optuna.Study, dict[str, Any]]:
    """The study and its stored spec; clear errors for an unknown or foreign study."""
    names = optuna.get_all_study_names(store)
    if name not in names:
        raise UnknownNameError(f"no study {name!r} in this storage (it has: {', '.join(names[:8]) or 'none'})."
                               f"{suggest(name, names)} Create it with `embadvisor recommend ... --storage URL "
                               "--study NAME` first.")
    study = optuna.load_study(study_name=name, storage=store)
    spec = study.user_attrs.get("spec")
    if not spec:
        raise InvalidConfigError(f"study {name!r} was not created by `embadvisor recommend` (it has no stored "
                                 "search spec), so a worker cannot join it.")
    return study, spec


def run_worker(
    store: Any,
    name: str,
    *,
    threads: int = 1,
    on_trial: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
    device: str = "cpu",
) -> dict[str, int]:
    """Join study ``name`` and run trials until its trial or time budget is reached; returns the counts.
    ``device`` is where this worker trains (its own machine's; not part of the study)."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failures are user attrs, shown by history
    _, spec = load_study_spec(store, name)
    settings = SearchSettings.from_dict(spec["settings"])
    settings = dataclasses.replace(settings, train=dataclasses.replace(settings.train, threads=threads))
    workload = workload_from_spec(spec["workload"])
    study0 = optuna.load_study(study_name=name, storage=store)
    stored = study0.user_attrs.get("key", {})
    if stored.get("data_fingerprint") != workload.data.fingerprint:
        raise DataMismatch(
            f"the data this worker loaded ({workload.data.source or workload.data.name}) has fingerprint "
            f"{workload.data.fingerprint}, but study {name!r} was created with data fingerprint "
            f"{stored.get('data_fingerprint')}. Give the worker the same data file the study was created with."
        )
    search = Search(workload, settings, device=device)
    key = study_key(workload, settings)
    try:
        study = make_study(search, store, name, key, sampler_seed=settings.seed * 7919 + os.getpid())
    except StudyMismatch as e:
        raise DataMismatch(f"this worker's setup does not match the study: {e}") from None
    if search.schedule is None:
        if not study.user_attrs.get("schedule"):
            raise InvalidConfigError(f"study {name!r} has no schedule yet (its calibration has not finished); "
                                     "start the worker again once `embadvisor recommend` prints its estimate.")
        search.schedule = Schedule.from_dict(study.user_attrs["schedule"])
    run_study(search, study, on_trial=on_trial, deadline=study.user_attrs.get("deadline"))
    return trial_counts(study)


def run_local_workers(
    study: optuna.Study,
    storage_url: str,
    workers: int,
    *,
    threads: int,
    heartbeat_s: int | None = None,
    on_trial: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
    poll_s: float = 1.0,
    device: str = "cpu",
) -> None:
    """Start ``workers`` worker processes on this machine (``threads`` torch threads in all, split between
    them) and wait for them, reporting finished trials through ``on_trial``. With ``device`` on CUDA
    (``cuda``, or ``auto`` on a machine with CUDA) and no GPU index given, worker ``i`` trains on GPU
    ``i mod (number of GPUs)``: one worker per GPU when ``workers`` equals the GPUs."""
    check_parallel_storage(storage_url)
    per = max(1, threads // workers)
    logs = cache_dir() / "workers"
    logs.mkdir(parents=True, exist_ok=True)
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    # the URL (password included) goes through the environment, not the command line other users can read
    env = dict(os.environ, OMP_NUM_THREADS=str(per), MKL_NUM_THREADS=str(per), EMBADVISOR_STORAGE=storage_url)
    for i in range(workers):
        log = logs / f"{log_name(study.study_name)}-{i}.log"
        cmd = [sys.executable, "-m", "embadvisor", "worker", "--study", study.study_name,
               "--threads", str(per), "--quiet", "--device", worker_device(device, i)]
        if heartbeat_s:
            cmd += ["--heartbeat", str(heartbeat_s)]
        with open(log, "wb") as fh:
            procs.append((subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env), log))
    seen: set[int] = set()
    try:
        while True:
            alive = [p for p, _ in procs if p.poll() is None]
            for t in study.get_trials(deepcopy=False):
                if t.state.is_finished() and t.number not in seen:
                    seen.add(t.number)
                    if on_trial:
                        on_trial(study, t)
            if not alive:
                break
            time.sleep(poll_s)
    except KeyboardInterrupt:
        for p, _ in procs:  # workers fail their current trial cleanly on SIGINT
            p.send_signal(2)
        for p, _ in procs:
            p.wait(timeout=60)
        raise
    bad = [(p.returncode, log) for p, log in procs if p.returncode != 0]
    if len(bad) == len(procs):
        code, log = bad[0]
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
        raise EmbAdvisorError(f"all {workers} workers failed (exit {code}): {tail[0] if tail else 'no output'} "
                              f"(logs in {logs}).")
