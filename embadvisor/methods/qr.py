"""Quotient-remainder (compositional) embedding: two small tables whose rows are combined.

Id ``x`` is split exactly, in int64 arithmetic, into ``q = x // k`` and ``r = x % k`` (``k`` =
``num_collisions``). A quotient table of ``ceil(n/k)`` rows and a remainder table of ``k`` rows
are looked up and combined element-wise (``mult``, the paper's default, or ``add``) or
concatenated (``concat``, widths ``d_q = d - d // 2`` and ``d_r = d // 2``). Every id in
``[0, n)`` gets a distinct ``(q, r)`` pair, so no two ids share the whole vector, unlike hashing.
Both tables are ``nn.Embedding(..., sparse=True)``, each read once per distinct row of the batch
(one gather, then an index), so their sparse gradients hold one entry per distinct row.

Initialisation (a deliberate deviation from DLRM's ``QREmbeddingBag``, whose ``uniform_(w, b)``
call draws from the one-sided ``[b, 1]`` and makes the products biased): both tables are drawn
symmetric around zero so that the combined vector has the variance of the full table's
``U(-b, b)``, ``b = sqrt(1/n)``: ``mult`` draws both from ``U(-a, a)`` with ``a = (3 b^2)^(1/4)``
(product variance ``a^4/9 = b^2/3``), ``add`` both from ``U(-b/sqrt(2), b/sqrt(2))`` and
``concat`` both from ``U(-b, b)``.

Memory:
    ``mult`` / ``add``: ``(ceil(n/k) + k)·d`` weights; ``concat``: ``ceil(n/k)·d_q + k·d_r``.
    The smallest size is reached near ``k = sqrt(n)``, about ``2·sqrt(n)·d``. Training adds the
    optimizer state of the two tables; both have sparse (row-wise) gradients.

References:
    Shi, Mudigere, Naumov, Yang, "Compositional Embeddings Using Complementary Partitions for
    Memory-Efficient Recommendation Systems", KDD 2020, arXiv:1909.02107.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from optuna.distributions import CategoricalDistribution, IntDistribution
from torch import nn

from embadvisor import kernels
from embadvisor._constraints import Interval, Options
from embadvisor.methods._base import CompressedEmbedding, MethodConfig, MethodTags, TensorSpec
from embadvisor.methods._hashing import split_ids
from embadvisor.methods._registry import register_method
from embadvisor.methods.full import init_bound
from embadvisor.profiles.schema import TableSpec

__all__ = ["QRConfig", "QREmbedding", "qr_widths"]

OPERATIONS = ("mult", "add", "concat")


def qr_widths(operation: str, d: int) -> tuple[int, int]:
    """Widths ``(d_q, d_r)`` of the quotient and remainder tables."""
    if operation == "concat":
        return d - d // 2, d // 2
    return d, d


class QREmbedding(CompressedEmbedding):
    """Quotient and remainder tables; ids ``[*S]`` -> ``[*S, d]``."""

    def __init__(self, config: QRConfig, table: TableSpec, *, device: Any = None, dtype: Any = None) -> None:
        super().__init__(config, table, device=device, dtype=dtype)
        k = config.num_collisions
        d_q, d_r = qr_widths(config.operation, table.embedding_dim)
        self.num_collisions = k
        self.operation = config.operation
        self.quotient = nn.Embedding(-(-table.num_embeddings // k), d_q, sparse=True, **self._factory)
        self.remainder = nn.Embedding(k, d_r, sparse=True, **self._factory)
        if self.quotient.weight.device.type != "meta":
            b = init_bound(table)
            a = {"mult": (3.0 * b * b) ** 0.25, "add": b / math.sqrt(2.0), "concat": b}[config.operation]
            nn.init.uniform_(self.quotient.weight, -a, a)
            nn.init.uniform_(self.remainder.weight, -a, a)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        q, r = split_ids(ids.reshape(-1), self.num_collisions)
        eq, er = self._rows(self.quotient, q), self._rows(self.remainder, r)
        if self.operation == "mult":
            out = eq * er
        elif self.operation == "add":
            out = eq + er
        else:
            out = torch.cat([eq, er], dim=-1)
        return out.view(*ids.shape, self.embedding_dim)

    def field_kernel(self) -> kernels.FieldKernel | None:
        kind = {"mult": kernels.QR_MULT, "add": kernels.QR_ADD}.get(self.operation)
        if kind is None:  # concat: quotient and remainder rows are half rows each
            return None
        return kernels.FieldKernel(kind, self.quotient.weight, self.num_embeddings, aux=self.remainder.weight,
                                   k=self.num_collisions)

    @staticmethod
    def _rows(table: nn.Embedding, idx: torch.Tensor) -> torch.Tensor:
        """``table(idx)`` with one gather per distinct row: the sparse gradient then has one entry
        per distinct row instead of one per lookup (the sparse optimizer's coalesce is the cost).
        Without autograd (serving, evaluation) the sort would buy nothing: a plain gather."""
        if not (torch.is_grad_enabled() and table.weight.requires_grad):
            return kernels.embedding(idx, table.weight)
        uniq, inv = torch.unique(idx, return_inverse=True)
        return table(uniq).index_select(0, inv)


@register_method
@dataclass(frozen=True, kw_only=True)
class QRConfig(MethodConfig):
    """Quotient-remainder compositional embedding.

    Args:
        num_collisions: ``k``, the remainder table's rows; ids sharing ``x // k`` share the
            quotient row. The size knob: memory shrinks as ``k`` grows up to about ``sqrt(n)``.
        operation: how the two rows are combined: ``"mult"`` (element-wise product, the paper's
            default), ``"add"`` (sum) or ``"concat"`` (``d - d//2`` quotient + ``d//2`` remainder
            columns).

    Example:
        >>> from embadvisor.profiles.schema import TableSpec
        >>> QRConfig(num_collisions=100).memory(TableSpec("c", 10**6, 16)).serve_bytes  # (10000 + 100) * 16 * 4
        646400
    """

    name: ClassVar[str] = "qr"
    module_class: ClassVar[type[CompressedEmbedding]] = QREmbedding
    tags: ClassVar[MethodTags] = MethodTags(
        category="inter-feature static", compresses_training=True, layout="per_field",
        reference="Shi et al., Compositional Embeddings Using Complementary Partitions, KDD 2020, arXiv:1909.02107",
    )
    size_knob: ClassVar[str | None] = "num_collisions"
    knob_increasing: ClassVar[bool] = False

    num_collisions: int = field(default=4, metadata={"constraint": Interval(int, 2, None)})
    operation: str = field(default="mult", metadata={"constraint": Options(OPERATIONS)})

    @classmethod
    def search_space(cls, table: TableSpec) -> dict[str, Any]:
        lo, hi = cls.knob_bounds(table)
        return {
            "num_collisions": IntDistribution(int(lo), int(hi), log=True),
            "operation": CategoricalDistribution(list(OPERATIONS)),
        }

    @classmethod
    def example_configs(cls, table: TableSpec) -> list[QRConfig]:
        k = max(2, min(table.num_embeddings, 8))
        return [cls(num_collisions=k, operation=op) for op in OPERATIONS]

    @classmethod
    def knob_bounds(cls, table: TableSpec, **fixed: Any) -> tuple[float, float]:
        return 2, max(2, math.isqrt(table.num_embeddings - 1) + 1)  # 2 .. ceil(sqrt(n))

    def check_feasible(self, table: TableSpec) -> str | None:
        if self.num_collisions > table.num_embeddings:
            return (f"num_collisions={self.num_collisions} exceeds the table's {table.num_embeddings} ids "
                    "(the remainder table would be larger than the ids it serves)")
        return None

    def tensor_specs(self, table: TableSpec) -> list[TensorSpec]:
        d_q, d_r = qr_widths(self.operation, table.embedding_dim)
        return [
            TensorSpec("quotient.weight", (-(-table.num_embeddings // self.num_collisions), d_q)),
            TensorSpec("remainder.weight", (self.num_collisions, d_r)),
        ]
