"""PEP: learnable soft thresholds prune the embedding table, then a lottery-ticket retrain.

Each stored value ``v`` is used as ``sign(v)·relu(|v| − sigmoid(s))`` with a learnable threshold
``s`` (initialised very negative, so nothing is pruned at first). The granularity of ``s`` is a
choice: one per entry (``"feature_dimension"``, table-sized, the paper's best and the benchmark's
default), one per row (``"feature"``, the default here: 1/d of the table, so CPU training memory
stays near that of the other pruning methods), one per dimension (``"dimension"``) or one in all
(``"global"``). Row-wise thresholds get sparse gradients, like the table.

Stages:
    ``search``: table and thresholds learn. A regulariser nudges the sparsity toward the target
    while the batch is denser than it: ``sparsity_weight · gap · mean_rows(‖pruned row‖₁)`` over
    the distinct rows looked up, with ``gap = max(0, (1 − target_density) − their sparsity)``.
    Its gradient reaches the thresholds only (the weights are detached in it): the weights learn
    the task alone, so the magnitudes the retrain ranks say what the task learned. (Applied to the
    weights, the penalty outweighed the loss gradient several times over at the default weight, and
    Adam turned that into a step of about the learning rate toward 0 at every lookup: the most
    frequent rows ended the smallest, and the mask went to rows the search hardly trained.) The
    mask buffer records the rows the search looked up; the others count as pruned (their values are
    still their initialisation, nothing learned), in the evaluation and in the retrain's ranking.
    ``retrain``: the mask keeps the ``target_nnz`` largest pruned values of the looked-up rows (or
    fewer, if the thresholds pruned more); the table is rewound to its original initialisation
    (same seed, lottery-ticket style, as in the paper) and retrained with the mask fixed: the
    forward uses ``weight ⊙ mask`` (masked gradients are 0) and masked values of the rows a step
    touched are reset to 0 after it (the optimizer's momentum could move them).

Serving: the kept values in CSR or COO (``_sparse``), exactly the evaluation output (in eval mode
the forward already applies the exact top-``target_nnz`` cut).

Deviations: the benchmark's code retrains from a fresh initialisation (new seed) and stops the
search when the pruned fraction reaches the target; here the search has its stage budget and
the target is then met by magnitude. The optimizer state is not reset between the stages (the
generic trainer owns it).

Memory:
    training: ``n·d`` weights + thresholds (``n·d``, ``n``, ``d`` or 1 by granularity) + an
    ``n·d`` uint8 mask (buffer; during the search it marks the looked-up rows), plus the optimizer
    state of weights and thresholds; serving: the sparse form at
    ``nnz = floor(target_density·n·d)``: CSR ``nnz·(4 + c) + (n + 1)·p`` or COO
    ``nnz·(4 + c + r)`` bytes, whichever is smaller (index bytes c, r, p by size, see ``_sparse``).

References:
    Liu et al., "Learnable Embedding Sizes for Recommender Systems", ICLR 2021,
    arXiv:2101.07577. Benchmarked (``pep``) in Zhang et al., "Experimental Analysis of
    Large-scale Learnable Vector Storage Compression", VLDB 2024, arXiv:2311.15578.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from optuna.distributions import CategoricalDistribution, FloatDistribution
from torch import nn

from embadvisor._constraints import Interval, Options
from embadvisor.methods._base import CompressedEmbedding, MethodTags, Stage, TensorSpec
from embadvisor.methods._registry import register_method
from embadvisor.methods._sparse import PrunedConfig, PrunedEmbedding
from embadvisor.profiles.schema import TableSpec

__all__ = ["GRANULARITIES", "PepConfig", "PepEmbedding", "threshold_shape"]

GRANULARITIES = ("feature_dimension", "feature", "dimension", "global")


def threshold_shape(granularity: str, n: int, d: int) -> tuple[int, ...]:
    """Shape of the threshold parameter: ``(n, d)``, ``(n, 1)``, ``(d,)`` or ``(1,)``."""
    return {"feature_dimension": (n, d), "feature": (n, 1), "dimension": (d,), "global": (1,)}[granularity]


def soft_threshold(w: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``sign(w)·relu(|w| − t)`` (exact IEEE operations only, so any two evaluations agree bit for bit)."""
    return torch.sign(w) * torch.relu(w.abs() - t)


class PepEmbedding(PrunedEmbedding):
    """Dense table + learnable thresholds (search), masked table (retrain); ids ``[*S]`` -> ``[*S, d]``."""

    config: PepConfig
    mask: torch.Tensor

    def __init__(self, config: PepConfig, table: TableSpec, *, device: Any = None, dtype: Any = None) -> None:
        super().__init__(config, table, device=device, dtype=dtype)
        n, d = table.num_embeddings, table.embedding_dim
        self.row_thresholds = config.granularity in ("feature_dimension", "feature")
        self.threshold = nn.Parameter(torch.empty(threshold_shape(config.granularity, n, d), **self._factory))
        self.register_buffer("mask", torch.ones(n, d, dtype=torch.uint8, device=device))
        self.retraining = False
        self._touched: list[torch.Tensor] = []
        self._batch: list[torch.Tensor] = []
        self._sig: tuple[tuple[Any, ...], torch.Tensor] | None = None
        if not self.is_meta:
            self.init_weights(self._init_generator())
            with torch.no_grad():
                self.threshold.fill_(config.threshold_init)

    def _init_generator(self) -> torch.Generator:
        return torch.Generator(device=self.embedding.weight.device).manual_seed(self.config.seed)

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [*super().sparse_parameters(), *([self.threshold] if self.row_thresholds else [])]

    # -- represented values --------------------------------------------------------------------
    def _sigmoid_all(self) -> torch.Tensor:
        """sigmoid(threshold) of the whole parameter, cached (evaluation and export use only this)."""
        key = (self.threshold.data_ptr(), self.threshold._version)
        if self._sig is None or self._sig[0] != key:
            with torch.no_grad():
                self._sig = (key, torch.sigmoid(self.threshold))
        return self._sig[1]

    def effective_rows(self, ids: torch.Tensor) -> torch.Tensor:
        if not self.training:
            w = self.embedding(ids)
            if self.retraining:
                return w * self.mask[ids]
            t = self._sigmoid_all()
            return soft_threshold(w, t[ids] if self.row_thresholds else t) * self.mask[ids]
        self._sig = None  # the evaluation cache (table-sized for per-entry thresholds)
        uniq, inverse = self.dedup(ids)
        w = self.embedding(uniq)
        if self.retraining:
            self._touched.append(uniq)
            return (w * self.mask[uniq])[inverse]
        self.mask.index_fill_(0, uniq, 1)  # looked up by the search
        s = F.embedding(uniq, self.threshold, sparse=True) if self.row_thresholds else self.threshold
        t = torch.sigmoid(s)
        e = soft_threshold(w, t)
        self._batch.append(torch.relu(w.detach().abs() - t))  # |e|, differentiable in the thresholds only
        return e[inverse]

    def effective_block(self, start: int, stop: int) -> torch.Tensor:
        w = self.embedding.weight[start:stop]
        if self.retraining:
            return w * self.mask[start:stop]
        t = self._sigmoid_all()
        return soft_threshold(w, t[start:stop] if self.row_thresholds else t) * self.mask[start:stop]

    def mode_key(self) -> Any:
        return self.retraining

    # -- hooks ---------------------------------------------------------------------------------
    def regularization_loss(self) -> torch.Tensor | None:
        batch, self._batch = self._batch, []
        if self.retraining or not self.training or not batch or self.config.sparsity_weight == 0:
            return None
        zeros = sum(int((a == 0).sum()) for a in batch)
        total = sum(a.numel() for a in batch)
        gap = max(0.0, (1.0 - self.config.target_density) - zeros / max(1, total))
        if gap == 0.0:
            return None
        l1 = torch.stack([a.sum(-1).mean() for a in batch]).mean()  # over the distinct looked-up rows
        return self.config.sparsity_weight * gap * l1

    def on_stage_start(self, stage: Stage) -> None:
        self._batch, self._touched = [], []
        if stage.name == "retrain" and not self.retraining:
            self.start_retrain()
        elif stage.name == "search":
            self.retraining = False
            self.mask.zero_()  # from now on: the rows the search looked up

    @torch.no_grad()
    def start_retrain(self) -> None:
        """Fix the mask (top-``target_nnz`` pruned values of the rows the search looked up) and rewind the
        table to its initialisation."""
        cut = self.cut_for(self.target_nnz)
        d = self.embedding_dim
        for start, block in self.blocks():
            flat = (torch.arange(block.shape[0], device=block.device) + start).unsqueeze(1) * d + torch.arange(
                d, device=block.device)
            self.mask[start:start + block.shape[0]] = cut.keep(block, flat).to(torch.uint8)
        self.init_weights(self._init_generator())
        self.embedding.weight.mul_(self.mask)
        self.retraining = True
        self._sig = None

    @torch.no_grad()
    def on_step(self, step: int) -> None:
        touched, self._touched = self._touched, []
        self._batch = []
        if self.retraining and touched:
            rows = touched[0] if len(touched) == 1 else torch.unique(torch.cat(touched))
            w = self.embedding.weight
            w.index_copy_(0, rows, w.index_select(0, rows) * self.mask.index_select(0, rows))


@register_method
@dataclass(frozen=True, kw_only=True)
class PepConfig(PrunedConfig):
    """PEP: learnable soft thresholds, then a retrain with the mask fixed.

    Args:
        target_density: kept fraction of the ``n·d`` entries when served (the size knob).
        granularity: thresholds per entry (``"feature_dimension"``, table-sized), per row
            (``"feature"``, default), per dimension (``"dimension"``) or one (``"global"``).
        threshold_init: initial ``s`` (sigmoid(−15) ≈ 3e-7: nothing pruned at first).
        sparsity_weight: weight of the regulariser that nudges the thresholds toward the target
            sparsity (0 = the paper's plain thresholds); it does not act on the weights.
        seed: seed of the initialisation, reused to rewind the table for the retrain.

    Example:
        >>> PepConfig(target_density=0.25).memory(TableSpec("c", 1000, 16)).serve_bytes
        26002
    """

    name: ClassVar[str] = "pep"
    module_class: ClassVar[type[CompressedEmbedding]] = PepEmbedding
    tags: ClassVar[MethodTags] = MethodTags(
        category="pruning", compresses_training=False, layout="global", multi_stage=True,
        serve_differs_from_train=True, data_dependent_memory=True,
        reference="Liu et al., Learnable Embedding Sizes for Recommender Systems (PEP), ICLR 2021, arXiv:2101.07577",
    )
    stages: ClassVar[tuple[Stage, ...]] = (
        Stage("search", 0.5, "table and soft thresholds learn; the regulariser nudges toward the target"),
        Stage("retrain", 0.5, "mask fixed at the target, table rewound to its initialisation and retrained"),
    )

    granularity: str = field(default="feature", metadata={"constraint": Options(GRANULARITIES)})
    threshold_init: float = field(default=-15.0, metadata={"constraint": Interval(float, -200.0, 0.0)})
    sparsity_weight: float = field(default=1.0, metadata={"constraint": Interval(float, 0.0, None)})
    seed: int = field(default=0, metadata={"constraint": Interval(int, 0, 2**31 - 1)})

    @classmethod
    def search_space(cls, table: TableSpec) -> dict[str, Any]:
        return super().search_space(table) | {
            "granularity": CategoricalDistribution(["feature", "dimension", "global"]),
            "sparsity_weight": FloatDistribution(0.01, 10.0, log=True),
        }

    @classmethod
    def example_configs(cls, table: TableSpec) -> list[PepConfig]:
        return [
            cls(target_density=0.3),
            cls(target_density=0.03, granularity="feature_dimension"),
            cls(target_density=0.1, granularity="dimension", seed=3),
            cls(target_density=0.5, granularity="global", sparsity_weight=0.0, threshold_init=-3.0),
        ]

    def tensor_specs(self, table: TableSpec) -> list[TensorSpec]:
        n, d = table.num_embeddings, table.embedding_dim
        return [
            TensorSpec("embedding.weight", (n, d)),
            TensorSpec("threshold", threshold_shape(self.granularity, n, d)),
            TensorSpec("mask", (n, d), "uint8", trainable=False, serve=False),
        ]
