"""Many workers on one study over a real PostgreSQL (started by .ci/postgres; no mocks).

Set EMBADVISOR_TEST_POSTGRES (``eval "$(.ci/postgres)"``); under CI=true a missing server fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from typer.testing import CliRunner

from embadvisor.advisor.cli import app
from embadvisor.advisor.recommend import prepare_study, recommend
from embadvisor.advisor.schedule import Schedule
from embadvisor.advisor.search import Search, SearchSettings, default_study_name, is_counted, study_key
from embadvisor.advisor.storage import open_storage
from embadvisor.advisor.workloads import load_workload
from embadvisor.tasks.trainer import TrainConfig

pytestmark = pytest.mark.slow
runner = CliRunner()
TRAIN = TrainConfig(batch_size=1024, lr=3e-3, threads=1)
#: one rung, so the study's counted trials are exactly its candidates
FAST = Schedule(rungs=(6144,), eval_every_samples=3072, stage_samples=3072, patience=2)
SLOW = Schedule(rungs=(1_024_000,), eval_every_samples=256_000, stage_samples=3072, patience=1000)


@pytest.fixture(scope="module")
def pg() -> str:
    url = os.environ.get("EMBADVISOR_TEST_POSTGRES")
    if not url:  # start the throwaway local server the way CI does
        script = Path(__file__).resolve().parents[2] / ".ci" / "postgres"
        res = subprocess.run([str(script)], capture_output=True, text=True, timeout=900)
        url = res.stdout.strip().rpartition("EMBADVISOR_TEST_POSTGRES=")[2] if res.returncode == 0 else ""
        if not url:
            msg = f"no PostgreSQL for the worker tests ({script} failed: {res.stderr.strip()[-200:]})"
            if os.environ.get("CI", "").lower() in ("1", "true"):
                pytest.fail(msg)
            pytest.skip(msg)
    return url


@pytest.fixture
def data_file(shared_data, tmp_path):
    path = tmp_path / "u.data"
    path.write_bytes((shared_data / "ctr/movielens-100k/u.data").read_bytes())
    return path


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBADVISOR_HOME", str(tmp_path / "home"))


def _settings(w, trials: int, train: Schedule = FAST) -> SearchSettings:
    budget = int(w.target.full_table_bytes() * 0.2)
    return SearchSettings(budget_bytes=budget, trials=trials, methods=("hash", "qr", "mde"), retrain_top=1,
                          retrain_seeds=1, train=TRAIN, schedule=train)


def _counted(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.get_trials() if is_counted(t)]


def _worker(pg: str, name: str, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "embadvisor", "worker", "--storage", pg, "--study", name,
                             "--threads", "1", "--quiet", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_three_workers_complete_exactly_n_trials(pg, data_file) -> None:
    w = load_workload("ctr", data_file)
    name = f"w3-{uuid.uuid4().hex[:8]}"
    rec = recommend(w, _settings(w, trials=7), storage=pg, study_name=name, workers=3)
    study = optuna.load_study(study_name=name, storage=open_storage(pg))
    counted = _counted(study)
    assert len(counted) == 7
    assert not [t for t in study.get_trials() if t.state in (TrialState.RUNNING, TrialState.WAITING)
                and t.number < max(c.number for c in counted)]
    # no trial ran twice: every counted trial has its own parameters
    assert len({tuple(sorted(t.params.items())) for t in counted}) == 7
    workers = {t.user_attrs["worker"] for t in counted}
    assert len(workers) >= 2, workers  # the trials really were spread over processes
    assert rec["trials"]["complete"] + rec["trials"]["pruned"] >= 1 and rec["serve_bytes"] <= rec["budget_bytes"]


def test_killed_worker_trial_is_failed_and_retried(pg, data_file) -> None:
    w = load_workload("ctr", data_file)
    settings = _settings(w, trials=4, train=SLOW)
    search = Search(w, settings)
    name = f"kill-{uuid.uuid4().hex[:8]}"
    study = prepare_study(search, open_storage(pg, heartbeat_s=1), name, study_key(w, settings))
    procs = [_worker(pg, name, "--heartbeat", "1") for _ in range(2)]
    victim, deadline = None, time.time() + 120
    while victim is None and time.time() < deadline:  # wait for a trial to be mid-training, then kill -9 its worker
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if "worker" in t.user_attrs and t.intermediate_values:
                victim = t
                break
        time.sleep(0.2)
    assert victim is not None, "no trial started"
    pid = int(victim.user_attrs["worker"].rsplit(":", 1)[1])
    target = next(p for p in procs if p.pid == pid)
    os.kill(pid, signal.SIGKILL)
    target.wait()
    # the trial it was running when killed (the one spotted above may have finished a moment before)
    left = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.user_attrs.get("worker") == victim.user_attrs["worker"]]
    assert len(left) == 1, [(t.number, t.state.name, t.user_attrs.get("worker"), victim.user_attrs["worker"])
                            for t in study.get_trials(deepcopy=False)]
    victim = left[0]
    survivor = next(p for p in procs if p is not target)
    out, err = survivor.communicate(timeout=300)
    assert survivor.returncode == 0, err.decode()
    trials = study.get_trials()
    killed = next(t for t in trials if t.number == victim.number)
    assert killed.state == TrialState.FAIL
    retried = [t for t in trials if optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(t)
               == victim.number]
    assert len(retried) == 1 and retried[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert retried[0].params == killed.params
    assert len(_counted(study)) == 4  # the study still completed its N trials, none lost or duplicated


def test_second_recommend_resumes(pg, data_file) -> None:
    w = load_workload("ctr", data_file)
    name = f"resume-{uuid.uuid4().hex[:8]}"
    recommend(w, _settings(w, trials=2), storage=pg, study_name=name)
    study = optuna.load_study(study_name=name, storage=open_storage(pg))
    first = [t.number for t in study.get_trials()]
    again = recommend(w, _settings(w, trials=3), storage=pg, study_name=name)
    assert sum(again["trials"].values()) == 3  # one more trial, not three
    assert [t.number for t in study.get_trials()][: len(first)] == first


def test_wrong_data_worker_is_refused(pg, data_file) -> None:
    w = load_workload("ctr", data_file)
    settings = _settings(w, trials=2)
    key = study_key(w, settings)
    name = default_study_name(key) + "-" + uuid.uuid4().hex[:6]
    prepare_study(Search(w, settings), open_storage(pg), name, key)
    lines = data_file.read_text().splitlines()
    data_file.write_text("\n".join(lines[: len(lines) // 2]) + "\n")  # same path, different data
    proc = _worker(pg, name)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    text = err.decode().strip()
    assert "fingerprint" in text and len(text.splitlines()) == 1
    assert optuna.load_study(study_name=name, storage=open_storage(pg)).get_trials(
        states=(TrialState.COMPLETE, TrialState.RUNNING)) == []


def test_unknown_study_and_sqlite_with_workers_are_refused(pg, data_file, tmp_path) -> None:
    res = runner.invoke(app, ["worker", "--storage", pg, "--study", "no-such-study-xyz"])
    assert res.exit_code == 2 and "no study 'no-such-study-xyz'" in res.stderr
    res = runner.invoke(app, ["recommend", "--budget", "40kB", "--data", str(data_file), "--workers", "2",
                              "--storage", f"sqlite:///{tmp_path / 'x.db'}"])
    assert res.exit_code == 2 and "SQLite is for one process" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_ctrl_c_fails_the_current_trial_cleanly_and_it_does_not_count(pg, data_file) -> None:
    w = load_workload("ctr", data_file)
    settings = _settings(w, trials=3, train=SLOW)
    name = f"sigint-{uuid.uuid4().hex[:8]}"
    study = prepare_study(Search(w, settings), open_storage(pg), name, study_key(w, settings))
    proc = _worker(pg, name)
    deadline = time.time() + 120
    while time.time() < deadline and not [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                                          if t.intermediate_values]:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()
    assert "interrupted" in err.decode() and "Traceback" not in err.decode()
    trials = study.get_trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING]  # nothing left dangling
    stopped = [t for t in trials if t.state == TrialState.FAIL]
    # the signal lands mid-trial (or, on a slow machine, between two trials: then nothing fails)
    assert len(stopped) <= 1 and all(t.user_attrs.get("interrupted") and not is_counted(t) for t in stopped)
