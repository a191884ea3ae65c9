"""The advisor on real data at small settings: recommend, export, rebuild, resume, refusals, failures."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from embadvisor.advisor.cli import app
from embadvisor.advisor.export import build_embedding, load_config, study_trials
from embadvisor.advisor.recommend import recommend
from embadvisor.advisor.schedule import Schedule
from embadvisor.advisor.search import SearchSettings, StudyMismatch
from embadvisor.advisor.workloads import workload_from_data
from embadvisor.errors import InfeasibleError
from embadvisor.tasks.datasets import ctr_task_data, retrieval_task_data
from embadvisor.tasks.trainer import TrainConfig

runner = CliRunner()
SMALL = TrainConfig(batch_size=1024, lr=3e-3, threads=2)
#: two rungs of a few steps each, in place of a calibrated schedule
TINY = Schedule(rungs=(3072, 6144), eval_every_samples=3072, stage_samples=3072, patience=2)


@pytest.fixture(scope="module")
def ml100k(shared_data):
    data = ctr_task_data(shared_data / "ctr/movielens-100k/u.data")
    return workload_from_data("ctr", data, None, 16)


@pytest.fixture(scope="module")
def ml1m(shared_data):
    data = retrieval_task_data(shared_data / "retrieval/movielens-1m-implicit")
    return workload_from_data("retrieval", data, None, 32)


def _settings(budget: int, **kw) -> SearchSettings:
    base = dict(trials=3, methods=("hash", "qr", "mde"), retrain_top=1, retrain_seeds=1, train=SMALL, schedule=TINY)
    return SearchSettings(budget_bytes=budget, **(base | kw))


@pytest.mark.slow
@pytest.mark.parametrize("task", ["ctr", "retrieval"])
@pytest.mark.parametrize("ratio", [0.5, 0.1])
def test_recommend_fits_and_export_rebuilds_the_bytes(task, ratio, ml100k, ml1m, tmp_path) -> None:
    w = ml100k if task == "ctr" else ml1m
    budget = int(w.target.full_table_bytes() * ratio)
    storage = f"sqlite:///{tmp_path / 'db.sqlite'}"
    rec = recommend(w, _settings(budget), storage=storage)
    assert rec["serve_bytes"] <= budget
    assert rec["trials"]["complete"] >= 1
    assert rec["metric"]["name"] == ("auc" if task == "ctr" else "recall@20")
    assert rec["metric"]["test"] is not None
    # export through the CLI, rebuild the module, same bytes
    out = tmp_path / "best.toml"
    res = runner.invoke(app, ["export", rec["study"], "--storage", storage, "-o", str(out)])
    assert res.exit_code == 0, res.output
    cfg = load_config(out)
    module = build_embedding(cfg)
    assert module.measured_memory() == cfg["memory"]["serve_bytes"] == rec["serve_bytes"]
    js = tmp_path / "best.json"
    assert runner.invoke(app, ["export", rec["study"], "--storage", storage, "-o", str(js)]).exit_code == 0
    assert build_embedding(js).measured_memory() == rec["serve_bytes"]


@pytest.mark.slow
def test_resume_and_mismatch(ml100k, tmp_path) -> None:
    storage = f"sqlite:///{tmp_path / 'db.sqlite'}"
    budget = int(ml100k.target.full_table_bytes() * 0.2)
    first = recommend(ml100k, _settings(budget, trials=2), storage=storage, study_name="s")
    assert _rung0(storage) == 2
    n_first = len(study_trials("s", storage))
    again = recommend(ml100k, _settings(budget, trials=3), storage=storage, study_name="s")
    assert _rung0(storage) == 3  # resumed: one more candidate, not three
    assert len(study_trials("s", storage)) > n_first and first["study"] == again["study"]
    before = len(study_trials("s", storage))
    with pytest.raises(StudyMismatch, match="budget_bytes"):
        recommend(ml100k, _settings(budget // 2, trials=3), storage=storage, study_name="s")
    assert len(study_trials("s", storage)) == before  # the existing study is untouched


def _rung0(storage: str) -> int:
    import optuna

    study = optuna.load_study(study_name="s", storage=storage)
    return sum(1 for t in study.trials if t.user_attrs.get("rung", 0) == 0 and t.state.is_finished())


def test_budget_below_every_minimum_lists_minimums(ml100k, tmp_path) -> None:
    with pytest.raises(InfeasibleError, match="Minimum budgets: .*hash"):
        recommend(ml100k, _settings(10), storage=f"sqlite:///{tmp_path / 'db.sqlite'}")


@pytest.mark.slow
def test_failed_trial_is_recorded_and_search_continues(ml100k, tmp_path, monkeypatch) -> None:
    import embadvisor.advisor.search as search_mod

    real = search_mod.train
    calls = {"n": 0}

    def flaky(*a, **kw):  # noqa: ANN002, ANN003
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom in trial")
        return real(*a, **kw)

    monkeypatch.setattr(search_mod, "train", flaky)
    storage = f"sqlite:///{tmp_path / 'db.sqlite'}"
    rec = recommend(ml100k, _settings(int(ml100k.target.full_table_bytes() * 0.3)), storage=storage,
                    study_name="flaky")
    assert rec["trials"]["failed"] == 1 and rec["trials"]["complete"] >= 1
    failed = study_trials("flaky", storage, state="fail")
    assert "boom in trial" in failed[0]["failure"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["recommend", "--budget", "64 megs"], "budget must be"),
        (["recommend", "--budget", "64MB", "--methods", "hsah"], "Did you mean 'hash'"),
        (["recommend", "--budget", "64MB", "--profile", "criteo-kagle", "--data", "x"], "Did you mean"),
        (["recommend", "--budget", "64MB", "--storage", "nosuchdb://x"], "cannot open storage"),
        (["recommend", "--budget", "64MB", "--task", "vision"], "--task"),
        (["recommend", "--budget", "64MB", "--budget-scope", "disk"], "--budget-scope"),
        (["export", "nope", "--storage", "sqlite:////tmp/embadvisor-test-empty.db", "-o", "x.toml"], "study"),
    ],
)
def test_bad_inputs_exit_2_with_one_line(args, needle, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("EMBADVISOR_HOME", str(tmp_path))
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    assert needle in res.stderr
    assert "Traceback" not in res.output and len(res.stderr.strip().splitlines()) == 1


def test_data_profile_mismatch(shared_data, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("EMBADVISOR_HOME", str(tmp_path))
    res = runner.invoke(app, ["recommend", "--budget", "64MB", "--data", str(shared_data / "ctr/movielens-100k/u.data"),
                              "--profile", "criteo-kaggle"])
    assert res.exit_code == 2
    assert "fields" in res.stderr and len(res.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_recommend_cli_json(shared_data, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("EMBADVISOR_HOME", str(tmp_path))
    res = runner.invoke(app, ["recommend", "--budget", "40kB", "--task", "ctr", "--data",
                              str(shared_data / "ctr/movielens-100k/u.data"), "--methods", "hash,qr", "--trials", "2",
                              "--rungs", "2048,4096", "--json", "-o", str(tmp_path / "c.json")])
    assert res.exit_code == 0, res.output
    rec = json.loads(res.stdout)
    for key in ("method", "params", "budget_bytes", "serve_bytes", "train_bytes", "metric", "study", "storage", "trials"):
        assert key in rec
    assert set(rec["metric"]) >= {"name", "validation", "test", "spread", "runs"}
    assert {"evidence", "undertrained", "schedule"} <= set(rec)
    assert set(rec["trials"]) == {"complete", "pruned", "failed"}
    assert rec["serve_bytes"] <= 40_000
    hist = runner.invoke(app, ["history", "--json"])
    assert hist.exit_code == 0 and rec["study"] in hist.stdout


def test_enqueued_default_leaves_every_setting_to_the_solver(ml100k, tmp_path) -> None:
    budget = int(ml100k.target.full_table_bytes() * 0.05)
    rec = recommend(ml100k, _settings(budget, trials=1, methods=("dpq",)), storage=f"sqlite:///{tmp_path / 'd.db'}",
                    study_name="d")
    import optuna

    trial = optuna.load_study(study_name="d", storage=f"sqlite:///{tmp_path / 'd.db'}").trials[0]
    assert set(trial.params) == {"method", "dpq.budget_use"}  # no sampled dpq.* settings
    assert trial.user_attrs["fixed"] == {} and trial.user_attrs["solver_default"]
    assert trial.state.name in ("COMPLETE", "PRUNED") and rec["method"] == "dpq"
