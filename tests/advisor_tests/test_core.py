"""The one search/recommend pipeline: the Evaluator protocol, the typed Recommendation, unchanged study keys."""

from __future__ import annotations

import json
import types
from dataclasses import dataclass, field
from typing import Any

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from embadvisor.advisor import rank
from embadvisor.advisor.core import Evaluation, Evaluator, Pick, Proposal, default_study_name
from embadvisor.advisor.export import list_studies, load_recommendation
from embadvisor.advisor.recommend import run
from embadvisor.advisor.result import MetricSummary, Recommendation, TrainingEvidence, jsonable
from embadvisor.advisor.schedule import Schedule
from embadvisor.advisor.search import SearchSettings, study_key
from embadvisor.advisor.vector_search import VectorSearchSettings, VectorWorkload
from embadvisor.advisor.vector_search import study_key as vector_study_key
from embadvisor.advisor.workloads import Workload
from embadvisor.methods import MemoryEstimate, list_methods
from embadvisor.profiles.schema import FieldProfile, WorkloadProfile
from embadvisor.tasks.trainer import TrainConfig
from embadvisor.version import __version__

# ---------------------------------------------------------------------------------------------- study keys

#: study_key() of the workload and settings below, computed by the code before the one-pipeline change
#: (embadvisor 0.1.0); ``embadvisor`` and ``registry`` are replaced by today's values, which change by design
#: with a release or a newly registered method
PINNED_TABLE_KEY = json.loads("""{"budget_bytes": 40000, "data_fingerprint": "0123456789abcdef",
 "methods": ["hash", "qr"], "model": "dlrm", "scope": "serve",
 "search": {"eval_users": 5000, "schedule": "calibrated", "search_lr": true}, "target": "pinned",
 "target_hash": "d29b82a6ede0fe4d", "task": "ctr",
 "train": {"batch_size": 512, "embedding_lr": null, "epochs": 1.0, "eval_every": null, "eval_every_samples": null,
  "evaluate_test": true, "keep_best": true, "lr": 0.002, "max_samples": null, "max_steps": null, "min_delta": 0.0,
  "optimizer": "adam", "patience": 3, "seed": 3, "stage_samples": null, "threads": null, "time_budget_s": null}}""")
PINNED_RETRIEVAL_KEY = json.loads("""{"budget_bytes": 123456, "data_fingerprint": "0123456789abcdef",
 "methods": "all", "model": "two-tower", "scope": "serve",
 "search": {"eval_users": 5000, "schedule": "calibrated", "search_lr": true}, "target": "pinned-r",
 "target_hash": "db8a82d603bc23db", "task": "retrieval",
 "train": {"batch_size": 64, "embedding_lr": null, "epochs": 1.0, "eval_every": null, "eval_every_samples": null,
  "evaluate_test": true, "keep_best": true, "lr": 0.001, "max_samples": null, "max_steps": null, "min_delta": 0.0,
  "optimizer": "adam", "patience": 3, "seed": 1, "stage_samples": null, "threads": null, "time_budget_s": null}}""")
PINNED_VECTOR_KEY = json.loads("""{"budget_bytes": 50000, "data_fingerprint": "fedcba9876543210",
 "input": "vectors", "methods": ["vec_pq", "vec_sq"], "queries": [40, 41], "scope": "serve", "seed": 2,
 "similarity": "cosine", "target": "docs", "task": "retrieval"}""")
DATA = types.SimpleNamespace(fingerprint="0123456789abcdef")


def _live(key: dict[str, Any], registry: str) -> dict[str, Any]:
    return key | {"embadvisor": __version__, "registry": registry}


def test_table_study_keys_are_those_of_the_code_before_the_change() -> None:
    """Existing studies must resume: the same workload and settings give the same key and study name."""
    target = WorkloadProfile(task="ctr", fields=(FieldProfile("user", 943, 943), FieldProfile("item", 1682, 1682)),
                             num_rows=80000, embedding_dim=16, name="pinned", source="test")
    settings = SearchSettings(budget_bytes=40_000, methods=("qr", "hash"), trials=8, seed=3,
                              train=TrainConfig(batch_size=512, lr=2e-3, threads=1, seed=3))
    key = study_key(Workload("ctr", target, DATA, False, "pinned"), settings)  # type: ignore[arg-type]
    assert key == _live(PINNED_TABLE_KEY, ",".join(list_methods()))
    # the name's digest, with the version and registry fixed as they were when the key was pinned
    assert default_study_name(key | {"embadvisor": "0.0.0", "registry": "full,hash,qr"}) == \
        "ctr-pinned-39.1KiB-serve-f2528b450d"

    target_r = WorkloadProfile(task="retrieval", fields=(FieldProfile("user_id", 500, 500),
                                                         FieldProfile("item_id", 900, 900)),
                               num_rows=5000, embedding_dim=64, name="pinned-r", source="test")
    key_r = study_key(Workload("retrieval", target_r, DATA, False, "r"),  # type: ignore[arg-type]
                      SearchSettings.for_task("retrieval", 123_456, num_train=5000, seed=1))
    assert key_r == _live(PINNED_RETRIEVAL_KEY, ",".join(list_methods()))
    assert default_study_name(key_r | {"embadvisor": "0.0.0", "registry": "full,hash,qr"}) == \
        "retrieval-pinned-r-120.6KiB-serve-385f8eec35"


def test_vector_study_keys_are_those_of_the_code_before_the_change() -> None:
    data = types.SimpleNamespace(name="docs", fingerprint="fedcba9876543210", similarity="cosine")
    w = VectorWorkload(data, [0] * 40, [0] * 41, "d")  # type: ignore[arg-type]
    key = vector_study_key(w, VectorSearchSettings(budget_bytes=50_000, methods=("vec_sq", "vec_pq"), seed=2))
    assert key == _live(PINNED_VECTOR_KEY, ",".join(list_methods(input="vectors")))
    assert default_study_name(key | {"embadvisor": "0.0.0", "registry": "vec_full,vec_pq"}) == \
        "retrieval-docs-48.8KiB-serve-40554d3cf8"


# ---------------------------------------------------------------------------------------------- Recommendation

def _table_rec() -> Recommendation:
    return Recommendation(
        method="qr", params={"num_collisions": 4}, budget_bytes=1000, scope="serve", serve_bytes=900,
        train_bytes=2700, full_bytes=8000, ratio=0.125,
        metric=MetricSummary("auc", 0.71, 0.70, {"auc": 0.71, "logloss": 0.5}, {"auc": 0.70}, spread=None, runs=1),
        noise_epsilon=0.001, explanation="why", full_fits=False, study="s", storage="sqlite:///x.db",
        trials={"complete": 3, "pruned": 1, "failed": 0}, ranking=[{"trial": 2, "method": "qr"}], workload="w",
        proxy=True, measured_on="proxy", extrapolated=["serve_bytes", "train_bytes", "params"],
        infeasible={"tt_rec": 5000}, seconds=12.5, config={"plan": {"name": "qr"}},
        training=TrainingEvidence(evidence={"trial": 2, "runs": 1}, undertrained=None, search_incomplete="cut",
                                  calibration=None, schedule={"rungs": [10, 30]}, estimate_seconds=None,
                                  time_limit_s=60.0),
        budget="12.5%")


def _vector_rec() -> Recommendation:
    return Recommendation(
        method="vec_pq", params={"m": 8}, budget_bytes=1000, scope="serve", serve_bytes=990, train_bytes=990,
        full_bytes=8000, ratio=0.125, metric=MetricSummary("ndcg@10", 0.4, 0.39, {"ndcg@10": 0.4}, {"ndcg@10": 0.39}),
        noise_epsilon=0.005, explanation="why", full_fits=False, study="v", storage="sqlite:///x.db",
        trials={"complete": 4, "pruned": 0, "failed": 0}, ranking=[], workload="w", proxy=False,
        measured_on="target data", extrapolated=[], infeasible={}, seconds=3.0, config={"plan": {}},
        compress_seconds=0.25)


TABLE_KEYS = ["method", "params", "budget_bytes", "scope", "serve_bytes", "train_bytes", "full_bytes", "ratio",
              "metric", "evidence", "undertrained", "search_incomplete", "noise_epsilon", "explanation", "full_fits",
              "study", "storage", "trials", "ranking", "workload", "proxy", "measured_on", "extrapolated",
              "infeasible", "calibration", "schedule", "estimate_seconds", "time_limit_s", "seconds", "config",
              "budget"]
VECTOR_KEYS = ["method", "params", "budget_bytes", "scope", "serve_bytes", "train_bytes", "full_bytes", "ratio",
               "compress_seconds", "metric", "noise_epsilon", "explanation", "full_fits", "study", "storage",
               "trials", "ranking", "workload", "proxy", "measured_on", "extrapolated", "infeasible", "seconds",
               "config"]


@pytest.mark.parametrize(("make", "keys", "metric_keys"), [
    (_table_rec, TABLE_KEYS, ["name", "validation", "spread", "runs", "test", "validation_all", "test_all"]),
    (_vector_rec, VECTOR_KEYS, ["name", "validation", "test", "validation_all", "test_all"]),
])
def test_recommendation_round_trips_exactly_with_the_dict_keys_of_before(make, keys, metric_keys) -> None:
    rec = make()
    d = rec.to_dict()
    assert list(d) == keys and list(d["metric"]) == metric_keys  # the keys (and order) the dicts had
    assert Recommendation.from_dict(d) == rec and Recommendation.from_dict(d).to_dict() == d
    stored = json.loads(json.dumps(jsonable(d)))  # what a study keeps
    assert Recommendation.from_dict(stored).to_dict() == stored
    # code written against the dict keeps working
    assert rec["metric"]["name"] == rec.metric.name and rec["serve_bytes"] == rec.serve_bytes
    assert dict(rec) == d and set(rec) == set(keys) and "config" in rec and rec.get("nope") is None


def test_an_older_stored_dict_without_the_newer_keys_still_reads() -> None:
    old = {"method": "hash", "params": {}, "budget_bytes": 10, "scope": "serve", "serve_bytes": 9,
           "metric": {"name": "auc", "validation": 0.7, "test": None}, "evidence": {"trial": 0},
           "config": {"plan": {}}}
    rec = Recommendation.from_dict(old)
    assert rec.method == "hash" and rec.training is not None and rec.training.calibration is None
    assert rec.metric.test is None and rec.metric.runs is None


# ---------------------------------------------------------------------------------------------- the protocol

@dataclass
class ToyPlan:
    method: str
    use: float
    feasible: bool = True
    reason: str = ""
    min_budget_bytes: int = 10
    memory: MemoryEstimate = field(default_factory=lambda: MemoryEstimate(serve_bytes=500, train_bytes=500))

    @property
    def bytes(self) -> int:
        return self.memory.serve_bytes

    def params(self) -> dict[str, Any]:
        return {"use": self.use}


class Toy(Evaluator):
    """An input with no training: a candidate's value is a function of its settings (higher at x = 0.3)."""

    def __init__(self, schedule: Schedule | None = None, trials: int = 6) -> None:
        self.s = types.SimpleNamespace(budget_bytes=1000, scope="serve", seed=0, time_limit_s=None)
        data = types.SimpleNamespace(source="memory", fingerprint="f")
        self.w = types.SimpleNamespace(description="toy", task="toy", data=data)
        self.plans = {m: ToyPlan(m, 1.0) for m in ("hash", "qr")}
        self.feasible = ["hash", "qr"]
        self.n_candidates = trials
        self.target_full = 4000
        self.ratio = 0.25
        self.schedule = schedule
        self.finalists_seen: list[int] = []

    def space(self, method: str) -> dict[str, Any]:
        return {"x": FloatDistribution(0.0, 1.0)}

    def enqueue_defaults(self, study: optuna.Study) -> None:
        for m in self.feasible:
            study.enqueue_trial({"method": m, f"{m}.budget_use": 1.0, f"{m}.x": 0.5}, skip_if_exists=True)

    def nbytes(self, proposal: Proposal) -> ToyPlan:
        return ToyPlan(proposal.method, proposal.use, feasible=proposal.use >= 0.7, reason="a share below 70%")

    def evaluate(self, trial: optuna.Trial, proposal: Proposal, plan: Any, rung: int) -> Evaluation:
        value = 1 - (proposal.fixed["x"] - 0.3) ** 2 + (0.01 if proposal.method == "qr" else 0.0) + 0.001 * rung
        return Evaluation(value, {"latency_ms": 1.0, "validation": {"toy": value}})

    def study_key(self) -> dict[str, Any]:
        return {"task": "toy", "target": "toy", "budget_bytes": 1000, "scope": "serve"}

    @property
    def metric(self) -> str:
        return "toy"

    @property
    def target_name(self) -> str:
        return "toy"

    @property
    def n_finalists(self) -> int:
        return 2

    def finalists(self, study: optuna.Study, cands: list[rank.Candidate], *, deadline: float | None,
                  on_phase: Any) -> None:
        self.finalists_seen = [c.trial for c in cands]

    def choose(self, study: optuna.Study, cands: list[rank.Candidate]) -> tuple[rank.Candidate, float, str]:
        return rank.choose(cands, 0.0)

    def pick(self, study: optuna.Study, win: rank.Candidate, *, on_phase: Any) -> Pick:
        return Pick(ToyPlan(win.method, win.use), 500, 500, {"toy": win.value}, {"toy": 0.5})

    def config(self, rec: Recommendation, win: rank.Candidate, pick: Pick) -> dict[str, Any]:
        return {"plan": {"name": win.method}}

    def infeasible(self) -> tuple[str, str]:
        return "nothing fits", "give up"


def test_a_one_fidelity_input_runs_the_pipeline_as_its_one_rung_case(tmp_path) -> None:
    storage = f"sqlite:///{tmp_path / 'db.sqlite'}"
    toy = Toy()
    rec = run(toy, storage=storage, study_name="toy")
    study = optuna.load_study(study_name="toy", storage=storage)
    counted = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(counted) == 6 and {t.user_attrs["rung"] for t in study.trials} == {0}
    assert study.user_attrs["schedule"]["rungs"] == [1]
    for t in study.trials:  # what the shared objective records on every trial
        assert {"worker", "rung", "method", "fixed"} <= set(t.user_attrs)
        if t.state == TrialState.PRUNED:
            assert t.user_attrs["failure"] == "settings do not fit the budget: a share below 70%"
        else:
            assert t.user_attrs["serve_bytes"] == 500 and t.user_attrs["validation"]["toy"] == t.value
    assert len(toy.finalists_seen) == 2 and rec.ranking[0]["trial"] in toy.finalists_seen
    assert rec.metric.validation == max(t.value for t in study.trials if t.value is not None)
    assert rec.metric.runs is None and rec.training is None and "evidence" not in rec
    assert rec.config["plan"] == {"name": rec.method} and rec.config["task"] == "toy"
    assert rec.config["provenance"]["trial"] == rec.ranking[0]["trial"]
    assert load_recommendation("toy", storage) == Recommendation.from_dict(jsonable(rec.to_dict()))
    assert [r["recommended"] for r in list_studies(storage)] == [rec.method]
    # resuming runs nothing new and picks the same
    again = run(Toy(), storage=storage, study_name="toy")
    assert again.method == rec.method and again.trials == rec.trials


def test_the_same_input_with_two_rungs_gets_promotions(tmp_path) -> None:
    two = Schedule(rungs=(1, 3), eval_every_samples=1, stage_samples=1)
    rec = run(Toy(two, trials=4), storage=f"sqlite:///{tmp_path / 'db.sqlite'}", study_name="toy2")
    study = optuna.load_study(study_name="toy2", storage=f"sqlite:///{tmp_path / 'db.sqlite'}")
    top = [t for t in study.trials if t.user_attrs.get("rung") == 1]
    assert top and all(study.trials[t.user_attrs["parent"]].params == t.params for t in top)
    assert rec.ranking[0]["rung"] == 1  # the ranking judges a configuration by its longest evaluation


def test_nothing_feasible_raises_with_the_input_s_words() -> None:
    toy = Toy()
    toy.feasible = []
    with pytest.raises(Exception, match=r"nothing fits\. Minimum budgets: hash 10 B, qr 10 B\."):
        toy.check_feasible()


def test_vector_cli_json_keeps_the_keys_and_export_reads_the_stored_recommendation(tmp_path) -> None:
    import numpy as np
    from typer.testing import CliRunner

    from embadvisor.advisor.cli import app
    from embadvisor.build import load_config
    from embadvisor.testing.vector_contract import small_corpus

    np.save(tmp_path / "docs.npy", small_corpus(300, 16))
    storage = f"sqlite:///{tmp_path / 'db.sqlite'}"
    runner = CliRunner()
    res = runner.invoke(app, ["recommend", "--task", "retrieval", "--vectors", str(tmp_path / "docs.npy"),
                              "--budget", "12.5%", "--trials", "3", "--methods", "vec_sq,vec_pq", "--storage",
                              storage, "--threads", "1", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert list(out) == [k for k in VECTOR_KEYS if k != "config"]
    assert list(out["metric"]) == ["name", "validation", "test", "validation_all", "test_all"]
    res = runner.invoke(app, ["export", out["study"], "--storage", storage, "-o", str(tmp_path / "c.json")])
    assert res.exit_code == 0, res.output
    cfg = load_config(tmp_path / "c.json")
    assert cfg["input"] == "vectors" and cfg["method"] == out["method"]
    assert cfg["memory"]["serve_bytes"] == out["serve_bytes"]
