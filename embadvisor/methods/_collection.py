"""All of a workload's embedding tables behind one module, per-field or global layout.

Models see only :class:`EmbeddingCollection`: ``forward(ids[B, F]) -> [B, F, D]`` and
``lookup(field, ids[*S]) -> [*S, D]`` (for multi-hot fields). Which method is inside, and whether
the fields share one global table (ids offset per field) or have one table each, is the plan's
business.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from embadvisor import kernels
from embadvisor.kernels.hugepages import advise_hugepages_
from embadvisor.methods._base import CompressedEmbedding, Stage, measured_bytes
from embadvisor.methods._registry import get_method
from embadvisor.methods._solver import Plan

__all__ = ["EmbeddingCollection", "build_collection"]


class _FusedPlan(NamedTuple):
    """The fused serving lookup of some columns: the kernel's plan, which columns it embeds, the rest."""

    plan: kernels.LookupPlan
    fused: list[int]
    fused_t: torch.Tensor
    rest: list[int]


class EmbeddingCollection(nn.Module):
    """The embedding tables of a plan.

    Args:
        plan: a feasible :class:`Plan` from :func:`embadvisor.methods.solve`.
        device: where to build (``"meta"`` to check sizes without allocating).
    """

    offsets: torch.Tensor

    def __init__(self, plan: Plan, *, device: torch.device | str | None = None) -> None:
        super().__init__()
        if not plan.feasible:
            raise ValueError(f"cannot build an infeasible plan: {plan.reason}")
        self.plan = plan
        self.layout = plan.layout
        self.field_names = [t.name for t in plan.field_tables]
        self.embedding_dim = plan.field_tables[0].embedding_dim
        self.tables = nn.ModuleList([tp.config.build(tp.table, device=device) for tp in plan.tables])
        if self.layout == "global":
            sizes = torch.tensor([0] + [t.num_embeddings for t in plan.field_tables[:-1]], dtype=torch.int64)
            self.register_buffer("offsets", torch.cumsum(sizes, 0).to(device) if device else torch.cumsum(sizes, 0))
        self._stages = get_method(plan.method).stages
        self._plan_state: tuple[_FusedPlan | None] | None = None  # see _fused_forward
        advise_hugepages_(self)  # large tables on 2 MiB pages: random row lookups walk far fewer pages

    @property
    def stages(self) -> tuple[Stage, ...]:
        return self._stages

    @property
    def modules_(self) -> list[CompressedEmbedding]:
        return list(self.tables)  # type: ignore[arg-type]

    def lookup(self, field: int, ids: torch.Tensor) -> torch.Tensor:
        """Embed one field's ids of any shape."""
        if self.layout == "global":
            return self.tables[0](ids + self.offsets[field])
        return self.tables[field](ids)

    def forward(self, ids: torch.Tensor, fields: Sequence[int] | None = None) -> torch.Tensor:
        """``ids[B, K]`` (one id per field) -> ``[B, K, D]``.

        ``fields`` names the field index of each column (default: all fields in order).
        """
        every = fields is None or list(fields) == list(range(len(self.field_names)))
        cols = list(range(len(self.field_names))) if fields is None else list(fields)
        if self.layout == "global":
            return self.tables[0](ids + (self.offsets if every else self.offsets[cols]))
        if not torch.is_grad_enabled():  # serving: the fields that have a kernel in one fused pass
            out = self._fused_forward(ids, cols, every)
            if out is not None:
                return out
        return torch.stack([self.tables[f](ids[:, k]) for k, f in enumerate(cols)], dim=1)

    def _build_plan(self, cols: Sequence[int]) -> _FusedPlan | None:
        field_kernels = [getattr(self.tables[f], "field_kernel", lambda: None)() for f in cols]
        fused = [k for k, kern in enumerate(field_kernels) if kern is not None]
        plan = kernels.LookupPlan.build([field_kernels[k] for k in fused], self.embedding_dim) if fused else None
        if plan is None:
            return None
        rest = [k for k in range(len(cols)) if field_kernels[k] is None]
        return _FusedPlan(plan, fused, torch.tensor(fused, dtype=torch.int64), rest)

    def _fused_forward(self, ids: torch.Tensor, cols: list[int], every: bool) -> torch.Tensor | None:
        """Columns whose serving module has a :meth:`~CompressedEmbedding.field_kernel` in one pass of the
        C kernel, the others through their modules; None where that cannot run (the caller stacks)."""
        if every:
            if self._plan_state is None:
                self._plan_state = (self._build_plan(cols),)
            fp = self._plan_state[0]
        else:
            fp = self._build_plan(cols)
        if fp is None:
            return None
        if not fp.rest:
            return fp.plan(ids)
        others = [self.tables[cols[k]](ids[:, k]) for k in fp.rest]
        if any(o.dtype != torch.float32 for o in others):
            return None
        out = torch.empty(ids.shape[0], len(cols), self.embedding_dim, dtype=torch.float32)
        if fp.plan(ids[:, fp.fused], out, fp.fused_t) is None:
            return None
        for k, o in zip(fp.rest, others, strict=True):
            out[:, k] = o
        return out

    def refresh_kernels(self) -> None:
        """Forget the fused lookup's table addresses (done by ``export``, ``to`` and the like); call it after
        replacing a table's tensor objects by hand (in-place updates need nothing)."""
        self._plan_state = None

    def __getstate__(self) -> dict:
        state = super().__getstate__()  # pickle / deepcopy: raw table addresses must not travel
        return {**state, "_plan_state": None}

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]  # .to(), .float(), ...: new tensors
        self.refresh_kernels()
        return super()._apply(fn, recurse)

    # -- hooks forwarded to every table --------------------------------------------------------
    def prepare(self, counts: Sequence[np.ndarray] | None) -> None:
        """Per-field id counts (frequency-aware methods); concatenated for the global layout."""
        if counts is None:
            for m in self.modules_:
                m.prepare(None)
        elif self.layout == "global":
            self.modules_[0].prepare(np.concatenate([np.asarray(c) for c in counts]))
        else:
            for m, c in zip(self.modules_, counts, strict=True):
                m.prepare(np.asarray(c))

    def on_train_start(self, optimizer: str, lr: float) -> None:
        for m in self.modules_:
            m.on_train_start(optimizer, lr)

    def on_stage_start(self, stage: Stage) -> None:
        for m in self.modules_:
            m.on_stage_start(stage)

    def on_step(self, step: int) -> None:
        for m in self.modules_:
            m.on_step(step)

    def on_epoch_end(self, epoch: int, stage: Stage) -> None:
        for m in self.modules_:
            m.on_epoch_end(epoch, stage)

    def regularization_loss(self) -> torch.Tensor | None:
        losses = [r for r in (m.regularization_loss() for m in self.modules_) if r is not None]
        return torch.stack(losses).sum() if losses else None

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.modules_ for p in m.sparse_parameters()]

    def export(self) -> EmbeddingCollection:
        """The serving form: every table replaced by its exported module (in place; returns self)."""
        self.tables = nn.ModuleList([m.export() for m in self.modules_])
        advise_hugepages_(self)  # serving forms may hold new tensors
        self.refresh_kernels()
        return self.eval()

    def measured_memory(self) -> int:
        """Bytes the tables really hold (parameters and buffers); the global layout's int64 per-field
        offsets are layout bookkeeping and, as in the plan, not counted (see :mod:`embadvisor.methods._solver`)."""
        return measured_bytes(self.tables)


def build_collection(plan: Plan, *, device: torch.device | str | None = None) -> EmbeddingCollection:
    return EmbeddingCollection(plan, device=device)
