"""Sampled validation in the retrieval engine, on real data (movielens-1m-implicit).

The engine can validate on a fixed, seeded sample of the users who have validation items; these tests
check that the sample is fixed and seeded, that the sampled metric is the all-users per-user metric
restricted to the sample, that it tracks the full value within its stated standard error and keeps
the order of models of clearly different quality, and that ``full=True`` and the test split ignore it.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from embadvisor.errors import InvalidConfigError
from embadvisor.tasks.api import TaskData, train
from embadvisor.tasks.datasets import retrieval_task_data
from embadvisor.tasks.metrics import ranking_metrics, ranking_metrics_per_user, sampled_metric_stderr, topk_items
from embadvisor.tasks.retrieval import RetrievalEngine, TwoTower, csr_rows
from embadvisor.tasks.trainer import TrainConfig

ML1M = "retrieval/movielens-1m-implicit"
STEPS = (1, 25, 150)  # three models of clearly different quality (Recall@20 about 0.007, 0.07, 0.13)


@pytest.fixture(scope="module")
def ml1m(shared_data: Path) -> TaskData:
    return retrieval_task_data(shared_data / ML1M)


@pytest.fixture(scope="module")
def models(ml1m: TaskData) -> dict[int, TwoTower]:
    before = torch.get_num_threads()
    out = {}
    for steps in STEPS:
        cfg = TrainConfig(batch_size=1024, max_steps=steps, lr=1e-2, eval_every=10**6, patience=0,
                          evaluate_test=False, keep_best=False, threads=1)
        model = train(ml1m, "full", config=cfg).model
        assert isinstance(model, TwoTower)
        out[steps] = model
    torch.set_num_threads(before)
    return out


@pytest.fixture(scope="module")
def full_valid(ml1m: TaskData, models: dict[int, TwoTower]) -> dict[int, dict[str, float]]:
    assert ml1m.retrieval is not None
    engine = RetrievalEngine(ml1m.retrieval)
    return {steps: engine.evaluate(m, "valid") for steps, m in models.items()}


def _spy_users(model: TwoTower, monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    """Record the users whose vectors ``model`` computes."""
    seen: list[torch.Tensor] = []
    real = model.user_vectors

    def spy(users: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
        seen.append(users.clone())
        return real(users, exclude)

    monkeypatch.setattr(model, "user_vectors", spy)
    return seen


# --- units ---------------------------------------------------------------------------------------------


def test_sampled_metric_stderr_formula() -> None:
    v = np.array([0.0, 1.0, 0.0, 1.0])
    s = np.std(v, ddof=1)
    assert sampled_metric_stderr(v, 10) == pytest.approx(s / 2 * math.sqrt(6 / 9), rel=1e-12)
    assert sampled_metric_stderr(v, 4) == 0.0  # the sample is the population
    assert sampled_metric_stderr(v, 10**12) == pytest.approx(s / 2, rel=1e-6)  # no correction in the limit
    assert math.isnan(sampled_metric_stderr([0.3], 10))
    with pytest.raises(ValueError, match="cannot exceed"):
        sampled_metric_stderr(v, 3)


def test_csr_rows_and_per_user_metrics_agree_with_the_mean() -> None:
    indptr, items = np.array([0, 2, 2, 5, 6]), np.array([7, 8, 1, 2, 3, 9])
    p, it = csr_rows(indptr, items, np.array([3, 0, 1, 2]))
    assert p.tolist() == [0, 1, 3, 3, 6] and it.tolist() == [9, 7, 8, 1, 2, 3]
    rng = np.random.default_rng(0)
    top = torch.from_numpy(rng.integers(0, 12, size=(4, 5)))
    per_user = ranking_metrics_per_user(top, indptr, items, ks=(2, 5))
    assert per_user["recall@5"].shape == (3,)  # user 1 has no held-out item and is left out
    means = ranking_metrics(top, indptr, items, ks=(2, 5))
    assert means == {k: float(v.mean()) for k, v in per_user.items()}


def test_invalid_eval_users(ml1m: TaskData) -> None:
    assert ml1m.retrieval is not None
    for bad in (0, -3, 2.5, True):
        with pytest.raises(InvalidConfigError, match="eval_users"):
            RetrievalEngine(ml1m.retrieval, eval_users=bad)  # type: ignore[arg-type]


# --- (a) the sample: fixed, seeded, only users with validation items, only their vectors -------------------


def test_sample_is_fixed_seeded_and_drawn_from_users_with_validation_items(
        ml1m: TaskData, models: dict[int, TwoTower], monkeypatch: pytest.MonkeyPatch) -> None:
    r = ml1m.retrieval
    assert r is not None
    a = RetrievalEngine(r, eval_users=1000, eval_seed=0)
    b = RetrievalEngine(r, eval_users=1000, eval_seed=0)
    c = RetrievalEngine(r, eval_users=1000, eval_seed=1)
    assert a.eval_user_ids is not None and b.eval_user_ids is not None and c.eval_user_ids is not None
    assert np.array_equal(a.eval_user_ids, b.eval_user_ids)
    assert len(np.intersect1d(a.eval_user_ids, c.eval_user_ids)) < 500  # another seed, other users
    ids = a.eval_user_ids
    assert ids.size == 1000 and np.unique(ids).size == 1000
    sizes = np.diff(r.valid[0])
    assert (sizes[ids] > 0).all()
    assert (sizes == 0).sum() > 100  # movielens-1m has such users, and none of them entered the sample

    m = models[150]
    calls = _spy_users(m, monkeypatch)
    first = a.evaluate(m, "valid")
    assert torch.equal(torch.cat(calls), torch.from_numpy(ids))  # only the sampled users' vectors
    assert a.evaluate(m, "valid") == first == b.evaluate(m, "valid")  # the same users at every call
    assert np.array_equal(a.eval_user_ids, ids)


def test_sampled_metric_is_the_full_per_user_metric_restricted_to_the_sample(
        ml1m: TaskData, models: dict[int, TwoTower]) -> None:
    r = ml1m.retrieval
    assert r is not None
    m = models[150]
    engine = RetrievalEngine(r, eval_users=1500, eval_seed=3)
    got = engine.evaluate(m, "valid")
    uv, iv = engine._vectors(m)
    top = topk_items(uv, iv, 50, seen_indptr=r.seen[0], seen_items=r.seen[1])
    ids = engine.eval_user_ids
    assert ids is not None
    # per-user values of all users with validation items, in user order; keep the sampled ones
    pop = np.flatnonzero(np.diff(r.valid[0]) > 0)
    per_user = ranking_metrics_per_user(top, *r.valid, ks=(10, 20, 50))
    keep = np.isin(pop, ids)
    for name, v in per_user.items():
        assert got[name] == pytest.approx(float(v[keep].mean()), abs=1e-12)
    expected_se = sampled_metric_stderr(per_user["recall@20"][keep], pop.size)
    assert got["recall@20_stderr"] == pytest.approx(expected_se, rel=1e-12) and expected_se > 0


# --- (b) the sampled metric tracks the full one ----------------------------------------------------------------


@pytest.mark.parametrize("eval_users", [1000, 2000])
def test_sampled_recall_tracks_full_and_keeps_the_order(
        ml1m: TaskData, models: dict[int, TwoTower], full_valid: dict[int, dict[str, float]],
        eval_users: int) -> None:
    r = ml1m.retrieval
    assert r is not None
    full = {s: full_valid[s]["recall@20"] for s in STEPS}
    assert full[1] < full[25] < full[150], full  # the models really differ
    for seed in range(3):
        engine = RetrievalEngine(r, eval_users=eval_users, eval_seed=seed)
        res = {s: engine.evaluate(models[s], "valid") for s in STEPS}
        for s in STEPS:
            se = res[s]["recall@20_stderr"]
            assert 0 < se < 0.02
            assert abs(res[s]["recall@20"] - full[s]) <= 3 * se, (eval_users, seed, s, res[s], full[s])
        compared = 0
        for a, b in itertools.combinations(STEPS, 2):
            se = max(res[a]["recall@20_stderr"], res[b]["recall@20_stderr"])
            if abs(full[a] - full[b]) > 3 * se:  # clearly different: the sample must order them the same way
                assert np.sign(res[a]["recall@20"] - res[b]["recall@20"]) == np.sign(full[a] - full[b])
                compared += 1
        assert compared == 3  # Kendall tau 1 over all three models


@pytest.mark.slow
def test_stated_stderr_matches_the_spread_over_samples(
        ml1m: TaskData, models: dict[int, TwoTower], full_valid: dict[int, dict[str, float]]) -> None:
    """Over 60 independent samples of 1,000 users the estimates spread as the stated standard error says
    and centre on the full value (unbiased)."""
    r = ml1m.retrieval
    assert r is not None
    m, full = models[150], full_valid[150]["recall@20"]
    vals, ses = [], []
    for seed in range(60):
        res = RetrievalEngine(r, eval_users=1000, eval_seed=100 + seed).evaluate(m, "valid")
        vals.append(res["recall@20"])
        ses.append(res["recall@20_stderr"])
    se = float(np.mean(ses))
    spread = float(np.std(vals, ddof=1))
    assert 0.7 * se < spread < 1.4 * se, (spread, se)
    assert abs(float(np.mean(vals)) - full) < 4 * se / math.sqrt(len(vals)), (np.mean(vals), full, se)
    within = np.abs(np.array(vals) - full) <= 2 * np.array(ses)
    assert within.mean() >= 0.85  # about 95% expected


# --- (c) full=True and the test split ignore the sample; (d) a sample as large as the population is exact ----


def test_full_and_test_ignore_the_sample(ml1m: TaskData, models: dict[int, TwoTower],
                                         full_valid: dict[int, dict[str, float]],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    r = ml1m.retrieval
    assert r is not None
    m = models[25]
    sampled = RetrievalEngine(r, eval_users=500, eval_seed=0)
    exact = RetrievalEngine(r)
    calls = _spy_users(m, monkeypatch)
    got = sampled.evaluate(m, "valid", full=True)
    assert sum(int(c.numel()) for c in calls) == r.num_users
    assert got.pop("recall@20_stderr") == 0.0
    assert got == full_valid[25]
    test = sampled.evaluate(m, "test")
    assert test.pop("recall@20_stderr") == 0.0
    assert test == exact.evaluate(m, "test")
    assert "recall@20_stderr" not in exact.evaluate(m, "valid")  # unsampled engines keep their keys
    assert sampled.evaluate(m, "valid")["recall@20"] != full_valid[25]["recall@20"]


def test_eval_users_at_least_the_population_is_exact(ml1m: TaskData, models: dict[int, TwoTower],
                                                     full_valid: dict[int, dict[str, float]]) -> None:
    r = ml1m.retrieval
    assert r is not None
    n_pop = int((np.diff(r.valid[0]) > 0).sum())
    m = models[25]
    for n in (n_pop, n_pop + 1, r.num_users, 10**9):
        engine = RetrievalEngine(r, eval_users=n)
        assert engine.eval_user_ids is None
        got = engine.evaluate(m, "valid")
        assert got.pop("recall@20_stderr") == 0.0
        assert got == full_valid[25]
    one_less = RetrievalEngine(r, eval_users=n_pop - 1).evaluate(m, "valid")
    assert 0 < one_less["recall@20_stderr"] < 1e-3  # tiny but not zero: one user is left out
