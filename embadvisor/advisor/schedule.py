"""How long each trial trains: a calibrated, convergence-aware successive-halving schedule.

The training resource is counted in samples trained by a method's final stage, so one policy serves a
10k-row file and a 45M-row file (on a large file a trial may converge within a fraction of an epoch),
and methods that prune or search their structure in earlier stages (pep, deeplight, autosrh, optembed,
autodim) are compared after the same amount of final-stage training as everyone else: their earlier
stages are sized from the calibrated horizon (see :func:`embadvisor.tasks.trainer.stage_plan`) and do
not count toward the rung.

Calibration (``Search.calibrate``) trains the simplest feasible single-stage method the way
``embadvisor train`` does (evaluation every epoch or every 256 steps, whichever is fewer samples;
patience 3) and measures the samples it needs to reach its best validation value (the *horizon* H), its
training speed, the cost of one evaluation and a trial's fixed overhead. The schedule derived from it
(:func:`schedule_from`) has four rungs with reduction factor 3: every candidate trains H/9 samples, the
best third H/3, the best third of those H, and the best third of those up to 4H (at least H plus twice
the patience window) with early stopping. Trials evaluate every H/9 samples (never less often than the
calibration did; a third of the rung in shorter rungs, so every rung has three points of its learning
curve) and stop early after as many samples without improvement as the calibration waited (three of its
evaluations, as ``embadvisor train``), or half a horizon if that is less (at least three evaluations). Earlier
stages of multi-stage methods train one horizon (scaled by their declared fractions), a third of one in
the two shortest rungs.

A candidate below the cut is promoted too when its learning curve, extrapolated to the last rung's
resource at the rate it gained over its last doubling of samples, would reach the cut
(:func:`promotions`; at most half as many extra candidates as the cut keeps, at least one), so a slow starter is not cut
for being slow.

Why an own rung scheduler on ask/tell and not Optuna's ``SuccessiveHalvingPruner``/``HyperbandPruner``:
those are asynchronous (ASHA). A trial is judged at a rung against the trials that reached it before
it, so with a few dozen candidates the decision depends on the order they run in: the first trials
of a study are never cut and a slow starter that runs after fast ones is cut against them. Here a
rung is judged once all of its candidates have finished, the same way whatever the order, the number
of workers or how often the study was resumed; promoted candidates are re-trained from scratch at the
larger resource (a new trial with the same parameters), which costs about half a rung more than
continuing from a checkpoint but keeps each trial independent, so any worker on any machine can run it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from embadvisor.errors import InvalidConfigError

__all__ = ["Calibration", "ETA", "Schedule", "estimate_seconds", "promotions", "rung_of", "schedule_from"]

#: reduction factor between rungs
ETA = 3
#: the last rung's cap, in convergence horizons (early stopping usually ends it sooner)
MAX_HORIZONS = 4.0
#: evaluations per horizon (at most; never further apart than the calibration's)
EVALS_PER_HORIZON = 9
#: early-stopping patience of the calibration run, in its evaluations (and the least patience of a trial)
CALIBRATION_PATIENCE = 3
#: a trial stops early after this many horizons without improvement
PATIENCE_HORIZONS = 0.5
#: share of the last rung a trial trains on average before early stopping ends it (for estimates)
LAST_RUNG_SHARE = 0.45
#: a finalist's run, in calibration runs (both train with ``embadvisor train``'s protocol; most methods are
#: slower than the calibrated one)
FINALIST_FACTOR = 2.0


@dataclass(frozen=True)
class Calibration:
    """What one calibration run measured on the user's data.

    Args:
        method: the method trained.
        horizon_samples: samples it trained until its best validation value.
        samples_trained: samples it trained in all.
        converged: whether early stopping ended it (else a cap did, and the horizon is a lower bound).
        samples_per_second: its training speed.
        eval_every_samples: its evaluation interval (as ``embadvisor train``: every epoch, at most every 256
            steps); with patience 3 it defines what "converged" means for every trial.
        eval_seconds: mean time of one validation evaluation.
        value: its best validation value.
        seconds: the run's wall time.
        overhead_seconds: the run's time outside training steps and evaluations (building, preparing,
            exporting, measuring latency): a fixed cost of every trial.
    """

    method: str
    horizon_samples: int
    samples_trained: int
    converged: bool
    samples_per_second: float
    eval_every_samples: int
    eval_seconds: float
    value: float
    seconds: float
    overhead_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Schedule:
    """The rungs of the search, in final-stage training samples.

    Args:
        rungs: each rung's resource cap, ascending; trials of the last rung train to convergence.
        eval_every_samples: evaluation interval of every trial.
        stage_samples: the horizon that sizes earlier stages of multi-stage methods.
        patience: evaluations without improvement before a trial stops early.
        eta: reduction factor (a rung promotes about 1/eta of its candidates).
    """

    rungs: tuple[int, ...]
    eval_every_samples: int
    stage_samples: int
    patience: int = 3
    eta: int = ETA

    def __post_init__(self) -> None:
        if not self.rungs or any(r < 1 for r in self.rungs) or list(self.rungs) != sorted(self.rungs):
            raise InvalidConfigError(f"`rungs` must be ascending positive sample counts, but got rungs={self.rungs!r}.")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rungs"] = list(self.rungs)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Schedule:
        d = dict(d)
        d["rungs"] = tuple(int(r) for r in d["rungs"])
        return cls(**d)

    @classmethod
    def from_rungs(cls, rungs: list[int] | tuple[int, ...], batch_size: int) -> Schedule:
        """A schedule with the given rungs (samples) in place of a calibrated one: three evaluations in the
        first rung, patience 3, earlier stages sized from the middle rung."""
        rungs = tuple(int(r) for r in rungs)
        if not rungs or any(r < 1 for r in rungs):
            raise InvalidConfigError(f"rungs must be positive sample counts, but got {list(rungs)!r}.")
        rungs = tuple(sorted(set(rungs)))
        return cls(rungs=rungs, eval_every_samples=max(batch_size, rungs[0] // 3), stage_samples=rungs[len(rungs) // 2])

    @property
    def last(self) -> int:
        return len(self.rungs) - 1

    def every(self, rung: int) -> int:
        """Evaluation interval at ``rung``: ``eval_every_samples``, or a third of the rung when that is less
        (so a short rung still has three points of its learning curve)."""
        return max(1, min(self.eval_every_samples, self.rungs[rung] // 3))

    def stage_samples_at(self, rung: int) -> int:
        """Horizon that sizes earlier stages at ``rung``: ``stage_samples`` from the rung that trains a third
        of it on, a third of it below (a structure search is never shorter than a third of a horizon)."""
        return min(self.stage_samples, max(self.rungs[rung], self.stage_samples // ETA))

    def patience_at(self, rung: int) -> int:
        """Early-stopping patience at ``rung``: the same window in samples as ``patience`` evaluations of the
        last rung."""
        return max(self.patience, math.ceil(self.patience * self.eval_every_samples / self.every(rung)))

    def counts(self, candidates: int) -> list[int]:
        """Trials per rung for ``candidates`` rung-0 candidates (before slow-starter extras)."""
        out = [candidates]
        for _ in self.rungs[1:]:
            out.append(max(1, math.ceil(out[-1] / self.eta)))
        return out


def schedule_from(cal: Calibration, batch_size: int) -> Schedule:
    """The schedule derived from a calibration (see the module docstring)."""
    h = max(cal.horizon_samples, batch_size)
    every = max(batch_size, min(cal.eval_every_samples, round(h / EVALS_PER_HORIZON)))
    # a trial has converged when it has not improved for as many samples as the calibration waited (embadvisor
    # train's criterion), or half a horizon if that is less; at least 3 evaluations
    window = min(CALIBRATION_PATIENCE * cal.eval_every_samples, PATIENCE_HORIZONS * h)
    patience = max(CALIBRATION_PATIENCE, math.ceil(window / every))
    window = patience * every
    rungs = (max(every, round(h / ETA**2)), max(every, round(h / ETA)), max(every, h),
             max(round(MAX_HORIZONS * h), h + 2 * window))
    return Schedule(rungs=tuple(sorted(set(rungs))), eval_every_samples=every, stage_samples=h, patience=patience)


def estimate_seconds(schedule: Schedule, cal: Calibration, candidates: int, finalists: int, seeds: int,
                     staged_share: float = 0.0) -> dict[str, float]:
    """Seconds the search and the finalists' re-training take at the calibrated speed.

    ``staged_share`` is the share of candidates with earlier stages (they train about one more horizon).
    Methods slower than the calibrated one take longer: the estimate is a floor, reported as such.
    """
    counts = schedule.counts(candidates)
    per_sample = 1.0 / max(cal.samples_per_second, 1e-9)

    def run_cost(k: int, resource: float) -> float:
        per_eval = cal.eval_seconds / schedule.every(k)
        samples = resource + staged_share * schedule.stage_samples_at(k)
        return samples * (per_sample + per_eval) + cal.overhead_seconds

    search = 0.0
    for k, (n, r) in enumerate(zip(counts, schedule.rungs, strict=True)):
        share = LAST_RUNG_SHARE if k == schedule.last else 1.0
        search += n * run_cost(k, r * share)
    # a finalist trains as the calibration run did (embadvisor train's protocol); slower methods take longer
    final = finalists * seeds * FINALIST_FACTOR * cal.seconds
    return {"search": search, "finalists": final, "total": search + final}


def rung_of(t: optuna.trial.FrozenTrial) -> int:
    return int(t.user_attrs.get("rung", 0))


def config_key(t: optuna.trial.FrozenTrial) -> str:
    """The parameters that make a configuration (the same at every rung)."""
    return json.dumps(sorted(t.params.items()), default=str)


def _rising_bound(t: optuna.trial.FrozenTrial, doublings: float, sign: float) -> float:
    """An optimistic value for ``t`` at the last rung: its best value plus, for each of the ``doublings`` of the
    resource left, what it gained per doubling over the second half of its curve (from its last evaluation
    at or before half its samples to its end). Curves that are flat (or noisy around a plateau) gain
    little; a slow starter still climbing steeply is credited with the climb."""
    curve = [(float(s), float(v)) for s, v in t.user_attrs.get("final_curve", []) if s > 0]
    best = sign * float(t.value)  # type: ignore[arg-type]
    if len(curve) < 2:
        return best
    end_s = curve[-1][0]
    early = [(s, v) for s, v in curve if s <= end_s / 2]
    if not early:
        return best
    mid_s = early[-1][0]
    gain = max(0.0, max(sign * v for _, v in curve) - max(sign * v for _, v in early))
    return best + gain / math.log2(end_s / mid_s) * doublings


def promotions(trials: list[optuna.trial.FrozenTrial], rung: int, eta: int, *, minimum: int = 1,
               sign: float = 1.0, doublings: float | None = None) -> list[optuna.trial.FrozenTrial]:
    """The rung's complete trials to train at the next rung: the best ``ceil(n / eta)`` (at least
    ``minimum``), and the others whose curve was still rising fast enough to reach the cut by the last
    rung (``doublings`` of the resource away; default log2(eta), the next rung), steepest first, at most
    half as many again (at least one). Deterministic: ties go to the lower trial number."""
    done = [t for t in trials if rung_of(t) == rung and t.state == TrialState.COMPLETE and t.value is not None
            and math.isfinite(t.value)]
    seen: set[str] = set()
    uniq = []
    for t in sorted(done, key=lambda t: (-sign * float(t.value), t.number)):  # type: ignore[arg-type]
        k = config_key(t)
        if k not in seen:
            seen.add(k)
            uniq.append(t)
    if not uniq:
        return []
    n = min(len(uniq), max(minimum, math.ceil(len(uniq) / eta)))
    top, rest = uniq[:n], uniq[n:]
    cut = sign * float(top[-1].value)  # type: ignore[arg-type]
    steps = math.log2(eta) if doublings is None else doublings
    bounds = {t.number: _rising_bound(t, steps, sign) for t in rest}
    climbers = sorted((t for t in rest if bounds[t.number] >= cut), key=lambda t: (-bounds[t.number], t.number))
    extra = climbers[: max(1, math.ceil(n / 2))]
    return top + extra
