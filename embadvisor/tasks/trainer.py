"""The generic training loop shared by the CTR and retrieval engines.

It knows nothing about methods: it calls the embedding collection's stage hooks, adds its
regulariser, gives sparse-gradient parameters a sparse optimizer (row-wise updates, so a full
Criteo-size table trains almost as fast as a small one), evaluates on validation every N steps,
reports each evaluation to a callback (the advisor's pruner), stops early on validation, restores
the best state, exports the serving form and evaluates the test split once at the end.

Devices: ``fit`` trains where the model is (``embadvisor.tasks.api.train(device=...)`` moves the model
and the engine's data there). The batch order comes from a CPU generator on every device; on CUDA
the sparse tables get ``torch.optim.SparseAdam`` (:func:`embadvisor.tasks.optim.sparse_adam`), the
best state is kept on the CPU, and the peak device memory is measured separately for the training
steps and for the evaluations (:class:`FitResult`).
"""

from __future__ import annotations

import math
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from embadvisor import devices
from embadvisor._checks import check_threads
from embadvisor._constraints import Interval, Options, validate_fields
from embadvisor.errors import EmbAdvisorError
from embadvisor.kernels.hugepages import hugepage_empty
from embadvisor.methods import EmbeddingCollection, Stage
from embadvisor.tasks.optim import sparse_adam

__all__ = ["FitResult", "TrainConfig", "TrainingDiverged", "TaskEngine", "curve_rise", "default_eval_every", "fit",
           "planned_steps", "set_threads", "stage_plan"]


class TrainingDiverged(EmbAdvisorError):
    """The loss became NaN or infinite."""


#: largest learning rate (the optimizers hold it as float32; 1e300 overflowed inside them). A search's
#: base rate may be a tenth of it, as its sampled trials go up to 10x the base.
MAX_LR = 1e4


@dataclass(frozen=True)
class TrainConfig:
    """Training settings (shared by both tasks).

    Args:
        optimizer: ``adam`` (SparseAdam for sparse-gradient tables), ``adagrad`` or ``sgd``.
        lr: learning rate of the model (MLPs, towers).
        embedding_lr: learning rate of the embedding tables (default: ``lr``).
        batch_size: samples per step.
        epochs: passes over the training split (fractions allowed); ignored when ``max_samples`` is set.
        max_steps: hard cap on steps (None = from epochs).
        max_samples: the training resource in samples: a cap on the samples the final stage trains (early
            stopping usually ends it sooner). Earlier stages of multi-stage methods train
            ``stage_samples`` scaled by their declared budget fractions (see :func:`stage_plan`).
            None = train by ``epochs``.
        stage_samples: with ``max_samples``: the convergence horizon the earlier stages are sized from
            (None = ``min(max_samples, 3 epochs)``).
        eval_every_samples: with ``max_samples``: evaluate every this many samples (None = every epoch, at most
            every 256 steps).
        time_budget_s: stop training after this many seconds (None = no limit).
        eval_every: evaluate on validation every this many steps (None = 10 times per run).
        patience: evaluations without improvement before early stopping (0 = never stop early).
        min_delta: an evaluation improves on the best only by more than this.
        seed: seed for shuffling.
        threads: torch intra-op threads (None = leave as is).
        keep_best: restore the best validation state at the end.
        evaluate_test: evaluate the test split at the end (off during model selection).

    The device is not a training setting: training runs where the model is
    (``embadvisor.tasks.api.train(device=...)``), so settings stored on a study stay valid for a
    worker on a machine with another device.
    """

    optimizer: str = field(default="adam", metadata={"constraint": Options({"adam", "adagrad", "sgd"})})
    lr: float = field(default=1e-3, metadata={"constraint": Interval(float, 0, MAX_LR, "right")})
    embedding_lr: float | None = None
    batch_size: int = field(default=4096, metadata={"constraint": Interval(int, 1, None)})
    epochs: float = field(default=1.0, metadata={"constraint": Interval(float, 0, None, "neither")})
    max_steps: int | None = None
    max_samples: int | None = None
    stage_samples: int | None = None
    eval_every_samples: int | None = None
    time_budget_s: float | None = None
    eval_every: int | None = None
    patience: int = field(default=3, metadata={"constraint": Interval(int, 0, None)})
    min_delta: float = field(default=0.0, metadata={"constraint": Interval(float, 0, None)})
    seed: int = 0
    threads: int | None = None
    keep_best: bool = True
    evaluate_test: bool = True

    def __post_init__(self) -> None:
        validate_fields(self)
        if self.threads is not None:
            check_threads(self.threads)


class TaskEngine(Protocol):
    """What the trainer needs from a task."""

    metric: str
    higher_is_better: bool

    def num_train(self) -> int: ...

    def train_loss(self, model: nn.Module, idx: torch.Tensor) -> torch.Tensor: ...

    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]: ...

    def has_split(self, split: str) -> bool: ...

    def latency_ms(self, model: nn.Module) -> float: ...


@dataclass
class FitResult:
    """What one training run measured."""

    validation: dict[str, float]
    test: dict[str, float] | None
    history: list[tuple[int, float]]
    steps: int
    samples: int
    train_seconds: float
    samples_per_second: float
    latency_ms: float
    peak_rss_bytes: int
    stopped: str
    serve_bytes: int = 0
    train_bytes: int = 0
    curve: list[tuple[int, float]] = field(default_factory=list)
    final_stage_from: int = 0
    converged: bool = False
    rise: float | None = None
    eval_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    #: where it trained (``"cpu"``, ``"cuda:0"``)
    device: str = "cpu"
    #: peak bytes of live tensors on the device over the whole run (``torch.cuda.max_memory_allocated``
    #: after ``reset_peak_memory_stats`` at the start of ``fit``; the model and data already there
    #: count); None on the CPU
    peak_device_bytes: int | None = None
    #: the same peak over the training steps only (evaluations, export and the test split left out):
    #: what the analytic training bytes estimate, plus the model, the data and the activations
    peak_train_device_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "validation": self.validation, "test": self.test, "history": self.history, "steps": self.steps,
            "samples": self.samples, "train_seconds": self.train_seconds,
            "samples_per_second": self.samples_per_second, "latency_ms": self.latency_ms,
            "peak_rss_bytes": self.peak_rss_bytes, "stopped": self.stopped, "converged": self.converged,
            "rise_last_quarter": self.rise, "curve": self.curve, "final_stage_from": self.final_stage_from,
            "eval_seconds": self.eval_seconds, "device": self.device, "peak_device_bytes": self.peak_device_bytes,
            "peak_train_device_bytes": self.peak_train_device_bytes,
        }

    @property
    def final_curve(self) -> list[tuple[int, float]]:
        """The final stage's evaluations as (samples trained in the final stage, value)."""
        return [(s - self.final_stage_from, v) for s, v in self.curve if s > self.final_stage_from]


def planned_steps(cfg: TrainConfig, num_train: int) -> int:
    """Optimizer steps a run of ``cfg`` over ``num_train`` training examples takes unless it stops early
    (single-stage methods; see :func:`stage_plan` for several stages)."""
    if cfg.max_samples is not None:
        total = max(1, math.ceil(cfg.max_samples / cfg.batch_size))
    else:
        total = max(1, math.ceil(cfg.epochs * max(1, math.ceil(num_train / cfg.batch_size))))
    return total if cfg.max_steps is None else min(total, max(1, cfg.max_steps))


def default_eval_every(num_train: int, batch_size: int) -> int:
    """Steps between evaluations when training by samples: every epoch, at most every 256 steps."""
    return max(1, min(math.ceil(num_train / batch_size), 256))


def stage_plan(cfg: TrainConfig, num_train: int, stages: tuple[Stage, ...]) -> tuple[list[int], int]:
    """Steps per stage (at most; the final stage may stop early) and the evaluation interval in steps.

    By epochs (``max_samples`` None): the planned steps are split by the stages' budget fractions and
    evaluation runs 10 times per run unless ``eval_every`` is set.

    By samples: the final stage trains up to ``max_samples``; each earlier stage trains
    ``stage_samples * its fraction / the final stage's fraction``, so a search stage keeps its declared
    proportion to one convergence horizon of the final stage however long the final stage may run.
    Evaluation runs every ``eval_every_samples`` (default: every epoch, at most every 256 steps).
    """
    bs = cfg.batch_size
    if cfg.max_samples is None:
        total = planned_steps(cfg, num_train)
        return [max(1, round(total * s.budget_fraction)) for s in stages], cfg.eval_every or max(1, total // 10)
    horizon = cfg.stage_samples or min(cfg.max_samples, 3 * num_train)
    final = stages[-1].budget_fraction
    steps = [max(1, math.ceil(horizon * s.budget_fraction / final / bs)) for s in stages[:-1]]
    steps.append(planned_steps(cfg, num_train))
    if cfg.eval_every_samples:
        every = max(1, math.ceil(cfg.eval_every_samples / bs))
    else:
        every = cfg.eval_every or default_eval_every(num_train, bs)
    return steps, every


def curve_rise(curve: list[tuple[int, float]], sign: float, tail: float = 0.25) -> float | None:
    """How much the best value rose over the last ``tail`` share of the samples in ``curve`` (oriented so
    that a positive number means improving); None with fewer than two points."""
    if len(curve) < 2:
        return None
    start = curve[0][0]
    cut = start + (1.0 - tail) * (curve[-1][0] - start)
    before = [v for s, v in curve if s <= cut]
    if not before:
        return None
    return max(0.0, max(sign * v for _, v in curve) - max(sign * v for v in before))


def set_threads(threads: int | None) -> None:
    if threads is not None and threads > 0 and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def with_regularization(emb: EmbeddingCollection, loss: torch.Tensor) -> torch.Tensor:
    """``loss`` plus the embedding's regulariser, where it has one."""
    reg = emb.regularization_loss()
    return loss if reg is None else loss + reg


def backward_step(loss: torch.Tensor, opts: list[torch.optim.Optimizer]) -> None:
    """One optimisation step: clear the gradients, backpropagate ``loss``, step every optimizer."""
    for o in opts:
        o.zero_grad(set_to_none=True)
    loss.backward()
    for o in opts:
        o.step()


def prefault_sparse_state(opt: torch.optim.Optimizer) -> None:
    """Create SparseAdam's moments eagerly and write every page once.

    SparseAdam allocates its state lazily at full table size with calloc'd memory; the first
    touch of each page then happens inside training steps, one random row at a time, which on
    this machine (a VM) made full-size Criteo steps 5-10x slower and very noisy for minutes.
    Writing the state once up front (a sequential memset) costs about a second per GB. Large
    moments go on huge pages, like the tables they follow (see ``embadvisor.kernels.hugepages``).
    """
    if not isinstance(opt, torch.optim.SparseAdam):
        return
    for group in opt.param_groups:
        for p in group["params"]:
            state = opt.state[p]
            if len(state) == 0:
                state["step"] = 0
                state["exp_avg"] = _zeros_like(p)
                state["exp_avg_sq"] = _zeros_like(p)


def _zeros_like(p: torch.Tensor) -> torch.Tensor:
    """Zeros shaped like ``p``; large CPU ones on huge pages, as the tables (random row updates)."""
    if p.device.type == "cpu" and p.is_contiguous():
        return hugepage_empty(p.shape, p.dtype).fill_(0)
    return torch.empty_like(p, memory_format=torch.preserve_format).fill_(0)


def _optimizers(model: nn.Module, emb: EmbeddingCollection, cfg: TrainConfig) -> list[torch.optim.Optimizer]:
    sparse = emb.sparse_parameters()
    sparse_ids = {id(p) for p in sparse}
    emb_ids = {id(p) for p in emb.parameters()}
    emb_dense = [p for p in emb.parameters() if p.requires_grad and id(p) not in sparse_ids]
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in emb_ids]
    elr = cfg.embedding_lr or cfg.lr
    opts: list[torch.optim.Optimizer] = []
    groups = [g for g in ({"params": rest, "lr": cfg.lr}, {"params": emb_dense, "lr": elr}) if g["params"]]
    if cfg.optimizer == "adam":
        if groups:
            opts.append(torch.optim.Adam(groups))
        if sparse:
            opts.append(sparse_adam(sparse, lr=elr))  # FusedSparseAdam on the CPU, torch's SparseAdam on CUDA
            prefault_sparse_state(opts[-1])
    elif cfg.optimizer == "adagrad":
        if groups:
            opts.append(torch.optim.Adagrad(groups))
        if sparse:
            opts.append(torch.optim.Adagrad(sparse, lr=elr))
    else:
        if groups:
            opts.append(torch.optim.SGD(groups))
        if sparse:
            opts.append(torch.optim.SGD(sparse, lr=elr))
    return opts


def peak_rss_bytes() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


class _DevicePeaks:
    """Peak device memory of the training steps and of the whole run (CUDA; None on the CPU).

    The peak counter is reset at the start and around every evaluation, so the training peak leaves
    the evaluations (scoring buffers, larger eval batches) out."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.on = device.type == "cuda"
        self.train = 0
        self.all = 0
        if self.on:
            devices.reset_peak_memory(device)

    def _take(self) -> int:
        peak = devices.peak_memory(self.device) or 0
        devices.reset_peak_memory(self.device)
        self.all = max(self.all, peak)
        return peak

    def training_done(self) -> None:
        """Close a stretch of training steps (before an evaluation or the end)."""
        if self.on:
            self.train = max(self.train, self._take())

    def other_done(self) -> None:
        """Close a stretch of other work (an evaluation, export, the test split)."""
        if self.on:
            self._take()

    def result(self) -> tuple[int | None, int | None]:
        """(peak over the run, peak over the training steps); (None, None) on the CPU."""
        return (self.all, self.train) if self.on else (None, None)


def fit(
    engine: TaskEngine,
    model: nn.Module,
    emb: EmbeddingCollection,
    cfg: TrainConfig,
    callback: Callable[[int, float, int | None], None] | None = None,
) -> FitResult:
    """Train ``model`` (whose embeddings are ``emb``) on ``engine``; see the module docstring.

    ``callback(step, value, final_samples)`` is called at every evaluation; ``final_samples`` is the number
    of samples the final stage has trained so far (None during earlier stages).
    """
    set_threads(cfg.threads)
    device = devices.module_device(model)
    peaks = _DevicePeaks(device)
    n = engine.num_train()
    stages = emb.stages
    stage_steps, eval_every = stage_plan(cfg, n, stages)
    opts = _optimizers(model, emb, cfg)
    emb.on_train_start(cfg.optimizer, cfg.embedding_lr or cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    sign = 1.0 if engine.higher_is_better else -1.0
    history: list[tuple[int, float]] = []
    curve: list[tuple[int, float]] = []
    best_value, best_state, bad_evals = -math.inf, None, 0
    step, samples, train_time, eval_time = 0, 0, 0.0, 0.0
    final_from = 0
    stopped = "completed" if cfg.max_samples is None else "resource cap reached"
    converged = False
    order = torch.randperm(n, generator=gen)
    pos = 0

    def evaluate(final_stage: bool) -> bool:
        """Evaluate; return True to stop early."""
        nonlocal best_value, best_state, bad_evals, eval_time
        peaks.training_done()
        t0 = time.perf_counter()
        value = engine.evaluate(model, "valid")[engine.metric]
        eval_time += time.perf_counter() - t0
        peaks.other_done()
        history.append((step, value))
        curve.append((samples, value))
        if callback is not None:
            callback(step, value, samples - final_from if final_stage else None)
        if not final_stage:
            return False
        if sign * value > best_value + cfg.min_delta:
            best_value, bad_evals = sign * value, 0
            if cfg.keep_best:
                best_state = devices.snapshot_state(model)
        else:
            if sign * value > best_value and cfg.keep_best:  # better, but not by min_delta: still keep it
                best_value = sign * value
                best_state = devices.snapshot_state(model)
            bad_evals += 1
        return cfg.patience > 0 and bad_evals >= cfg.patience

    for si, (stage, n_steps) in enumerate(zip(stages, stage_steps, strict=True)):
        final_stage = si == len(stages) - 1
        if final_stage:
            final_from = samples
        emb.on_stage_start(stage)
        stage_budget = None if cfg.time_budget_s is None else cfg.time_budget_s * stage.budget_fraction
        stage_time = 0.0
        epoch = 0
        stop_stage = False
        for _ in range(n_steps):
            model.train()
            t0 = time.perf_counter()
            if pos + cfg.batch_size > n and pos > 0:
                emb.on_epoch_end(epoch, stage)
                epoch += 1
                order = torch.randperm(n, generator=gen)
                pos = 0
            idx = order[pos : pos + cfg.batch_size]
            pos += cfg.batch_size
            loss = with_regularization(emb, engine.train_loss(model, idx))
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"training diverged: the loss is {loss.item()} at step {step} (stage {stage.name!r}). "
                    "Lower the learning rate or choose another configuration."
                )
            backward_step(loss, opts)
            step += 1
            samples += int(idx.numel())
            emb.on_step(step)
            devices.synchronize(device)  # CUDA: the step's queued work belongs to this step's time
            dt = time.perf_counter() - t0
            train_time += dt
            stage_time += dt
            if step % eval_every == 0 and evaluate(final_stage):
                stopped, stop_stage, converged = "early stopping on validation", True, True
                break
            if stage_budget is not None and stage_time >= stage_budget:
                stopped = "time budget reached"
                break
        emb.on_epoch_end(epoch, stage)
        if stop_stage:
            break
    if not history or history[-1][0] != step:
        evaluate(True)
    peaks.training_done()
    if best_state is not None:
        model.load_state_dict(best_state)
    emb.export()
    t0 = time.perf_counter()
    validation = engine.evaluate(model, "valid")
    eval_time += time.perf_counter() - t0
    test = engine.evaluate(model, "test") if cfg.evaluate_test and engine.has_split("test") else None
    latency = engine.latency_ms(model)
    peaks.other_done()
    peak_all, peak_train = peaks.result()
    result = FitResult(
        validation=validation,
        test=test,
        history=history,
        steps=step,
        samples=samples,
        train_seconds=train_time,
        samples_per_second=samples / max(train_time, 1e-9),
        latency_ms=latency,
        peak_rss_bytes=peak_rss_bytes(),
        stopped=stopped,
        serve_bytes=emb.measured_memory(),
        curve=curve,
        final_stage_from=final_from,
        converged=converged,
        eval_seconds=eval_time,
        device=str(device),
        peak_device_bytes=peak_all,
        peak_train_device_bytes=peak_train,
    )
    result.rise = curve_rise(result.final_curve, sign)
    return result
