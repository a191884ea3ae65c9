"""The result of a recommendation: a typed, frozen :class:`Recommendation`.

The CLI's ``--json`` output, the attribute stored on the study (read by ``embadvisor export`` and
``embadvisor history``) and the report are all its :meth:`Recommendation.to_dict` form, and
:meth:`Recommendation.from_dict` reads it back, stored dicts of earlier versions included. Code written
against the plain dict keeps working: a recommendation also reads as a read-only mapping of that form
(``rec["metric"]["validation"]``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["MetricSummary", "Recommendation", "TrainingEvidence", "jsonable"]


@dataclass(frozen=True)
class MetricSummary:
    """The pick's objective metric.

    Args:
        name: the metric (``auc``, ``recall@20``, ``ndcg@10``, ...).
        validation: the value the pick was chosen on (the mean of its fresh-seed runs where it was re-trained).
        test: the test split's value, evaluated once for the pick (None without a test split).
        validation_all: every validation metric of the pick.
        test_all: every test metric of the pick.
        spread: standard deviation of the fresh-seed runs (None with fewer than two).
        runs: how many fresh-seed runs ``validation`` is the mean of; None when the candidates were not
            re-run (inputs that are not trained).
    """

    name: str
    validation: float
    test: float | None
    validation_all: dict[str, Any]
    test_all: dict[str, Any] | None
    spread: float | None = None
    runs: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "validation": self.validation}
        if self.runs is not None:
            d |= {"spread": self.spread, "runs": self.runs}
        return d | {"test": self.test, "validation_all": self.validation_all, "test_all": self.test_all}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MetricSummary:
        return cls(name=d["name"], validation=d["validation"], test=d.get("test"),
                   validation_all=d.get("validation_all") or {}, test_all=d.get("test_all"),
                   spread=d.get("spread"), runs=d.get("runs"))


@dataclass(frozen=True)
class TrainingEvidence:
    """How the candidates of an input that trains were trained: the pick's fresh-seed runs, whether they
    converged, how far the search got, and the calibrated schedule and time limit behind it.

    Args:
        evidence: the pick's trial and its fresh-seed runs (mean, spread, samples, steps, converged).
        undertrained: None when every fresh-seed run stopped on validation, else why not and by how much
            the metric was still rising.
        search_incomplete: None when the search reached its last rung, else where the time limit stopped it.
        calibration: what the calibration run measured (None when the rungs were given).
        schedule: the rungs.
        estimate_seconds: the calibrated estimate of the whole run.
        time_limit_s: the time limit the run had.
    """

    evidence: dict[str, Any]
    undertrained: dict[str, Any] | None
    search_incomplete: str | None
    calibration: dict[str, Any] | None
    schedule: dict[str, Any] | None
    estimate_seconds: float | None
    time_limit_s: float | None


@dataclass(frozen=True)
class Recommendation(Mapping[str, Any]):
    """A searched, ranked and explained recommendation (see the module docstring).

    Args:
        method: the recommended method.
        params: its settings, solved for the target.
        budget_bytes: the budget, in bytes of ``scope``.
        scope: ``serve`` or ``train``.
        serve_bytes: the pick's serving bytes on the target.
        train_bytes: the pick's training bytes on the target.
        full_bytes: the uncompressed target's bytes in ``scope``.
        ratio: ``budget_bytes / full_bytes``.
        metric: the objective metric of the pick.
        noise_epsilon: metric differences below this counted as ties.
        explanation: why this method, in one paragraph.
        full_fits: whether the uncompressed input fits the budget.
        study: the study's name.
        storage: the storage URL (password masked).
        trials: complete, pruned and failed trial counts.
        ranking: the compared candidates, best first.
        workload: one line about the workload.
        proxy: whether the metrics were measured on a smaller proxy of the target.
        measured_on: ``proxy`` or ``target data``.
        extrapolated: figures solved for the target rather than measured.
        infeasible: the methods that did not fit, with the least budget each needs.
        seconds: the run's wall time.
        config: the self-contained config :func:`embadvisor.build_embedding` (or
            :func:`embadvisor.vectors.build_index`) rebuilds the pick from.
        training: how the candidates were trained (None for inputs that are not trained).
        compress_seconds: the pick's compression time (frozen vectors; None otherwise).
        budget: the budget as the user wrote it (``12.5%``, ``64MB``), when known.
    """

    method: str
    params: dict[str, Any]
    budget_bytes: int
    scope: str
    serve_bytes: int
    train_bytes: int
    full_bytes: int
    ratio: float
    metric: MetricSummary
    noise_epsilon: float
    explanation: str
    full_fits: bool
    study: str
    storage: str
    trials: dict[str, int]
    ranking: list[dict[str, Any]]
    workload: str
    proxy: bool
    measured_on: str
    extrapolated: list[str]
    infeasible: dict[str, int]
    seconds: float
    config: dict[str, Any] = field(default_factory=dict)
    training: TrainingEvidence | None = None
    compress_seconds: float | None = None
    budget: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The plain form (the ``--json`` output and the stored study attribute): fields that do not apply
        to the input (``training``'s, ``compress_seconds``, ``budget``) are left out."""
        d: dict[str, Any] = {
            "method": self.method, "params": self.params, "budget_bytes": self.budget_bytes, "scope": self.scope,
            "serve_bytes": self.serve_bytes, "train_bytes": self.train_bytes, "full_bytes": self.full_bytes,
            "ratio": self.ratio,
        }
        if self.compress_seconds is not None:
            d["compress_seconds"] = self.compress_seconds
        d["metric"] = self.metric.to_dict()
        t = self.training
        if t is not None:
            d |= {"evidence": t.evidence, "undertrained": t.undertrained, "search_incomplete": t.search_incomplete}
        d |= {
            "noise_epsilon": self.noise_epsilon, "explanation": self.explanation, "full_fits": self.full_fits,
            "study": self.study, "storage": self.storage, "trials": self.trials, "ranking": self.ranking,
            "workload": self.workload, "proxy": self.proxy, "measured_on": self.measured_on,
            "extrapolated": self.extrapolated, "infeasible": self.infeasible,
        }
        if t is not None:
            d |= {"calibration": t.calibration, "schedule": t.schedule, "estimate_seconds": t.estimate_seconds,
                  "time_limit_s": t.time_limit_s}
        d |= {"seconds": self.seconds, "config": self.config}
        if self.budget is not None:
            d["budget"] = self.budget
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Recommendation:
        """Read :meth:`to_dict`'s form back (exactly), or a dict stored on a study by an earlier version."""
        training = None
        if "evidence" in d:
            training = TrainingEvidence(
                evidence=d["evidence"], undertrained=d.get("undertrained"),
                search_incomplete=d.get("search_incomplete"), calibration=d.get("calibration"),
                schedule=d.get("schedule"), estimate_seconds=d.get("estimate_seconds"),
                time_limit_s=d.get("time_limit_s"))
        proxy = bool(d.get("proxy", False))
        return cls(
            method=d["method"], params=d.get("params") or {}, budget_bytes=d["budget_bytes"],
            scope=d.get("scope", "serve"), serve_bytes=d["serve_bytes"], train_bytes=d.get("train_bytes", 0),
            full_bytes=d.get("full_bytes", 0), ratio=d.get("ratio", 0.0), metric=MetricSummary.from_dict(d["metric"]),
            noise_epsilon=d.get("noise_epsilon", 0.0), explanation=d.get("explanation", ""),
            full_fits=bool(d.get("full_fits", False)), study=d.get("study", ""), storage=d.get("storage", ""),
            trials=d.get("trials") or {"complete": 0, "pruned": 0, "failed": 0}, ranking=d.get("ranking") or [],
            workload=d.get("workload", ""), proxy=proxy,
            measured_on=d.get("measured_on", "proxy" if proxy else "target data"),
            extrapolated=d.get("extrapolated") or [], infeasible=d.get("infeasible") or {},
            seconds=d.get("seconds", 0.0), config=d.get("config") or {}, training=training,
            compress_seconds=d.get("compress_seconds"), budget=d.get("budget"))

    # a read-only mapping of the plain form, for code written against the dict
    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())


def jsonable(obj: Any) -> Any:
    """``obj`` with tuples as lists, keys as strings and non-finite floats as None (what JSON storages keep)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
