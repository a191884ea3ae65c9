"""What the advisor searches over: a target workload (budgets apply to it) and the data trained here.

When the target is larger than what can be trained on this machine (a Criteo-size profile, a
catalogue of millions of items), candidates are trained on a *proxy* at the same compression
ratio: the proxy's tables are the target's scaled down by one factor (small fields keep their
size), its rows come from the synthetic generator calibrated to that scaled profile, and every
budget is the target budget times proxy-full / target-full. The emitted configuration is solved
for the target. Reports say which figures are measured on the proxy and which are extrapolated.

Built-in defaults (no ``--data``, no ``--profile``):
- ``ctr``: target ``criteo-kaggle`` (26 fields, 33.8M ids, 2.16 GB at d=16), proxy 100,000 ids /
  60,000 synthetic rows with a planted teacher.
- ``retrieval``: target ``retrieval-catalog`` (4M users, 1M items, 1.28 GB at d=64), proxy
  12,000 ids / 100,000 synthetic interactions.

The built-in time limit is 4.5 minutes. Measured on 2 cores: the CTR default runs its whole calibrated
schedule (every rung, two finalists trained to convergence with two fresh seeds each) in about 3.6
minutes; the retrieval default reaches the limit during its first rung (its multi-stage methods are
slow on this proxy), so its report says the search was cut short, and its finalists still train to
convergence.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from embadvisor.errors import DataError, InvalidConfigError
from embadvisor.profiles import get_preset
from embadvisor.profiles.schema import FieldProfile, WorkloadProfile
from embadvisor.tasks.api import TaskData

__all__ = ["DEFAULTS", "Workload", "cache_dir", "check_data_options", "default_workload", "load_workload",
           "proxy_profile", "workload_from_data", "workload_from_spec"]

#: task -> (target preset, proxy ids, proxy rows)
DEFAULTS = {"ctr": ("criteo-kaggle", 100_000, 60_000), "retrieval": ("retrieval-catalog", 12_000, 100_000)}


@dataclass
class Workload:
    """A search's target profile and the data trained for it.

    Args:
        task: ``ctr`` or ``retrieval``.
        target: the full-scale profile the budget applies to.
        data: the data trained here (the target's own data, or a proxy).
        proxy: whether ``data`` is a smaller proxy of the target.
        description: one line for reports.
        spec: how to rebuild it elsewhere (a worker on another machine): see :func:`workload_from_spec`.
    """

    task: str
    target: WorkloadProfile
    data: TaskData
    proxy: bool
    description: str
    spec: dict[str, Any] | None = None

    @property
    def dim(self) -> int:
        return self.target.embedding_dim


def cache_dir() -> Path:
    """Where generated proxy data and the default study database live (``$EMBADVISOR_HOME``, else ~/.embadvisor)."""
    root = Path(os.environ.get("EMBADVISOR_HOME", Path.home() / ".embadvisor"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def proxy_profile(target: WorkloadProfile, max_ids: int) -> WorkloadProfile:
    """The target scaled down to about ``max_ids`` ids: every field by the same factor, none below 16 ids."""
    scale = min(1.0, max_ids / max(1, target.total_ids))
    fields = []
    for f in target.fields:
        n = min(f.num_embeddings, max(16, round(f.num_embeddings * scale)))
        fields.append(FieldProfile(f.name, n, n, f.pooling, f.embedding_dim, f.frequency))
    return replace(target, fields=tuple(fields), name=f"{target.name}-proxy",
                   source=f"{target.name} scaled by {scale:.3g} (small fields kept) for training here")


def _synth_data(profile: WorkloadProfile, rows: int, seed: int) -> TaskData:
    from embadvisor.profiles.synth import generate
    from embadvisor.tasks.datasets import ctr_task_data, retrieval_task_data

    # Criteo-shaped profiles go through the Criteo TSV reader (dense features, log transform)
    criteo = profile.task == "ctr" and profile.num_dense == 13 and len(profile.fields) == 26
    fmt, suffix = ("criteo", ".txt") if criteo else ("parquet", ".parquet")
    from embadvisor.profiles.synth import GENERATOR_VERSION

    name = f"{profile.name}-{profile.total_ids}-{rows}-seed{seed}-g{GENERATOR_VERSION}{suffix}"
    path = cache_dir() / "proxies" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file():
        tmp = path.with_name(path.stem + ".tmp" + suffix)
        generate(profile, rows=rows, output=tmp, fmt=fmt, seed=seed)
        tmp.replace(path)
    if profile.task == "ctr":
        data = ctr_task_data(path, fmt=fmt, label=None if criteo else "label", seed=seed)
    else:
        data = retrieval_task_data(path, fmt="parquet", protocol="random", seed=seed)
    data.name = profile.name
    return data


def default_workload(task: str, seed: int = 0) -> Workload:
    """The built-in default workload of ``task`` (see the module docstring)."""
    if task not in DEFAULTS:
        raise InvalidConfigError(f"`task` must be one of {', '.join(DEFAULTS)}, but got task={task!r}.")
    preset, max_ids, rows = DEFAULTS[task]
    target = get_preset(preset)
    proxy = proxy_profile(target, max_ids)
    data = _synth_data(proxy, rows, seed)
    desc = (f"built-in default: target {preset} ({target.total_ids:,} ids), trained on a synthetic proxy of "
            f"{sum(t.num_embeddings for t in data.tables(target.embedding_dim)):,} ids and {data.num_train:,} "
            "training rows at the same compression ratio")
    return Workload(task, target, data, True, desc, spec={"kind": "default", "task": task, "seed": seed})


def workload_from_data(task: str, data: TaskData, profile: WorkloadProfile | None, dim: int) -> Workload:
    """The user's data, with an optional larger target profile (same fields) for the budget."""
    tables = data.tables(dim)
    own = WorkloadProfile(
        task=task,
        fields=tuple(FieldProfile(t.name, t.num_embeddings, t.num_embeddings, frequency=t.frequency) for t in tables),
        num_rows=data.num_train, embedding_dim=dim, name=data.name or "data", source=data.source,
    )
    if profile is None:
        return Workload(task, own, data, False, f"{data.name}: {own.total_ids:,} ids, {data.num_train:,} training rows")
    if profile.task != task:
        raise InvalidConfigError(f"the profile {profile.name!r} is for task {profile.task!r}, but --task is {task!r}. "
                                 "Pass a profile of the same task.")
    names_data, names_prof = [t.name for t in tables], profile.field_names
    if len(names_data) != len(names_prof):
        raise DataError(
            f"the data has {len(names_data)} fields ({', '.join(names_data[:6])}...) but the profile "
            f"{profile.name!r} has {len(names_prof)} ({', '.join(names_prof[:6])}...). Pass data with the "
            "profile's fields, or profile the data itself (`embadvisor profile DATA -o profile.toml`)."
        )
    bigger = profile.total_ids > own.total_ids
    desc = (f"target {profile.name} ({profile.total_ids:,} ids); trained on {data.name} ({own.total_ids:,} ids) "
            + ("as a proxy at the same compression ratio" if bigger else "directly"))
    return Workload(task, profile, data, bigger, desc)


def check_data_options(data: str | Path | None, *, fmt: str | None = None, label: str | None = None,
                       fields: Any = None) -> None:
    """Refuse ``fmt``/``label``/``fields`` without ``data``: they describe a data file, and the built-in
    workload used to ignore them without a word."""
    if data is None:
        for k, v in (("format", fmt), ("label", label), ("fields", fields)):
            if v is not None:
                raise InvalidConfigError(f"`{k}` must come with --data (it describes the data file), but got "
                                         f"{k}={v!r} without --data. Pass --data FILE, or drop --{k} to use the "
                                         "built-in workload.")


def load_workload(
    task: str,
    data: str | Path | None = None,
    profile: WorkloadProfile | None = None,
    *,
    fmt: str | None = None,
    label: str | None = None,
    fields: list[str] | None = None,
    seed: int = 0,
) -> Workload:
    """The workload for a task: the built-in default (no data, no profile) or the user's data + optional target.

    The returned workload carries a JSON-able ``spec`` (data location, reader options, the target
    profile itself) so another process can rebuild it with :func:`workload_from_spec`.
    """
    check_data_options(data, fmt=fmt, label=label, fields=fields)
    if data is None and profile is None:
        return default_workload(task, seed=seed)
    if data is None:
        raise InvalidConfigError("--profile needs --data (the data trained here); or drop both for the built-in "
                                 "workload.")
    from embadvisor.data._text import resolve_path
    from embadvisor.tasks.datasets import load_task_data

    path = resolve_path(data)
    td = load_task_data(task, path, fmt=fmt, label=label, fields=fields, seed=seed)
    dim = profile.embedding_dim if profile is not None else (64 if task == "retrieval" else 16)
    w = workload_from_data(task, td, profile, dim)
    w.spec = {"kind": "data", "task": task, "path": str(path), "fmt": fmt, "label": label, "fields": fields,
              "seed": seed, "profile": profile.to_dict() if profile is not None else None}
    return w


def workload_from_spec(spec: dict[str, Any]) -> Workload:
    """Rebuild a workload from its ``spec`` (as stored on a study)."""
    kind = spec.get("kind")
    if kind == "default":
        return default_workload(spec["task"], seed=int(spec.get("seed", 0)))
    if kind == "data":
        path = Path(spec["path"])
        if not path.exists():
            raise DataError(f"the study's data {str(path)!r} does not exist on this machine. Make the same file "
                            "available at that path (e.g. a shared mount) and start the worker again.")
        profile = WorkloadProfile.from_dict(spec["profile"]) if spec.get("profile") else None
        return load_workload(spec["task"], path, profile, fmt=spec.get("fmt"), label=spec.get("label"),
                             fields=spec.get("fields"), seed=int(spec.get("seed", 0)))
    raise InvalidConfigError(f"unknown workload spec kind {kind!r}; the study was written by another embadvisor "
                             "version.")
