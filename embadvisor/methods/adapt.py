"""AdaptEmb (DeepRec-style adaptive embedding): hot ids get their own rows, cold ids share rows.

The most frequent ``hot_fraction`` of a field's ids (by training counts) get exclusive rows; all
other ids share ``num_cold_rows`` rows: the k-th cold id in frequency order goes to shared row
``k mod num_cold_rows`` (as the benchmark does; this spreads the most frequent cold ids over
different rows and balances the load). A per-id ``int32`` remap array, built by
``prepare(counts)``, sends each id to its row in one combined table of
``n_hot + num_cold_rows`` rows. Without counts, ids are assumed to be numbered in frequency
order (id 0 most frequent), as the project's readers number them.

Deviation from the benchmark: the remap array (n int32, 1/d of the full table in fp32) is counted
in the memory. Budget solving: the benchmark fixes ``top_percent`` (0.1) and so cannot go below
it; here, unless ``hot_fraction`` is fixed by the caller, ``from_budget`` gives the hot ids at most
half of the affordable rows (capped at 10% of the ids) and the rest to the shared rows — as the
benchmark's README says, "for different memory budgets, we use different top percent".

Memory:
    ``(n_hot + num_cold_rows)·d`` weights + ``n`` int32 remap entries (buffer), where
    ``n_hot = round(hot_fraction · n)``.

References:
    DeepRec adaptive embedding (Alibaba, github.com/DeepRec-AI/DeepRec), as benchmarked in Zhang
    et al., "Experimental Analysis of Large-scale Learnable Vector Storage Compression",
    VLDB 2024, arXiv:2311.15578 (``--method adapt``). Not AdaEmbed (Lai et al., MLSys 2023).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from optuna.distributions import FloatDistribution, IntDistribution
from torch import nn

from embadvisor import kernels
from embadvisor._constraints import Interval
from embadvisor.methods._base import CompressedEmbedding, MethodConfig, MethodTags, TensorSpec, frequency_ranks
from embadvisor.methods._registry import register_method
from embadvisor.methods.full import init_bound
from embadvisor.profiles.schema import TableSpec

__all__ = ["AdaptConfig", "AdaptEmbedding"]

#: hot_fraction when not fixed (the benchmark's ``top_percent`` default) and its cap in ``from_budget``.
DEFAULT_HOT_FRACTION = 0.1


def num_hot(hot_fraction: float, n: int) -> int:
    """Hot ids of a table with ``n`` ids: ``round(hot_fraction · n)`` (half up), at most n."""
    return min(n, int(math.floor(hot_fraction * n + 0.5)))


class AdaptEmbedding(CompressedEmbedding):
    """Combined ``(n_hot + num_cold_rows) x d`` table behind an ``int32`` remap; ids ``[*S]`` -> ``[*S, d]``."""

    remap: torch.Tensor

    def __init__(self, config: AdaptConfig, table: TableSpec, *, device: Any = None, dtype: Any = None) -> None:
        super().__init__(config, table, device=device, dtype=dtype)
        n = table.num_embeddings
        self.num_hot = num_hot(config.hot_fraction, n)
        self.num_cold_rows = config.num_cold_rows
        self.embedding = nn.Embedding(self.num_hot + self.num_cold_rows, table.embedding_dim, sparse=True,
                                      **self._factory)
        self.register_buffer("remap", torch.empty(n, dtype=torch.int32, device=device))
        if self.remap.device.type != "meta":
            b = init_bound(table)
            nn.init.uniform_(self.embedding.weight, -b, b)
            self._set_ranks(torch.arange(n, device=self.remap.device))  # id order = frequency order

    def _set_ranks(self, rank: torch.Tensor) -> None:
        """Hot ranks -> their own row; cold ranks -> shared row ``n_hot + (rank - n_hot) mod m``."""
        h, m = self.num_hot, self.num_cold_rows
        rows = torch.where(rank < h, rank, h + torch.remainder(rank - h, m))
        self.remap.copy_(rows.to(torch.int32))

    @torch.no_grad()
    def prepare(self, frequencies: np.ndarray | None) -> None:
        """Build the remap from per-id counts (None: id order is frequency order)."""
        rank = frequency_ranks(frequencies, self.num_embeddings)
        self._set_ranks(torch.from_numpy(rank).to(self.remap.device))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if not (torch.is_grad_enabled() and self.embedding.weight.requires_grad):
            out = kernels.grouped_lookup(ids.reshape(-1, 1), [self.field_kernel()], self.embedding_dim)
            if out is not None:
                return out.view(*ids.shape, self.embedding_dim)
        return self.embedding(self.remap[ids].long())

    def field_kernel(self) -> kernels.FieldKernel | None:
        return kernels.FieldKernel(kernels.REMAP, self.embedding.weight, self.num_embeddings, aux=self.remap)


@register_method
@dataclass(frozen=True, kw_only=True)
class AdaptConfig(MethodConfig):
    """Adaptive embedding: exclusive rows for hot ids, shared rows for the rest.

    Args:
        num_cold_rows: rows shared by the cold ids (the size knob).
        hot_fraction: share of the ids (most frequent first) that get their own row.

    Example:
        >>> AdaptConfig(num_cold_rows=50, hot_fraction=0.1).memory(TableSpec("c", 1000, 16)).serve_bytes
        13600
    """

    name: ClassVar[str] = "adapt"
    module_class: ClassVar[type[CompressedEmbedding]] = AdaptEmbedding
    tags: ClassVar[MethodTags] = MethodTags(
        category="inter-feature adaptive", compresses_training=True, layout="per_field", needs_frequencies=True,
        reference="DeepRec adaptive embedding, as benchmarked in Zhang et al., VLDB 2024, arXiv:2311.15578",
    )
    size_knob: ClassVar[str | None] = "num_cold_rows"

    num_cold_rows: int = field(default=1024, metadata={"constraint": Interval(int, 1, None)})
    hot_fraction: float = field(default=DEFAULT_HOT_FRACTION, metadata={"constraint": Interval(float, 0.0, 1.0)})

    @classmethod
    def search_space(cls, table: TableSpec) -> dict[str, Any]:
        n = table.num_embeddings
        return {
            "num_cold_rows": IntDistribution(1, max(1, n), log=True),
            "hot_fraction": FloatDistribution(0.001, 0.5, log=True),
        }

    @classmethod
    def example_configs(cls, table: TableSpec) -> list[AdaptConfig]:
        n = table.num_embeddings
        return [cls(num_cold_rows=max(1, n // 10)), cls(num_cold_rows=1, hot_fraction=0.0)]

    def check_feasible(self, table: TableSpec) -> str | None:
        cold_ids = table.num_embeddings - num_hot(self.hot_fraction, table.num_embeddings)
        if self.num_cold_rows > max(1, cold_ids):
            return f"num_cold_rows={self.num_cold_rows} exceeds the {cold_ids} cold ids"
        return None

    def tensor_specs(self, table: TableSpec) -> list[TensorSpec]:
        rows = num_hot(self.hot_fraction, table.num_embeddings) + self.num_cold_rows
        return [
            TensorSpec("embedding.weight", (rows, table.embedding_dim)),
            TensorSpec("remap", (table.num_embeddings,), "int32", trainable=False),
        ]

    @classmethod
    def knob_bounds(cls, table: TableSpec, **fixed: Any) -> tuple[float, float]:
        n = table.num_embeddings
        return 1, max(1, n - num_hot(fixed.get("hot_fraction", DEFAULT_HOT_FRACTION), n))

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
    ) -> AdaptConfig | None:
        """Most cold rows that fit; unless ``hot_fraction`` is fixed, it is chosen from the budget too."""
        kw: dict[str, Any] = {"scope": scope, "weight_dtype": weight_dtype, "optimizer": optimizer}
        if "hot_fraction" in fixed:
            return super().from_budget(table, budget_bytes, **kw, **fixed)
        n = table.num_embeddings

        def cost(rows: int) -> int:
            cfg = cls(num_cold_rows=rows, hot_fraction=0.0, **fixed)
            return cfg.memory(table, weight_dtype=weight_dtype, optimizer=optimizer).bytes_for(scope)

        base = cost(1)
        if base > budget_bytes:
            return None
        per_row = cost(2) - base
        rows = 1 + int((budget_bytes - base) // per_row) if per_row > 0 else n
        hot = min(num_hot(DEFAULT_HOT_FRACTION, n), rows // 2)
        return super().from_budget(table, budget_bytes, **kw, hot_fraction=hot / n, **fixed)

    @classmethod
    def min_config(cls, table: TableSpec, **fixed: Any) -> AdaptConfig | None:
        if "hot_fraction" in fixed:
            return super().min_config(table, **fixed)
        return cls(num_cold_rows=1, hot_fraction=0.0, **fixed)
