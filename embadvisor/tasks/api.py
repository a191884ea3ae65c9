"""The task engines' Python API: ``train(data, method, ...) -> TrainReport``.

One code path for every method and both tasks: solve the method's plan for the data's tables and
the budget, build the embedding collection, prepare it with the training-split id counts, build
the model, train with the generic trainer, export the serving form, evaluate validation (and the
test split once).

``train(..., device=...)`` trains on a device: the collection and the model are built and prepared
on the CPU (same initial weights for a seed on every device), then moved with the engine's data
(see :mod:`embadvisor.devices`). On CUDA the report holds the peak device memory beside the
analytic training bytes, with a warning where they disagree by more than the framework's overhead
(:func:`device_memory_warnings`), and an out-of-memory error becomes
:class:`~embadvisor.errors.DeviceOutOfMemory`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from embadvisor import devices
from embadvisor._checks import check_fits_memory
from embadvisor.defaults import (
    DEFAULT_BATCH,
    DEFAULT_DIM,
    DEFAULT_PATIENCE,
    DEFAULT_RATIO,
    MAX_EPOCHS,
    MIN_STEPS_PER_EPOCH,
)
from embadvisor.errors import InfeasibleError, InvalidConfigError, UnknownNameError, suggest
from embadvisor.methods import EmbeddingCollection, Plan, build_collection, get_method, solve
from embadvisor.methods.full import FullConfig
from embadvisor.profiles.schema import TableSpec
from embadvisor.tasks.ctr import CTR_MODELS, CtrEngine, CtrTensors, build_ctr_model
from embadvisor.tasks.retrieval import RetrievalEngine, RetrievalTensors, TwoTower
from embadvisor.tasks.trainer import FitResult, TrainConfig, fit, set_threads
from embadvisor.units import format_size

__all__ = ["DEFAULT_BATCH", "DEFAULT_DIM", "DEFAULT_RATIO", "MAX_EPOCHS", "TaskData", "convergence_config",
           "default_batch_size", "TrainReport", "build_task", "check_model", "check_plan_fits_memory",
           "device_memory_warnings", "model_bytes", "over_budget_warnings", "plan_for", "serve_bytes_over", "train"]


def default_batch_size(task: str, num_train: int) -> int:
    """The task's batch size, halved (not below 64) until an epoch has at least :data:`MIN_STEPS_PER_EPOCH`
    steps: 4096 CTR rows on an 8,000-row file would be two steps an epoch."""
    b = DEFAULT_BATCH[task]
    while b > 64 and num_train / b < MIN_STEPS_PER_EPOCH:
        b //= 2
    return b


def convergence_config(data: TaskData, **overrides: Any) -> TrainConfig:
    """Training to convergence on ``data``: early stopping on validation (patience 3 evaluations, one every
    epoch or every 256 steps, whichever comes first), capped at :data:`MAX_EPOCHS` epochs; the batch size
    from :func:`default_batch_size`. ``overrides`` replace any field."""
    kw: dict[str, Any] = {"batch_size": default_batch_size(data.task, data.num_train), "patience": DEFAULT_PATIENCE,
                          "max_samples": MAX_EPOCHS * max(1, data.num_train)}
    kw.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**kw)


@dataclass
class TaskData:
    """Training data of one task, ready for the engines.

    Args:
        task: ``"ctr"`` or ``"retrieval"``.
        ctr: the CTR tensors (task ``ctr``).
        retrieval: the interaction tensors (task ``retrieval``).
        name: a short name for reports.
        fingerprint: a content hash of the data (so a study can refuse mismatched data).
        source: where the data came from.
    """

    task: str
    ctr: CtrTensors | None = None
    retrieval: RetrievalTensors | None = None
    name: str = ""
    fingerprint: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        if self.task not in ("ctr", "retrieval"):
            raise InvalidConfigError(f"`task` must be 'ctr' or 'retrieval', but got task={self.task!r}.")
        if (self.task == "ctr") != (self.ctr is not None) or (self.task == "retrieval") != (self.retrieval is not None):
            raise InvalidConfigError(f"TaskData for task {self.task!r} needs exactly the matching tensors.")
        if not self.fingerprint:
            self.fingerprint = fingerprint_tensors(self)

    def tables(self, dim: int) -> list[TableSpec]:
        if self.ctr is not None:
            return [TableSpec(t.name, t.num_embeddings, dim, t.frequency) for t in self.ctr.tables]
        assert self.retrieval is not None
        return self.retrieval.tables_at(dim)

    def counts(self) -> list[np.ndarray] | None:
        if self.ctr is not None:
            return self.ctr.counts
        assert self.retrieval is not None
        return [self.retrieval.user_counts, self.retrieval.item_counts]

    @property
    def metric(self) -> str:
        return "auc" if self.task == "ctr" else "recall@20"

    @property
    def num_train(self) -> int:
        if self.ctr is not None:
            return int(self.ctr.splits["train"].numel())
        assert self.retrieval is not None
        return int(self.retrieval.train_users.numel())


def fingerprint_tensors(data: TaskData) -> str:
    """SHA-256 (first 16 hex digits) over the data's tensors: same data, same fingerprint."""
    h = hashlib.sha256(data.task.encode())
    parts: list[Any] = []
    if data.ctr is not None:
        c = data.ctr
        parts = [c.ids, *c.multi, c.labels, *([c.dense] if c.dense is not None else []),
                 *[c.splits[k] for k in sorted(c.splits)]]
    elif data.retrieval is not None:
        r = data.retrieval
        parts = [r.train_users, r.train_items, torch.from_numpy(r.valid[1])]
        if r.test is not None:
            parts.append(torch.from_numpy(r.test[1]))
    for p in parts:
        t = p.contiguous()
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class TrainReport:
    """The outcome of one training run, with the plan it trained."""

    task: str
    method: str
    plan: Plan
    fit: FitResult
    model_name: str
    estimate_serve_bytes: int
    extra: dict[str, Any] = field(default_factory=dict)
    model: nn.Module | None = field(default=None, repr=False)
    engine: Any = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        f = self.fit
        return {
            "task": self.task,
            "method": self.method,
            "model": self.model_name,
            "params": self.plan.params(),
            "layout": self.plan.layout,
            "serve_bytes": f.serve_bytes,
            "serve_bytes_estimate": self.estimate_serve_bytes,
            "train_bytes": self.plan.memory.train_bytes,
            "full_bytes": self.plan.full_bytes,
            "validation": f.validation,
            "test": f.test,
            "train_seconds": f.train_seconds,
            "samples_per_second": f.samples_per_second,
            "latency_ms": f.latency_ms,
            "peak_rss_bytes": f.peak_rss_bytes,
            "device": f.device,
            "peak_device_bytes": f.peak_device_bytes,
            "peak_train_device_bytes": f.peak_train_device_bytes,
            "steps": f.steps,
            "samples": f.samples,
            "stopped": f.stopped,
            "converged": f.converged,
            "rise_last_quarter": f.rise,
            "history": f.history,
            "curve": f.curve,
        } | self.extra


def plan_for(
    method: str,
    tables: list[TableSpec],
    budget_bytes: float | None,
    *,
    scope: str = "serve",
    optimizer: str = "adam",
    fixed: dict[str, Any] | None = None,
) -> Plan:
    """The method's plan for ``tables`` (default budget: :data:`DEFAULT_RATIO` of the full tables)."""
    cls = get_method(method)
    if budget_bytes is None:
        full = solve(FullConfig, tables, math.inf, scope=scope, optimizer=optimizer)
        budget_bytes = full.bytes if cls.name == "full" else full.full_bytes * DEFAULT_RATIO
    plan = solve(cls, tables, budget_bytes, scope=scope, optimizer=optimizer, fixed=fixed)
    if not plan.feasible:
        raise InfeasibleError(
            f"{method} does not fit {format_size(budget_bytes)} ({scope}) on these tables: {plan.reason}.",
            [f"raise the budget to at least {format_size(plan.min_budget_bytes)}",
             "or pick another method (`embadvisor methods --solve`)"],
        )
    return plan


def check_model(task: str, model: str) -> str:
    """``model`` if it names a CTR model (checked before any data is read or trial run; retrieval ignores it)."""
    if task == "ctr" and model not in CTR_MODELS:
        names = sorted(CTR_MODELS)
        raise UnknownNameError(f"`model` must be one of {', '.join(names)}, but got model={model!r}."
                               f"{suggest(model, names)}")
    return model


def check_plan_fits_memory(plan: Plan, dim: int) -> None:
    """Refuse a plan whose tables cannot be trained in this machine's memory (before anything is allocated).

    The estimate is the plan's analytic training memory (weights, buffers and optimizer state of the
    tables); the model and the data come on top of it.
    """
    check_fits_memory(
        plan.memory.train_bytes,
        what=f"training {plan.method} on {len(plan.field_tables)} tables "
             f"({sum(t.num_embeddings for t in plan.field_tables):,} rows) at dim {dim} with {plan.optimizer}",
        fix="lower --dim, pass a smaller --budget with a compressing --method, or use a machine with more memory",
    )


def build_task(data: TaskData, emb: EmbeddingCollection, model_name: str = "dlrm",
               **engine_kw: Any) -> tuple[nn.Module, Any]:
    """The model over ``emb`` and the task engine for ``data``."""
    if data.ctr is not None:
        return build_ctr_model(model_name, emb, data.ctr), CtrEngine(data.ctr, **engine_kw)
    assert data.retrieval is not None
    r = data.retrieval
    model = TwoTower(emb, r.history if r.history_len > 0 else None)
    return model, RetrievalEngine(r, **engine_kw)


def train(
    data: TaskData,
    method: str | Plan,
    *,
    budget_bytes: float | None = None,
    scope: str = "serve",
    model: str = "dlrm",
    dim: int = 16,
    config: TrainConfig | None = None,
    fixed: dict[str, Any] | None = None,
    callback: Callable[[int, float, int | None], None] | None = None,
    seed: int = 0,
    engine_options: dict[str, Any] | None = None,
    device: str | torch.device | None = None,
) -> TrainReport:
    """Train ``method`` (or a ready :class:`Plan`) on ``data`` and evaluate it.

    Args:
        data: the task's tensors.
        method: a registry name, or a plan from :func:`embadvisor.methods.solve`.
        budget_bytes: memory budget for the tables (default: 25% of the full tables).
        scope: what the budget covers (``serve`` or ``train``).
        model: CTR model name (``dlrm``, ``dcn``, ``wdl``, ``deepfm``); ignored for retrieval.
        dim: embedding dim.
        config: training settings.
        fixed: method hyperparameters held fixed while solving the size knob.
        callback: called with ``(step, validation metric, final-stage samples or None)`` at each evaluation.
        seed: seed for initialisation and shuffling.
        engine_options: keyword arguments for the task engine (e.g. retrieval's ``eval_users``).
        device: where to train: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"auto"`` or a ``torch.device``
            (None: the CPU). See :func:`embadvisor.devices.resolve_device` for what a seed guarantees there.

    The report's ``warnings`` list says when the trained serving form holds more bytes than the plan's
    budget (data-dependent methods such as dedup can miss their target on data without enough similar
    blocks), and on CUDA when the peak device memory of the training steps and the analytic training
    bytes disagree by more than the framework's overhead (:func:`device_memory_warnings`).

    Raises:
        DeviceUnavailableError: ``device`` names CUDA on a machine without it.
        DeviceOutOfMemory: the tables cannot fit the device, or CUDA ran out of memory while training.
    """
    dev = devices.resolve_device(device) if device is not None else torch.device("cpu")
    config = config or TrainConfig(seed=seed)
    set_threads(config.threads)
    plan = method if isinstance(method, Plan) else plan_for(
        method, data.tables(dim), budget_bytes, scope=scope, optimizer=config.optimizer, fixed=fixed)
    check_plan_fits_memory(plan, dim)
    what = (f"training {plan.method} on {len(plan.field_tables)} tables "
            f"({sum(t.num_embeddings for t in plan.field_tables):,} rows) at dim {dim} with {plan.optimizer}")
    devices.check_fits_device(plan.memory.train_bytes, dev, what=what,
                              fix="lower --dim, pass a smaller --budget with a compressing --method, or train on "
                                  "the CPU (--device cpu)")
    torch.manual_seed(seed)
    emb = build_collection(plan)  # on the CPU: a seed gives the same initial weights on every device
    emb.prepare(data.counts())
    net, engine = build_task(data, emb, model, **(engine_options or {}))
    dense, extra_buffers = model_bytes(net, emb)
    with devices.oom_guard(dev, what, plan.memory.train_bytes):
        if dev.type != "cpu":
            net.to(dev)
            # what training will still allocate on the device: the tables' optimizer state, the model's
            # gradients and Adam moments
            engine.to(dev, reserve_bytes=plan.memory.optimizer_bytes + 3 * dense)
        result = fit(engine, net, emb, config, callback=callback)
    warnings = over_budget_warnings(plan, result.serve_bytes, budget_bytes if scope == "serve" else None)
    if result.peak_train_device_bytes is not None:
        warnings += device_memory_warnings(plan, result.peak_train_device_bytes, dense_bytes=dense,
                                           data_bytes=getattr(engine, "device_bytes", 0) + extra_buffers)
    return TrainReport(data.task, plan.method, plan, result, model if data.task == "ctr" else "two-tower",
                       plan.memory.serve_bytes, extra={"warnings": warnings}, model=net, engine=engine)


def model_bytes(model: nn.Module, emb: EmbeddingCollection) -> tuple[int, int]:
    """Bytes of the model's parameters outside the embedding tables (MLPs, towers), and of its buffers
    outside them (e.g. the two-tower model's history of item ids)."""
    emb_ids = {id(t) for t in (*emb.parameters(), *emb.buffers())}
    params = sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in emb_ids)
    buffers = sum(b.numel() * b.element_size() for b in model.buffers() if id(b) not in emb_ids)
    return params, buffers


#: The framework's overhead on the device that the analytic figures leave out: activations, the
#: tables' sparse gradients and their coalescing, allocator rounding, cuBLAS workspaces. A training peak
#: within ``max(OVERHEAD_FLOOR_BYTES, OVERHEAD_SHARE x the accounted bytes)`` above the accounted bytes agrees.
OVERHEAD_FLOOR_BYTES = 256 * 2**20
OVERHEAD_SHARE = 0.25
#: A training peak below this share of the tables' analytic training bytes says the estimate over-counts.
UNDER_SHARE = 0.9


def device_memory_warnings(plan: Plan, peak_train_bytes: int, *, dense_bytes: int = 0, data_bytes: int = 0) -> list[str]:
    """Warnings when the measured peak device memory of the training steps disagrees with the analytic one.

    The accounted bytes are the tables' analytic training bytes (weights, buffers, optimizer state:
    ``plan.memory.train_bytes``), plus the model outside the tables with its gradients and Adam moments
    (4 x ``dense_bytes``), plus the data kept on the device (``data_bytes``: the engine's tensors and the
    model's buffers outside the tables). The peak agrees when it
    lies between :data:`UNDER_SHARE` of the tables' bytes and the accounted bytes plus the framework's
    overhead (``max(OVERHEAD_FLOOR_BYTES, OVERHEAD_SHARE x accounted)``); otherwise one warning says
    which way it misses and by how much.
    """
    analytic = plan.memory.train_bytes
    accounted = analytic + 4 * dense_bytes + data_bytes
    overhead = max(OVERHEAD_FLOOR_BYTES, OVERHEAD_SHARE * accounted)
    parts = (f"the tables' analytic training memory {format_size(analytic)} + the model with its gradients and "
             f"Adam state {format_size(4 * dense_bytes)} + data on the device {format_size(data_bytes)}")
    if peak_train_bytes > accounted + overhead:
        return [f"peak device memory while training {plan.method} was {format_size(peak_train_bytes)}, "
                f"{format_size(peak_train_bytes - accounted)} above {parts} = {format_size(accounted)}: more than the "
                f"framework's overhead ({format_size(overhead)}); the analytic figure under-counts this method's "
                "training memory on the device"]
    if peak_train_bytes < UNDER_SHARE * analytic:
        return [f"peak device memory while training {plan.method} was {format_size(peak_train_bytes)}, below "
                f"{UNDER_SHARE:.0%} of the tables' analytic training memory {format_size(analytic)}: the analytic "
                "figure over-counts this method's training memory on the device"]
    return []


def serve_bytes_over(limit: float, measured: int) -> bool:
    """Whether a trained serving form of ``measured`` bytes misses a ``limit`` (0.1% + 64 bytes of slack)."""
    return measured > limit * 1.001 + 64


def over_budget_warnings(plan: Plan, measured: int, budget_bytes: float | None) -> list[str]:
    """Warnings when the trained serving form is larger than planned (and than the budget, if one was given)."""
    limit = plan.memory.serve_bytes if budget_bytes is None else min(budget_bytes, plan.memory.serve_bytes)
    if not serve_bytes_over(limit, measured):
        return []
    what = f"the budget {format_size(budget_bytes)}" if budget_bytes is not None else \
        f"the planned {format_size(plan.memory.serve_bytes)}"
    return [f"the trained {plan.method} serving form holds {format_size(measured)} ({measured:,} bytes), "
            f"{measured / max(limit, 1):.1f}x {what}: the method could not reach its target on this data"]
