"""`embadvisor plot`: html and png from a small real study, and one-line errors."""

from __future__ import annotations

import sys

import pytest
from typer.testing import CliRunner

from embadvisor.advisor.cli import app
from embadvisor.advisor.frontier import knee, pareto_frontier

runner = CliRunner()
METHODS = ("hash", "qr", "robe")


@pytest.fixture(scope="module")
def small_study(shared_data, tmp_path_factory) -> tuple[str, str]:
    """A real 6-trial study on movielens-100k (a few training steps per trial); returns (storage, name)."""
    from embadvisor.advisor.recommend import recommend
    from embadvisor.advisor.search import SearchSettings
    from embadvisor.advisor.workloads import workload_from_data
    from embadvisor.tasks.datasets import ctr_task_data
    from embadvisor.tasks.trainer import TrainConfig

    w = workload_from_data("ctr", ctr_task_data(shared_data / "ctr/movielens-100k/u.data"), None, 16)
    storage = f"sqlite:///{tmp_path_factory.mktemp('plot') / 'db.sqlite'}"
    from embadvisor.advisor.schedule import Schedule

    cfg = TrainConfig(batch_size=1024, lr=3e-3, threads=1)
    settings = SearchSettings(budget_bytes=int(w.target.full_table_bytes() * 0.3), trials=6, methods=METHODS,
                              retrain_top=1, retrain_seeds=1, train=cfg,
                              schedule=Schedule(rungs=(3072, 6144), eval_every_samples=1024, stage_samples=3072))
    recommend(w, settings, storage=storage, study_name="small")
    return storage, "small"


def _one_line_error(res, needle: str) -> None:  # noqa: ANN001
    assert res.exit_code == 2, res.output
    assert needle in res.stderr, res.stderr
    assert "Traceback" not in res.output and len(res.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_html_is_self_contained_and_names_every_method(small_study, tmp_path) -> None:
    storage, name = small_study
    out = tmp_path / "study.html"
    res = runner.invoke(app, ["plot", name, "--storage", storage, "-o", str(out)])
    assert res.exit_code == 0, res.output
    html = out.read_text(encoding="utf-8")
    assert '<script src="http' not in html  # plotly.js inlined: opens offline
    assert "Plotly.newPlot" in html and len(html) > 1_000_000
    for text in (*METHODS, "feasible frontier", "best so far", "optimisation history", "best trial per method",
                 "budget", "learning curves", "recommended, fresh seed"):
        assert text in html, text


@pytest.mark.slow
def test_png_is_a_real_image(small_study, tmp_path) -> None:
    storage, name = small_study
    out = tmp_path / "study.png"
    res = runner.invoke(app, ["plot", name, "--storage", storage, "-o", str(out)])
    assert res.exit_code == 0, res.output
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 30_000  # three panels with points, not an empty canvas


@pytest.mark.slow
def test_plot_data_matches_the_study(small_study) -> None:
    from embadvisor.advisor.export import study_trials
    from embadvisor.advisor.plot import load_plot_data

    storage, name = small_study
    data = load_plot_data(name, storage)
    rows = study_trials(name, storage)
    assert len(data.points) == len(rows)
    complete = [r for r in rows if r["state"] == "complete"]
    assert max(v for _, v in data.best_so_far()) == max(r["value"] for r in complete)
    front = data.frontier()
    assert front and all(p.memory <= data.budget_bytes for p in front)  # type: ignore[operator]
    assert [p.memory for p in front] == sorted(p.memory for p in front)  # type: ignore[type-var]
    assert {p.method for p in data.best_per_method()} == {r["method"] for r in complete}
    assert data.metric == "auc"
    # every completed trial's learning curve, ending at its samples; the pick's fresh-seed runs
    assert len(data.curves()) == len(complete)
    assert all(p.curve[-1][0] > 0 for p in data.curves())
    assert len(data.finalist_curves) == 1 and data.finalist_curves[0][1]


def test_unknown_study_lists_known_names(tmp_path) -> None:
    storage = f"sqlite:///{tmp_path / 'empty.db'}"
    res = runner.invoke(app, ["plot", "nope", "--storage", storage, "-o", str(tmp_path / "x.html")])
    _one_line_error(res, "must be one of the studies in this storage")


@pytest.mark.parametrize("suffix", [".svg", ".pdf", ""])
def test_unsupported_suffix(suffix, tmp_path) -> None:
    res = runner.invoke(app, ["plot", "s", "--storage", f"sqlite:///{tmp_path / 'db'}", "-o",
                              str(tmp_path / f"out{suffix}")])
    _one_line_error(res, ".html or .png")


@pytest.mark.parametrize(("suffix", "module"), [(".html", "plotly"), (".png", "matplotlib")])
def test_missing_library_says_how_to_install(suffix, module, tmp_path, monkeypatch) -> None:
    for mod in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, module, None)  # import now raises ImportError
    res = runner.invoke(app, ["plot", "s", "--storage", f"sqlite:///{tmp_path / 'db'}", "-o",
                              str(tmp_path / f"out{suffix}")])
    _one_line_error(res, "pip install 'embadvisor[plot]'")


def test_frontier_and_knee() -> None:
    pts = [(10.0, 0.70), (20.0, 0.69), (30.0, 0.75), (5.0, 0.60), (30.0, 0.74), (40.0, 0.75)]
    assert pareto_frontier(pts) == [3, 0, 2]
    assert pareto_frontier([(1.0, float("nan")), (2.0, 0.5)]) == [1]
    # diminishing returns: the middle point is the knee; the answer does not depend on axis units
    curve = [(1e6, 0.70), (1e7, 0.78), (1e8, 0.79)]
    assert knee(curve)[0] == 1  # type: ignore[index]
    assert knee([(b * 1000, v * 100) for b, v in curve])[0] == 1  # type: ignore[index]
    assert knee([(1e6, 0.70), (1e7, 0.71), (1e8, 0.79)]) is None  # below the chord: no knee
    assert knee(curve[:2]) is None
