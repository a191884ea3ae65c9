"""The Python API: :func:`recommend` and :func:`train`, with the same behaviour and defaults as the CLI.

The CLI commands of the same names only parse their strings and call these functions, so::

    embadvisor recommend --budget 12.5% --task ctr --data clicks.parquet --label click

and ::

    import embadvisor
    rec = embadvisor.recommend(budget="12.5%", task="ctr", data="clicks.parquet", label="click")

run the same search, under the same study name (derived from the same study key).

A budget is a byte size (``64MB``, ``1.5GiB``, an int of bytes) or a share of the full tables
(``"12.5%"``): the bytes the uncompressed tables of the target take in the budget's scope, at the
task's embedding dim, times the share.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embadvisor.advisor.result import Recommendation
from embadvisor.advisor.search import SearchSettings, full_bytes
from embadvisor.defaults import DEFAULT_LR, DEFAULT_PATIENCE, DEFAULT_THREADS
from embadvisor.errors import InvalidConfigError
from embadvisor.units import Budget, parse_budget, parse_duration

__all__ = ["RecommendJob", "prepare_recommend", "recommend", "resolve_budget", "train"]

TASKS = ("ctr", "retrieval")
SCOPES = ("serve", "train")


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise InvalidConfigError(f"`{name}` must be one of {', '.join(choices)}, but got {name}={value!r}.")


def _seconds(value: str | float | None, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        return parse_duration(value)
    if not value > 0:
        raise InvalidConfigError(f"`{name}` must be a positive number of seconds, but got {name}={value!r}.")
    return float(value)


def _names(value: str | Sequence[str] | None) -> list[str] | None:
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    out = [str(x).strip() for x in items if str(x).strip()]
    return out or None


def _rungs(value: str | Sequence[int] | None) -> list[int] | None:
    if value is None:
        return None
    try:
        out = [int(float(x)) for x in value.split(",") if x.strip()] if isinstance(value, str) else [int(x) for x in value]
    except (ValueError, OverflowError, TypeError):
        raise InvalidConfigError(f"`rungs` must be sample counts such as 20000,60000, but got rungs={value!r}.") from None
    return out


def resolve_budget(budget: str | int | float | Budget, tables: list[Any], scope: str, optimizer: str = "adam") -> int:
    """``budget`` in bytes; a share (``"12.5%"``) is a share of ``tables``' full bytes in ``scope``."""
    b = parse_budget(budget)
    return b.resolve(full_bytes(tables, scope, optimizer)) if b.share is not None else b.resolve(0)


@dataclass
class RecommendJob:
    """A checked recommendation, ready to run: the workload, the settings and the opened storage
    (:func:`prepare_recommend` builds it; :meth:`run` searches)."""

    workload: Any
    settings: SearchSettings
    store: Any
    budget: Budget
    storage: str | None = None
    study: str | None = None
    workers: int = 1
    heartbeat: int | None = None
    output: Path | None = None
    device: str = "cpu"

    def run(self, *, on_trial: Callable[..., None] | None = None,
            on_phase: Callable[[str], None] | None = None) -> Recommendation:
        """Search, rank and recommend (see :func:`recommend`)."""
        from embadvisor.advisor.recommend import recommend as run_recommend

        rec = run_recommend(self.workload, self.settings, storage=self.storage, study_name=self.study,
                            on_trial=on_trial, on_phase=on_phase, store=self.store, workers=self.workers,
                            heartbeat_s=self.heartbeat, device=self.device)
        rec = dataclasses.replace(rec, budget=str(self.budget))
        if self.output is not None:
            from embadvisor.build import write_config

            write_config(rec.config, self.output)
        return rec


def prepare_recommend(
    budget: str | int | float | Budget,
    *,
    task: str = "ctr",
    data: str | Path | None = None,
    profile: Any = None,
    scope: str = "serve",
    fmt: str | None = None,
    label: str | None = None,
    fields: str | Sequence[str] | None = None,
    model: str = "dlrm",
    methods: str | Sequence[str] | None = None,
    trials: int | None = None,
    rungs: str | Sequence[int] | None = None,
    time_limit: str | float | None = None,
    storage: str | None = None,
    study: str | None = None,
    batch_size: int | None = None,
    lr: float = DEFAULT_LR,
    threads: int = DEFAULT_THREADS,
    seed: int = 0,
    workers: int = 1,
    heartbeat: int | None = None,
    output: str | Path | None = None,
    device: str = "auto",
    on_phase: Callable[[str], None] | None = None,
) -> RecommendJob:
    """Every check of :func:`recommend` on its inputs (before any data is read), then the workload and the
    settings: what :func:`recommend` runs. Same arguments as :func:`recommend`."""
    from embadvisor._checks import check_output_path, check_seed, check_threads, check_workers
    from embadvisor.advisor.storage import check_storage_url, open_storage
    from embadvisor.advisor.workloads import check_data_options, load_workload
    from embadvisor.methods import get_method
    from embadvisor.tasks.api import check_model

    _check_choice("task", task, TASKS)
    _check_choice("scope", scope, SCOPES)
    parsed = parse_budget(budget)
    out = None
    if output is not None:
        out = Path(output)
        if out.suffix.lower() not in (".toml", ".json"):
            raise InvalidConfigError(f"`output` must end in .toml or .json, but got output={str(out)!r}.")
        check_output_path(out)
    check_seed(seed)
    check_storage_url(storage)
    check_workers(workers)
    if threads is not None:
        check_threads(threads)
    check_model(task, model)
    limit = _seconds(time_limit, "time_limit")
    method_list = _names(methods)
    for m in method_list or ():
        get_method(m)
    rung_list = _rungs(rungs)
    from embadvisor.devices import resolve_device

    dev = str(resolve_device(device))  # `cuda` on a machine without CUDA is refused here
    if workers > 1:
        from embadvisor.advisor.distributed import check_parallel_storage

        check_parallel_storage(storage)
    store = open_storage(storage, heartbeat_s=heartbeat)  # fail fast, before any data is prepared
    target = None
    if profile is not None:
        from embadvisor.profiles import WorkloadProfile, resolve_profile

        target = profile if isinstance(profile, WorkloadProfile) else resolve_profile(str(profile))
    check_data_options(data, fmt=fmt, label=label, fields=fields)  # before the built-in workload is prepared
    if data is None and target is None and on_phase:
        on_phase(f"preparing the built-in {task} workload")
    workload = load_workload(task, data, target, fmt=fmt, label=label, fields=_names(fields), seed=seed)
    nbytes = resolve_budget(parsed, workload.target.tables(), scope)
    settings = SearchSettings.for_task(
        task, nbytes, num_train=workload.data.num_train, batch_size=batch_size, lr=lr, threads=threads, seed=seed,
        rungs=rung_list, scope=scope, model=model, methods=tuple(method_list) if method_list else None,
        trials=trials, time_limit_s=limit)
    return RecommendJob(workload, settings, store, parsed, storage, study, workers, heartbeat, out, dev)


def recommend(
    budget: str | int | float | Budget,
    *,
    on_trial: Callable[..., None] | None = None,
    on_phase: Callable[[str], None] | None = None,
    **options: Any,
) -> Recommendation:
    """Search the compression methods that fit ``budget`` on the task's data, rank them and recommend one.

    Exactly what ``embadvisor recommend`` does (see the README). Options, with the CLI's defaults:
    ``task`` (``"ctr"``), ``data`` (None: the task's built-in workload), ``profile`` (a preset name, a
    profile file or a :class:`~embadvisor.profiles.WorkloadProfile`: the target the budget applies to;
    ``data`` is what is trained), ``scope`` (``"serve"``), ``fmt``, ``label``, ``fields``, ``model``
    (``"dlrm"``), ``methods``, ``trials``, ``rungs``, ``time_limit`` (seconds or ``"10m"``), ``storage``,
    ``study``, ``batch_size``, ``lr``, ``threads``, ``seed``, ``workers``, ``heartbeat``, ``device``
    (``"auto"``: CUDA when available) and ``output`` (writes the config, ``.toml`` or ``.json``). Every check on the inputs runs before any data is read
    or any search starts (:func:`prepare_recommend`). Returns the
    :class:`~embadvisor.advisor.result.Recommendation` (also stored on the study; it reads as a mapping of
    its ``to_dict()`` form too); ``on_trial``/``on_phase`` report progress.
    """
    return prepare_recommend(budget, on_phase=on_phase, **options).run(on_trial=on_trial, on_phase=on_phase)


def train(
    data: str | Path,
    *,
    task: str = "ctr",
    method: str = "full",
    budget: str | int | float | Budget | None = None,
    scope: str = "serve",
    fmt: str | None = None,
    label: str | None = None,
    fields: str | Sequence[str] | None = None,
    protocol: str | None = None,
    test: str | Path | None = None,
    model: str = "dlrm",
    dim: int | None = None,
    epochs: float | None = None,
    patience: int = DEFAULT_PATIENCE,
    batch_size: int | None = None,
    lr: float = DEFAULT_LR,
    optimizer: str = "adam",
    time_limit: str | float | None = None,
    threads: int = DEFAULT_THREADS,
    seed: int = 0,
    device: str = "auto",
) -> Any:
    """Train one method on one dataset to convergence and report validation and test metrics: exactly what
    ``embadvisor train`` does. ``budget`` defaults to
    :data:`~embadvisor.tasks.api.DEFAULT_RATIO` (25%) of the full tables (``full`` ignores it); ``epochs`` is a cap (default 100), early stopping on validation ends sooner.
    ``device``: ``auto`` (CUDA when available, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``; checked before
    any data is read (:func:`embadvisor.devices.resolve_device`, which also says what a seed guarantees
    per device).
    Returns a :class:`~embadvisor.tasks.api.TrainReport` (its ``extra["warnings"]`` lists what the CLI
    prints as warnings)."""
    from embadvisor._checks import check_seed, check_threads
    from embadvisor.devices import resolve_device
    from embadvisor.methods import get_method
    from embadvisor.tasks.api import DEFAULT_DIM, check_model, convergence_config
    from embadvisor.tasks.api import train as train_task
    from embadvisor.tasks.datasets import load_task_data

    _check_choice("task", task, TASKS)
    _check_choice("scope", scope, SCOPES)
    get_method(method)
    check_model(task, model)
    check_seed(seed)
    if threads is not None:
        check_threads(threads)
    parsed = parse_budget(budget) if budget is not None else None
    if epochs is not None and not (math.isfinite(epochs) and epochs > 0):
        raise InvalidConfigError(f"`epochs` must be a finite number > 0, but got epochs={epochs!r}. Pass e.g. "
                                 "--epochs 10, or leave it out to train until validation stops improving.")
    limit = _seconds(time_limit, "time_limit")
    dev = resolve_device(device)
    td = load_task_data(task, data, fmt=fmt, label=label, fields=_names(fields), protocol=protocol, test_path=test,
                        seed=seed)
    dim = dim or DEFAULT_DIM[task]
    nbytes = None if parsed is None else resolve_budget(parsed, td.tables(dim), scope, optimizer)
    cfg = convergence_config(
        td, optimizer=optimizer, lr=lr, batch_size=batch_size, seed=seed, threads=threads, patience=patience,
        max_samples=None if epochs is None else max(1, round(min(epochs * td.num_train, 2.0**62))),
        time_budget_s=limit)
    return train_task(td, method, budget_bytes=nbytes, scope=scope, model=model, dim=dim, config=cfg, seed=seed,
                      device=dev)
