"""Mixed-dimension embeddings (MDE): each field gets its own reduced dim, projected up to d.

A field with ``n_i`` ids gets an ``n_i x d_i`` table and, when ``d_i < d``, a learned ``d_i x d``
projection (bias-free), so every field still returns d-wide vectors. Across a workload the dims
follow MDE's power law on the field sizes (the popularity of a field's rows ~ 1/n_i):
``d_i = λ · n_i^(−α)`` with ``λ = d · n_min^α`` (the smallest field keeps the full d), rounded,
floored at 1 and, with ``round_pow2`` (default, as the benchmark's ``round_dim``), rounded to a
power of two (never above d). ``plan_tables`` finds α in [0, 1] by bisection so that the total
fits the budget; fields whose dim stays d (or whose reduced form would not be smaller) stay full.
Extension beyond the benchmark: when even α = 1 does not fit, λ itself is lowered (the smallest
fields then lose dimensions too), down to every field at dim 1 (the floor, about 1/d of full).

Memory:
    per field ``n·dim`` weights, plus ``dim·d`` projection weights when ``dim < d``; a field at
    ``dim = d`` is exactly the full table (no projection).

References:
    Ginart et al., "Mixed Dimension Embeddings with Application to Memory-Efficient Recommendation
    Systems", ISIT 2021, arXiv:1909.11810 (DLRM's ``md_solver`` / ``PrEmbeddingBag``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from optuna.distributions import IntDistribution
from torch import nn

from embadvisor import kernels
from embadvisor._constraints import Interval, Options
from embadvisor.errors import InvalidConfigError
from embadvisor.methods._base import CompressedEmbedding, MethodConfig, MethodTags, TensorSpec
from embadvisor.methods._registry import register_method
from embadvisor.methods.full import init_bound
from embadvisor.profiles.schema import TableSpec

__all__ = ["MdeConfig", "MdeEmbedding", "PowerLawFit", "fit_power_law", "power_law_dims"]


class MdeEmbedding(CompressedEmbedding):
    """``n x dim`` table (sparse grads) + ``dim -> d`` projection; ids ``[*S]`` -> ``[*S, d]``."""

    projection: nn.Linear | None

    def __init__(self, config: MdeConfig, table: TableSpec, *, device: Any = None, dtype: Any = None) -> None:
        super().__init__(config, table, device=device, dtype=dtype)
        n, d, dim = table.num_embeddings, table.embedding_dim, config.dim
        self.embedding = nn.Embedding(n, dim, sparse=True, **self._factory)
        if dim < d:
            self.projection = nn.Linear(dim, d, bias=False, **self._factory)
        else:
            self.register_module("projection", None)
        if self.embedding.weight.device.type != "meta":
            b = init_bound(table)
            nn.init.uniform_(self.embedding.weight, -b, b)
            if self.projection is not None:
                nn.init.xavier_uniform_(self.projection.weight)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = kernels.embed(self.embedding, ids)
        return self.projection(out) if self.projection is not None else out

    def field_kernel(self) -> kernels.FieldKernel | None:
        if self.projection is None:
            return kernels.FieldKernel(kernels.ROWS, self.embedding.weight, self.num_embeddings)
        return kernels.FieldKernel(kernels.PROJECTED, self.embedding.weight, self.num_embeddings,
                                   aux=self.projection.weight)


@register_method
@dataclass(frozen=True, kw_only=True)
class MdeConfig(MethodConfig):
    """Mixed-dimension embedding of one field.

    Args:
        dim: the field's reduced dim (the size knob), 1..d; ``dim = d`` is the full table.
        round_pow2: the budget solvers (``from_budget``, ``plan_tables``) pick power-of-two dims,
            as the benchmark does; ``dim`` itself may be any value.

    Example:
        >>> MdeConfig(dim=4).memory(TableSpec("c", 1000, 16)).serve_bytes
        16256
    """

    name: ClassVar[str] = "mde"
    module_class: ClassVar[type[CompressedEmbedding]] = MdeEmbedding
    tags: ClassVar[MethodTags] = MethodTags(
        category="dimension reduction", compresses_training=True, layout="per_field",
        reference="Ginart et al., Mixed Dimension Embeddings, ISIT 2021, arXiv:1909.11810",
    )
    size_knob: ClassVar[str | None] = "dim"

    dim: int = field(default=4, metadata={"constraint": Interval(int, 1, None)})
    round_pow2: bool = field(default=True, metadata={"constraint": Options({True, False})})

    @classmethod
    def search_space(cls, table: TableSpec) -> dict[str, Any]:
        return {"dim": IntDistribution(1, table.embedding_dim)}

    @classmethod
    def example_configs(cls, table: TableSpec) -> list[MdeConfig]:
        d = table.embedding_dim
        return [cls(dim=max(1, d // 4)), cls(dim=d), cls(dim=max(1, d - 3), round_pow2=False)]

    def check_feasible(self, table: TableSpec) -> str | None:
        if self.dim > table.embedding_dim:
            return f"dim={self.dim} exceeds the table's embedding_dim={table.embedding_dim}"
        return None

    def tensor_specs(self, table: TableSpec) -> list[TensorSpec]:
        specs = [TensorSpec("embedding.weight", (table.num_embeddings, self.dim))]
        if self.dim < table.embedding_dim:
            specs.append(TensorSpec("projection.weight", (table.embedding_dim, self.dim)))
        return specs

    @classmethod
    def knob_bounds(cls, table: TableSpec, **fixed: Any) -> tuple[float, float]:
        return 1, table.embedding_dim

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
    ) -> MdeConfig | None:
        """The largest dim that fits (a power of two or d itself when ``round_pow2``)."""
        fixed = {k: v for k, v in fixed.items() if k != "dim"}
        for dim in _candidate_dims(table.embedding_dim, bool(fixed.get("round_pow2", True))):
            cfg = cls(dim=dim, **fixed)
            if cfg.memory(table, weight_dtype=weight_dtype, optimizer=optimizer).bytes_for(scope) <= budget_bytes:
                return cfg
        return None

    @classmethod
    def plan_tables(
        cls,
        tables: Sequence[TableSpec],
        budget_bytes: float,
        *,
        scope: str = "serve",
        weight_dtype: str = "fp32",
        optimizer: str = "adam",
        **fixed: Any,
    ) -> list[MethodConfig | None] | None:
        """MDE's power-law dims across the fields (α by bisection); None per field kept full."""
        unknown = sorted(set(fixed) - {"round_pow2"})
        if unknown:
            raise InvalidConfigError(
                f"`fixed` may only hold 'round_pow2' for mde's workload plan, but got fixed keys={unknown}."
            )
        fit = fit_power_law(tables, budget_bytes, scope=scope, weight_dtype=weight_dtype, optimizer=optimizer,
                            round_pow2=bool(fixed.get("round_pow2", True)))
        return None if fit is None else list(fit.configs)


def _candidate_dims(d: int, round_pow2: bool) -> list[int]:
    """Dims from largest to smallest: d, then the powers of two below d (or every dim)."""
    if not round_pow2:
        return list(range(d, 0, -1))
    return [d] + [2**k for k in range(int(math.log2(d)), -1, -1) if 2**k < d]


def power_law_dims(sizes: Sequence[int], d: int, alpha: float, *, scale: float = 1.0,
                   round_pow2: bool = True) -> list[int]:
    """MDE dims ``d_i = scale · d · (n_min / n_i)^α``: rounded, floored at 1, optionally a power of two, at most d.

    With ``scale = 1`` this is DLRM's ``md_solver`` with ``d0 = d`` (λ = d · n_min^α).
    """
    n_min = min(sizes)
    dims = []
    for n in sizes:
        x = max(1, round(scale * d * (n_min / n) ** alpha))
        if round_pow2:
            x = 2 ** round(math.log2(x))
        dims.append(int(min(d, x)))
    return dims


@dataclass(frozen=True)
class PowerLawFit:
    """Result of :func:`fit_power_law`: exponent, λ multiplier, dims and per-field configs (None = full)."""

    alpha: float
    scale: float
    dims: tuple[int, ...]
    configs: tuple[MdeConfig | None, ...]
    bytes: int


def fit_power_law(
    tables: Sequence[TableSpec],
    budget_bytes: float,
    *,
    scope: str = "serve",
    weight_dtype: str = "fp32",
    optimizer: str = "adam",
    round_pow2: bool = True,
) -> PowerLawFit | None:
    """The smallest α in [0, 1] whose power-law dims fit ``budget_bytes`` (then the largest λ multiplier at α = 1).

    Returns None when even every field at dim 1 does not fit.
    """
    dims_set = {t.embedding_dim for t in tables}
    if len(dims_set) != 1:
        raise InvalidConfigError(
            f"`embedding_dim` must be the same for all fields (mde's power law), but got embedding_dim={sorted(dims_set)}."
        )
    d = dims_set.pop()
    sizes = [t.num_embeddings for t in tables]
    full = [MdeConfig(dim=d).memory(t, weight_dtype=weight_dtype, optimizer=optimizer).bytes_for(scope)
            for t in tables]
    cache: dict[tuple[int, int], int] = {}

    def field_cost(i: int, dim: int) -> int:
        if (i, dim) not in cache:
            cfg = MdeConfig(dim=dim, round_pow2=round_pow2)
            cache[i, dim] = cfg.memory(tables[i], weight_dtype=weight_dtype, optimizer=optimizer).bytes_for(scope)
        return cache[i, dim]

    def evaluate(alpha: float, scale: float) -> tuple[int, list[int], list[MdeConfig | None]]:
        dims = power_law_dims(sizes, d, alpha, scale=scale, round_pow2=round_pow2)
        total = 0
        configs: list[MdeConfig | None] = []
        for i, dim in enumerate(dims):
            cost = field_cost(i, dim)
            if dim >= d or cost >= full[i]:
                configs.append(None)
                total += full[i]
            else:
                configs.append(MdeConfig(dim=dim, round_pow2=round_pow2))
                total += cost
        return total, dims, configs

    def result(alpha: float, scale: float) -> PowerLawFit:
        total, dims, configs = evaluate(alpha, scale)
        return PowerLawFit(alpha, scale, tuple(dims), tuple(configs), total)

    if evaluate(0.0, 1.0)[0] <= budget_bytes:
        return result(0.0, 1.0)
    if evaluate(1.0, 1.0)[0] <= budget_bytes:
        lo, hi = 0.0, 1.0  # lo infeasible, hi feasible; memory is non-increasing in alpha
        while hi - lo > 1e-9:
            mid = (lo + hi) / 2
            if evaluate(mid, 1.0)[0] <= budget_bytes:
                hi = mid
            else:
                lo = mid
        return result(hi, 1.0)
    if evaluate(1.0, 0.0)[0] > budget_bytes:
        return None
    lo, hi = 0.0, 1.0  # scale: lo feasible, hi infeasible; memory is non-decreasing in the scale
    while hi - lo > 1e-9:
        mid = (lo + hi) / 2
        if evaluate(1.0, mid)[0] <= budget_bytes:
            lo = mid
        else:
            hi = mid
    return result(1.0, lo)
