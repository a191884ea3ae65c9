"""The task engines: every method through both engines, CTR models, trainer behaviour."""

from __future__ import annotations

import math

import pytest
import torch

from embadvisor.methods import get_method, list_methods
from embadvisor.tasks.api import train
from embadvisor.tasks.ctr import CTR_MODELS, CtrEngine
from embadvisor.tasks.trainer import TrainConfig, TrainingDiverged

FAST = TrainConfig(batch_size=256, max_steps=6, epochs=1.0, lr=1e-2, eval_every=3, patience=0)


def _budget(name: str, data, dim: int = 16):  # a budget every method can meet: its minimum, or a quarter
    from embadvisor.methods import solve

    tables = data.tables(dim)
    full = sum(t.num_embeddings * dim * 4 for t in tables)
    plan = solve(name, tables, full * 0.25)
    return plan if plan.feasible else solve(name, tables, plan.min_budget_bytes)


@pytest.mark.parametrize("name", list_methods())
def test_every_method_trains_through_the_ctr_engine(name: str, ctr_data) -> None:
    plan = _budget(name, ctr_data)
    assert plan.feasible, plan.reason
    rep = train(ctr_data, plan, config=FAST)
    d = rep.to_dict()
    assert 0.0 <= d["validation"]["auc"] <= 1.0 and math.isfinite(d["validation"]["logloss"])
    assert d["test"] is not None and "auc" in d["test"]
    assert d["steps"] == 6 and d["samples_per_second"] > 0
    tags = get_method(name).tags
    if tags.data_dependent_memory:
        if d["serve_bytes"] > d["serve_bytes_estimate"] * 1.1 + 64:  # allowed only with a stated reason
            notes = [m.unmet_target() for m in rep.model.modules() if hasattr(m, "unmet_target")]
            assert any(notes), f"{name}: serving form exceeds its estimate without a reason"
    else:
        assert d["serve_bytes"] == d["serve_bytes_estimate"]


@pytest.mark.parametrize("name", list_methods())
def test_every_method_trains_through_the_retrieval_engine(name: str, retrieval_data) -> None:
    plan = _budget(name, retrieval_data)
    assert plan.feasible, plan.reason
    rep = train(retrieval_data, plan, config=TrainConfig(batch_size=128, max_steps=6, eval_every=3, patience=0))
    d = rep.to_dict()
    for k in ("recall@10", "recall@20", "ndcg@20", "recall@50"):
        assert 0.0 <= d["validation"][k] <= 1.0
    assert d["test"] is not None


@pytest.mark.parametrize("model", sorted(CTR_MODELS))
def test_ctr_models_learn(model: str, ctr_data) -> None:
    rep = train(ctr_data, "full", model=model, config=TrainConfig(batch_size=128, epochs=4, lr=3e-3, patience=0))
    assert rep.fit.validation["auc"] > 0.65, rep.fit.validation


def test_retrieval_learns_beyond_popularity(retrieval_data) -> None:
    rep = train(retrieval_data, "full", config=TrainConfig(batch_size=256, epochs=30, lr=1e-2, patience=0))
    assert rep.fit.validation["recall@20"] > 0.3, rep.fit.validation


def test_callback_sees_every_evaluation_and_test_is_optional(ctr_data) -> None:
    seen: list[tuple[int, float]] = []
    cfg = TrainConfig(batch_size=256, max_steps=9, eval_every=3, patience=0, evaluate_test=False)
    rep = train(ctr_data, "hash", config=cfg, callback=lambda s, v, _f: seen.append((s, v)))
    assert [s for s, _ in seen] == [3, 6, 9]
    assert rep.fit.test is None


def test_deterministic_for_a_seed(ctr_data) -> None:
    a = train(ctr_data, "hash", config=FAST, seed=3).fit.validation
    b = train(ctr_data, "hash", config=FAST, seed=3).fit.validation
    c = train(ctr_data, "hash", config=FAST, seed=4).fit.validation
    assert a == b
    assert a != c


def test_divergence_stops_with_a_reason(ctr_data, monkeypatch) -> None:
    real = CtrEngine.train_loss

    def nan_loss(self, model, idx):  # noqa: ANN001
        return real(self, model, idx) * float("nan")

    monkeypatch.setattr(CtrEngine, "train_loss", nan_loss)
    with pytest.raises(TrainingDiverged, match="diverged.*nan.*step 0"):
        train(ctr_data, "full", config=FAST)


def test_early_stopping(ctr_data) -> None:
    cfg = TrainConfig(batch_size=64, epochs=50, lr=0.3, eval_every=2, patience=1, optimizer="sgd")
    rep = train(ctr_data, "full", config=cfg)
    assert rep.fit.stopped == "early stopping on validation"
    assert rep.fit.steps < 50 * 38


def test_time_budget(ctr_data) -> None:
    rep = train(ctr_data, "full", config=TrainConfig(batch_size=64, epochs=100, time_budget_s=0.5, patience=0))
    assert rep.fit.stopped == "time budget reached" and rep.fit.train_seconds < 5


def test_threads_are_explicit(ctr_data) -> None:
    before = torch.get_num_threads()
    train(ctr_data, "full", config=TrainConfig(batch_size=256, max_steps=2, threads=1, patience=0))
    assert torch.get_num_threads() == 1
    torch.set_num_threads(before)
