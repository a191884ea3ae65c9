"""Budget-aware Optuna search over compression methods and their settings.

Feasibility first: every method is solved analytically for the target before any training;
methods that cannot meet the budget are never proposed. The search space is parameterised
relative to the budget: a trial picks a method, the share of the budget to use, and the method's
other hyperparameters; the size knob is then solved so every sampled configuration fits by
construction (Optuna's constraints are soft and would not guarantee it). Parameter names are
namespaced per method (``qr.operation``) since Optuna refuses one name with two distributions.

Single-objective (validation metric), TPE with ``multivariate=True, group=True`` over the conditional
space; every feasible method's solver default is enqueued first, so each method is evaluated at least
once. How long a trial trains comes from a calibrated successive-halving schedule
(:mod:`embadvisor.advisor.schedule`): every candidate gets a short run, the best third a longer one,
and the best of those train to convergence. Trials record the method, the full config, serving and
training bytes (target and proxy), the rung, the learning curve, validation metrics, training time,
latency and failure reasons as user attributes (visible in optuna-dashboard).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from embadvisor.advisor.resume import CanonicalSampler
from embadvisor.advisor.schedule import Calibration, Schedule, promotions, rung_of
from embadvisor.advisor.workloads import Workload
from embadvisor.defaults import DEFAULT_LR, DEFAULT_THREADS
from embadvisor.errors import EmbAdvisorError, InfeasibleError, InvalidConfigError
from embadvisor.methods import Plan, get_method, list_methods, solve
from embadvisor.tasks.api import TrainReport, convergence_config, serve_bytes_over, train
from embadvisor.tasks.trainer import TrainConfig, TrainingDiverged, default_eval_every
from embadvisor.units import format_size
from embadvisor.version import __version__

__all__ = ["LR_RANGE", "SearchSettings", "StudyMismatch", "Search", "is_counted", "run_study", "study_key"]

BUDGET_USE = (0.6, 1.0)
#: the learning rate a sampled trial uses is the base ``train.lr`` times a factor from this range (log-uniform);
#: solver defaults use the base. Sparse tables and compressed parameterisations often want a larger step
#: than the dense MLP default, and methods differ in how much.
LR_RANGE = (1 / 3, 10.0)
#: calibration trains at most this many epochs (early stopping ends it sooner)
CALIBRATION_EPOCHS = 30
#: retrieval trials evaluate on this many validation users (a fixed seeded sample) during the search
EVAL_USERS = 5000


class StudyMismatch(EmbAdvisorError):
    """A study name is reused with a different workload, budget or settings."""


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


def default_study_name(key: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{key['task']}-{key['target']}-{format_size(key['budget_bytes']).replace(' ', '')}-{key['scope']}-{digest}"


def suggest(trial: optuna.Trial, name: str, dist: BaseDistribution) -> Any:
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    raise InvalidConfigError(f"unsupported distribution {dist!r} for {name}")


class Search:
    """One study: feasibility, trials, ranking inputs. See the module docstring."""

    def __init__(self, workload: Workload, settings: SearchSettings) -> None:
        self.w = workload
        self.s = settings
        self.dim = workload.dim
        self.target_tables = workload.target.tables()
        self.proxy_tables = workload.data.tables(self.dim)
        opt = settings.train.optimizer
        self.target_full = full_bytes(self.target_tables, settings.scope, opt)
        self.proxy_full = full_bytes(self.proxy_tables, settings.scope, opt)
        self.ratio = settings.budget_bytes / self.target_full
        self.proxy_budget = self.ratio * self.proxy_full
        names = settings.methods or tuple(list_methods())
        self.plans = {m: self.solve_target(m, 1.0, {}) for m in names}
        self.feasible = [m for m, p in self.plans.items() if p.feasible]
        #: rung-0 candidates
        self.n_candidates = settings.trials or 2 * max(1, len(self.feasible))
        #: the rungs (set by calibration when the settings leave them open)
        self.schedule: Schedule | None = settings.schedule
        #: wall-clock time after which no trial starts and running ones stop training (epoch seconds)
        self.deadline: float | None = None

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

    def solve_proxy(self, method: str, use: float, fixed: dict[str, Any]) -> Plan:
        if not self.w.proxy:
            return self.solve_target(method, use, fixed)
        return solve(method, self.proxy_tables, self.proxy_budget * use, scope=self.s.scope,
                     optimizer=self.s.train.optimizer, fixed=fixed)

    def check_feasible(self) -> None:
        """Raise :class:`InfeasibleError` with every method's minimum budget when nothing fits."""
        if self.feasible:
            return
        mins = sorted((p.min_budget_bytes, m) for m, p in self.plans.items() if p.min_budget_bytes > 0)
        listing = ", ".join(f"{m} {format_size(b)}" for b, m in mins[:8])
        raise InfeasibleError(
            f"no method fits {format_size(self.s.budget_bytes)} ({self.s.scope}) for {self.w.target.name} "
            f"(full tables {format_size(self.target_full)}). Minimum budgets: {listing}.",
            [f"raise --budget to at least {format_size(mins[0][0])}" if mins else "raise --budget",
             "use --budget-scope serve if you passed train" if self.s.scope == "train" else "lower the embedding dim"],
        )

    def space(self, method: str) -> dict[str, BaseDistribution]:
        """The method's own hyperparameters (not its size knob), from its largest proxy table."""
        cls = get_method(method)
        table = max(self.proxy_tables, key=lambda t: t.num_embeddings)
        space = cls.search_space(table)
        return {k: v for k, v in space.items() if k != cls.size_knob and k != "seed"}

    # -- trials --------------------------------------------------------------------------------
    def enqueue_defaults(self, study: optuna.Study) -> None:
        """Each feasible method's solver default, simplest methods first (so a time limit cuts the costly ones)."""
        from embadvisor.advisor.rank import simplicity

        done = {t.params.get("method") for t in study.trials}
        for m in sorted(self.feasible, key=lambda m: (simplicity(m), m))[: self.n_candidates]:
            if m not in done:
                study.enqueue_trial({"method": m, f"{m}.budget_use": 1.0},
                                    user_attrs={"solver_default": True, "rung": 0}, skip_if_exists=True)

    def objective(self, trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        if is_surplus(trial, self.n_candidates):
            # another worker started the rung's last trial a moment before this one was created
            trial.set_user_attr("surplus", True)
            raise optuna.TrialPruned("surplus: the rung already has its trials")
        try:
            return self._objective(trial)
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)  # Optuna marks it failed; it does not count
            raise

    def _objective(self, trial: optuna.Trial) -> float:
        rung = rung_of(trial)  # type: ignore[arg-type]
        trial.set_user_attr("rung", rung)
        method = trial.suggest_categorical("method", self.feasible)
        use = 1.0 if method == "full" else trial.suggest_float(f"{method}.budget_use", *BUDGET_USE)
        # the enqueued default leaves every setting to the solver (e.g. dpq's per-table codebooks)
        default = bool(trial.user_attrs.get("solver_default"))
        fixed = {} if default else {k: suggest(trial, f"{method}.{k}", d) for k, d in self.space(method).items()}
        base_lr = self.s.train.lr
        lr = base_lr if default or not self.s.search_lr else trial.suggest_float(
            f"{method}.lr", base_lr * LR_RANGE[0], base_lr * LR_RANGE[1], log=True)
        target = self.solve_target(method, use, fixed)
        proxy = self.solve_proxy(method, use, fixed)
        trial.set_user_attr("method", method)
        trial.set_user_attr("fixed", fixed)
        trial.set_user_attr("lr", lr)
        if not (target.feasible and proxy.feasible):
            reason = target.reason or proxy.reason or "infeasible"
            trial.set_user_attr("failure", f"settings do not fit the budget: {reason}")
            raise optuna.TrialPruned(reason)
        trial.set_user_attr("params", target.params())
        trial.set_user_attr("serve_bytes", target.memory.serve_bytes)
        trial.set_user_attr("train_bytes", target.memory.train_bytes)
        trial.set_user_attr("proxy_serve_bytes", proxy.memory.serve_bytes)
        trial.set_constraint("memory_over_budget", float(target.bytes - self.s.budget_bytes))

        cfg = self.trial_config(rung, self.s.seed, lr)
        trial.set_user_attr("resource", cfg.max_samples)

        def report(step: int, value: float, final_samples: int | None) -> None:
            if final_samples is not None:
                trial.report(value, final_samples)

        try:
            rep = train(self.w.data, proxy, model=self.s.model, dim=self.dim, config=cfg, callback=report,
                        seed=self.s.seed, engine_options=self.engine_options(sampled=True))
        except TrainingDiverged as e:
            trial.set_user_attr("failure", str(e))
            raise
        except Exception as e:  # a trial that raises is recorded as failed; the search goes on
            trial.set_user_attr("failure", f"{type(e).__name__}: {e}")
            raise
        metric = self.w.data.metric
        f = rep.fit
        trial.set_user_attr("measured_proxy_serve_bytes", f.serve_bytes)
        limit = proxy.memory.serve_bytes if self.s.scope == "serve" else None
        if limit is not None and serve_bytes_over(limit, f.serve_bytes):
            # data-dependent methods (e.g. dedup without enough similar blocks) can miss their target
            msg = (f"the trained serving form holds {f.serve_bytes:,} bytes, more than its budget share "
                   f"{limit:,}: target unreachable on this data")
            trial.set_user_attr("failure", msg)
            raise RuntimeError(msg)
        trial.set_user_attr("validation", f.validation)
        trial.set_user_attr("train_seconds", f.train_seconds)
        trial.set_user_attr("latency_ms", f.latency_ms)
        trial.set_user_attr("samples", f.samples)
        trial.set_user_attr("steps", f.steps)
        trial.set_user_attr("stopped", f.stopped)
        trial.set_user_attr("converged", f.converged)
        trial.set_user_attr("rise", f.rise)
        trial.set_user_attr("curve", [[int(a), float(v)] for a, v in f.curve])
        trial.set_user_attr("final_curve", [[int(a), float(v)] for a, v in f.final_curve])
        return float(f.validation[metric])

    def calibrate(self, time_cap_s: float | None = None) -> Calibration:
        """Train the simplest feasible single-stage method with early stopping and measure its convergence
        horizon, speed and evaluation cost (see :mod:`embadvisor.advisor.schedule`)."""
        from embadvisor.advisor.rank import simplicity

        single = [m for m in self.feasible if len(get_method(m).stages) == 1] or self.feasible
        method = min(single, key=lambda m: (simplicity(m), m))
        proxy = self.solve_proxy(method, 1.0, {})
        n, t = self.w.data.num_train, self.s.train
        every = default_eval_every(n, t.batch_size) * t.batch_size
        cap = t.time_budget_s if time_cap_s is None else min(time_cap_s, t.time_budget_s or math.inf)
        cfg = convergence_config(self.w.data, optimizer=t.optimizer, batch_size=t.batch_size, seed=self.s.seed,
                                 threads=t.threads, evaluate_test=False, max_samples=CALIBRATION_EPOCHS * max(n, 1),
                                 time_budget_s=cap, **self.lr_fields(t.lr))
        t0 = time.perf_counter()
        rep = train(self.w.data, proxy, model=self.s.model, dim=self.dim, config=cfg, seed=self.s.seed,
                    engine_options=self.engine_options(sampled=True))
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
                     engine_options=self.engine_options(sampled=False))


def trial_counts(study: optuna.Study) -> dict[str, int]:
    states = [t.state for t in study.trials]
    return {
        "complete": states.count(TrialState.COMPLETE),
        "pruned": states.count(TrialState.PRUNED),
        "failed": states.count(TrialState.FAIL),
    }


def is_counted(t: optuna.trial.FrozenTrial) -> bool:
    """Whether a finished trial counts toward the study's trial budget.

    Complete and pruned trials count, and failed ones whose objective recorded why (an exception,
    a divergence). Trials failed because their worker died (a stale heartbeat: Optuna re-runs them
    as a new trial; or ``abandoned`` by a killed lone process, see :mod:`embadvisor.advisor.resume`),
    interrupted with Ctrl-C, or closed as surplus do not count.
    """
    if t.user_attrs.get("surplus") or t.user_attrs.get("interrupted") or t.user_attrs.get("abandoned"):
        return False
    if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return t.state == TrialState.FAIL and "failure" in t.user_attrs


def is_surplus(trial: optuna.Trial, n_candidates: int) -> bool:
    """True when the trial's rung already had its trials before this one was created: ``n_candidates``
    counted or running rung-0 trials, or (at a later rung) an earlier trial promoted from the same parent."""
    rung = rung_of(trial)  # type: ignore[arg-type]
    before = [t for t in trial.study.get_trials(deepcopy=False)
              if t.number < trial.number and rung_of(t) == rung and (t.state == TrialState.RUNNING or is_counted(t))]
    if rung == 0:
        return len(before) >= n_candidates
    parent = trial.user_attrs.get("parent")
    return any(t.user_attrs.get("parent") == parent for t in before)


def heartbeat_enabled(study: optuna.Study) -> bool:
    from optuna.storages._heartbeat import is_heartbeat_enabled  # the check Study.optimize itself uses

    return is_heartbeat_enabled(study._storage)


def next_step(search: Search, study: optuna.Study) -> str:
    """What a worker does next: ``run`` a trial, ``wait`` for running ones, or stop (``done``).

    Rung 0 takes trials until it has ``n_candidates``; once every trial of rung k has finished, the
    promoted configurations (:func:`embadvisor.advisor.schedule.promotions`) are enqueued at rung k+1.
    """
    assert search.schedule is not None
    sch = search.schedule
    trials = study.get_trials(deepcopy=False)
    by_rung: dict[int, list[optuna.trial.FrozenTrial]] = {}
    for t in trials:
        by_rung.setdefault(rung_of(t), []).append(t)
    rung0 = by_rung.get(0, [])
    counted0 = sum(map(is_counted, rung0))
    running0 = sum(t.state == TrialState.RUNNING for t in rung0)
    if counted0 + running0 < search.n_candidates:
        return "run"
    for k in range(sch.last + 1):
        here = by_rung.get(k, [])
        if any(t.state == TrialState.WAITING for t in here) and k > 0:
            return "run"
        if any(t.state == TrialState.RUNNING for t in here):
            return "wait"
        if k == sch.last:
            return "done"
        minimum = min(search.s.retrain_top, search.n_candidates) if k == sch.last - 1 else 1
        promoted = promotions(trials, k, sch.eta, minimum=minimum,
                              doublings=math.log2(sch.rungs[-1] / max(1, sch.rungs[k])))
        have = {t.user_attrs.get("parent") for t in by_rung.get(k + 1, [])
                if t.state != TrialState.FAIL or is_counted(t)}
        missing = [p for p in promoted if p.number not in have]
        for p in missing:
            study.enqueue_trial(p.params, user_attrs={"rung": k + 1, "parent": p.number,
                                                      "solver_default": bool(p.user_attrs.get("solver_default"))})
        if missing:
            return "run"
    return "done"


def run_study(
    search: Search,
    study: optuna.Study,
    *,
    on_trial: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
    deadline: float | None = None,
    poll_s: float = 1.0,
) -> None:
    """Run trials rung by rung (:func:`next_step`) until the last rung is done or the deadline passes.

    Safe with many workers on one study: a rung-0 trial is started only while counted + running rung-0
    trials are fewer than ``n_candidates``, and a rung is promoted only once all its trials finished;
    with heartbeats (RDB storages) Optuna fails and re-runs the trials of dead workers
    (``fail_stale_trials`` + the retry callback).
    """
    if deadline is None and search.s.time_limit_s is not None:
        deadline = time.time() + search.s.time_limit_s
    search.deadline = deadline
    heartbeat = heartbeat_enabled(study)
    callbacks = [on_trial] if on_trial else []
    waited = 0.0
    while deadline is None or time.time() < deadline:
        step = next_step(search, study)
        if step == "done":
            return
        if step == "wait":
            if heartbeat:
                optuna.storages.fail_stale_trials(study)
            elif waited > STALL_S:
                return  # without heartbeats a dead worker's trial cannot be told from a live one
            time.sleep(poll_s)
            waited += poll_s
            continue
        waited = 0.0
        study.optimize(search.objective, n_trials=1, catch=(Exception,), callbacks=callbacks, gc_after_trial=True)


#: without heartbeats, a worker waiting for other workers' running trials gives up after this long
STALL_S = 1800.0


def make_study(search: Search, storage: Any, name: str, key: dict[str, Any], *,
               sampler_seed: int | None = None) -> optuna.Study:
    """Create or resume the study; refuse a name already used for another workload or budget.

    ``sampler_seed`` (default: the search seed) must differ between workers of one study, or
    seeded samplers that see the same history propose the same parameters.
    """
    s = search.s
    seed = s.seed if sampler_seed is None else sampler_seed
    # TPE whose proposals survive kills and resumes (embadvisor.advisor.resume)
    sampler = CanonicalSampler(seed, multivariate=True, group=True, n_startup_trials=4)
    pruner = optuna.pruners.NopPruner()  # the rungs decide (embadvisor.advisor.schedule)
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize", sampler=sampler,
                                pruner=pruner, load_if_exists=True)
    old = study.user_attrs.get("key")
    if old is None:
        study.set_user_attr("key", key)
        study.set_user_attr("created", time.strftime("%Y-%m-%dT%H:%M:%S"))
    elif json.loads(json.dumps(old, default=str)) != json.loads(json.dumps(key, default=str)):
        diff = [k for k in key if json.dumps(old.get(k), default=str) != json.dumps(key[k], default=str)]
        what = "; ".join(f"{k}: study has {old.get(k)!r}, this run {key[k]!r}" for k in diff[:3])
        raise StudyMismatch(f"study {name!r} was created for a different search ({what}). Pick another --study "
                            "name, or drop --study to get one derived from the inputs.")
    return study


def is_finite(x: float) -> bool:
    return x is not None and math.isfinite(x)
