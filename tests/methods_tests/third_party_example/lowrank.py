"""A low-rank factorised table, written as a third-party method would be: ``E = U·Vᵀ``.

``U [n, r]`` holds one r-dimensional row per id and ``V [d, r]`` projects it to the embedding
width. The module does not live in ``embadvisor/methods`` and is not registered: the contract
suite takes the config class directly.

Memory:
    ``n·r + d·r`` weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from optuna.distributions import IntDistribution
from torch import nn

from embadvisor.methods import CompressedEmbedding, Interval, MethodConfig, MethodTags, TensorSpec
from embadvisor.profiles.schema import TableSpec


class LowRankEmbedding(CompressedEmbedding):
    """``rows(ids) @ proj.weight.T``; ids ``[*S]`` -> ``[*S, d]``."""

    def __init__(self, config: LowRankConfig, table: TableSpec, *, device: Any = None, dtype: Any = None) -> None:
        super().__init__(config, table, device=device, dtype=dtype)
        self.rows = nn.Embedding(table.num_embeddings, config.rank, sparse=True, **self._factory)
        self.proj = nn.Linear(config.rank, table.embedding_dim, bias=False, **self._factory)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.proj(self.rows(ids))


@dataclass(frozen=True, kw_only=True)
class LowRankConfig(MethodConfig):
    """Low-rank factorised table.

    Args:
        rank: the inner dimension r (the size knob).

    Example:
        >>> LowRankConfig(rank=4).memory(TableSpec("c", 1000, 16)).serve_bytes
        16256
    """

    name: ClassVar[str] = "low_rank"
    module_class: ClassVar[type[CompressedEmbedding]] = LowRankEmbedding
    tags: ClassVar[MethodTags] = MethodTags(
        category="dimension reduction", compresses_training=True, reference="(a test example)")
    size_knob: ClassVar[str | None] = "rank"

    rank: int = field(default=4, metadata={"constraint": Interval(int, 1, None)})

    @classmethod
    def search_space(cls, table: TableSpec) -> dict[str, Any]:
        return {"rank": IntDistribution(1, table.embedding_dim)}

    @classmethod
    def example_configs(cls, table: TableSpec) -> list[LowRankConfig]:
        return [cls(rank=1), cls(rank=4)]

    @classmethod
    def knob_bounds(cls, table: TableSpec, **fixed: Any) -> tuple[float, float]:
        return 1, table.embedding_dim

    def tensor_specs(self, table: TableSpec) -> list[TensorSpec]:
        return [
            TensorSpec("rows.weight", (table.num_embeddings, self.rank)),
            TensorSpec("proj.weight", (table.embedding_dim, self.rank)),
        ]
