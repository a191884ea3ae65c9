"""Memory-quality frontier across budgets: one pruned single-objective study per budget.

Optuna cannot prune multi-objective studies (``Trial.report`` raises there), so the frontier is
built from one ordinary ``recommend()`` per budget, all on the same workload, which is loaded (and,
for the built-in workloads, generated) once. Each budget gets its own study (resumable like any
``recommend`` study); budgets below every method's minimum become infeasible rows instead of
aborting the run, and only when no budget fits at all is that an error.

The result lists, per budget, the chosen method, its serving and training bytes on the target
workload, its validation metric (the fresh-seed mean the advisor ranked by) and its test metric
(evaluated once, for the pick). Rows that are not dominated (no smaller budget's pick has at least
as good a validation metric with no more serving bytes) form the frontier; the knee is the
frontier point farthest above the chord joining its end points in (log10 serving bytes, metric)
space (see :mod:`embadvisor.advisor.frontier`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from embadvisor.advisor.frontier import knee, pareto_frontier
from embadvisor.errors import InfeasibleError, InvalidConfigError
from embadvisor.units import Budget, format_size, parse_budget

__all__ = ["build_workload", "parse_budgets", "run_pareto"]


def parse_budget_items(text: str) -> list[Budget]:
    """Comma-separated budgets (byte sizes or shares of the full tables such as ``10%``), checked.

    Example:
        >>> [str(b) for b in parse_budget_items("32MB, 10%")]
        ['30.5 MiB', '10%']
    """
    items = [s.strip() for s in str(text).split(",")]
    if not any(items):
        raise InvalidConfigError(f"`budgets` must be a comma-separated list of sizes such as 8MB,32MB,128MB or shares "
                                 f"such as 50%,10%,1%, but got budgets={text!r}.")
    out: list[Budget] = []
    for i, item in enumerate(items, 1):
        if not item:
            raise InvalidConfigError(f"`budgets` must not contain empty items, but got budgets={text!r} "
                                     f"(item {i} is empty).")
        try:
            out.append(parse_budget(item, name="budget"))
        except InvalidConfigError as e:
            raise InvalidConfigError(f"`budgets` item {i} of {len(items)} is not a byte size or a share: {e}") from None
    return out


def parse_budgets(text: str, full_bytes: int | None = None) -> list[int]:
    """Comma-separated budgets -> distinct budgets in bytes, ascending; shares (``10%``) are shares of
    ``full_bytes``, the full tables' bytes in the budgets' scope.

    Example:
        >>> parse_budgets("32MB, 8MB,128MB")
        [8000000, 32000000, 128000000]
        >>> parse_budgets("50%,10%", full_bytes=1_000_000)
        [100000, 500000]
    """
    out: list[int] = []
    for item in parse_budget_items(text):
        if item.share is not None and full_bytes is None:
            raise InvalidConfigError(f"`budgets` item {str(item)!r} is a share of the full tables, and their size "
                                     "is not known here: pass byte sizes, or give the full tables' bytes.")
        nbytes = item.resolve(full_bytes or 0)
        if nbytes in out:
            raise InvalidConfigError(f"`budgets` must be distinct, but {str(item)!r} repeats an earlier budget "
                                     f"({format_size(nbytes)}) in budgets={text!r}.")
        out.append(nbytes)
    return sorted(out)


def build_workload(task: str, *, data: Path | None = None, profile_spec: str | None = None, fmt: str | None = None,
                   label: str | None = None, fields: str | None = None, seed: int = 0,
                   on_progress: Callable[[str], None] | None = None) -> Any:
    """The workload as ``embadvisor recommend`` builds it from the same options (loaded once)."""
    from embadvisor.advisor.workloads import check_data_options, load_workload

    if task not in ("ctr", "retrieval"):
        raise InvalidConfigError(f"`task` must be 'ctr' or 'retrieval', but got task={task!r}.")
    target = None
    if profile_spec is not None:
        from embadvisor.profiles import resolve_profile

        target = resolve_profile(profile_spec)
    check_data_options(data, fmt=fmt, label=label, fields=fields)  # before the built-in workload is prepared
    if data is None and target is None and on_progress:
        on_progress(f"preparing the built-in {task} workload...")
    field_list = [f.strip() for f in fields.split(",") if f.strip()] if fields else None
    return load_workload(task, data, target, fmt=fmt, label=label, fields=field_list, seed=seed)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def run_pareto(
    workload: Any,
    settings: Any,
    budgets: list[int],
    *,
    storage: str | None = None,
    study_prefix: str | None = None,
    store: Any = None,
    on_budget: Callable[[int, int], Any] | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """One ``recommend()`` per budget on ``workload`` (training on ``device``); rows, frontier and knee.

    Args:
        workload: the workload (see :func:`build_workload`), shared by every budget.
        settings: a :class:`~embadvisor.advisor.search.SearchSettings`; its ``budget_bytes`` is
            replaced by each budget in turn.
        budgets: budgets in bytes (ascending, e.g. from :func:`parse_budgets`).
        storage: Optuna storage URL (default: the local SQLite file).
        study_prefix: study names become ``<prefix>-<budget>``; default: derived from the inputs.
        store: an opened storage (overrides ``storage``).
        on_budget: called as ``on_budget(index, budget)`` before each feasible budget's search; may
            return a context manager with ``on_trial``/``on_phase`` methods (a progress display).

    Returns:
        ``{"rows": [...], "knee": row | None, "knee_note": why there is none, "metric": name, "task": task,
        "workload": description, "scope": scope}``; each row has the budget, ``feasible``, the chosen
        method, its params, serving/training bytes, validation and test metric, study, trial counts,
        ``on_frontier`` and ``knee`` (infeasible rows: ``reason`` and ``min_budget_bytes``).

    Raises:
        InfeasibleError: when no budget fits any method (checked analytically, before any training).
    """
    from embadvisor.advisor.recommend import recommend
    from embadvisor.advisor.search import Search
    from embadvisor.advisor.storage import open_storage

    if not budgets:
        raise InvalidConfigError("`budgets` must name at least one budget, but got budgets=[].")
    from embadvisor.advisor.search import full_bytes

    store = store if store is not None else open_storage(storage)
    metric = workload.data.metric
    full = full_bytes(workload.target.tables(), settings.scope, settings.train.optimizer)
    # analytic feasibility first (no training): all budgets infeasible is an error before any search starts
    infeasible: dict[int, tuple[str, int | None]] = {}
    last_error = ""
    for budget in budgets:
        search = Search(workload, dataclasses.replace(settings, budget_bytes=budget))
        try:
            search.check_feasible()
        except InfeasibleError as e:
            last_error = _one_line(str(e)).replace("raise --budget ", "raise the largest of --budgets ")
            mins = sorted((p.min_budget_bytes, m) for m, p in search.plans.items() if p.min_budget_bytes > 0)
            infeasible[budget] = (
                f"below every method's minimum (smallest: {mins[0][1]} {format_size(mins[0][0])})" if mins
                else "no method fits", mins[0][0] if mins else None)
    if len(infeasible) == len(budgets):
        raise InfeasibleError(
            f"none of the {len(budgets)} budgets ({', '.join(format_size(b) for b in budgets)}) fits any method. "
            f"At the largest: {last_error}"
        )
    rows: list[dict[str, Any]] = []
    for i, budget in enumerate(budgets):
        s = dataclasses.replace(settings, budget_bytes=budget)
        name = f"{study_prefix}-{format_size(budget).replace(' ', '')}" if study_prefix else None
        row: dict[str, Any] = {"budget_bytes": budget, "budget_share": budget / full, "feasible": False, "method": None, "params": None,
                               "serve_bytes": None, "train_bytes": None, "validation": None, "test": None,
                               "study": name, "trials": None, "reason": "", "min_budget_bytes": None,
                               "on_frontier": False, "knee": False}
        if budget in infeasible:
            row["reason"], row["min_budget_bytes"] = infeasible[budget]
            rows.append(row)
            continue
        progress = on_budget(i, budget) if on_budget else None
        try:
            if progress is not None:
                with progress:
                    rec = recommend(workload, s, storage=storage, study_name=name, store=store, device=device,
                                    on_trial=progress.on_trial, on_phase=progress.on_phase)
            else:
                rec = recommend(workload, s, storage=storage, study_name=name, store=store, device=device)
        except InfeasibleError as e:  # not expected after the check above; kept as a row all the same
            row["reason"] = _one_line(str(e))
            rows.append(row)
            continue
        row.update({
            "feasible": True, "method": rec.method, "params": rec.params, "serve_bytes": rec.serve_bytes,
            "train_bytes": rec.train_bytes, "validation": rec.metric.validation, "test": rec.metric.test,
            "study": rec.study, "trials": rec.trials, "full_bytes": rec.full_bytes, "ratio": rec.ratio,
        })
        rows.append(row)
    ok = [r for r in rows if r["feasible"]]
    front = pareto_frontier([(float(r["serve_bytes"]), float(r["validation"])) for r in ok])
    for j in front:
        ok[j]["on_frontier"] = True
    front_rows = [ok[j] for j in front]
    k = knee([(float(r["serve_bytes"]), float(r["validation"])) for r in front_rows])
    knee_row: dict[str, Any] | None = None
    if k is not None:
        front_rows[k[0]]["knee"] = True
        knee_row = {key: front_rows[k[0]][key] for key in ("budget_bytes", "method", "serve_bytes", "validation",
                                                           "test", "study")}
        knee_row["distance"] = k[1]
    return {
        "rows": rows,
        "knee": knee_row,
        "knee_note": ("" if knee_row else
                      "no knee: it needs three frontier points with one above the chord joining the ends "
                      f"(the frontier has {len(front_rows)})"),
        "metric": metric,
        "task": workload.task,
        "workload": workload.description,
        "scope": settings.scope,
    }

