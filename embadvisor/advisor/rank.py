"""Ranking: from completed trials to one pick, without the winner's curse.

The best few distinct configurations (by validation metric, all within budget by construction)
are re-trained with fresh seeds; their fresh-seed means are compared. Candidates whose mean is
within the noise level of the best (the larger of a stated epsilon and the spread measured between
each candidate's trial and re-training runs) count as tied, and ties go to lower inference latency,
then lower training memory, then the simpler method.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState

from embadvisor.methods import get_method

__all__ = ["Candidate", "TieBreak", "choose", "simplicity", "top_candidates"]


def simplicity(method: str) -> int:
    """Lower is simpler: stages, then hyperparameters (fields), counted from the method's declaration."""
    cls = get_method(method)
    return 10 * len(cls.stages) + len(cls.__dataclass_fields__)


@dataclass
class Candidate:
    trial: int
    method: str
    use: float
    fixed: dict[str, Any]
    value: float
    latency_ms: float
    train_bytes: int
    serve_bytes: int
    params: dict[str, Any]
    lr: float | None = None
    rung: int = 0
    fresh: list[float] = field(default_factory=list)
    fresh_latency: list[float] = field(default_factory=list)
    fresh_runs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.fresh) if self.fresh else self.value

    @property
    def spread(self) -> float | None:
        """Standard deviation of the fresh-seed runs (None with fewer than two)."""
        return statistics.stdev(self.fresh) if len(self.fresh) >= 2 else None

    @property
    def converged(self) -> bool:
        """Whether every fresh-seed run stopped on validation (not on a cap)."""
        return bool(self.fresh_runs) and all(r["converged"] for r in self.fresh_runs)

    @property
    def serve_latency_ms(self) -> float:
        """The inference latency that ranks this candidate: the mean over its re-training runs where there are
        any (measured like the others' at the same time), else its trial's."""
        return statistics.fmean(self.fresh_latency) if self.fresh_latency else self.latency_ms

    @property
    def serving_key(self) -> str:
        """Candidates with equal serving keys serve the same module (the learning rate is not part of it)."""
        return json.dumps([self.method, self.params], sort_keys=True, default=str)

    @property
    def key(self) -> str:
        return json.dumps([self.method, round(self.use, 6), self.fixed, self.lr], sort_keys=True, default=str)

    def to_dict(self) -> dict[str, Any]:
        return {"trial": self.trial, "method": self.method, "params": self.params, "budget_use": self.use,
                "fixed": self.fixed, "lr": self.lr, "rung": self.rung, "value": self.value, "fresh": self.fresh, "mean": self.mean,
                "spread": self.spread, "converged": self.converged, "fresh_runs": self.fresh_runs,
                "latency_ms": self.serve_latency_ms, "trial_latency_ms": self.latency_ms,
                "train_bytes": self.train_bytes, "serve_bytes": self.serve_bytes}


def top_candidates(study: optuna.Study, n: int) -> list[Candidate]:
    """The ``n`` best distinct completed configurations of the highest rung that has any (a configuration
    is judged by its longest training), then of the rungs below."""
    done = [t for t in study.trials if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value)]
    done.sort(key=lambda t: (-int(t.user_attrs.get("rung", 0)), -float(t.value)))  # type: ignore[arg-type]
    out: list[Candidate] = []
    seen: set[str] = set()
    for t in done:
        m = t.params["method"]
        c = Candidate(t.number, m, float(t.params.get(f"{m}.budget_use", 1.0)), dict(t.user_attrs.get("fixed", {})),
                      float(t.value), float(t.user_attrs.get("latency_ms", math.inf)),  # type: ignore[arg-type]
                      int(t.user_attrs.get("train_bytes", 0)), int(t.user_attrs.get("serve_bytes", 0)),
                      dict(t.user_attrs.get("params", {})), t.user_attrs.get("lr"), int(t.user_attrs.get("rung", 0)))
        if c.key in seen:
            continue
        seen.add(c.key)
        out.append(c)
        if len(out) >= n:
            break
    return out


#: smallest relative difference in measured serving latency that separates two tied candidates: the same
#: module measured 4.3 and 5.3 ms in one run on a loaded 2-core machine (22%)
LATENCY_TOLERANCE = 0.25


class TieBreak:
    """How candidates tied within the noise level are told apart, and how the explanation says so.

    This one, for trained inputs: the lowest inference latency, where candidates that serve the same module
    share their fastest latency and latencies within the timing noise count as equal, then training
    memory, then method complexity, then metric. Subclasses override :meth:`pick` and :meth:`describe`.
    """

    #: what the best candidate has the best validation value of, alone and among tied candidates
    basis = "metric after re-training with fresh seeds"
    tied_basis = "re-trained metric"

    def pick(self, tied: list[Candidate]) -> tuple[Candidate, str]:
        """The winner among ``tied`` and what decided it (the explanation's words)."""
        # Timing noise must not decide (nor make a re-run or a resumed study pick differently): candidates
        # that serve the same module (same method and parameters, e.g. differing only in learning rate)
        # share their fastest measured latency, and latencies within the tolerance of the fastest count as
        # equal (LATENCY_TOLERANCE, or twice the largest relative spread of the re-training runs' latencies).
        shared: dict[str, float] = {}
        for c in tied:
            k = c.serving_key
            shared[k] = min(shared.get(k, math.inf), c.serve_latency_ms)
        spreads_ms = [statistics.pstdev(c.fresh_latency) / statistics.fmean(c.fresh_latency)
                      for c in tied if len(c.fresh_latency) >= 2 and statistics.fmean(c.fresh_latency) > 0]
        tol = max(LATENCY_TOLERANCE, 2 * max(spreads_ms, default=0.0))
        fastest = min(shared.values())
        fast = [c for c in tied if shared[c.serving_key] <= fastest * (1 + tol)]
        win = min(fast, key=lambda c: (c.train_bytes, simplicity(c.method), -c.mean, c.key))
        return win, (f"the lowest inference latency (within {tol:.0%}, the timing noise), then training memory, "
                     "then method complexity, then metric")

    def describe(self, c: Candidate) -> str:
        """A candidate's figures in the explanation."""
        return f"{c.mean:.4f}, {c.serve_latency_ms:.1f} ms"


def choose(cands: list[Candidate], stated_epsilon: float,
           tiebreak: TieBreak | None = None) -> tuple[Candidate, float, str]:
    """The pick, the noise level used, and a one-paragraph explanation: the best mean wins unless others are
    within the noise level of it; then ``tiebreak`` (default :class:`TieBreak`) picks among them."""
    rule = tiebreak or TieBreak()
    spreads = []
    for c in cands:
        vals = c.fresh if len(c.fresh) >= 2 else [c.value, *c.fresh]
        if len(vals) >= 2:
            spreads.append(statistics.pstdev(vals))
    measured = max(spreads) if spreads else 0.0
    eps = max(stated_epsilon, measured)
    best = max(cands, key=lambda c: c.mean)
    tied = [c for c in cands if c.mean >= best.mean - eps]
    win, decided = rule.pick(tied)
    if len(tied) == 1:
        why = (f"{win.method} has the best validation {rule.basis} ({win.mean:.4f}), ahead of the next candidate "
               f"by more than the noise level {eps:.4f}.")
    else:
        others = ", ".join(f"{c.method} {rule.describe(c)}" for c in tied if c is not win)
        why = (f"{len(tied)} candidates are within the noise level {eps:.4f} of the best {rule.tied_basis} "
               f"({best.method} {best.mean:.4f}); among them {win.method} ({rule.describe(win)}) has {decided} "
               f"(others: {others}).")
    return win, eps, why
