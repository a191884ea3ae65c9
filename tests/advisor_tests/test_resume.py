"""A study resumed after kills runs the trials it would have run without them (embadvisor.advisor.resume)."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from embadvisor.advisor.resume import CanonicalSampler, canonical_order, recover_abandoned

optuna.logging.set_verbosity(optuna.logging.ERROR)
TPE = dict(multivariate=True, group=True, n_startup_trials=4)


def objective(trial: optuna.Trial) -> float:
    kind = trial.suggest_categorical("kind", ["a", "b", "c"])
    x = trial.suggest_float(f"{kind}.x", -3, 3)
    return -((x - {"a": 1.0, "b": -1.0, "c": 0.0}[kind]) ** 2)


def study(storage=None, name="s"):
    return optuna.create_study(study_name=name, storage=storage, direction="maximize",
                               sampler=CanonicalSampler(7, **TPE), load_if_exists=True)


def enqueue_defaults(s: optuna.Study) -> None:
    for k in "abc":
        s.enqueue_trial({"kind": k, f"{k}.x": 0.5}, user_attrs={"solver_default": True})


def signature(s: optuna.Study) -> list[tuple[str, float]]:
    return [(t.params["kind"], t.params[f"{t.params['kind']}.x"], t.value)
            for t in canonical_order(s.get_trials()) if t.state == TrialState.COMPLETE]


def run(s: optuna.Study, total: int) -> None:
    while sum(t.state == TrialState.COMPLETE for t in s.trials) < total:
        s.optimize(objective, n_trials=1)


def kill(s: optuna.Study) -> None:
    """What a kill -9 mid-trial leaves: a RUNNING trial whose parameters were drawn, never told."""
    t = s.ask()
    objective(t)


def reference(total: int = 12) -> list[tuple[str, float]]:
    s = study()
    enqueue_defaults(s)
    run(s, total)
    return signature(s)


@pytest.mark.parametrize("kill_after", [0, 1, 2, 5, 9])
def test_a_killed_trial_is_rerun_in_its_place_with_the_same_proposals(kill_after) -> None:
    ref = reference()
    s = study()
    enqueue_defaults(s)
    run(s, kill_after)
    kill(s)
    # a new process: a fresh sampler object on the same storage
    s = optuna.load_study(study_name="s", storage=s._storage, sampler=CanonicalSampler(7, **TPE))
    assert recover_abandoned(s) >= 1
    run(s, 12)
    assert signature(s) == ref
    abandoned = [t for t in s.trials if t.user_attrs.get("abandoned")]
    assert abandoned and all(t.state == TrialState.FAIL for t in abandoned)


def test_a_queued_default_behind_the_killed_trial_runs_after_its_retry() -> None:
    s = study()
    enqueue_defaults(s)
    kill(s)  # trial 0 ("a") killed; "b" and "c" wait behind it
    recover_abandoned(s)
    waiting = [t for t in s.get_trials() if t.state == TrialState.WAITING]
    assert [t.system_attrs["fixed_params"]["kind"] for t in waiting] == ["a", "b", "c"]
    assert [t.user_attrs["retry_of"] for t in waiting] == [0, 1, 2]
    assert all(t.user_attrs.get("solver_default") for t in waiting)


def test_recover_finishes_the_job_of_a_recover_that_was_killed() -> None:
    s = study()
    enqueue_defaults(s)
    run(s, 1)
    kill(s)  # trial 1 ("b") killed, "c" waits
    # a recover killed after failing the trials, before enqueueing their retries
    storage = s._storage
    for t in s.get_trials():
        if t.state in (TrialState.RUNNING, TrialState.WAITING):
            storage.set_trial_user_attr(t._trial_id, "abandoned", True)
            storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
    recover_abandoned(s)
    recover_abandoned(s)  # idempotent
    waiting = [t for t in s.get_trials() if t.state == TrialState.WAITING]
    assert [t.user_attrs["retry_of"] for t in waiting] == [1, 2]
    run(s, 12)
    assert signature(s) == reference()


def test_the_sampler_proposes_by_canonical_place_not_by_process_state() -> None:
    a, b = study(name="a"), study(name="b")
    run(a, 10)
    run(b, 6)
    b = optuna.load_study(study_name="b", storage=b._storage, sampler=CanonicalSampler(7, **TPE))
    run(b, 10)  # a restarted process continues exactly where the first left off
    assert signature(a) == signature(b)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_kill_9_at_random_points_then_resume_gives_the_same_study(kind, shared_data) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import kill_resume

    data = shared_data / "ctr/avazu-10k/avazu_train"
    ref, seconds = kill_resume.reference_run(kind, data, timeout=600)
    for i in range(2):  # a loop of 2 resumed runs, 2 kills each
        r = kill_resume.loop(kind, 2, ref, seconds, data, random.Random(i), timeout=600)
        assert r["same_trials"] and r["tied_pick"], r
