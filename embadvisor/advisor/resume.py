"""Crash-safe resume: a study resumed after any number of kills runs the trials it would have run without them.

Two things would otherwise make a resumed study differ from an uninterrupted one:

* **Queue order.** A trial a killed process left RUNNING has to run again. Optuna runs WAITING trials
  oldest first, so a retry enqueued at the end would run after every trial queued behind the killed one,
  and a rung that takes ``n`` trials could fill up without it. :func:`recover_abandoned` therefore fails
  the killed trial *and* every WAITING trial queued after it (both marked ``abandoned``), and enqueues
  their retries in their original order. Every step can itself be killed: a later call finishes the job.
* **Sampler state.** A sampler's random state lives in the process and restarts with it, and TPE orders
  its history by trial number, which retries change. :class:`CanonicalSampler` wraps TPE so that the
  proposal for a trial depends only on (a) the finished trials that come before it in the *canonical
  order* and (b) its index in that order. The canonical order numbers trials as an uninterrupted run
  would have: a retry takes the place of the trial it replaces (``retry_of``, or Optuna's
  ``failed_trial`` for heartbeat retries), and replaced trials drop out.

Training a trial is deterministic for a given configuration and seed (one seed per study), so the same
trials give the same values, and the ranking and recommendation follow. With several workers the order
in which trials finish is not fixed, so only a lone process (``workers=1``) is reproducible this way.
"""

from __future__ import annotations

import copy
import hashlib
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

#: user attributes a re-run of a trial keeps
RERUN_ATTRS = ("solver_default", "rung", "parent")


def replaced_by(t: FrozenTrial) -> int | None:
    """The number of the trial ``t`` re-runs, or None."""
    if "retry_of" in t.user_attrs:
        return int(t.user_attrs["retry_of"])
    failed = t.system_attrs.get("failed_trial")  # Optuna's RetryHeartbeatStaleTrialCallback
    return None if failed is None else int(failed)


def canonical_order(trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    """The trials an uninterrupted run would hold, in its order: each retry in the place of the trial it
    re-runs (transitively), replaced trials left out."""
    trials = list(trials)
    by_number = {t.number: t for t in trials}
    replaced = {n for t in trials if (n := replaced_by(t)) is not None}

    def root(t: FrozenTrial) -> int:
        seen = set()
        while (n := replaced_by(t)) is not None and n in by_number and n not in seen:
            seen.add(n)
            t = by_number[n]
        return t.number

    return sorted((t for t in trials if t.number not in replaced), key=lambda t: (root(t), t.number))


def canonical_index(trials: Iterable[FrozenTrial], number: int) -> int:
    """Position of trial ``number`` in :func:`canonical_order` (its own count if it is not in it)."""
    order = canonical_order(trials)
    for i, t in enumerate(order):
        if t.number == number:
            return i
    return len(order)


def trial_seed(seed: int, index: int) -> int:
    """A 32-bit sampler seed for the trial at canonical ``index`` of a study seeded with ``seed``."""
    digest = hashlib.sha256(f"{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


class _StudyView:
    """The study as the wrapped sampler sees it while it samples one trial: the finished trials before
    that trial in canonical order, numbered by their canonical index."""

    def __init__(self, study: optuna.Study, trials: Sequence[FrozenTrial]) -> None:
        self._study = study
        self._trials = list(trials)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(self, deepcopy: bool = True, states: Sequence[TrialState] | None = None,
                    use_cache: bool = False) -> list[FrozenTrial]:
        out = [t for t in self._trials if states is None or t.state in states]
        return copy.deepcopy(out) if deepcopy else out

    def get_trials(self, deepcopy: bool = True, states: Sequence[TrialState] | None = None) -> list[FrozenTrial]:
        return self._get_trials(deepcopy=deepcopy, states=states)

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()


class CanonicalSampler(BaseSampler):
    """TPE (``TPESampler(**tpe_options)``) whose proposal for a trial depends only on the finished trials
    before it in canonical order and on its canonical index, never on process state or trial numbers.

    A fresh TPE, seeded from (``seed``, index), samples each trial against a view of the study that holds
    those trials renumbered 0, 1, 2, … The proposal for the trial at a given place is therefore the same in
    a run that was never interrupted and in one resumed after kills (see the module docstring).
    """

    def __init__(self, seed: int, **tpe_options: Any) -> None:
        self.seed = seed
        self.tpe_options = tpe_options
        self._current: dict[int, tuple[BaseSampler, _StudyView]] = {}

    def _for(self, study: optuna.Study, trial: FrozenTrial) -> tuple[BaseSampler, _StudyView]:
        got = self._current.get(trial.number)
        if got is None:
            everything = study._get_trials(deepcopy=False, use_cache=False)
            order = canonical_order(everything)
            index = next((i for i, t in enumerate(order) if t.number == trial.number), len(order))
            before = []
            for i, t in enumerate(order[:index]):
                if t.state.is_finished():
                    twin = copy.copy(t)
                    twin.number = i
                    before.append(twin)
            with warnings.catch_warnings():  # `group` is flagged experimental; relied on on purpose
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                inner = optuna.samplers.TPESampler(seed=trial_seed(self.seed, index), **self.tpe_options)
            got = (inner, _StudyView(study, before))
            self._current = {trial.number: got}  # one trial at a time per process
        return got

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        inner, view = self._for(study, trial)
        return inner.infer_relative_search_space(view, trial)  # type: ignore[arg-type]

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        inner, view = self._for(study, trial)
        return inner.sample_relative(view, trial, search_space)  # type: ignore[arg-type]

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        inner, view = self._for(study, trial)
        return inner.sample_independent(view, trial, param_name, param_distribution)  # type: ignore[arg-type]

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._current.pop(trial.number, None)  # a fresh view of the history for each trial
        inner, view = self._for(study, trial)
        inner.before_trial(view, trial)  # type: ignore[arg-type]

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        got = self._current.pop(trial.number, None)
        if got is not None:
            got[0].after_trial(got[1], trial, state, values)  # type: ignore[arg-type]

    def reseed_rng(self) -> None:  # the per-trial seeds are derived, not drawn
        pass


def recover_abandoned(study: optuna.Study) -> int:
    """For single-process storages (SQLite, journal) before a lone run: re-queue the trials a killed
    earlier process left RUNNING, ahead of the trials queued after them. Returns how many trials it
    failed.

    The killed trials and every WAITING trial queued after the first of them are failed (marked
    ``abandoned``; they do not count) and enqueued again in their original order: a retry keeps the
    enqueued parameters (none for a sampled trial, which the :class:`CanonicalSampler` proposes again
    identically) and :data:`RERUN_ATTRS`, and records ``retry_of``.
    """
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials if (n := replaced_by(t)) is not None}
    order = {t.number: i for i, t in enumerate(canonical_order(trials))}

    def place(t: FrozenTrial) -> int:
        return order.get(t.number, len(order) + t.number)

    # abandoned trials that a killed recover did not re-queue yet count as killed ones
    orphans = [t for t in trials if t.user_attrs.get("abandoned") and t.number not in retried]
    killed = [t for t in trials if t.state == TrialState.RUNNING]
    first = min((place(t) for t in killed + orphans), default=None)
    if first is None:
        return 0
    behind = [t for t in trials if t.state == TrialState.WAITING and place(t) > first]
    storage = study._storage
    for t in killed + behind:
        storage.set_trial_user_attr(t._trial_id, "abandoned", True)
        storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
    for t in sorted(orphans + killed + behind, key=place):
        attrs = {k: t.user_attrs[k] for k in RERUN_ATTRS if k in t.user_attrs}
        fixed = t.system_attrs.get("fixed_params") or {}
        study.enqueue_trial(dict(fixed), user_attrs={"retry_of": t.number, **attrs})
    return len(killed) + len(behind)
