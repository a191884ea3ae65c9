"""Budget-aware Optuna search over compression methods and their settings.

Feasibility first: every method is solved analytically for the target before any training;
methods that cannot meet the budget are never proposed. The search space is parameterised
relative to the budget: a trial picks a method, the share of the budget to use, and the method's
other hyperparameters; the size knob is then solved so every sampled configuration fits by
construction (Optuna's constraints are soft and would not guarantee it). Parameter names are
namespaced per method (``qr.operation``) since Optuna refuses one name with two distributions.

Single-objective (validation metric) with a median pruner on the metric reported at every evaluation,
from half of a trial's steps on (:data:`PRUNE_FROM_SHARE`); TPE with ``multivariate=True, group=True`` over the conditional space; every feasible method's
solver default is enqueued first, so each method is evaluated at least once. Trials record the
method, the full config, serving and training bytes (target and proxy), validation metrics,
training time, latency and failure reasons as user attributes (visible in optuna-dashboard).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from embadvisor.advisor.workloads import Workload
from embadvisor.errors import EmbAdvisorError, InfeasibleError, InvalidConfigError
from embadvisor.methods import Plan, get_method, list_methods, solve
from embadvisor.tasks.api import TrainReport, train
from embadvisor.tasks.trainer import TrainConfig, TrainingDiverged, planned_steps
from embadvisor.units import format_size
from embadvisor.version import __version__

__all__ = ["SearchSettings", "StudyMismatch", "Search", "is_counted", "run_study", "study_key"]

BUDGET_USE = (0.6, 1.0)
#: a trial may be pruned once it has trained this share of its steps. Earlier, compressed models are
#: still near 0.5 AUC and methods that prune or search their structure during training (autosrh,
#: deeplight, pep) trail the rest: pruning at the 1st of 10 evaluations cut the eventual best methods
#: (benchmarks/advisor_quality.py, session 2), and at 20% of its steps the README main job cut
#: autosrh, the advisor_quality benchmark's best method on the synthetic Criteo workload
PRUNE_FROM_SHARE = 0.5


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
        trials: trials to run in total (a resumed study only runs the missing ones).
        time_limit_s: stop proposing new trials after this long.
        seed: sampler and training seed.
        train: training settings of each trial.
        retrain_top: how many of the best distinct configurations are re-trained before the pick.
        retrain_seeds: fresh seeds per re-trained configuration.
        retrain_factor: re-training runs this many times the trial's epochs.
        epsilon: stated noise level of the metric (AUC points, or relative for recall); the larger
            of this and the measured seed spread decides what counts as a tie.
    """

    budget_bytes: int
    scope: str = "serve"
    model: str = "dlrm"
    methods: tuple[str, ...] | None = None
    trials: int = 16
    time_limit_s: float | None = None
    seed: int = 0
    train: TrainConfig = field(default_factory=TrainConfig)
    retrain_top: int = 3
    retrain_seeds: int = 1
    retrain_factor: float = 1.0
    epsilon: float | None = None

    def __post_init__(self) -> None:
        if self.scope not in ("serve", "train"):
            raise InvalidConfigError(f"`scope` must be 'serve' or 'train', but got scope={self.scope!r}.")
        if self.trials < 1:
            raise InvalidConfigError(f"`trials` must be >= 1, but got trials={self.trials!r}.")
        if self.methods is not None:
            for m in self.methods:
                get_method(m)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (stored on the study so workers on other machines run the same search)."""
        d = dataclasses.asdict(self)
        d["methods"] = list(self.methods) if self.methods is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchSettings:
        d = dict(d)
        d["train"] = TrainConfig(**d.get("train", {}))
        d["methods"] = tuple(d["methods"]) if d.get("methods") is not None else None
        return cls(**d)


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
        self.target_full = solve("full", self.target_tables, 2**62, scope=settings.scope, optimizer=opt,
                                 layout="per_field").bytes
        self.proxy_full = solve("full", self.proxy_tables, 2**62, scope=settings.scope, optimizer=opt,
                                layout="per_field").bytes
        self.ratio = settings.budget_bytes / self.target_full
        self.proxy_budget = self.ratio * self.proxy_full
        names = settings.methods or tuple(list_methods())
        self.plans = {m: self.solve_target(m, 1.0, {}) for m in names}
        self.feasible = [m for m, p in self.plans.items() if p.feasible]

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
        for m in sorted(self.feasible, key=lambda m: (simplicity(m), m)):
            if m not in done:
                study.enqueue_trial({"method": m, f"{m}.budget_use": 1.0}, user_attrs={"solver_default": True},
                                    skip_if_exists=True)

    def objective(self, trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        if is_surplus(trial, self.s.trials):
            # another worker started the study's last trial a moment before this one was created
            trial.set_user_attr("surplus", True)
            raise optuna.TrialPruned(f"surplus: the study already has its {self.s.trials} trials")
        try:
            return self._objective(trial)
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)  # Optuna marks it failed; it does not count
            raise

    def _objective(self, trial: optuna.Trial) -> float:
        method = trial.suggest_categorical("method", self.feasible)
        use = 1.0 if method == "full" else trial.suggest_float(f"{method}.budget_use", *BUDGET_USE)
        # the enqueued default leaves every setting to the solver (e.g. dpq's per-table codebooks)
        fixed = {} if trial.user_attrs.get("solver_default") else {
            k: suggest(trial, f"{method}.{k}", d) for k, d in self.space(method).items()}
        target = self.solve_target(method, use, fixed)
        proxy = self.solve_proxy(method, use, fixed)
        trial.set_user_attr("method", method)
        trial.set_user_attr("fixed", fixed)
        if not (target.feasible and proxy.feasible):
            reason = target.reason or proxy.reason or "infeasible"
            trial.set_user_attr("failure", f"settings do not fit the budget: {reason}")
            raise optuna.TrialPruned(reason)
        trial.set_user_attr("params", target.params())
        trial.set_user_attr("serve_bytes", target.memory.serve_bytes)
        trial.set_user_attr("train_bytes", target.memory.train_bytes)
        trial.set_user_attr("proxy_serve_bytes", proxy.memory.serve_bytes)
        trial.set_constraint("memory_over_budget", float(target.bytes - self.s.budget_bytes))

        cfg = dataclasses.replace(self.s.train, evaluate_test=False, seed=self.s.seed)
        prune_from = PRUNE_FROM_SHARE * planned_steps(cfg, self.w.data.num_train)

        def report(step: int, value: float) -> None:
            trial.report(value, step)
            if step >= prune_from and trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {step} (validation {value:.4f})")

        try:
            rep = train(self.w.data, proxy, model=self.s.model, dim=self.dim, config=cfg, callback=report,
                        seed=self.s.seed)
        except TrainingDiverged as e:
            trial.set_user_attr("failure", str(e))
            raise
        except optuna.TrialPruned:
            raise
        except Exception as e:  # a trial that raises is recorded as failed; the search goes on
            trial.set_user_attr("failure", f"{type(e).__name__}: {e}")
            raise
        metric = self.w.data.metric
        trial.set_user_attr("measured_proxy_serve_bytes", rep.fit.serve_bytes)
        limit = proxy.memory.serve_bytes if self.s.scope == "serve" else None
        if limit is not None and rep.fit.serve_bytes > limit * 1.001 + 64:
            # data-dependent methods (e.g. dedup without enough similar blocks) can miss their target
            msg = (f"the trained serving form holds {rep.fit.serve_bytes:,} bytes, more than its budget share "
                   f"{limit:,}: target unreachable on this data")
            trial.set_user_attr("failure", msg)
            raise RuntimeError(msg)
        trial.set_user_attr("validation", rep.fit.validation)
        trial.set_user_attr("train_seconds", rep.fit.train_seconds)
        trial.set_user_attr("latency_ms", rep.fit.latency_ms)
        return float(rep.fit.validation[metric])

    def retrain(self, method: str, use: float, fixed: dict[str, Any], seed: int) -> TrainReport:
        """Re-train one configuration with a fresh seed and more steps (no test evaluation)."""
        proxy = self.solve_proxy(method, use, fixed)
        tc = self.s.train
        cfg = dataclasses.replace(tc, evaluate_test=False, seed=seed, epochs=tc.epochs * self.s.retrain_factor,
                                  max_steps=None if tc.max_steps is None else int(tc.max_steps * self.s.retrain_factor))
        return train(self.w.data, proxy, model=self.s.model, dim=self.dim, config=cfg, seed=seed)


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
    as a new trial), interrupted with Ctrl-C, or closed as surplus do not count.
    """
    if t.user_attrs.get("surplus") or t.user_attrs.get("interrupted"):
        return False
    if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return t.state == TrialState.FAIL and "failure" in t.user_attrs


def is_surplus(trial: optuna.Trial, n_trials: int) -> bool:
    """True when ``n_trials`` counted or running trials were created before this one."""
    ahead = sum(1 for t in trial.study.get_trials(deepcopy=False)
                if t.number < trial.number and (t.state == TrialState.RUNNING or is_counted(t)))
    return ahead >= n_trials


def heartbeat_enabled(study: optuna.Study) -> bool:
    from optuna.storages._heartbeat import is_heartbeat_enabled  # the check Study.optimize itself uses

    return is_heartbeat_enabled(study._storage)


def recover_abandoned(study: optuna.Study) -> int:
    """For single-process storages (SQLite, journal) before a lone run: fail and re-enqueue trials a killed
    earlier process left RUNNING. Returns how many."""
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number,
                                                  "solver_default": bool(t.user_attrs.get("solver_default"))})
        n += 1
    return n


def run_study(
    search: Search,
    study: optuna.Study,
    *,
    on_trial: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
    deadline: float | None = None,
    poll_s: float = 1.0,
) -> None:
    """Run trials until the study has ``trials`` counted trials (:func:`is_counted`) or the deadline passes.

    Safe with many workers on one study: a trial is started only while counted + running trials are
    fewer than ``trials``; with heartbeats (RDB storages) a worker waits for running trials and
    Optuna fails and re-runs the trials of dead workers (``fail_stale_trials`` + the retry callback).
    """
    s = search.s
    if deadline is None and s.time_limit_s is not None:
        deadline = time.time() + s.time_limit_s
    heartbeat = heartbeat_enabled(study)
    callbacks = [on_trial] if on_trial else []
    while deadline is None or time.time() < deadline:
        trials = study.get_trials(deepcopy=False)
        done = sum(map(is_counted, trials))
        running = sum(t.state == TrialState.RUNNING for t in trials)
        if done >= s.trials:
            return
        if done + running >= s.trials:
            if not heartbeat:
                return  # without heartbeats a dead worker's trial cannot be told from a live one
            optuna.storages.fail_stale_trials(study)
            time.sleep(poll_s)
            continue
        study.optimize(search.objective, n_trials=1, catch=(Exception,), callbacks=callbacks, gc_after_trial=True)


def make_study(search: Search, storage: Any, name: str, key: dict[str, Any], *,
               sampler_seed: int | None = None) -> optuna.Study:
    """Create or resume the study; refuse a name already used for another workload or budget.

    ``sampler_seed`` (default: the search seed) must differ between workers of one study, or
    seeded samplers that see the same history propose the same parameters.
    """
    import warnings

    s = search.s
    seed = s.seed if sampler_seed is None else sampler_seed
    with warnings.catch_warnings():  # `group` is flagged experimental; we rely on it on purpose
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=4)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=0, interval_steps=1)
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
