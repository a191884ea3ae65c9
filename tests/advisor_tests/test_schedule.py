"""Convergence-based training, the calibrated successive-halving schedule, and its promotions."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from embadvisor.advisor.recommend import recommend
from embadvisor.advisor.schedule import Calibration, Schedule, estimate_seconds, promotions, schedule_from
from embadvisor.advisor.search import Search, SearchSettings, next_step, run_study
from embadvisor.advisor.workloads import workload_from_data
from embadvisor.tasks.api import default_batch_size
from embadvisor.tasks.datasets import ctr_task_data
from embadvisor.tasks.trainer import TrainConfig

# ---------------------------------------------------------------------------------------------- promotions


def _trial(number: int, value: float, curve: list[tuple[int, float]], rung: int = 0, method: str = "m") -> optuna.trial.FrozenTrial:
    t = create_trial(state=TrialState.COMPLETE, value=value, params={"method": f"{method}{number}"},
                     distributions={"method": CategoricalDistribution([f"{method}{number}"])},
                     user_attrs={"rung": rung, "final_curve": [list(p) for p in curve]})
    t.number = number
    return t


def test_promotions_take_the_best_third_and_a_steep_riser() -> None:
    flat = [(100, 0.70), (200, 0.70), (300, 0.70)]
    trials = [_trial(i, 0.70 + 0.01 * i, flat) for i in range(6)]  # values .70 .. .75
    trials.append(_trial(6, 0.66, [(100, 0.52), (200, 0.60), (300, 0.66)]))  # slow starter, still climbing fast
    trials.append(_trial(7, 0.69, [(100, 0.688), (200, 0.689), (300, 0.69)]))  # below the cut and flat
    got = [t.number for t in promotions(trials, 0, 3)]
    assert got[:3] == [5, 4, 3]  # ceil(8 / 3) = 3 best
    assert 6 in got and 7 not in got
    assert promotions(trials, 1, 3) == []  # nothing at rung 1


def test_promotions_are_deterministic_and_deduplicated() -> None:
    a = _trial(0, 0.7, [])
    b = _trial(1, 0.7, [])
    b.params = dict(a.params)  # the same configuration twice
    c = _trial(2, 0.7, [])
    got = [t.number for t in promotions([c, b, a], 0, 3, minimum=2)]
    assert got == [0, 2]


def test_schedule_from_a_calibration() -> None:
    cal = Calibration(method="hash", horizon_samples=90_000, samples_trained=200_000, converged=True,
                      samples_per_second=10_000.0, eval_every_samples=20_000, eval_seconds=0.5, value=0.7, seconds=20)
    s = schedule_from(cal, 1000)
    assert s.rungs == (10_000, 30_000, 90_000, 360_000)
    assert s.eval_every_samples == 10_000 and s.patience == 5  # half a horizon: 45,000 samples
    assert s.every(0) == 3_333 and s.patience_at(0) == 16  # three points in the first rung, the same window
    assert s.counts(20) == [20, 7, 3, 1]
    est = estimate_seconds(s, cal, 20, 2, 2)
    assert est["total"] == pytest.approx(est["search"] + est["finalists"]) and est["search"] > 20 * 10_000 / 10_000


# ---------------------------------------------------------------------------------------------- the search


@pytest.fixture(scope="module")
def avazu(shared_data):
    data = ctr_task_data(shared_data / "ctr/avazu-10k/avazu_train", label="click")
    return workload_from_data("ctr", data, None, 16)


@pytest.mark.slow
def test_rungs_promote_the_best_and_finalists_train_to_convergence(avazu, tmp_path) -> None:
    bs = default_batch_size("ctr", avazu.data.num_train)
    budget = int(avazu.target.full_table_bytes() / 8)
    settings = SearchSettings(budget_bytes=budget, methods=("hash", "qr", "mde", "tt_rec"), trials=4, seed=0,
                              search_lr=False, retrain_top=2, retrain_seeds=2,
                              train=TrainConfig(batch_size=bs, threads=1),
                              schedule=Schedule(rungs=(2 * bs * 8, 6 * bs * 8, 30 * bs * 8),
                                                eval_every_samples=2 * bs * 4, stage_samples=6 * bs * 8, patience=3))
    storage = f"sqlite:///{tmp_path / 'db.sqlite'}"
    rec = recommend(avazu, settings, storage=storage, study_name="s")
    study = optuna.load_study(study_name="s", storage=storage)
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    by_rung = {k: [t for t in done if t.user_attrs["rung"] == k] for k in range(3)}
    assert len(by_rung[0]) == 4
    best0 = max(by_rung[0], key=lambda t: t.value)
    assert best0.number in {t.user_attrs["parent"] for t in by_rung[1]}  # the best candidate is promoted
    for t in by_rung[1]:
        parent = study.trials[t.user_attrs["parent"]]
        assert parent.params == t.params and parent.user_attrs["rung"] == 0
    assert by_rung[2] and all(t.user_attrs["resource"] == 30 * bs * 8 for t in by_rung[2])
    assert rec["evidence"]["runs"] == 2 and len(rec["evidence"]["samples"]) == 2
    assert rec["metric"]["spread"] is not None
    assert rec["ranking"][0]["rung"] == 2
    assert all(t.user_attrs["curve"] for t in done)  # every trial's learning curve is on the study


@pytest.mark.slow
def test_a_time_limit_that_cuts_the_finalists_is_reported(avazu, tmp_path) -> None:
    bs = default_batch_size("ctr", avazu.data.num_train)
    settings = SearchSettings(budget_bytes=int(avazu.target.full_table_bytes() / 8), methods=("hash", "qr"),
                              trials=2, search_lr=False, retrain_top=1, retrain_seeds=1, time_limit_s=6.0,
                              train=TrainConfig(batch_size=bs, threads=1, lr=1e-4),
                              schedule=Schedule(rungs=(bs * 8, 10**9), eval_every_samples=bs * 4,
                                                stage_samples=bs * 8, patience=1000))
    rec = recommend(avazu, settings, storage=f"sqlite:///{tmp_path / 'db.sqlite'}", study_name="cut")
    u = rec["undertrained"]
    assert u is not None and u["runs_not_converged"] == 1 and "before validation stopped improving" in u["reason"]
    assert rec["search_incomplete"] is None or "rung" in rec["search_incomplete"]
    assert rec["config"]["metrics"]["undertrained"] == u["reason"]
    assert not rec["evidence"]["converged"]


def test_run_study_stops_when_the_last_rung_is_done(avazu) -> None:
    bs = default_batch_size("ctr", avazu.data.num_train)
    settings = SearchSettings(budget_bytes=int(avazu.target.full_table_bytes() / 4), methods=("hash",), trials=2,
                              search_lr=True, train=TrainConfig(batch_size=bs, threads=1),
                              schedule=Schedule(rungs=(bs * 2, bs * 4), eval_every_samples=bs, stage_samples=bs * 2))
    search = Search(avazu, settings)
    study = optuna.create_study(direction="maximize")
    search.enqueue_defaults(study)
    run_study(search, study)
    rungs = [t.user_attrs["rung"] for t in study.trials if t.state == TrialState.COMPLETE]
    assert rungs.count(0) == 2 and rungs.count(1) >= 1
    assert next_step(search, study) == "done"


@pytest.mark.slow
def test_cli_calibrates_and_prints_its_estimate_before_the_search(shared_data, tmp_path, monkeypatch) -> None:
    import json

    from typer.testing import CliRunner

    from embadvisor.advisor.cli import app

    monkeypatch.setenv("EMBADVISOR_HOME", str(tmp_path))
    res = CliRunner().invoke(app, ["recommend", "--task", "ctr", "--data", str(shared_data / "ctr/avazu-10k/avazu_train"),
                                   "--label", "click", "--budget", "83KB", "--methods", "hash,qr", "--trials", "2",
                                   "--threads", "1", "--time-limit", "60s", "--json"])
    assert res.exit_code == 0, res.output
    rec = json.loads(res.stdout)
    err = res.stderr
    assert "calibrating:" in err and "estimate:" in err and err.index("calibrating:") < err.index("estimate:")
    cal = rec["calibration"]
    assert cal["method"] in ("hash", "qr") and cal["horizon_samples"] >= cal["eval_every_samples"]
    assert rec["estimate_seconds"] > 0 and rec["time_limit_s"] == 60.0
    assert len(rec["schedule"]["rungs"]) == 4 and rec["schedule"]["stage_samples"] == cal["horizon_samples"]
    assert rec["seconds"] < 90


@pytest.mark.slow
def test_a_slow_starter_that_converges_best_is_promoted_on_real_data(avazu) -> None:
    """avazu-10k at 1/4 of its tables: the hashing trick at lr 1e-3 starts slowest of three configurations
    (last after 1/9 of a horizon) but converges best; the first rung must not cut it."""
    import math
    import statistics

    from embadvisor.tasks.api import convergence_config, train

    bs = default_batch_size("ctr", avazu.data.num_train)
    h = 2 * avazu.data.num_train  # two epochs: the horizon calibration measures on this file
    sch = Schedule(rungs=(h // 9, h // 3, h, 4 * h), eval_every_samples=h // 9, stage_samples=h, patience=5)
    settings = SearchSettings(budget_bytes=int(avazu.target.full_table_bytes() / 4),
                              train=TrainConfig(batch_size=bs, threads=1), schedule=sch)
    search = Search(avazu, settings)
    configs = [("hash", 1e-3), ("hash", 1e-2), ("qr", 1e-2)]
    truth, rung0 = {}, []
    for i, (m, lr) in enumerate(configs):
        plan = search.solve_proxy(m, 1.0, {})
        truth[i] = statistics.fmean(
            train(avazu.data, plan, config=convergence_config(avazu.data, lr=lr, seed=s, threads=1,
                                                              evaluate_test=False), seed=s).fit.validation["auc"]
            for s in (0, 1, 2))
        f = train(avazu.data, plan, config=search.trial_config(0, 0, lr), seed=0).fit
        rung0.append(create_trial(state=TrialState.COMPLETE, value=f.validation["auc"], params={"c": i},
                                  distributions={"c": CategoricalDistribution([0, 1, 2])},
                                  user_attrs={"rung": 0, "final_curve": [list(p) for p in f.final_curve]}))
        rung0[-1].number = i
    slow = 0
    assert max(truth, key=truth.__getitem__) == slow, truth  # the truth ranks the slow starter first
    assert min(range(3), key=lambda i: rung0[i].value) == slow, [t.value for t in rung0]  # ... and it starts last
    top = promotions(rung0, 0, 3)
    assert [t.number for t in top] != [slow] and slow not in [t.number for t in top[:1]]
    promoted = promotions(rung0, 0, 3, doublings=math.log2(sch.rungs[-1] / sch.rungs[0]))
    assert slow in [t.number for t in promoted]
    assert len(promoted) <= 2  # the best third plus at most as many climbers
