"""Budget-aware Optuna search over compression methods for embedding tables: the tables' input of the
one search/recommend pipeline (:class:`Search`, an :class:`~embadvisor.advisor.core.Evaluator`).

Feasibility first: every method is solved analytically for the target before any training;
methods that cannot meet the budget are never proposed. The search space is parameterised
relative to the budget: a trial picks a method, the share of the budget to use, and the method's
other hyperparameters; the size knob is then solved so every sampled configuration fits by
construction (Optuna's constraints are soft and would not guarantee it). Parameter names are
namespaced per method (``qr.operation``) since Optuna refuses one name with two distributions.

Single-objective (validation metric), TPE with ``multivariate=True, group=True`` over the conditional
space; every feasible method's solver default is enqueued first, so each method is evaluated at least
once. How long a trial trains comes from a calibrated successive-halving schedule
(:mod:`embadvisor.advisor.schedule`, calibrated by :meth:`Search.start`): every candidate gets a short
run, the best third a longer one, and the best of those train to convergence; the finalists are then
re-trained with fresh seeds (:meth:`Search.finalists`). Trials record the method, the full config,
serving and training bytes (target and proxy), the rung, the learning curve, validation metrics,
training time, latency and failure reasons as user attributes (visible in optuna-dashboard). The study
machinery (objective wrapper, rungs, study creation) is :mod:`embadvisor.advisor.core`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import TrialState

from embadvisor.advisor import rank
from embadvisor.advisor.core import (
    BUDGET_USE,
    Evaluation,
    Evaluator,
    Pick,
    Proposal,
    StudyMismatch,
    default_study_name,
    is_counted,
    make_study,
    next_step,
    run_study,
    suggest,
    trial_counts,
)
from embadvisor.advisor.result import TrainingEvidence
from embadvisor.advisor.schedule import Calibration, Schedule, estimate_seconds, rung_of, schedule_from
from embadvisor.advisor.workloads import Workload
from embadvisor.defaults import DEFAULT_LR, DEFAULT_THREADS
from embadvisor.devices import release_device_memory
from embadvisor.errors import DeviceOutOfMemory, InvalidConfigError
from embadvisor.methods import Plan, get_method, list_methods, solve
from embadvisor.tasks.api import TrainReport, convergence_config, serve_bytes_over, train
from embadvisor.tasks.trainer import MAX_LR, TrainConfig, TrainingDiverged, default_eval_every
from embadvisor.units import format_size
from embadvisor.version import __version__

if TYPE_CHECKING:
    from embadvisor.advisor.rank import Candidate
    from embadvisor.advisor.result import Recommendation

# the study machinery moved to embadvisor.advisor.core; these names stay importable from here
__all__ = ["LR_RANGE", "Search", "SearchSettings", "StudyMismatch", "default_study_name", "full_bytes",
           "is_counted", "make_study", "next_step", "run_study", "study_key", "trial_counts"]

#: the learning rate a sampled trial uses is the base ``train.lr`` times a factor from this range (log-uniform);
#: solver defaults use the base. Sparse tables and compressed parameterisations often want a larger step
#: than the dense MLP default, and methods differ in how much.
LR_RANGE = (1 / 3, 10.0)
#: calibration trains at most this many epochs (early stopping ends it sooner)
CALIBRATION_EPOCHS = 30
#: retrieval trials evaluate on this many validation users (a fixed seeded sample) during the search
EVAL_USERS = 5000
#: default time limit of a recommendation on a built-in workload (seconds, calibration included): the
#: README's main job finishes within 5 minutes on 2 cores
BUILTIN_TIME_LIMIT_S = 270.0
#: default time limit on the user's data: this many times the calibrated estimate (methods slower than
#: the calibrated one need the slack); ``time_limit_s`` caps it
ESTIMATE_SLACK = 1.5
#: share of the time limit calibration may use at most (and at most CALIBRATION_MAX_S)
CALIBRATION_SHARE = 0.2
CALIBRATION_MAX_S = 600.0


@dataclass(frozen=True)
class SearchSettings:
    """What to search and how.

    Args:
        budget_bytes: memory budget for the target's embedding tables.
        scope: ``serve`` (serving storage) or ``train`` (training memory incl. optimizer state).
        model: CTR model (ignored for retrieval).
        methods: restrict the search to these methods (default: all registered).
        trials: candidates trained at the first rung (None = twice the feasible methods: each method's
            solver default and as many sampled settings); promoted candidates are extra trials.
        time_limit_s: cap on the whole recommendation (calibration, search, finalists); None = derived
            from the calibrated estimate (see :func:`embadvisor.advisor.recommend.recommend`).
        seed: sampler and training seed.
        train: base training settings of each trial (batch size, learning rate, optimizer, threads).
        schedule: the rungs; None = calibrated on the data before the search.
        retrain_top: how many of the best configurations of the last rung are re-trained before the pick.
        retrain_seeds: fresh seeds per re-trained configuration (trained to convergence, all users).
        epsilon: stated noise level of the metric (AUC points, or relative for recall); the larger
            of this and the measured seed spread decides what counts as a tie.
        eval_users: retrieval trials evaluate on a fixed seeded sample of this many validation users
            during the search (None = all); finalists and reported figures always use all users.
        search_lr: whether sampled trials search the learning rate (:data:`LR_RANGE` times ``train.lr``).
    """

    budget_bytes: int
    scope: str = "serve"
    model: str = "dlrm"
    methods: tuple[str, ...] | None = None
    trials: int | None = None
    time_limit_s: float | None = None
    seed: int = 0
    train: TrainConfig = field(default_factory=TrainConfig)
    schedule: Schedule | None = None
    retrain_top: int = 2
    retrain_seeds: int = 2
    epsilon: float | None = None
    eval_users: int | None = EVAL_USERS
    search_lr: bool = True

    def __post_init__(self) -> None:
        if self.scope not in ("serve", "train"):
            raise InvalidConfigError(f"`scope` must be 'serve' or 'train', but got scope={self.scope!r}.")
        if self.trials is not None and self.trials < 1:
            raise InvalidConfigError(f"`trials` must be >= 1, but got trials={self.trials!r}.")
        if self.search_lr and self.train.lr * LR_RANGE[1] > MAX_LR:  # sampled trials train at up to 10x the base
            raise InvalidConfigError(
                f"`lr` must be at most {MAX_LR / LR_RANGE[1]:g} (sampled trials search up to {LR_RANGE[1]:g}x "
                f"of it), but got lr={self.train.lr!r}. Pass a learning rate such as --lr 0.001.")
        if self.retrain_top < 1 or self.retrain_seeds < 1:
            raise InvalidConfigError("`retrain_top` and `retrain_seeds` must be >= 1, but got "
                                     f"retrain_top={self.retrain_top!r}, retrain_seeds={self.retrain_seeds!r}.")
        if self.methods is not None:
            for m in self.methods:
                get_method(m)

    @classmethod
    def for_task(cls, task: str, budget_bytes: int, *, num_train: int | None = None, batch_size: int | None = None,
                 lr: float = DEFAULT_LR, threads: int | None = DEFAULT_THREADS, seed: int = 0,
                 rungs: Sequence[int] | None = None, **overrides: Any) -> SearchSettings:
        """The settings ``embadvisor recommend`` uses for ``task``: the task's batch size (halved on small
        data, see :func:`embadvisor.tasks.api.default_batch_size`; ``num_train`` is the training rows or
        interactions), the base learning rate, ``threads`` torch threads, the rungs (None = calibrated on the
        data); ``overrides`` set any other field (``scope``, ``model``, ``methods``, ``trials``, ...)."""
        from embadvisor.tasks.api import DEFAULT_BATCH, default_batch_size

        if task not in DEFAULT_BATCH:
            raise InvalidConfigError(f"`task` must be 'ctr' or 'retrieval', but got task={task!r}.")
        bs = batch_size or (default_batch_size(task, num_train) if num_train is not None else DEFAULT_BATCH[task])
        schedule = Schedule.from_rungs(list(rungs), bs) if rungs is not None else overrides.pop("schedule", None)
        train = TrainConfig(batch_size=bs, lr=lr, threads=threads, seed=seed)
        return cls(budget_bytes=budget_bytes, seed=seed, train=train, schedule=schedule, **overrides)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (stored on the study so workers on other machines run the same search)."""
        d = dataclasses.asdict(self)
        d["methods"] = list(self.methods) if self.methods is not None else None
        d["schedule"] = self.schedule.to_dict() if self.schedule is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchSettings:
        d = dict(d)
        d["train"] = TrainConfig(**d.get("train", {}))
        d["methods"] = tuple(d["methods"]) if d.get("methods") is not None else None
        d["schedule"] = Schedule.from_dict(d["schedule"]) if d.get("schedule") else None
        return cls(**d)


def full_bytes(tables: list[Any], scope: str, optimizer: str) -> int:
    """Bytes of the uncompressed tables in ``scope`` (what a budget share such as ``12.5%`` is a share of)."""
    return solve("full", tables, 2**62, scope=scope, optimizer=optimizer, layout="per_field").bytes


def study_key(workload: Workload, settings: SearchSettings) -> dict[str, Any]:
    """Everything that must match for trials to be comparable (stored on the study)."""
    return {
        "embadvisor": __version__,
        "registry": ",".join(list_methods()),
        "task": workload.task,
        "target": workload.target.name,
        "target_hash": hashlib.sha256(json.dumps(workload.target.to_dict(), sort_keys=True).encode()).hexdigest()[:16],
        "data_fingerprint": workload.data.fingerprint,
        "budget_bytes": settings.budget_bytes,
        "scope": settings.scope,
        "model": settings.model if workload.task == "ctr" else "two-tower",
        "methods": sorted(settings.methods) if settings.methods else "all",
        "train": dataclasses.asdict(settings.train) | {"seed": settings.seed, "threads": None},
        "search": {"eval_users": settings.eval_users, "search_lr": settings.search_lr,
                   "schedule": settings.schedule.to_dict() if settings.schedule is not None else "calibrated"},
    }


class Search(Evaluator):
    """The embedding-table input of the one search/recommend pipeline (:class:`~embadvisor.advisor.core.Evaluator`):
    feasibility, trials trained rung by rung, finalists re-trained with fresh seeds. See the module docstring."""

    def __init__(self, workload: Workload, settings: SearchSettings, *, device: str = "cpu") -> None:
        self.w = workload
        self.s = settings
        #: where this process trains (``cpu``, ``cuda``, ``cuda:N``): not part of the study key, so workers on
        #: other machines use their own
        self.device = device
        self.dim = workload.dim
        self.target_tables = workload.target.tables()
        self.proxy_tables = workload.data.tables(self.dim)
        opt = settings.train.optimizer
        self.target_full = full_bytes(self.target_tables, settings.scope, opt)
        self.proxy_full = full_bytes(self.proxy_tables, settings.scope, opt)
        self.ratio = settings.budget_bytes / self.target_full
        self.proxy_budget = self.ratio * self.proxy_full
        names = settings.methods or tuple(list_methods())
        self.plans = {m: self._plan(m) for m in names}
        self.feasible = [m for m, p in self.plans.items() if p.feasible]
        #: rung-0 candidates
        self.n_candidates = settings.trials or 2 * max(1, len(self.feasible))
        #: the rungs (set by calibration when the settings leave them open)
        self.schedule: Schedule | None = settings.schedule
        #: wall-clock time after which no trial starts and running ones stop training (epoch seconds)
        self.deadline: float | None = None
        #: what :meth:`start` measured or derived: the calibration, the estimate and the time limit
        self.calibration: dict[str, Any] | None = None
        self.estimate: dict[str, float] | None = None
        self.time_limit: float | None = None
        #: the first fresh-seed training report of each finalist (by candidate key)
        self.reports: dict[str, TrainReport] = {}

    def engine_options(self, *, sampled: bool) -> dict[str, Any]:
        """Task-engine options: retrieval evaluates a seeded user sample during the search."""
        if self.w.task == "retrieval" and sampled and self.s.eval_users:
            return {"eval_users": self.s.eval_users, "eval_seed": self.s.seed}
        return {}

    def time_cap(self) -> float | None:
        """Seconds a training run may take: ``train.time_budget_s``, and no further than the deadline."""
        cap = self.s.train.time_budget_s
        if self.deadline is not None:
            left = max(1.0, self.deadline - time.time())
            cap = left if cap is None else min(cap, left)
        return cap

    def lr_fields(self, lr: float) -> dict[str, Any]:
        """``lr`` for the model, and the embedding lr scaled by the same factor when one is set apart."""
        t = self.s.train
        return {"lr": lr, "embedding_lr": None if t.embedding_lr is None else t.embedding_lr * lr / t.lr}

    def trial_config(self, rung: int, seed: int, lr: float) -> TrainConfig:
        """Training settings of a trial at ``rung``."""
        if self.schedule is None:
            raise InvalidConfigError("the search has no schedule yet: calibrate first (recommend() does it).")
        sch = self.schedule
        return dataclasses.replace(self.s.train, evaluate_test=False, seed=seed, max_samples=sch.rungs[rung],
                                   eval_every_samples=sch.every(rung), stage_samples=sch.stage_samples_at(rung),
                                   patience=sch.patience_at(rung), time_budget_s=self.time_cap(),
                                   **self.lr_fields(lr))

    # -- planning --------------------------------------------------------------------------
    def solve_target(self, method: str, use: float, fixed: dict[str, Any]) -> Plan:
        return solve(method, self.target_tables, self.s.budget_bytes * use, scope=self.s.scope,
                     optimizer=self.s.train.optimizer, fixed=fixed)

    def _plan(self, method: str) -> Plan:
        """The method's plan for the target; infeasible too when its share of the budget does not fit the
        proxy trained here (whose small fields keep 16 ids, so its scaled budget can miss their minimum), with
        the target budget the proxy needs as the minimum."""
        plan = self.solve_target(method, 1.0, {})
        if not (plan.feasible and self.w.proxy):
            return plan
        proxy = self.solve_proxy(method, 1.0, {})
        if proxy.feasible:
            return plan
        need = max(plan.min_budget_bytes, math.ceil(proxy.min_budget_bytes * self.target_full / self.proxy_full))
        return dataclasses.replace(plan, feasible=False, min_budget_bytes=need,
                                   reason=f"the proxy trained here needs at least {format_size(need)} of the "
                                          "target's budget")

    def solve_proxy(self, method: str, use: float, fixed: dict[str, Any]) -> Plan:
        if not self.w.proxy:
            return self.solve_target(method, use, fixed)
        return solve(method, self.proxy_tables, self.proxy_budget * use, scope=self.s.scope,
                     optimizer=self.s.train.optimizer, fixed=fixed)

    def infeasible(self) -> tuple[str, str]:
        return (f"no method fits {format_size(self.s.budget_bytes)} ({self.s.scope}) for {self.w.target.name} "
                f"(full tables {format_size(self.target_full)})",
                "use --budget-scope serve if you passed train" if self.s.scope == "train" else "lower the embedding dim")

    def space(self, method: str) -> dict[str, BaseDistribution]:
        """The method's own hyperparameters (not its size knob), from its largest proxy table."""
        cls = get_method(method)
        table = max(self.proxy_tables, key=lambda t: t.num_embeddings)
        space = cls.search_space(table)
        return {k: v for k, v in space.items() if k != cls.size_knob and k != "seed"}

    # -- trials --------------------------------------------------------------------------------
    def enqueue_defaults(self, study: optuna.Study) -> None:
        """Each feasible method's solver default, simplest methods first (so a time limit cuts the costly ones)."""
        done = {t.params.get("method") for t in study.trials}
        for m in sorted(self.feasible, key=lambda m: (rank.simplicity(m), m))[: self.n_candidates]:
            if m not in done:
                study.enqueue_trial({"method": m, f"{m}.budget_use": 1.0},
                                    user_attrs={"solver_default": True, "rung": 0}, skip_if_exists=True)

    def propose(self, trial: optuna.Trial) -> Proposal:
        """A method, its budget share, its hyperparameters and a learning rate (:data:`LR_RANGE` times the base);
        the enqueued solver default leaves every setting to the solver (e.g. dpq's per-table codebooks) and
        trains at the base learning rate."""
        method = trial.suggest_categorical("method", self.feasible)
        use = 1.0 if method == self.full_method else trial.suggest_float(f"{method}.budget_use", *BUDGET_USE)
        default = bool(trial.user_attrs.get("solver_default"))
        fixed = {} if default else {k: suggest(trial, f"{method}.{k}", d) for k, d in self.space(method).items()}
        base_lr = self.s.train.lr
        lr = base_lr if default or not self.s.search_lr else trial.suggest_float(
            f"{method}.lr", base_lr * LR_RANGE[0], base_lr * LR_RANGE[1], log=True)
        return Proposal(method, use, fixed, lr)

    def nbytes(self, proposal: Proposal) -> Plan:
        """The candidate solved for the target; when it fits there but not on the proxy, the proxy's plan
        (infeasible, with the reason)."""
        target = self.solve_target(proposal.method, proposal.use, proposal.fixed)
        if not target.feasible:
            return target
        proxy = self.solve_proxy(proposal.method, proposal.use, proposal.fixed)
        return target if proxy.feasible else proxy

    def evaluate(self, trial: optuna.Trial, proposal: Proposal, plan: Plan, rung: int) -> Evaluation:
        """Train the candidate on the data (the proxy's plan) for the rung's resource."""
        proxy = self.solve_proxy(proposal.method, proposal.use, proposal.fixed)
        trial.set_user_attr("proxy_serve_bytes", proxy.memory.serve_bytes)
        assert proposal.lr is not None  # propose() always sets it
        cfg = self.trial_config(rung, self.s.seed, proposal.lr)
        trial.set_user_attr("resource", cfg.max_samples)

        def report(step: int, value: float, final_samples: int | None) -> None:
            if final_samples is not None:
                trial.report(value, final_samples)

        try:
            rep = train(self.w.data, proxy, model=self.s.model, dim=self.dim, config=cfg, callback=report,
                        seed=self.s.seed, engine_options=self.engine_options(sampled=True), device=self.device)
        except TrainingDiverged as e:
            trial.set_user_attr("failure", str(e))
            raise
        except DeviceOutOfMemory as e:  # recorded as a failed trial; the search goes on with the memory freed
            trial.set_user_attr("failure", str(e))
            release_device_memory()
            raise
        f = rep.fit
        trial.set_user_attr("measured_proxy_serve_bytes", f.serve_bytes)
        limit = proxy.memory.serve_bytes if self.s.scope == "serve" else None
        if limit is not None and serve_bytes_over(limit, f.serve_bytes):
            # data-dependent methods (e.g. dedup without enough similar blocks) can miss their target
            msg = (f"the trained serving form holds {f.serve_bytes:,} bytes, more than its budget share "
                   f"{limit:,}: target unreachable on this data")
            trial.set_user_attr("failure", msg)
            raise RuntimeError(msg)
        return Evaluation(float(f.validation[self.metric]), {
            "validation": f.validation, "train_seconds": f.train_seconds, "latency_ms": f.latency_ms,
            "samples": f.samples, "steps": f.steps, "stopped": f.stopped, "converged": f.converged, "rise": f.rise,
            "curve": [[int(a), float(v)] for a, v in f.curve],
            "final_curve": [[int(a), float(v)] for a, v in f.final_curve],
            "device": f.device, "peak_device_bytes": f.peak_device_bytes,
            "peak_train_device_bytes": f.peak_train_device_bytes})

    def calibrate(self, time_cap_s: float | None = None) -> Calibration:
        """Train the simplest feasible single-stage method with early stopping and measure its convergence
        horizon, speed and evaluation cost (see :mod:`embadvisor.advisor.schedule`)."""
        single = [m for m in self.feasible if len(get_method(m).stages) == 1] or self.feasible
        method = min(single, key=lambda m: (rank.simplicity(m), m))
        proxy = self.solve_proxy(method, 1.0, {})
        n, t = self.w.data.num_train, self.s.train
        every = default_eval_every(n, t.batch_size) * t.batch_size
        cap = t.time_budget_s if time_cap_s is None else min(time_cap_s, t.time_budget_s or math.inf)
        cfg = convergence_config(self.w.data, optimizer=t.optimizer, batch_size=t.batch_size, seed=self.s.seed,
                                 threads=t.threads, evaluate_test=False, max_samples=CALIBRATION_EPOCHS * max(n, 1),
                                 time_budget_s=cap, **self.lr_fields(t.lr))
        t0 = time.perf_counter()
        rep = train(self.w.data, proxy, model=self.s.model, dim=self.dim, config=cfg, seed=self.s.seed,
                    engine_options=self.engine_options(sampled=True), device=self.device)
        f = rep.fit
        best_at, best = max(f.final_curve, key=lambda p: (p[1], -p[0])) if f.final_curve else (f.samples, math.nan)
        return Calibration(method=method, horizon_samples=int(max(best_at, every)), samples_trained=f.samples,
                           converged=f.converged, samples_per_second=f.samples_per_second, eval_every_samples=every,
                           eval_seconds=f.eval_seconds / max(1, len(f.curve) + 1), value=float(best),
                           seconds=time.perf_counter() - t0,
                           overhead_seconds=max(0.0, time.perf_counter() - t0 - f.train_seconds - f.eval_seconds))

    def retrain(self, method: str, use: float, fixed: dict[str, Any], seed: int, *, lr: float | None = None,
                time_cap_s: float | None = None) -> TrainReport:
        """Re-train one configuration to convergence with a fresh seed exactly as ``embadvisor train`` trains by
        default (:func:`embadvisor.tasks.api.convergence_config`: evaluation every epoch or 256 steps, patience 3,
        at most 100 epochs) at the search's batch size, evaluated on all validation users; no test evaluation.
        So the reported metric is what ``embadvisor train`` reaches with these settings."""
        proxy = self.solve_proxy(method, use, fixed)
        t = self.s.train
        cap = self.time_cap()
        if time_cap_s is not None:
            cap = time_cap_s if cap is None else min(cap, time_cap_s)
        cfg = convergence_config(self.w.data, optimizer=t.optimizer, batch_size=t.batch_size, seed=seed,
                                 threads=t.threads, evaluate_test=False, time_budget_s=cap,
                                 **self.lr_fields(t.lr if lr is None else lr))
        return train(self.w.data, proxy, model=self.s.model, dim=self.dim, config=cfg, seed=seed,
                     engine_options=self.engine_options(sampled=False), device=self.device)

    # -- the pipeline's hooks (embadvisor.advisor.core.Evaluator) ------------------------------------
    def study_key(self) -> dict[str, Any]:
        return study_key(self.w, self.s)

    @property
    def metric(self) -> str:
        return str(self.w.data.metric)

    @property
    def target_name(self) -> str:
        return str(self.w.target.name)

    @property
    def proxy(self) -> bool:
        return bool(self.w.proxy)

    def spec(self) -> dict[str, Any] | None:
        return {"workload": self.w.spec, "settings": self.s.to_dict()}

    @property
    def rebuildable(self) -> bool:
        return self.w.spec is not None

    @property
    def worker_threads(self) -> int:
        return self.s.train.threads or 1

    @property
    def n_finalists(self) -> int:
        return self.s.retrain_top

    def start(self, study: optuna.Study, *, on_phase: Callable[[str], None] | None, started: float,
              t_start: float) -> tuple[float | None, float | None]:
        """Calibrate the rungs (unless the settings or the study have them) and derive the time limit: the
        settings', else :data:`BUILTIN_TIME_LIMIT_S` on a built-in workload, else :data:`ESTIMATE_SLACK` times
        the calibrated estimate; the search stops early enough to leave the finalists their estimated time."""
        settings = self.s
        builtin = bool(self.w.spec and self.w.spec.get("kind") == "default")
        limit = settings.time_limit_s if settings.time_limit_s is not None else (
            BUILTIN_TIME_LIMIT_S if builtin else None)
        cal = study.user_attrs.get("calibration")
        if self.schedule is None:
            if study.user_attrs.get("schedule"):
                self.schedule = Schedule.from_dict(study.user_attrs["schedule"])
            else:
                if on_phase:
                    on_phase("calibrating: training the simplest feasible method until validation stops improving")
                cap = CALIBRATION_MAX_S if limit is None else min(CALIBRATION_MAX_S, CALIBRATION_SHARE * limit)
                measured = self.calibrate(cap)
                cal = measured.to_dict()
                self.schedule = schedule_from(measured, settings.train.batch_size)
                study.set_user_attr("calibration", cal)
                study.set_user_attr("schedule", self.schedule.to_dict())
        sch = self.schedule
        staged = sum(len(get_method(m).stages) > 1 for m in self.feasible) / max(1, len(self.feasible))
        estimate = None
        if cal:
            estimate = estimate_seconds(sch, Calibration(**cal), self.n_candidates, settings.retrain_top,
                                        settings.retrain_seeds, staged)
            if limit is None:
                limit = ESTIMATE_SLACK * estimate["total"] + (time.perf_counter() - started)
            study.set_user_attr("estimate", estimate)
        if on_phase and estimate is not None:
            on_phase(f"estimate: {_duration(estimate['total'])} at the calibrated speed "
                     f"({self.n_candidates} candidates, rungs of {', '.join(f'{r:,}' for r in sch.rungs)} samples; "
                     f"slower methods take longer); time limit {_duration(limit) if limit else 'none'}")
        self.calibration, self.estimate, self.time_limit = cal, estimate, limit
        deadline_all = None if limit is None else t_start + limit
        reserve = 0.0 if estimate is None or limit is None else min(0.5 * limit, estimate["finalists"])
        search_deadline = None if deadline_all is None else deadline_all - reserve
        return search_deadline, deadline_all

    def finalists(self, study: optuna.Study, cands: list[Candidate], *, deadline: float | None,
                  on_phase: Callable[[str], None] | None) -> None:
        """Re-train each finalist to convergence with ``retrain_seeds`` fresh seeds (:meth:`retrain`), each run
        given an equal share of the time left."""
        settings = self.s
        if on_phase:
            on_phase(f"training the {len(cands)} finalists to convergence with {settings.retrain_seeds} fresh seeds")
        self.deadline = deadline
        metric = self.metric
        runs_left = len(cands) * settings.retrain_seeds
        for c in cands:
            for j in range(settings.retrain_seeds):
                share = None if deadline is None else max(1.0, (deadline - time.time()) / runs_left)
                rep = self.retrain(c.method, c.use, c.fixed, seed=settings.seed + 1000 + j, lr=c.lr,
                                   time_cap_s=share)
                runs_left -= 1
                f = rep.fit
                c.fresh.append(float(f.validation[metric]))
                c.fresh_latency.append(f.latency_ms)
                c.fresh_runs.append({"seed": settings.seed + 1000 + j, "value": float(f.validation[metric]),
                                     "samples": f.samples, "steps": f.steps, "converged": f.converged,
                                     "stopped": f.stopped, "rise_last_quarter": f.rise,
                                     "curve": [[int(a), float(v)] for a, v in f.curve]})
                self.reports.setdefault(c.key, rep)

    def choose(self, study: optuna.Study, cands: list[Candidate]) -> tuple[Candidate, float, str]:
        best_value = max(c.mean for c in cands)
        return rank.choose(cands, self.s.epsilon or _stated_epsilon(self.w.task, best_value))

    def pick(self, study: optuna.Study, win: Candidate, *, on_phase: Callable[[str], None] | None) -> Pick:
        """The pick's target plan, and the test split evaluated once on its first fresh-seed model."""
        rep = self.reports[win.key]
        test = rep.engine.evaluate(rep.model, "test") if rep.engine.has_split("test") else None
        plan = self.solve_target(win.method, win.use, win.fixed)
        assert self.schedule is not None
        evidence = {"trial": win.trial, "runs": len(win.fresh), "mean": win.mean, "spread": win.spread,
                    "samples": [r["samples"] for r in win.fresh_runs], "steps": [r["steps"] for r in win.fresh_runs],
                    "converged": win.converged}
        training = TrainingEvidence(
            evidence=evidence, undertrained=undertrained_note(win), search_incomplete=search_note(self, study),
            calibration=self.calibration, schedule=self.schedule.to_dict(),
            estimate_seconds=self.estimate["total"] if self.estimate else None, time_limit_s=self.time_limit)
        return Pick(plan, plan.memory.serve_bytes, plan.memory.train_bytes, rep.fit.validation, test,
                    {"training": training})

    def config(self, rec: Recommendation, win: Candidate, pick: Pick) -> dict[str, Any]:
        plan, metric, t = pick.plan, self.metric, self.s.train
        undertrained = rec.training.undertrained if rec.training is not None else None
        return {
            "memory": {"serve_bytes": plan.memory.serve_bytes, "train_bytes": plan.memory.train_bytes,
                       "full_bytes": plan.full_bytes, "breakdown": dict(plan.memory.breakdown)},
            "metrics": {"name": metric, "validation": win.mean, "spread": win.spread, "runs": len(win.fresh),
                        "samples": [r["samples"] for r in win.fresh_runs], "converged": win.converged,
                        "undertrained": (undertrained or {}).get("reason"),
                        "test": (pick.test_all or {}).get(metric), "measured_on": rec.measured_on},
            "training": {"lr": win.lr, "batch_size": t.batch_size, "optimizer": t.optimizer},
            "plan": plan.to_dict(),
        }


def _stated_epsilon(task: str, best: float) -> float:
    return 0.001 if task == "ctr" else 0.01 * max(best, 1e-9)


def undertrained_note(win: Candidate) -> dict[str, Any] | None:
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
