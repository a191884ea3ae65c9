"""The advisor for frozen vector corpora (``recommend --task retrieval --vectors FILE``).

Same shape as :mod:`embadvisor.advisor.search` (plans, feasibility, enqueued defaults, an
Optuna objective, ranking, a stored recommendation and an exportable config), but nothing is
trained: a trial solves one ``vec_*`` compressor's size knob from its share of the budget (so
every trial fits by construction), fits it on the corpus (timed), and scores it on the
validation queries. The budget is the bytes of the stored compressed corpus (codes, codebooks,
scales, indices). When the float32 corpus fits, the uncompressed corpus is recommended.

Objective: nDCG@10 on the validation queries when qrels are given, else Recall@10 against exact
search. Candidates within ``epsilon`` of the best validation value are tied; ties go to the
higher Recall@10 vs exact (a finer-grained signal than nDCG on a few dozen queries), then lower
search latency, then fewer bytes. The test queries are evaluated once, for the pick.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from embadvisor.advisor import rank
from embadvisor.advisor.recommend import CONFIG_VERSION, _jsonable
from embadvisor.advisor.search import BUDGET_USE, default_study_name, make_study, suggest, trial_counts
from embadvisor.advisor.storage import default_storage, display_url, open_storage
from embadvisor.errors import EmbAdvisorError, InfeasibleError, InvalidConfigError
from embadvisor.methods import MemoryEstimate, get_method, list_methods
from embadvisor.methods._vectors import VectorConfig, corpus_table
from embadvisor.units import format_size
from embadvisor.vectors.data import VectorData, load_vector_data
from embadvisor.vectors.evaluate import QuerySet, compress, evaluate_index, split_queries
from embadvisor.version import __version__

__all__ = ["VectorPlan", "VectorSearch", "VectorSearchSettings", "VectorWorkload", "recommend_vectors",
           "vector_workload"]

FULL = "vec_full"


@dataclass(frozen=True)
class VectorSearchSettings:
    """What to search and how (frozen vectors).

    Args:
        budget_bytes: bytes of the stored compressed corpus (codes + codebooks + scales + indices).
        methods: restrict the search to these ``vec_*`` methods (default: all).
        trials: trials in total (a resumed study runs only the missing ones).
        time_limit_s: stop starting trials after this long.
        seed: sampler, query split and k-means seed.
        top: distinct configurations compared in the final ranking.
        epsilon: validation-metric difference counted as a tie (default 0.005).
    """

    budget_bytes: int
    methods: tuple[str, ...] | None = None
    trials: int = 24
    time_limit_s: float | None = None
    seed: int = 0
    top: int = 3
    epsilon: float | None = None
    scope: str = "serve"

    def __post_init__(self) -> None:
        if self.budget_bytes < 1:
            raise InvalidConfigError(f"`budget_bytes` must be >= 1, but got budget_bytes={self.budget_bytes!r}.")
        if self.trials < 1:
            raise InvalidConfigError(f"`trials` must be >= 1, but got trials={self.trials!r}.")
        for m in self.methods or ():
            if get_method(m).tags.input != "vectors":
                raise InvalidConfigError(
                    f"`methods` must name frozen-vector compressors ({', '.join(list_methods(input='vectors'))}) "
                    f"with --vectors, but got {m!r}, which compresses trained embedding tables.")


@dataclass
class VectorWorkload:
    """A corpus with its validation and test query sets."""

    data: VectorData
    validation: QuerySet
    test: QuerySet
    description: str
    task: str = "retrieval"

    @property
    def metric(self) -> str:
        return "ndcg@10" if self.data.qrels is not None else "recall@10_exact"


def vector_workload(data: VectorData, *, seed: int = 0) -> VectorWorkload:
    """Split the queries (or held-out corpus rows) into validation and test and compute exact neighbours."""
    val, test = split_queries(data, seed=seed)
    kind = ("queries with qrels" if data.qrels is not None else "queries" if data.queries is not None
            else "held-out corpus rows as queries (own row excluded)")
    desc = (f"{data.name}: {data.num_vectors:,} x {data.dim} vectors ({format_size(data.full_bytes)} float32, "
            f"{data.similarity}), {len(val)} validation + {len(test)} test {kind}")
    return VectorWorkload(data, val, test, desc)


@dataclass(frozen=True)
class VectorPlan:
    """One compressor solved for the budget (``config`` None when infeasible)."""

    method: str
    config: VectorConfig | None
    memory: MemoryEstimate
    min_budget_bytes: int
    full_bytes: int
    reason: str = ""

    @property
    def feasible(self) -> bool:
        return self.config is not None

    @property
    def bytes(self) -> int:
        return self.memory.serve_bytes

    def params(self) -> dict[str, Any]:
        return self.config.to_dict() if self.config is not None else {}


def _contains(dist: BaseDistribution, value: Any) -> bool:
    if isinstance(dist, CategoricalDistribution):
        return value in dist.choices
    if isinstance(dist, IntDistribution | FloatDistribution):
        return not isinstance(value, bool) and dist.low <= value <= dist.high
    return False


class VectorSearch:
    """One study over the frozen-vector compressors. See the module docstring."""

    def __init__(self, workload: VectorWorkload, settings: VectorSearchSettings) -> None:
        self.w = workload
        self.s = settings
        self.table = corpus_table((workload.data.num_vectors, workload.data.dim))
        self.target_full = workload.data.full_bytes
        self.ratio = settings.budget_bytes / self.target_full
        names = settings.methods or tuple(list_methods(input="vectors"))
        self.plans = {m: self.plan(m) for m in names}
        self.feasible = [m for m, p in self.plans.items() if p.feasible]
        if FULL in self.feasible:  # nothing to compress: the exact corpus fits
            self.feasible = [FULL]

    def plan(self, method: str) -> VectorPlan:
        """The method at the whole budget with its default settings, else with the first of its example
        configs' settings that fits (so e.g. a 1-bit low group counts); the minimum budget over all of them."""
        cls = get_method(method)
        keys = self.space(method)
        tries: list[dict[str, Any]] = [{}]
        tries += [{k: getattr(ex, k) for k in keys} for ex in cls.example_configs(self.table)]
        plans = [self.solve_target(method, 1.0, fixed) for fixed in tries]
        ok = [p for p in plans if p.feasible]
        lowest = min((p.min_budget_bytes for p in plans if p.min_budget_bytes > 0), default=0)
        best = ok[0] if ok else plans[0]
        return VectorPlan(best.method, best.config, best.memory, lowest, best.full_bytes,
                          "" if ok else f"needs at least {format_size(lowest)}")

    def solve_target(self, method: str, use: float, fixed: dict[str, Any]) -> VectorPlan:
        cls = cast(type[VectorConfig], get_method(method))
        smallest = cls.min_config(self.table, **fixed)
        min_b = smallest.memory(self.table).serve_bytes if smallest is not None else 0
        try:
            cfg = cls.from_budget(self.table, self.s.budget_bytes * use, **fixed)
        except InvalidConfigError as e:
            cfg, why = None, str(e)
        else:
            why = "" if cfg is not None else f"needs at least {format_size(min_b)}"
        mem = cfg.memory(self.table) if cfg is not None else MemoryEstimate()
        return VectorPlan(method, cfg, mem, min_b, self.target_full, why)

    def check_feasible(self) -> None:
        """Raise :class:`InfeasibleError` with every compressor's minimum budget when nothing fits."""
        if self.feasible:
            return
        mins = sorted((p.min_budget_bytes, m) for m, p in self.plans.items() if p.min_budget_bytes > 0)
        listing = ", ".join(f"{m} {format_size(b)}" for b, m in mins[:9])
        raise InfeasibleError(
            f"no compressor fits {format_size(self.s.budget_bytes)} for the {self.w.data.num_vectors:,} x "
            f"{self.w.data.dim} corpus (float32 {format_size(self.target_full)}). Minimum budgets: {listing}.",
            [f"raise --budget to at least {format_size(mins[0][0])}" if mins else "raise --budget",
             "reduce the corpus (fewer or shorter vectors)"],
        )

    def space(self, method: str) -> dict[str, BaseDistribution]:
        cls = get_method(method)
        return {k: v for k, v in cls.search_space(self.table).items() if k not in (cls.size_knob, "seed")}

    def enqueue_defaults(self, study: optuna.Study) -> None:
        """Each feasible compressor at its default settings and the whole budget, simplest first."""
        done = {t.params.get("method") for t in study.trials}
        for m in sorted(self.feasible, key=lambda m: (rank.simplicity(m), m)):
            if m in done:
                continue
            params: dict[str, Any] = {"method": m}
            if m != FULL:
                params[f"{m}.budget_use"] = 1.0
            defaults = get_method(m)()
            for k, dist in self.space(m).items():
                value = getattr(defaults, k)
                if _contains(dist, value):
                    params[f"{m}.{k}"] = value
            study.enqueue_trial(params, skip_if_exists=True)

    def objective(self, trial: optuna.Trial) -> float:
        method = trial.suggest_categorical("method", self.feasible)
        use = 1.0 if method == FULL else trial.suggest_float(f"{method}.budget_use", *BUDGET_USE)
        fixed = {k: suggest(trial, f"{method}.{k}", d) for k, d in self.space(method).items()}
        plan = self.solve_target(method, use, fixed)
        trial.set_user_attr("method", method)
        trial.set_user_attr("fixed", fixed)
        if plan.config is None:
            trial.set_user_attr("failure", f"settings do not fit the budget: {plan.reason}")
            raise optuna.TrialPruned(plan.reason)
        trial.set_user_attr("params", plan.params())
        try:
            index, seconds = compress(plan.config, self.w.data.corpus)
        except EmbAdvisorError as e:
            trial.set_user_attr("failure", str(e))
            raise
        if index.nbytes > self.s.budget_bytes:  # cannot happen for exact formulas; guards data-dependent ones
            msg = f"the index holds {index.nbytes:,} bytes, more than the budget {self.s.budget_bytes:,}"
            trial.set_user_attr("failure", msg)
            raise RuntimeError(msg)
        val = evaluate_index(index, self.w.validation)
        trial.set_user_attr("serve_bytes", index.nbytes)
        trial.set_user_attr("train_bytes", index.nbytes)
        trial.set_user_attr("validation", val)
        trial.set_user_attr("train_seconds", seconds)
        trial.set_user_attr("compress_seconds", seconds)
        trial.set_user_attr("latency_ms", val["latency_ms"])
        return float(val[self.w.metric])


def _run(search: VectorSearch, study: optuna.Study,
         on_trial: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None) -> None:
    search.enqueue_defaults(study)
    finished = sum(1 for t in study.trials if t.state.is_finished())
    todo = max(0, (1 if search.feasible == [FULL] else search.s.trials) - finished)
    if todo:
        study.optimize(search.objective, n_trials=todo, timeout=search.s.time_limit_s, catch=(Exception,),
                       callbacks=[on_trial] if on_trial else [], gc_after_trial=True)


def _choose(study: optuna.Study, cands: list[rank.Candidate], metric: str, eps: float) -> tuple[rank.Candidate, str]:
    by_trial = {t.number: t for t in study.trials}

    def recall(c: rank.Candidate) -> float:
        return float(by_trial[c.trial].user_attrs.get("validation", {}).get("recall@10_exact", 0.0))

    best = max(cands, key=lambda c: c.value)
    tied = [c for c in cands if c.value >= best.value - eps]
    tied.sort(key=lambda c: (-recall(c), c.latency_ms, c.serve_bytes, rank.simplicity(c.method)))
    win = tied[0]
    if len(tied) == 1:
        why = (f"{win.method} has the best validation {metric} ({win.value:.4f}), ahead of the next candidate by more "
               f"than {eps:.4f}.")
    else:
        others = ", ".join(f"{c.method} {c.value:.4f}" for c in tied if c is not win)
        why = (f"{len(tied)} candidates are within {eps:.4f} of the best validation {metric} ({best.method} "
               f"{best.value:.4f}); among them {win.method} ({win.value:.4f}) has the highest Recall@10 vs exact "
               f"({recall(win):.4f}), then the lowest latency (others: {others}).")
    return win, why


def study_key(workload: VectorWorkload, settings: VectorSearchSettings) -> dict[str, Any]:
    """Everything that must match for trials to be comparable (stored on the study)."""
    d = workload.data
    return {
        "embadvisor": __version__, "registry": ",".join(list_methods(input="vectors")), "task": "retrieval",
        "input": "vectors", "target": d.name, "data_fingerprint": d.fingerprint, "similarity": d.similarity,
        "budget_bytes": settings.budget_bytes, "scope": "serve",
        "methods": sorted(settings.methods) if settings.methods else "all", "seed": settings.seed,
        "queries": [len(workload.validation), len(workload.test)],
    }


def recommend_vectors(
    workload: VectorWorkload,
    settings: VectorSearchSettings,
    *,
    storage: str | None = None,
    study_name: str | None = None,
    on_trial: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
    on_phase: Callable[[str], None] | None = None,
    store: Any = None,
) -> dict[str, Any]:
    """Search, rank and recommend a compressor for a frozen corpus; the result is also stored on the study."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.perf_counter()
    search = VectorSearch(workload, settings)
    search.check_feasible()
    key = study_key(workload, settings)
    name = study_name or default_study_name(key)
    store = store if store is not None else open_storage(storage)
    study = make_study(cast(Any, search), store, name, key)
    if on_phase:
        on_phase("search")
    _run(search, study, on_trial)
    cands = rank.top_candidates(study, settings.top)
    if not cands:
        counts = trial_counts(study)
        raise EmbAdvisorError(f"no trial of study {name!r} completed ({counts['failed']} failed, {counts['pruned']} "
                              "pruned); see `embadvisor history " + name + "` for the reasons.")
    metric = workload.metric
    eps = settings.epsilon if settings.epsilon is not None else 0.005
    win, why = _choose(study, cands, metric, eps)
    if on_phase:
        on_phase("evaluating the pick on the test queries")
    plan = search.solve_target(win.method, win.use, win.fixed)
    assert plan.config is not None  # it fitted during the search
    index, seconds = compress(plan.config, workload.data.corpus)
    test = evaluate_index(index, workload.test)
    val_all = study.trials[win.trial].user_attrs.get("validation", {})
    full_fits = search.feasible == [FULL]
    if full_fits:
        why = f"The uncompressed float32 corpus fits the budget ({format_size(search.target_full)}). " + why
    counts = trial_counts(study)
    rec: dict[str, Any] = {
        "method": win.method, "params": plan.params(), "budget_bytes": settings.budget_bytes, "scope": "serve",
        "serve_bytes": index.nbytes, "train_bytes": index.nbytes, "full_bytes": search.target_full,
        "ratio": search.ratio, "compress_seconds": seconds,
        "metric": {"name": metric, "validation": win.value, "test": test.get(metric), "validation_all": val_all,
                   "test_all": test},
        "noise_epsilon": eps, "explanation": why, "full_fits": full_fits, "study": name,
        "storage": display_url(storage or default_storage()), "trials": counts, "ranking": [c.to_dict() for c in cands],
        "workload": workload.description, "proxy": False, "measured_on": "target data", "extrapolated": [],
        "infeasible": {m: p.min_budget_bytes for m, p in search.plans.items() if not p.feasible},
        "seconds": time.perf_counter() - started,
    }
    rec["config"] = export_config(workload, settings, plan, rec, win.trial)
    study.set_user_attr("recommendation", _jsonable(rec))
    return rec


def export_config(workload: VectorWorkload, settings: VectorSearchSettings, plan: VectorPlan, rec: dict[str, Any],
                  trial: int) -> dict[str, Any]:
    """The self-contained config :func:`embadvisor.vectors.build_index` rebuilds the index from."""
    import torch

    d = workload.data
    return {
        "embadvisor_config": CONFIG_VERSION, "task": "retrieval", "input": "vectors", "target": d.name,
        "method": plan.method, "budget_bytes": settings.budget_bytes, "scope": "serve",
        "memory": {"serve_bytes": rec["serve_bytes"], "full_bytes": d.full_bytes,
                   "breakdown": {k[len("serve:"):]: v for k, v in plan.memory.breakdown.items()
                                 if k.startswith("serve:")}},
        "metrics": {"name": rec["metric"]["name"], "validation": rec["metric"]["validation"],
                    "test": rec["metric"]["test"], "test_all": rec["metric"]["test_all"]},
        "plan": {"name": plan.method, "params": plan.params(), "num_vectors": d.num_vectors, "dim": d.dim,
                 "similarity": d.similarity},
        "provenance": {
            "study": rec["study"], "storage": rec["storage"], "data": d.source, "data_fingerprint": d.fingerprint,
            "seed": settings.seed, "trial": trial,
            "versions": {"embadvisor": __version__, "torch": torch.__version__, "optuna": optuna.__version__,
                         "numpy": np.__version__, "python": platform.python_version()},
        },
    }


def load_workload(vectors: Path, *, queries: Path | None, qrels: Path | None, doc_ids: Path | None,
                  query_ids: Path | None, similarity: str, seed: int) -> VectorWorkload:
    """Read and validate the files, then split the queries (what ``recommend --vectors`` does)."""
    data = load_vector_data(vectors, queries=queries, qrels=qrels, doc_ids=doc_ids, query_ids=query_ids,
                            similarity=similarity)
    return vector_workload(data, seed=seed)


