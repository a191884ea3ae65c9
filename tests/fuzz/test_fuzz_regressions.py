"""Regression tests for the root causes the CLI fuzz suite (issue #18) found; each failed before its fix."""

from __future__ import annotations

import errno
import json
import math
import os
import random
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from embadvisor.errors import DataError, InfeasibleError, InvalidConfigError

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fuzzlib  # noqa: E402


@pytest.fixture
def ctr_csv(tmp_path: Path) -> Path:
    path = tmp_path / "ctr.csv"
    rows = fuzzlib._ctr_rows(random.Random(0), 400)
    path.write_text(fuzzlib._csv(["label", "I1", "I2", "C1", "C2", "C3"], rows))
    return path


# -- progress before the search's own checks -----------------------------------------------------
def test_progress_prints_nothing_before_its_first_event(capsys: pytest.CaptureFixture[str]) -> None:
    from embadvisor.advisor.report import SearchProgress

    with pytest.raises(InfeasibleError), SearchProgress(None, 5.0, header="the workload"):
        raise InfeasibleError("nothing fits")
    assert capsys.readouterr().err == ""
    with SearchProgress(None, 5.0, enabled=False, header="the workload") as progress:
        progress.on_phase("searching")
    assert "the workload" in capsys.readouterr().err


def test_recommend_with_a_budget_nothing_fits_prints_one_line(ctr_csv: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from embadvisor.advisor.cli import app

    monkeypatch.setenv("EMBADVISOR_HOME", str(tmp_path / "home"))
    res = CliRunner().invoke(app, ["recommend", "--budget", "1B", "--data", str(ctr_csv), "--methods", "hash",
                                   "--rungs", "512", "--trials", "1", "--threads", "1"])
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no method fits"), lines


# -- profiles --------------------------------------------------------------------------------------
def test_profile_json_with_an_integer_of_5000_digits_is_a_data_error() -> None:
    from embadvisor.profiles.io import profile_from_text

    text = json.dumps(fuzzlib.base_profile()).replace('"num_embeddings": 30', '"num_embeddings": ' + "9" * 5000)
    with pytest.raises(DataError, match="not valid JSON"):
        profile_from_text(text, fmt="json")


@pytest.mark.parametrize("shares", ["x", ["x"] * 17, [True] * 17, 5])
def test_profile_frequency_lists_must_hold_numbers(shares: object) -> None:
    from embadvisor.profiles.io import profile_from_text

    d = fuzzlib.base_profile()
    d["fields"][0]["frequency"]["cumulative_shares"] = shares
    with pytest.raises(InvalidConfigError, match="cumulative_shares` must be a list of numbers"):
        profile_from_text(json.dumps(d), fmt="json")


# -- output paths ----------------------------------------------------------------------------------
def _unwritable_paths(tmp_path: Path) -> list[Path]:
    os.symlink(tmp_path / "loop2.toml", tmp_path / "loop.toml")
    os.symlink(tmp_path / "loop.toml", tmp_path / "loop2.toml")
    os.symlink(tmp_path / "missing" / "x.toml", tmp_path / "dangling.toml")
    os.mkfifo(tmp_path / "pipe.toml")
    return [tmp_path / ("n" * 300 + ".toml"), tmp_path / "loop.toml", tmp_path / "dangling.toml",
            tmp_path / "pipe.toml"]


def test_check_output_path_refuses_what_cannot_be_written(tmp_path: Path) -> None:
    from embadvisor._checks import check_output_path

    for path in _unwritable_paths(tmp_path):
        with pytest.raises(DataError, match="must be a file that can be written"):
            check_output_path(path)


def test_check_output_path_probe_leaves_files_as_they_were(tmp_path: Path) -> None:
    from embadvisor._checks import check_output_path

    existing = tmp_path / "keep.toml"
    existing.write_text("content")
    check_output_path(existing)
    assert existing.read_text() == "content"
    check_output_path(tmp_path / "new.toml")
    os.symlink(tmp_path / "target.toml", tmp_path / "link.toml")  # dangling, into an existing folder
    check_output_path(tmp_path / "link.toml")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.toml", "link.toml"]


def test_synth_to_an_unwritable_path_is_a_data_error(tmp_path: Path) -> None:
    from embadvisor.profiles.schema import WorkloadProfile
    from embadvisor.profiles.synth import generate

    prof = WorkloadProfile.from_dict(fuzzlib.base_profile())
    with pytest.raises(DataError):
        generate(prof, rows=10, output=tmp_path / ("n" * 300 + ".parquet"))


def test_synth_write_errors_are_data_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from embadvisor.profiles import synth
    from embadvisor.profiles.schema import WorkloadProfile

    def full(self: object, payload: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(synth._Sink, "write", full)
    prof = WorkloadProfile.from_dict(fuzzlib.base_profile())
    with pytest.raises(DataError, match="No space left on device"):
        synth.generate(prof, rows=10, output=tmp_path / "s.parquet")


def test_plot_write_errors_are_data_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("plotly")
    from embadvisor.advisor import plot

    def full(data: object, path: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(plot, "load_plot_data", lambda name, storage: None)
    monkeypatch.setattr(plot, "write_html", full)
    with pytest.raises(DataError, match="No space left on device"):
        plot.plot_study("s", tmp_path / "p.html")
    with pytest.raises(DataError, match="must be a file that can be written"):
        plot.plot_study("s", tmp_path / ("n" * 300 + ".html"))


# -- training options --------------------------------------------------------------------------------
@pytest.mark.parametrize("epochs", [math.inf, math.nan, 0.0])
def test_train_refuses_epochs_that_are_not_finite(epochs: float, tmp_path: Path) -> None:
    from embadvisor.api import train

    with pytest.raises(InvalidConfigError, match="epochs"):
        train(tmp_path / "never-read.csv", epochs=epochs)


def test_threads_are_capped_per_core() -> None:
    from embadvisor.tasks.trainer import TrainConfig

    cap = 4 * (os.cpu_count() or 1)
    assert TrainConfig(threads=cap).threads == cap
    with pytest.raises(InvalidConfigError, match="threads"):  # a million crashed OpenMP with a segfault
        TrainConfig(threads=1_000_000)


def test_learning_rates_that_overflow_float32_are_refused() -> None:
    from embadvisor.advisor.search import SearchSettings
    from embadvisor.tasks.trainer import TrainConfig

    with pytest.raises(InvalidConfigError, match="lr"):
        TrainConfig(lr=1e300)
    with pytest.raises(InvalidConfigError, match="lr"):  # sampled trials train at up to 10x the base
        SearchSettings.for_task("ctr", 10_000, lr=5e3)
    assert SearchSettings.for_task("ctr", 10_000, lr=0.01).train.lr == 0.01


# -- budgets the proxy cannot meet ---------------------------------------------------------------------
def test_a_budget_the_proxy_cannot_meet_is_infeasible_before_training(ctr_csv: Path) -> None:
    from embadvisor.advisor.search import Search, SearchSettings
    from embadvisor.advisor.workloads import load_workload
    from embadvisor.profiles.schema import WorkloadProfile

    d = fuzzlib.base_profile()
    for f in d["fields"]:  # the target is 100,000 times the data: its budget scaled to the data is tiny
        f["num_embeddings"] *= 100_000
        del f["frequency"], f["cardinality"]
    w = load_workload("ctr", ctr_csv, WorkloadProfile.from_dict(d))
    assert w.proxy
    search = Search(w, SearchSettings.for_task("ctr", 100_000, num_train=w.data.num_train, methods=("hash",)))
    assert search.solve_target("hash", 1.0, {}).feasible  # fits the target ...
    assert search.feasible == []  # ... not the proxy: calibration used to fail building its plan
    with pytest.raises(InfeasibleError, match="raise --budget to at least"):
        search.check_feasible()


@pytest.mark.parametrize(("option", "value"), [("fmt", "criteo"), ("label", "click"), ("fields", ["C1"])])
def test_data_options_without_data_are_refused(option: str, value: object) -> None:
    from embadvisor.advisor.workloads import load_workload

    # the built-in workload used to ignore them (and start a 4.5-minute search)
    with pytest.raises(InvalidConfigError, match="must come with --data"):
        load_workload("ctr", None, None, **{option: value})


def test_profile_names_are_short_strings() -> None:
    from embadvisor.profiles.io import profile_from_text

    for name in ("x" * 100_000, 5):  # a 100,000-character name took rich a minute to print in the report
        d = fuzzlib.base_profile() | {"name": name}
        with pytest.raises(InvalidConfigError, match="`name` must be a string of at most"):
            profile_from_text(json.dumps(d), fmt="json")


def test_dlrm_over_thousands_of_fields_is_refused_before_allocating(monkeypatch: pytest.MonkeyPatch) -> None:
    from embadvisor import _checks
    from embadvisor.tasks import ctr

    monkeypatch.setattr(_checks, "physical_memory_bytes", lambda: 16 * 2**30)

    class Embedder(ctr.nn.Module):
        pass

    # 3,000 fields: 4.5M pairwise interactions, a 4.5M x 512 first layer (34 GiB to train)
    with pytest.raises(InvalidConfigError, match="DLRM's top MLP over the 4,498,500 pairwise interactions"):
        ctr.DLRM(Embedder(), 3000, 16, 0)
    assert ctr.DLRM(Embedder(), 26, 16, 13).top[0].in_features == 27 * 26 // 2 + 16


def test_a_journal_file_holding_something_else_is_refused(tmp_path: Path) -> None:
    from embadvisor.advisor.storage import open_storage
    from embadvisor.errors import EmbAdvisorError

    garbage = tmp_path / "studies.log"
    garbage.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(EmbAdvisorError, match="must be an Optuna journal file"):
        open_storage(str(garbage))
    broken = tmp_path / "broken.log"
    broken.write_bytes(b'{"op_code": 0}\nnot json\n{"op_code": 0}\n')
    with pytest.raises(EmbAdvisorError, match="cannot open storage"):
        open_storage(str(broken))
    assert garbage.read_bytes() == bytes(range(256)) * 4  # untouched
