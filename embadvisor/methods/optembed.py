"""OptEmbed: prune uninformative rows with a learned threshold, then pick the field's dim, then retrain.

Stages:
    ``supernet``: the full ``n × d`` table (sparse gradients) with a learnable per-field threshold
    t. A row whose L1 norm is below the threshold is masked: ``m = step((‖e‖₁ − t·s) / s)``, the
    binary step with the paper's long-tailed straight-through derivative (``2 − 4|x|`` for
    ``|x| ≤ 0.4``, 0.4 up to 1, else 0), so both t and the rows learn through the mask. ``s``
    is the mean L1 norm of a freshly initialised row (``d · sqrt(1/n) / 2``), so t is in units
    of it and behaves alike for every table size (t = 1 prunes the rows still at about their
    initial norm). The regulariser ``threshold_weight · exp(−t)`` pushes t up. Each lookup also
    keeps only its first k dims, k uniform in 1..d per lookup, which trains a weight-sharing
    supernet over all dims. Evaluation uses the row mask and all d dims.
    ``search``: at its start the rows below the threshold are pruned for good (``row_mask``)
    and the dim is chosen by the memory-aware rule below; during its steps the supernet keeps
    training with the pruned rows and random dims up to the chosen one.
    ``retrain``: the pruned rows and the chosen dim are fixed (masked forward).

Dim rule (a deviation): the paper searches the per-field dims with an evolutionary search on
validation AUC and no memory constraint; a method has no validation access here, so the field
takes the largest dim k whose serving form fits its budget. With K kept rows of n, the serving
form is the smaller of a compact ``(K + 1) × k`` table (the kept rows and one zero row) + a per-id
row remap, and an ``n × k`` table whose pruned rows are zero (no remap; also the form when no
row is pruned); it must fit ``budget = (E − n)·b + n·r`` bytes, where
``E = floor(budget_ratio · n·d)`` (the size knob), b the weight bytes and r the remap's (int32:
4). At fp32 that is ``4·E``, i.e. ``budget_ratio`` of the full table; k = 1 always fits
(``budget_ratio ≥ 1/d``).

Serving (``export()``): the kept rows' first k dims in a compact table + an int32 remap (pruned
ids point to one zero row stored last, so a lookup is two gathers), or the ``n × k`` table,
whichever is smaller; zero-padded to d. It equals the module's evaluation output exactly.

Other deviations: the threshold is trained by the trainer's optimizer (the paper: its own SGD)
and measured in units of a fresh row's norm, the optimizer state is not reset between the
stages, and the dims are sampled per lookup.

Memory:
    training: ``n·d`` weights + 1 threshold + an ``n`` uint8 row mask + one int64 dim (buffers),
    plus the optimizer state of the weights and threshold. Serving (data dependent; the
    estimate is the budget, an upper bound): ``min((K + 1)·k·b + n·r, n·k·b) ≤ (E − n)·b + n·r``
    bytes, declared as ``E − n`` weights + the ``n``-entry remap.

References:
    Lyu et al., "OptEmbed: Learning Optimal Embedding Table for Click-through Rate Prediction",
    CIKM 2022, arXiv:2208.04482. Benchmarked (``optembed``) in Zhang et al., "Experimental
    Analysis of Large-scale Learnable Vector Storage Compression", VLDB 2024, arXiv:2311.15578.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from optuna.distributions import FloatDistribution
from torch import nn

from embadvisor._constraints import Interval
from embadvisor.errors import InvalidConfigError
from embadvisor.methods._base import CompressedEmbedding, MethodConfig, MethodTags, Stage, TensorSpec, torch_dtype
from embadvisor.methods._dimsearch import BLOCK_ROWS, CompactTable, ratio_floor, remap_dtype
from embadvisor.methods._registry import register_method
from embadvisor.methods.full import init_bound
from embadvisor.profiles.schema import TableSpec
from embadvisor.units import DTYPE_BYTES

__all__ = ["OptembedConfig", "OptembedEmbedding", "choose_dim", "serve_cost"]


class _BinaryStep(torch.autograd.Function):
    """``x > 0`` with OptEmbed's long-tailed derivative: ``2 − 4|x|`` (|x| ≤ 0.4), 0.4 (≤ 1), 0."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        a = x.abs()
        slope = torch.where(a <= 0.4, 2.0 - 4.0 * a, torch.where(a <= 1.0, 0.4, 0.0))
        return grad * slope


def serve_cost(n: int, kept: int, k: int, weight_bytes: int, remap_bytes: int) -> int:
    """Serving bytes at dim ``k`` with ``kept`` rows: the smaller of ``(kept + 1) × k`` + remap and ``n × k``."""
    dense = n * k * weight_bytes
    return dense if kept >= n else min(dense, (kept + 1) * k * weight_bytes + n * remap_bytes)


def choose_dim(n: int, d: int, kept: int, budget_bytes: int, weight_bytes: int, remap_bytes: int) -> int:
    """The largest dim in 1..d whose serving form fits ``budget_bytes`` (1 if none does).

    The cost grows with the dim, so a bisection finds it in O(log d) steps (a scan from d down took
    minutes at d = 10**9).
    """
    lo, hi = 1, d  # invariant: the answer is in [lo, hi]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if serve_cost(n, kept, mid, weight_bytes, remap_bytes) <= budget_bytes:
            lo = mid
        else:
            hi = mid - 1
    return lo


class OptembedEmbedding(CompressedEmbedding):
    """Thresholded supernet table (``supernet``), pruned rows at a chosen dim (``search``, ``retrain``)."""

    config: OptembedConfig
    row_mask: torch.Tensor
    chosen_dim: torch.Tensor

    def __init__(self, config: OptembedConfig, table: TableSpec, *, device: Any = None, dtype: Any = None) -> None:
        super().__init__(config, table, device=device, dtype=dtype)
        n, d = table.num_embeddings, table.embedding_dim
        self.embedding = nn.Embedding(n, d, sparse=True, **self._factory)
        self.threshold = nn.Parameter(torch.full((1,), config.threshold_init, **self._factory))
        self.register_buffer("row_mask", torch.ones(n, dtype=torch.uint8, device=device))
        self.register_buffer("chosen_dim", torch.zeros((), dtype=torch.int64, device=device))
        #: the unit of the threshold: mean L1 norm of a row initialised uniform on ±sqrt(1/n).
        self.norm_unit = d * init_bound(table) / 2
        self.narrow = False
        if self.embedding.weight.device.type != "meta":
            b = init_bound(table)
            nn.init.uniform_(self.embedding.weight, -b, b)

    @property
    def dim(self) -> int | None:
        """The chosen dim (None during the supernet stage)."""
        k = int(self.chosen_dim)
        return k or None

    @property
    def kept_rows(self) -> int:
        return int(self.row_mask.sum())

    def budget_bytes(self) -> int:
        """The field's serving budget for this module's weight dtype."""
        b = self.embedding.weight.element_size()
        return self.config.serve_budget_bytes(self.table, b)

    def _norm_margin(self, rows: torch.Tensor) -> torch.Tensor:
        s = self.norm_unit
        return (rows.abs().sum(-1) - self.threshold * s) / s

    # -- forward ---------------------------------------------------------------------------------
    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        e = self.embedding(ids)
        d = self.embedding_dim
        arange = torch.arange(d, device=ids.device)
        k = int(self.chosen_dim)
        if k == 0:  # supernet
            x = self._norm_margin(e)
            if not self.training:
                return e * (x > 0).to(e.dtype).unsqueeze(-1)
            keep = _BinaryStep.apply(x)
            width = torch.randint(1, d + 1, ids.shape, device=ids.device)
            return e * (keep.unsqueeze(-1) * (arange < width.unsqueeze(-1)).to(e.dtype))
        rows = self.row_mask[ids].to(e.dtype).unsqueeze(-1)
        if self.training and self.narrow and k > 1:
            width = torch.randint(1, k + 1, ids.shape, device=ids.device)
            return e * (rows * (arange < width.unsqueeze(-1)).to(e.dtype))
        return e * (rows * (arange < k).to(e.dtype))

    # -- hooks -----------------------------------------------------------------------------------
    def regularization_loss(self) -> torch.Tensor | None:
        if self.dim is not None or not self.training or self.config.threshold_weight == 0:
            return None
        return self.config.threshold_weight * torch.exp(-self.threshold).sum()

    def on_stage_start(self, stage: Stage) -> None:
        if stage.name in ("search", "retrain") and self.dim is None:
            self.search()
        self.narrow = stage.name == "search"

    @torch.no_grad()
    def search(self) -> int:
        """Prune the rows below the threshold for good and choose the dim that fits the budget."""
        w = self.embedding.weight
        for start in range(0, self.num_embeddings, BLOCK_ROWS):
            block = w[start:start + BLOCK_ROWS]
            self.row_mask[start:start + block.shape[0]] = (self._norm_margin(block) > 0).to(torch.uint8)
        n = self.num_embeddings
        k = choose_dim(n, self.embedding_dim, self.kept_rows, self.budget_bytes(), w.element_size(),
                       DTYPE_BYTES[remap_dtype(n)])
        self.chosen_dim.fill_(k)
        return k

    @torch.no_grad()
    def export(self) -> CompactTable:
        """The serving form: kept rows × chosen dim + remap, or ``n × k`` (the search runs first if needed)."""
        k = self.dim or self.search()
        n, d = self.num_embeddings, self.embedding_dim
        w = self.embedding.weight.detach()
        kept = self.row_mask.bool()
        count = int(kept.sum())
        b = w.element_size()
        rdt = remap_dtype(n)
        if count >= n or n * k * b <= (count + 1) * k * b + n * DTYPE_BYTES[rdt]:
            dense = w[:, :k] * self.row_mask.to(w.dtype).unsqueeze(1)
            return CompactTable(n, d, dense.contiguous()).eval()
        rows = kept.nonzero().squeeze(1)
        remap = torch.full((n,), count, dtype=torch_dtype(rdt), device=w.device)  # pruned -> the zero row
        remap[rows] = torch.arange(count, dtype=remap.dtype, device=w.device)
        compact = torch.zeros(count + 1, k, dtype=w.dtype, device=w.device)
        compact[:count] = w[:, :k].index_select(0, rows)
        return CompactTable(n, d, compact, remap=remap).eval()


@register_method
@dataclass(frozen=True, kw_only=True)
class OptembedConfig(MethodConfig):
    """OptEmbed with a serving budget: thresholded row pruning, a budget-fitting dim, then retrain.

    Args:
        budget_ratio: the field's serving budget as a fraction of its full table (the size
            knob, at least 1/d): ``E = floor(budget_ratio·n·d)`` weight elements, of which the
            remap takes ``n·r/b``.
        threshold_weight: weight of the regulariser ``exp(−t)`` that pushes the row threshold up
            (0 = no push; rows are pruned only where the task gradient lowers their norm).
        threshold_init: initial threshold t, in units of a fresh row's mean L1 norm (0 = no row
            pruned at first).

    Example:
        >>> OptembedConfig(budget_ratio=0.25).memory(TableSpec("c", 1000, 16)).serve_bytes
        16000
    """

    name: ClassVar[str] = "optembed"
    module_class: ClassVar[type[CompressedEmbedding]] = OptembedEmbedding
    #: export() reproduces the evaluation output exactly.
    export_tolerance: ClassVar[float] = 0.0
    tags: ClassVar[MethodTags] = MethodTags(
        category="dimension reduction", compresses_training=False, layout="per_field", multi_stage=True,
        serve_differs_from_train=True, data_dependent_memory=True,
        reference="Lyu et al., OptEmbed: Learning Optimal Embedding Table for CTR Prediction, CIKM 2022, "
                  "arXiv:2208.04482",
    )
    stages: ClassVar[tuple[Stage, ...]] = (
        Stage("supernet", 0.5, "full table, learned row threshold, random per-lookup dims"),
        Stage("search", 0.1, "rows below the threshold pruned, budget-fitting dim chosen; supernet narrowed to it"),
        Stage("retrain", 0.4, "pruned rows and the chosen dim fixed"),
    )
    size_knob: ClassVar[str | None] = "budget_ratio"

    budget_ratio: float = field(default=0.25, metadata={"constraint": Interval(float, 0.0, 1.0, "right")})
    threshold_weight: float = field(default=1e-3, metadata={"constraint": Interval(float, 0.0, None)})
    threshold_init: float = field(default=0.0, metadata={"constraint": Interval(float, -100.0, 100.0)})

    def budget_elements(self, table: TableSpec) -> int:
        """``E = floor(budget_ratio·n·d)`` (exact for a ratio ``k / (n·d)``)."""
        return ratio_floor(self.budget_ratio, table.full_elements)

    def serve_budget_bytes(self, table: TableSpec, weight_bytes: int) -> int:
        """``(E − n)·b + n·r``: the declared serving form's bytes."""
        n = table.num_embeddings
        return (self.budget_elements(table) - n) * weight_bytes + n * DTYPE_BYTES[remap_dtype(n)]

    @classmethod
    def search_space(cls, table: TableSpec) -> dict[str, Any]:
        return {
            "budget_ratio": FloatDistribution(1.0 / table.embedding_dim, 1.0, log=True),
            "threshold_weight": FloatDistribution(1e-5, 1e-1, log=True),
        }

    @classmethod
    def example_configs(cls, table: TableSpec) -> list[OptembedConfig]:
        return [
            cls(budget_ratio=0.25),
            cls(budget_ratio=1.0 / table.embedding_dim, threshold_init=1.5),
            cls(budget_ratio=0.6, threshold_weight=0.0),
        ]

    def check_feasible(self, table: TableSpec) -> str | None:
        if self.budget_elements(table) < table.num_embeddings:
            return (f"budget_ratio={self.budget_ratio} is below 1/embedding_dim = 1/{table.embedding_dim} "
                    "(one weight per row plus the remap)")
        return None

    def tensor_specs(self, table: TableSpec) -> list[TensorSpec]:
        n, d = table.num_embeddings, table.embedding_dim
        return [
            TensorSpec("embedding.weight", (n, d)),
            TensorSpec("threshold", (1,)),
            TensorSpec("row_mask", (n,), "uint8", trainable=False, serve=False),
            TensorSpec("chosen_dim", (), "int64", trainable=False, serve=False),
        ]

    def serve_specs(self, table: TableSpec) -> list[TensorSpec] | None:
        n = table.num_embeddings
        return [TensorSpec("weight", (max(0, self.budget_elements(table) - n),), trainable=False),
                TensorSpec("remap", (n,), remap_dtype(n), trainable=False)]

    @classmethod
    def knob_bounds(cls, table: TableSpec, **fixed: Any) -> tuple[float, float]:
        return 1.0 / table.embedding_dim, 1.0

    @classmethod
    def from_budget(
        cls,
        table: TableSpec,
        budget_bytes: float,
        *,
        scope: str = "serve",
        weight_dtype: str = "fp32",
        optimizer: str = "adam",
        **fixed: Any,
    ) -> OptembedConfig | None:
        """Serving scope: the most weight elements E that fit, in closed form; else bisection."""
        fixed = {k: v for k, v in fixed.items() if k != "budget_ratio"}
        kw: dict[str, Any] = {"scope": scope, "weight_dtype": weight_dtype, "optimizer": optimizer}
        if scope != "serve":
            return super().from_budget(table, budget_bytes, **kw, **fixed)
        n, full = table.num_embeddings, table.full_elements
        b, r = DTYPE_BYTES[weight_dtype], DTYPE_BYTES[remap_dtype(n)]
        room = budget_bytes - n * r
        if room < 0:
            return None
        elements = n + int(min(full - n, room // b))
        while elements >= n:
            try:
                cfg = cls(budget_ratio=elements / full, **fixed)
            except InvalidConfigError:
                return None
            if cfg.check_feasible(table) is None and \
                    cfg.memory(table, weight_dtype=weight_dtype, optimizer=optimizer).serve_bytes <= budget_bytes:
                return cfg
            elements -= 1  # float noise guard; never expected
        return None
