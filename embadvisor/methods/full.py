"""Uncompressed embedding table: the reference point for memory ratios and quality.

Memory:
    n·d weights (serving and training), plus optimizer state in training. Where all fields share
    one embedding dim the tables are one global table (TorchRec's grouped tables: one gather and
    one sparse optimizer update per step instead of one per field); otherwise one table per field.
    The global table's int64 per-field offsets (8 bytes per field) are layout bookkeeping, counted
    neither in the plan nor in the measured memory, so the full tables fit a budget of exactly
    their own bytes in either layout.

References:
    Standard embedding lookup; DLRM: Naumov et al., "Deep Learning Recommendation Model for
    Personalization and Recommendation Systems", arXiv:1906.00091 (2019).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from embadvisor import kernels
from embadvisor.methods._base import CompressedEmbedding, MethodConfig, MethodTags, TensorSpec
from embadvisor.methods._registry import register_method
from embadvisor.profiles.schema import TableSpec

__all__ = ["FullConfig", "FullEmbedding"]


def init_bound(table: TableSpec | int) -> float:
    """Uniform init bound sqrt(1/n) of a table (or of ``n`` rows), the benchmark's (and DLRM's) initialisation."""
    rows = table if isinstance(table, int) else table.num_embeddings
    return math.sqrt(1.0 / rows)


class FullEmbedding(CompressedEmbedding):
    """One ``nn.Embedding(n, d)`` with sparse gradients; shapes: ids ``[*S]`` -> ``[*S, d]``."""

    def __init__(self, config: FullConfig, table: TableSpec, *, device: Any = None, dtype: Any = None) -> None:
        super().__init__(config, table, device=device, dtype=dtype)
        weight = torch.empty(table.num_embeddings, table.embedding_dim, **self._factory)  # no N(0,1) pass first
        self.embedding = nn.Embedding(table.num_embeddings, table.embedding_dim, sparse=True, _weight=weight)
        if self.embedding.weight.device.type != "meta":
            # a global table is initialised field by field, each with its own bound (as per-field tables are)
            start = 0
            with torch.no_grad():
                for rows in table.segments or (table.num_embeddings,):
                    b = init_bound(rows)
                    self.embedding.weight[start:start + rows].uniform_(-b, b)
                    start += rows

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return kernels.embed(self.embedding, ids)

    def field_kernel(self) -> kernels.FieldKernel | None:
        return kernels.FieldKernel(kernels.ROWS, self.embedding.weight, self.num_embeddings)



@register_method
@dataclass(frozen=True, kw_only=True)
class FullConfig(MethodConfig):
    """Uncompressed table (no hyperparameters).

    Args:
        (none)

    Example:
        >>> FullConfig().memory(TableSpec("c", 1000, 16)).serve_bytes
        64000
    """

    name: ClassVar[str] = "full"
    module_class: ClassVar[type[CompressedEmbedding]] = FullEmbedding
    tags: ClassVar[MethodTags] = MethodTags(
        category="baseline", compresses_training=False, layout="global",
        reference="Naumov et al., DLRM, arXiv:1906.00091 (2019)",
    )

    def tensor_specs(self, table: TableSpec) -> list[TensorSpec]:
        return [TensorSpec("embedding.weight", (table.num_embeddings, table.embedding_dim))]
