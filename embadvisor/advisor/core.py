"""The one search/recommend pipeline's core: the protocol an input implements, and the study it drives.

Two kinds of input share one pipeline (:func:`embadvisor.advisor.recommend.run`): trained embedding
tables (:class:`embadvisor.advisor.search.Search`) and frozen vector corpora
(:class:`embadvisor.advisor.vector_search.VectorSearch`). An input is an :class:`Evaluator` that says

* what a candidate space is: the feasible methods, each method's own hyperparameters
  (:meth:`~Evaluator.space`), how a trial proposes one candidate (:meth:`~Evaluator.propose`) and which
  candidates are enqueued first (:meth:`~Evaluator.enqueue_defaults`);
* what a candidate's bytes are (:meth:`~Evaluator.nbytes`): its size knob solved for its share of the
  budget, so every sampled candidate fits by construction (or is pruned with the reason);
* how one candidate is evaluated at a rung (:meth:`~Evaluator.evaluate`: an objective value and the
  trial attributes that record it);

plus hooks around the search: the rungs (:meth:`~Evaluator.start`: the tables calibrate a
successive-halving schedule; one rung by default), the finalists (:meth:`~Evaluator.finalists`: the tables
re-train them with fresh seeds; nothing by default), the choice among them (:meth:`~Evaluator.choose`),
the pick's test evaluation (:meth:`~Evaluator.pick`) and its exported config (:meth:`~Evaluator.config`).
An input with one fidelity (frozen vectors: nothing is trained) is the one-rung case of the same
pipeline: same study, sampler, crash-safe resume, rung scheduler and ranking.

The study side: the objective (:meth:`Evaluator.objective`) records every trial's method, settings,
bytes, rung, worker and failure reason as user attributes; :func:`next_step`/:func:`run_study` run the
rungs; :func:`make_study` creates or resumes a study and refuses one made for another search.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from embadvisor.advisor.resume import CanonicalSampler
from embadvisor.advisor.schedule import Schedule, promotions, rung_of
from embadvisor.errors import EmbAdvisorError, InfeasibleError, InvalidConfigError
from embadvisor.units import format_size

if TYPE_CHECKING:
    from embadvisor.advisor.rank import Candidate
    from embadvisor.advisor.result import Recommendation

__all__ = ["BUDGET_USE", "ONE_RUNG", "Evaluation", "Evaluator", "Pick", "Proposal", "StudyMismatch",
           "default_study_name", "heartbeat_enabled", "is_counted", "is_surplus", "make_study", "next_step",
           "run_study", "suggest", "trial_counts"]

#: the share of the budget a sampled candidate's size knob is solved for (the enqueued defaults use all of it)
BUDGET_USE = (0.6, 1.0)
#: the rungs of an input with one fidelity: every candidate is evaluated once, completely
ONE_RUNG = Schedule(rungs=(1,), eval_every_samples=1, stage_samples=1)


class StudyMismatch(EmbAdvisorError):
    """A study name is reused with a different workload, budget or settings."""



@dataclass(frozen=True)
class Proposal:
    """One candidate as a trial proposes it.

    Args:
        method: registry name.
        use: the share of the budget its size knob is solved for.
        fixed: its other hyperparameters (by field name).
        lr: the learning rate it trains with (None for inputs that are not trained).
    """

    method: str
    use: float
    fixed: dict[str, Any]
    lr: float | None = None


@dataclass
class Evaluation:
    """What evaluating one candidate measured: the objective value and the trial attributes recording it."""

    value: float
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Pick:
    """The chosen candidate, measured for the report.

    Args:
        plan: its plan solved for the target (``params()``, ``memory``, ``method``).
        serve_bytes: its serving bytes on the target.
        train_bytes: its training bytes on the target.
        validation_all: every validation metric behind the pick.
        test_all: the test split's metrics, evaluated once for the pick (None without a test split).
        extras: the :class:`~embadvisor.advisor.result.Recommendation` fields only this input has
            (``training``, ``compress_seconds``).
    """

    plan: Any
    serve_bytes: int
    train_bytes: int
    validation_all: dict[str, Any]
    test_all: dict[str, Any] | None
    extras: dict[str, Any] = field(default_factory=dict)


class Evaluator(ABC):
    """The protocol between one kind of input and the one search/recommend pipeline (module docstring).

    A subclass sets, in its constructor: ``s`` (settings with ``budget_bytes``, ``scope``, ``seed``,
    ``time_limit_s``), ``w`` (the workload, with a ``description``), ``plans`` (each method solved for the
    whole budget: ``feasible``, ``reason``, ``min_budget_bytes``), ``feasible`` (the methods a trial may
    propose), ``n_candidates`` (trials of the first rung), ``target_full`` (the uncompressed target's
    bytes) and ``ratio``; ``schedule`` when its rungs are known before :meth:`start`.
    """

    #: the uncompressed method (searched without a budget share)
    full_method: ClassVar[str] = "full"
    #: the sentence that prefixes the explanation when ``full_method`` fits ({} is its size)
    full_note: ClassVar[str] = "The uncompressed tables fit the budget ({}). "
    #: the ``input`` entry of exported configs (None: embedding tables, the entry left out)
    input: ClassVar[str | None] = None
    #: how many of the smallest minimum budgets an infeasible-budget error lists
    listed_minimums: ClassVar[int] = 8

    s: Any
    w: Any
    plans: dict[str, Any]
    feasible: list[str]
    n_candidates: int
    target_full: int
    ratio: float
    #: the rungs (set by :meth:`start` when not known before)
    schedule: Schedule | None = None
    #: wall-clock time after which no trial starts and running ones stop training (epoch seconds)
    deadline: float | None = None

    # -- what a candidate space is ------------------------------------------------------------------
    @abstractmethod
    def space(self, method: str) -> dict[str, BaseDistribution]:
        """The method's own hyperparameters (not its size knob), as Optuna distributions."""

    def propose(self, trial: optuna.Trial) -> Proposal:
        """The trial's candidate: a feasible method, its budget share and its hyperparameters, namespaced by
        method (``qr.operation``: Optuna refuses one name with two distributions)."""
        method = trial.suggest_categorical("method", self.feasible)
        use = 1.0 if method == self.full_method else trial.suggest_float(f"{method}.budget_use", *BUDGET_USE)
        fixed = {k: suggest(trial, f"{method}.{k}", d) for k, d in self.space(method).items()}
        return Proposal(method, use, fixed)

    @abstractmethod
    def enqueue_defaults(self, study: optuna.Study) -> None:
        """Enqueue the candidates every search evaluates first (each feasible method's default)."""

    # -- what its bytes are ------------------------------------------------------------------------
    @abstractmethod
    def nbytes(self, proposal: Proposal) -> Any:
        """The candidate solved for the budget: a plan with ``feasible``, ``reason``, ``params()``,
        ``memory`` (serve and train bytes) and ``bytes`` (in the budget's scope)."""

    # -- how one candidate is evaluated ------------------------------------------------------------
    @abstractmethod
    def evaluate(self, trial: optuna.Trial, proposal: Proposal, plan: Any, rung: int) -> Evaluation:
        """Evaluate the feasible candidate at ``rung``; raise (after recording ``failure``) when it fails."""

    def objective(self, trial: optuna.Trial) -> float:
        """The Optuna objective: propose, solve and evaluate one candidate at the trial's rung."""
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
        proposal = self.propose(trial)
        trial.set_user_attr("method", proposal.method)
        trial.set_user_attr("fixed", proposal.fixed)
        if proposal.lr is not None:
            trial.set_user_attr("lr", proposal.lr)
        plan = self.nbytes(proposal)
        if not plan.feasible:
            reason = plan.reason or "infeasible"
            trial.set_user_attr("failure", f"settings do not fit the budget: {reason}")
            raise optuna.TrialPruned(reason)
        trial.set_user_attr("params", plan.params())
        trial.set_user_attr("serve_bytes", plan.memory.serve_bytes)
        trial.set_user_attr("train_bytes", plan.memory.train_bytes)
        trial.set_constraint("memory_over_budget", float(plan.bytes - self.s.budget_bytes))
        try:
            result = self.evaluate(trial, proposal, plan, rung)
        except optuna.TrialPruned:
            raise
        except Exception as e:  # a trial that raises is recorded as failed; the search goes on
            if "failure" not in trial.user_attrs:
                trial.set_user_attr("failure", f"{type(e).__name__}: {e}")
            raise
        for k, v in result.attrs.items():
            trial.set_user_attr(k, v)
        return result.value

    # -- the study ---------------------------------------------------------------------------------
    @abstractmethod
    def study_key(self) -> dict[str, Any]:
        """Everything that must match for trials to be comparable (stored on the study)."""

    @property
    @abstractmethod
    def metric(self) -> str:
        """The objective metric's name."""

    @property
    @abstractmethod
    def target_name(self) -> str:
        """The name of what the budget applies to (in study names and configs)."""

    @property
    def proxy(self) -> bool:
        """Whether candidates are evaluated on a smaller proxy of the target."""
        return False

    def spec(self) -> dict[str, Any] | None:
        """What a worker process elsewhere needs to rebuild this search (None: one process only)."""
        return None

    @property
    def rebuildable(self) -> bool:
        """Whether :meth:`spec` lets worker processes rebuild this search (``workers > 1``)."""
        return False

    @property
    def worker_threads(self) -> int:
        """torch threads in all, split between local worker processes."""
        return 1

    def start(self, study: optuna.Study, *, on_phase: Callable[[str], None] | None, started: float,
              t_start: float) -> tuple[float | None, float | None]:
        """Set the rungs before the search (``started``: ``perf_counter`` at the start, ``t_start``: epoch
        seconds); returns the search's deadline and the whole run's (None: the settings' time limit from
        now). By default one rung: every candidate is evaluated once."""
        if self.schedule is None:
            self.schedule = ONE_RUNG
        return None, None

    # -- after the search --------------------------------------------------------------------------
    @property
    @abstractmethod
    def n_finalists(self) -> int:
        """How many of the best distinct candidates are compared in the final ranking."""

    def finalists(self, study: optuna.Study, cands: list[Candidate], *, deadline: float | None,
                  on_phase: Callable[[str], None] | None) -> None:
        """Gather more evidence on the finalists before the choice (by default none: the search's values
        are final)."""
        return None

    @abstractmethod
    def choose(self, study: optuna.Study, cands: list[Candidate]) -> tuple[Candidate, float, str]:
        """The pick, the noise level used, and a one-paragraph explanation."""

    @abstractmethod
    def pick(self, study: optuna.Study, win: Candidate, *, on_phase: Callable[[str], None] | None) -> Pick:
        """Solve the pick for the target and evaluate its test split once."""

    @abstractmethod
    def config(self, rec: Recommendation, win: Candidate, pick: Pick) -> dict[str, Any]:
        """The input's entries of the exported config: ``memory``, ``metrics``, ``plan`` (and any other)."""

    @property
    def full_fits(self) -> bool:
        """Whether the uncompressed input fits the budget."""
        full = self.plans.get(self.full_method)
        return full is not None and full.feasible

    # -- feasibility -------------------------------------------------------------------------------
    def check_feasible(self) -> None:
        """Raise :class:`InfeasibleError` with every method's minimum budget when nothing fits."""
        if self.feasible:
            return
        mins = sorted((p.min_budget_bytes, m) for m, p in self.plans.items() if p.min_budget_bytes > 0)
        listing = ", ".join(f"{m} {format_size(b)}" for b, m in mins[: self.listed_minimums])
        what, solution = self.infeasible()
        raise InfeasibleError(
            f"{what}. Minimum budgets: {listing}.",
            [f"raise --budget to at least {format_size(mins[0][0])}" if mins else "raise --budget", solution],
        )

    @abstractmethod
    def infeasible(self) -> tuple[str, str]:
        """What did not fit (the error's first sentence) and a second way out beside a larger budget."""


def default_study_name(key: dict[str, Any]) -> str:
    """``<task>-<target>-<budget>-<scope>-<digest of the whole key>``: one study per distinct search."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{key['task']}-{key['target']}-{format_size(key['budget_bytes']).replace(' ', '')}-{key['scope']}-{digest}"


def suggest(trial: optuna.Trial, name: str, dist: BaseDistribution) -> Any:
    """Ask ``trial`` for parameter ``name`` from ``dist`` (a method's search space is data: distributions)."""
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    raise InvalidConfigError(f"unsupported distribution {dist!r} for {name}")


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


def next_step(search: Evaluator, study: optuna.Study) -> str:
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
        minimum = min(search.n_finalists, search.n_candidates) if k == sch.last - 1 else 1
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
    search: Evaluator,
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


def make_study(search: Evaluator, storage: Any, name: str, key: dict[str, Any], *,
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

