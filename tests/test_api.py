"""The Python API owns the defaults the CLI uses; budgets as shares of the full tables (embadvisor.api)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import embadvisor
from embadvisor.advisor.cli import app
from embadvisor.advisor.search import default_study_name, full_bytes, study_key
from embadvisor.api import prepare_recommend, resolve_budget
from embadvisor.defaults import DEFAULT_PATIENCE
from embadvisor.errors import InvalidConfigError
from embadvisor.profiles import resolve_profile
from embadvisor.units import Budget, parse_budget

runner = CliRunner()


def test_budget_shares_parse_and_resolve() -> None:
    assert parse_budget("12.5%") == Budget(share=0.125)
    assert parse_budget("100%").resolve(1000) == 1000
    assert parse_budget("64MB") == Budget(nbytes=64_000_000)
    assert parse_budget(" 1e1 %").resolve(999) == 100


@pytest.mark.parametrize("bad", ["0%", "-1%", "150%", "100.5%", "nan%", "inf%", "%", "abc%", "1e400%", "12.5%%"])
def test_shares_outside_0_100_are_one_line_errors(bad) -> None:
    with pytest.raises(InvalidConfigError, match=r"percentage in \(0, 100\]"):
        parse_budget(bad)
    res = runner.invoke(app, ["methods", "--solve", "criteo-kaggle", "--budget", bad])
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1, res.output


def test_methods_solve_takes_a_share_of_the_full_tables_in_the_scope() -> None:
    prof = resolve_profile("criteo-kaggle")
    for scope in ("serve", "train"):
        full = full_bytes(prof.tables(), scope, "adam")
        res = runner.invoke(app, ["methods", "--solve", "criteo-kaggle", "--budget", "12.5%", "--scope", scope,
                                  "--json"])
        assert res.exit_code == 0, res.output
        plans = json.loads(res.stdout)
        assert {p["budget_bytes"] for p in plans} == {round(0.125 * full)}
    res = runner.invoke(app, ["methods", "--solve", "criteo-kaggle", "--budget", "12.5%"])
    assert "12.5% of the full tables" in res.stdout


def test_the_cli_shows_the_library_defaults() -> None:
    import inspect

    from embadvisor.advisor import cli

    train_sig, api_sig = inspect.signature(cli.train), inspect.signature(embadvisor.train)
    for name in ("lr", "threads", "patience", "method", "scope", "model", "optimizer", "seed"):
        assert train_sig.parameters[name].default == api_sig.parameters[name].default, name
    rec_sig = inspect.signature(cli.recommend)
    prep = inspect.signature(prepare_recommend)
    for name in ("lr", "threads", "seed", "model", "workers"):
        assert rec_sig.parameters[name].default == prep.parameters[name].default, name
    assert api_sig.parameters["patience"].default == DEFAULT_PATIENCE


def test_train_takes_a_share(shared_data) -> None:
    data = shared_data / "ctr/avazu-10k/avazu_train"
    rep = embadvisor.train(data, task="ctr", label="click", method="hash", budget="12.5%", epochs=1, threads=1)
    from embadvisor.tasks.datasets import load_task_data

    td = load_task_data("ctr", data, label="click")
    assert rep.plan.budget_bytes == resolve_budget("12.5%", td.tables(16), "serve")
    assert rep.plan.bytes <= rep.plan.budget_bytes


@pytest.mark.slow
def test_cli_and_api_run_the_same_study(shared_data, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("EMBADVISOR_HOME", str(tmp_path))
    data = shared_data / "ctr/avazu-10k/avazu_train"
    common = dict(task="ctr", data=str(data), label="click", methods="hash,qr", trials=2, rungs="2048", threads=1)
    job = prepare_recommend("12.5%", **common)
    name = default_study_name(study_key(job.workload, job.settings))
    res = runner.invoke(app, ["recommend", "--budget", "12.5%", "--task", "ctr", "--data", str(data), "--label",
                              "click", "--methods", "hash,qr", "--trials", "2", "--rungs", "2048", "--threads", "1",
                              "--json"])
    assert res.exit_code == 0, res.output
    cli_rec = json.loads(res.stdout)
    assert cli_rec["study"] == name and cli_rec["budget"] == "12.5%"
    assert cli_rec["budget_bytes"] == job.settings.budget_bytes
    api_rec = embadvisor.recommend("12.5%", **common)
    assert api_rec["study"] == name
    assert api_rec["method"] == cli_rec["method"] and api_rec["params"] == cli_rec["params"]


@pytest.mark.slow
def test_pareto_takes_shares(shared_data, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("EMBADVISOR_HOME", str(tmp_path))
    res = runner.invoke(app, ["pareto", "--budgets", "50%,10%", "--task", "ctr", "--data",
                              str(shared_data / "ctr/avazu-10k/avazu_train"), "--label", "click", "--methods",
                              "hash", "--trials", "1", "--rungs", "2048", "--threads", "1", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)["rows"]
    assert [r["budget_share"] for r in rows] == pytest.approx([0.1, 0.5], rel=1e-3)  # bytes are whole


@pytest.mark.parametrize("cmd", [["recommend", "--budget", "10%"], ["pareto", "--budgets", "10%,50%"],
                                 ["worker", "--study", "x", "--storage", "x.log"]])
def test_device_cuda_without_cuda_is_one_line_before_any_work(cmd, tmp_path, monkeypatch) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, [*cmd, "--device", "cuda"])
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1, res.output
    assert "no CUDA device" in res.stderr
    assert not list(tmp_path.iterdir())  # nothing prepared, no storage created


def test_local_workers_take_one_gpu_each_or_the_given_device() -> None:
    import torch

    from embadvisor.advisor.distributed import worker_device

    assert worker_device("cpu", 3) == "cpu"
    assert worker_device("cuda:1", 0) == "cuda:1"
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        assert [worker_device("cuda", i) for i in range(2 * n)] == [f"cuda:{i % n}" for i in range(2 * n)]
    else:
        assert worker_device("auto", 2) == "cpu"
