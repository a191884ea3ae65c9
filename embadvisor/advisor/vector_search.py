"""The frozen-vector input of the one search/recommend pipeline (``recommend --task retrieval --vectors FILE``).

:class:`VectorSearch` is an :class:`~embadvisor.advisor.core.Evaluator` like the embedding tables'
:class:`~embadvisor.advisor.search.Search`, and runs through the same pipeline
(:func:`embadvisor.advisor.recommend.run`: study, sampler, crash-safe resume, ranking, stored
recommendation), as its one-rung case: nothing is trained, so there is one fidelity and nothing to
re-run. A trial solves one ``vec_*`` compressor's size knob from its share of the budget (so every
trial fits by construction), fits it on the corpus (timed), and scores it on the validation queries.
The budget is the bytes of the stored compressed corpus (codes, codebooks, scales, indices). When the
float32 corpus fits, the uncompressed corpus is recommended.

Objective: nDCG@10 on the validation queries when qrels are given, else Recall@10 against exact
search. Candidates within ``epsilon`` of the best validation value are tied; ties go to the
higher Recall@10 vs exact (a finer-grained signal than nDCG on a few dozen queries), then lower
search latency, then fewer bytes. The test queries are evaluated once, for the pick.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Unpack, cast

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from embadvisor.advisor import rank
from embadvisor.advisor.core import Evaluation, Evaluator, Pick, Proposal
from embadvisor.advisor.recommend import RunOptions, run
from embadvisor.advisor.result import Recommendation
from embadvisor.errors import EmbAdvisorError, InvalidConfigError
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


class VectorSearch(Evaluator):
    """The frozen-vector compressors as an :class:`~embadvisor.advisor.core.Evaluator`. See the module docstring."""

    full_method = FULL
    full_note = "The uncompressed float32 corpus fits the budget ({}). "
    input = "vectors"
    listed_minimums = 9

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
        self.n_candidates = 1 if self.feasible == [FULL] else settings.trials

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

    def infeasible(self) -> tuple[str, str]:
        return (f"no compressor fits {format_size(self.s.budget_bytes)} for the {self.w.data.num_vectors:,} x "
                f"{self.w.data.dim} corpus (float32 {format_size(self.target_full)})",
                "reduce the corpus (fewer or shorter vectors)")

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

    def nbytes(self, proposal: Proposal) -> VectorPlan:
        return self.solve_target(proposal.method, proposal.use, proposal.fixed)

    def evaluate(self, trial: optuna.Trial, proposal: Proposal, plan: VectorPlan, rung: int) -> Evaluation:
        """Fit the compressor on the corpus (timed) and score it on the validation queries."""
        assert plan.config is not None  # the pipeline evaluates feasible plans only
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
        return Evaluation(float(val[self.metric]), {
            "serve_bytes": index.nbytes, "train_bytes": index.nbytes, "validation": val, "train_seconds": seconds,
            "compress_seconds": seconds, "latency_ms": val["latency_ms"]})

    # -- the pipeline's hooks (embadvisor.advisor.core.Evaluator) ------------------------------------
    def study_key(self) -> dict[str, Any]:
        return study_key(self.w, self.s)

    @property
    def metric(self) -> str:
        return self.w.metric

    @property
    def target_name(self) -> str:
        return self.w.data.name

    @property
    def n_finalists(self) -> int:
        return self.s.top

    def choose(self, study: optuna.Study, cands: list[rank.Candidate]) -> tuple[rank.Candidate, float, str]:
        recall = {t.number: float(t.user_attrs.get("validation", {}).get("recall@10_exact", 0.0))
                  for t in study.trials}
        eps = self.s.epsilon if self.s.epsilon is not None else 0.005
        return rank.choose(cands, eps, RecallTieBreak(self.metric, recall))

    def pick(self, study: optuna.Study, win: rank.Candidate, *, on_phase: Callable[[str], None] | None) -> Pick:
        """Compress the corpus with the pick again and evaluate the test queries once."""
        if on_phase:
            on_phase("evaluating the pick on the test queries")
        plan = self.solve_target(win.method, win.use, win.fixed)
        assert plan.config is not None  # it fitted during the search
        index, seconds = compress(plan.config, self.w.data.corpus)
        test = evaluate_index(index, self.w.test)
        val_all = study.trials[win.trial].user_attrs.get("validation", {})
        return Pick(plan, index.nbytes, index.nbytes, val_all, test, {"compress_seconds": seconds})

    def config(self, rec: Recommendation, win: rank.Candidate, pick: Pick) -> dict[str, Any]:
        """The entries :func:`embadvisor.vectors.build_index` rebuilds the index from."""
        d, plan = self.w.data, pick.plan
        return {
            "memory": {"serve_bytes": rec.serve_bytes, "full_bytes": d.full_bytes,
                       "breakdown": {k[len("serve:"):]: v for k, v in plan.memory.breakdown.items()
                                     if k.startswith("serve:")}},
            "metrics": {"name": rec.metric.name, "validation": rec.metric.validation, "test": rec.metric.test,
                        "test_all": rec.metric.test_all},
            "plan": {"name": plan.method, "params": plan.params(), "num_vectors": d.num_vectors, "dim": d.dim,
                     "similarity": d.similarity},
        }


class RecallTieBreak(rank.TieBreak):
    """Ties on the validation metric go to the higher Recall@10 vs exact (a finer-grained signal than nDCG on
    a few dozen queries), then lower search latency, then fewer bytes, then the simpler method."""

    def __init__(self, metric: str, recall: Mapping[int, float]) -> None:
        self.basis = self.tied_basis = f"validation {metric}"
        self.recall = recall  # by trial number

    def pick(self, tied: list[rank.Candidate]) -> tuple[rank.Candidate, str]:
        win = min(tied, key=lambda c: (-self.recall.get(c.trial, 0.0), c.latency_ms, c.serve_bytes,
                                       rank.simplicity(c.method)))
        return win, f"the highest Recall@10 vs exact ({self.recall.get(win.trial, 0.0):.4f}), then the lowest latency"

    def describe(self, c: rank.Candidate) -> str:
        return f"{c.mean:.4f}"


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


def recommend_vectors(workload: VectorWorkload, settings: VectorSearchSettings,
                      **options: Unpack[RunOptions]) -> Recommendation:
    """Search, rank and recommend a compressor for a frozen corpus; the result is also stored on the study.
    Options as for :func:`embadvisor.advisor.recommend.run` (one process: no ``workers``)."""
    return run(VectorSearch(workload, settings), **options)


def load_workload(vectors: Path, *, queries: Path | None, qrels: Path | None, doc_ids: Path | None,
                  query_ids: Path | None, similarity: str, seed: int) -> VectorWorkload:
    """Read and validate the files, then split the queries (what ``recommend --vectors`` does)."""
    data = load_vector_data(vectors, queries=queries, qrels=qrels, doc_ids=doc_ids, query_ids=query_ids,
                            similarity=similarity)
    return vector_workload(data, seed=seed)


