"""Training to convergence: early stopping on validation, the resource in samples, staged methods."""

from __future__ import annotations

import pytest

from embadvisor.tasks.api import convergence_config, default_batch_size, train
from embadvisor.tasks.trainer import TrainConfig, curve_rise


def test_training_stops_when_validation_stops_improving(ctr_data) -> None:
    # a cap of 200 epochs that early stopping must end long before
    cfg = convergence_config(ctr_data, batch_size=128, lr=3e-2, threads=1, max_samples=200 * ctr_data.num_train,
                             eval_every_samples=ctr_data.num_train, patience=2)
    rep = train(ctr_data, "full", config=cfg)
    f = rep.fit
    assert f.converged and f.stopped == "early stopping on validation"
    assert f.samples < 200 * ctr_data.num_train
    best_at = max(range(len(f.curve)), key=lambda i: f.curve[i][1])
    assert len(f.curve) - 1 - best_at == 2  # stopped exactly `patience` evaluations after the best
    assert f.validation["auc"] == pytest.approx(max(v for _, v in f.curve), abs=1e-6)  # best state restored


def test_a_cap_that_stops_training_first_is_reported_as_not_converged(ctr_data) -> None:
    cfg = TrainConfig(batch_size=128, lr=1e-3, threads=1, max_samples=3 * 128, eval_every_samples=128, patience=50)
    f = train(ctr_data, "full", config=cfg).fit
    assert not f.converged and f.stopped == "resource cap reached" and f.samples == 3 * 128
    assert f.rise is not None and f.rise >= 0


def test_curve_rise_measures_the_last_quarter() -> None:
    assert curve_rise([(0, 0.5), (50, 0.6), (75, 0.7), (100, 0.75)], 1.0) == pytest.approx(0.05)
    assert curve_rise([(0, 0.5), (50, 0.7), (100, 0.6)], 1.0) == 0.0
    assert curve_rise([(0, 0.4)], 1.0) is None


def test_batch_size_shrinks_on_small_data() -> None:
    assert default_batch_size("ctr", 45_000_000) == 4096
    assert default_batch_size("ctr", 70_000) == 1024  # at least 64 steps an epoch
    assert default_batch_size("ctr", 7_200) == 64
    assert default_batch_size("retrieval", 800_000) == 1024


def test_staged_methods_size_earlier_stages_from_the_horizon(ctr_data) -> None:
    # pep: search (0.5) then retrain (0.5): the search stage trains stage_samples, the cap counts the final stage
    cfg = TrainConfig(batch_size=100, lr=1e-2, threads=1, max_samples=300, stage_samples=500, eval_every_samples=100,
                      patience=0, evaluate_test=False)
    f = train(ctr_data, "pep", config=cfg).fit
    assert f.final_stage_from == 500 and f.samples == 800
    assert [s for s, _ in f.final_curve] == [100, 200, 300]


