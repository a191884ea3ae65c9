"""Hashing trick: ids are hashed into m shared rows; colliding ids share a vector.

With ``num_hashes = k > 1`` each id sums the rows of k independent hashes (double hashing), which
makes full collisions between two ids far rarer for the same memory.

Memory:
    m·d weights + k int64 hash seeds (buffer). Independent of n.

References:
    Weinberger et al., "Feature Hashing for Large Scale Multitask Learning", ICML 2009,
    arXiv:0902.2206. Multi-hash variant: Zhang et al., "Model Size Reduction Using Frequency
    Based Double Hashing for Recommender Systems", RecSys 2020, arXiv:2007.14523.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from optuna.distributions import IntDistribution
from torch import nn

from embadvisor import kernels
from embadvisor._constraints import Interval
from embadvisor.methods._base import CompressedEmbedding, MethodConfig, MethodTags, TensorSpec
from embadvisor.methods._hashing import hash_ids, make_seeds
from embadvisor.methods._registry import register_method
from embadvisor.methods.full import init_bound
from embadvisor.profiles.schema import TableSpec

__all__ = ["HashConfig", "HashEmbedding"]


class HashEmbedding(CompressedEmbedding):
    """``m`` shared rows; ids ``[*S]`` -> ``[*S, d]`` (sum over ``k`` hashes)."""

    seeds: torch.Tensor

    def __init__(self, config: HashConfig, table: TableSpec, *, device: Any = None, dtype: Any = None) -> None:
        super().__init__(config, table, device=device, dtype=dtype)
        self.embedding = nn.Embedding(config.num_buckets, table.embedding_dim, sparse=True, **self._factory)
        seeds = make_seeds(config.seed, config.num_hashes)
        self.register_buffer("seeds", seeds.to(device) if device is not None else seeds)
        if self.embedding.weight.device.type != "meta":
            b = init_bound(table) / config.num_hashes
            nn.init.uniform_(self.embedding.weight, -b, b)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if not (torch.is_grad_enabled() and self.embedding.weight.requires_grad):  # serving: one fused pass
            out = kernels.hash_gather(ids, self.seeds.reshape(-1), self.embedding.weight)
            if out is not None:
                return out
        rows = hash_ids(ids, self.seeds, self.embedding.num_embeddings)  # [*S, k]
        out = self.embedding(rows)
        return out.squeeze(-2) if rows.shape[-1] == 1 else out.sum(-2)


@register_method
@dataclass(frozen=True, kw_only=True)
class HashConfig(MethodConfig):
    """Hashing trick.

    Args:
        num_buckets: shared rows m (the size knob).
        num_hashes: hashes per id k; the rows of all k are summed.
        seed: hash seed (stored as a buffer, so the same seed gives the same module).

    Example:
        >>> HashConfig(num_buckets=100).memory(TableSpec("c", 10**6, 16)).serve_bytes
        6408
    """

    name: ClassVar[str] = "hash"
    module_class: ClassVar[type[CompressedEmbedding]] = HashEmbedding
    tags: ClassVar[MethodTags] = MethodTags(
        category="inter-feature static", compresses_training=True, layout="global", hash_based=True,
        supports_unseen_ids=True, reference="Weinberger et al., Feature Hashing, ICML 2009, arXiv:0902.2206",
    )
    size_knob: ClassVar[str | None] = "num_buckets"

    num_buckets: int = field(default=1024, metadata={"constraint": Interval(int, 1, None)})
    num_hashes: int = field(default=1, metadata={"constraint": Interval(int, 1, 4)})
    seed: int = field(default=0, metadata={"constraint": Interval(int, 0, 2**31 - 1)})

    @classmethod
    def search_space(cls, table: TableSpec) -> dict[str, Any]:
        return {
            "num_buckets": IntDistribution(1, max(1, table.num_embeddings), log=True),
            "num_hashes": IntDistribution(1, 2),
        }

    @classmethod
    def example_configs(cls, table: TableSpec) -> list[HashConfig]:
        m = max(1, table.num_embeddings // 4)
        return [cls(num_buckets=m), cls(num_buckets=m, num_hashes=2, seed=7)]

    @classmethod
    def knob_bounds(cls, table: TableSpec, **fixed: Any) -> tuple[float, float]:
        return 1, table.num_embeddings

    def tensor_specs(self, table: TableSpec) -> list[TensorSpec]:
        return [
            TensorSpec("embedding.weight", (self.num_buckets, table.embedding_dim)),
            TensorSpec("seeds", (self.num_hashes,), "int64", trainable=False),
        ]
