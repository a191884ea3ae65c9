"""Budget solving for a whole workload: which config per table fits a memory budget.

The plan decides without training (torchrec's planner idea). Per-field layout: a single global
ratio r is bisected so that every compressible table gets about r of its full size (through the
method's own ``from_budget``), tables the method cannot shrink stay uncompressed (as in the
paper's benchmark), and the total fits the budget. Global layout: all fields share one table
(ids offset per field) solved once. :func:`solve` validates and dispatches to one function per
strategy: ``_solve_global``, ``_solve_workload_rule`` (a method's own ``plan_tables``) and
``_solve_per_field``.

What the bytes cover: the tables' own parameters and buffers, as the methods' ``memory`` states them.
The global layout's int64 per-field offsets (8 bytes per field, the price of grouping the fields
into one table) are layout bookkeeping, like the per-field layout's list of modules: neither the
plan nor :meth:`EmbeddingCollection.measured_memory` counts them, so the uncompressed tables fit a
budget of exactly their own size, and ``full``'s plan bytes equal ``full_bytes`` in either layout. Methods with a workload-level rule (MDE's power law)
override ``plan_tables``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from embadvisor.errors import InvalidConfigError
from embadvisor.methods._base import SCOPES, MemoryEstimate, MethodConfig
from embadvisor.methods._registry import get_method
from embadvisor.methods.full import FullConfig
from embadvisor.profiles.schema import TableSpec
from embadvisor.units import format_size

__all__ = ["Plan", "TablePlan", "merged_table", "solve"]


@dataclass(frozen=True)
class TablePlan:
    """One table of a plan: the config chosen for it and its memory."""

    table: TableSpec
    config: MethodConfig
    memory: MemoryEstimate

    @property
    def compressed(self) -> bool:
        return not isinstance(self.config, FullConfig)

    def to_dict(self, scope: str) -> dict[str, Any]:
        return {
            "table": self.table.name,
            "num_embeddings": self.table.num_embeddings,
            "embedding_dim": self.table.embedding_dim,
            "method": self.config.name,
            "params": self.config.to_dict(),
            "bytes": self.memory.bytes_for(scope),
        }


@dataclass(frozen=True)
class Plan:
    """The outcome of solving one method for a workload and a budget.

    Args:
        method: registry name.
        layout: ``"per_field"`` or ``"global"``.
        scope: what the budget covers, ``"serve"`` or ``"train"``.
        budget_bytes: the budget.
        feasible: whether a plan fits the budget.
        tables: per-field table plans, or a single plan over the merged table (global layout).
        field_tables: the workload's tables (field order, for offsets).
        memory: total memory of the plan's tables (the global layout's offsets are not counted).
        min_budget_bytes: the smallest budget any config of this method can meet.
        full_bytes: the uncompressed tables' bytes in the same scope.
        reason: why it is infeasible ("" when feasible).
    """

    method: str
    layout: str
    scope: str
    budget_bytes: int
    feasible: bool
    tables: tuple[TablePlan, ...]
    field_tables: tuple[TableSpec, ...]
    memory: MemoryEstimate
    min_budget_bytes: int
    full_bytes: int
    optimizer: str = "adam"
    reason: str = ""
    fixed: Mapping[str, Any] = field(default_factory=dict)

    @property
    def bytes(self) -> int:
        return self.memory.bytes_for(self.scope)

    @property
    def ratio(self) -> float:
        return self.bytes / max(1, self.full_bytes)

    def params(self) -> dict[str, Any]:
        """Compact settings: shared params when all compressed tables agree, else per table."""
        comp = [tp for tp in self.tables if tp.compressed]
        if not comp:
            return {}
        first = comp[0].config.to_dict()
        if all(tp.config.to_dict() == first for tp in comp):
            return first | ({"compressed_tables": len(comp)} if self.layout == "per_field" else {})
        return {tp.table.name: tp.config.to_dict() for tp in comp}

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.method,
            "feasible": self.feasible,
            "layout": self.layout,
            "scope": self.scope,
            "params": self.params(),
            "serve_bytes": self.memory.serve_bytes if self.feasible else None,
            "train_bytes": self.memory.train_bytes if self.feasible else None,
            "budget_bytes": self.budget_bytes,
            "min_budget_bytes": self.min_budget_bytes,
            "full_bytes": self.full_bytes,
            "ratio": self.ratio if self.feasible else None,
            "tables": [tp.to_dict(self.scope) for tp in self.tables] if self.feasible else [],
            "fields": [{"name": t.name, "num_embeddings": t.num_embeddings, "embedding_dim": t.embedding_dim}
                       for t in self.field_tables],
            "optimizer": self.optimizer,
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], frequencies: Mapping[str, Any] | None = None) -> Plan:
        """Rebuild a feasible plan from :meth:`to_dict` output (the exported config)."""
        try:
            scope, optimizer = data["scope"], data.get("optimizer", "adam")
            fields = [TableSpec(f["name"], int(f["num_embeddings"]), int(f["embedding_dim"]),
                                (frequencies or {}).get(f["name"])) for f in data["fields"]]
            by_name = {t.name: t for t in fields}
            tps = []
            for tp in data["tables"]:
                table = by_name.get(tp["table"]) or (
                    merged_table(fields) if data["layout"] == "global"
                    else TableSpec(tp["table"], int(tp["num_embeddings"]), int(tp["embedding_dim"])))
                cfg = get_method(tp["method"]).from_dict(tp["params"])
                tps.append(TablePlan(table, cfg, cfg.memory(table, optimizer=optimizer)))
            total = sum((tp.memory for tp in tps), MemoryEstimate())
            full = sum(FullConfig().memory(t, optimizer=optimizer).bytes_for(scope) for t in fields)
            return cls(data["name"], data["layout"], scope, int(data["budget_bytes"]), True, tuple(tps), tuple(fields),
                       total, int(data.get("min_budget_bytes", 0)), full, optimizer)
        except (KeyError, TypeError) as e:
            raise InvalidConfigError(f"the plan in this config is incomplete or malformed ({e!r}); "
                                     "re-export it with `embadvisor export`.") from None


def merged_table(tables: Sequence[TableSpec]) -> TableSpec:
    """One global table over all fields (ids offset per field)."""
    dims = {t.embedding_dim for t in tables}
    if len(dims) != 1:
        raise InvalidConfigError(
            f"the global layout needs one embedding dim for all fields, but got dims={sorted(dims)}. "
            "Use layout='per_field'."
        )
    sizes = tuple(t.num_embeddings for t in tables)
    return TableSpec("global", sum(sizes), dims.pop(), None, sizes)


def _full(table: TableSpec, weight_dtype: str, optimizer: str) -> TablePlan:
    cfg = FullConfig()
    return TablePlan(table, cfg, cfg.memory(table, weight_dtype=weight_dtype, optimizer=optimizer))


@dataclass(frozen=True)
class _Problem:
    """One :func:`solve` call: its inputs and the uncompressed tables, shared by the layout strategies."""

    cls: type[MethodConfig]
    tables: Sequence[TableSpec]
    budget_bytes: float
    scope: str
    optimizer: str
    weight_dtype: str
    threshold: int
    keep_small_share: float
    fixed: dict[str, Any]
    full_plans: list[TablePlan]

    @property
    def kw(self) -> dict[str, Any]:
        """The memory settings ``from_budget`` and ``plan_tables`` take."""
        return {"scope": self.scope, "weight_dtype": self.weight_dtype, "optimizer": self.optimizer}

    @property
    def full_bytes(self) -> int:
        return sum(tp.memory.bytes_for(self.scope) for tp in self.full_plans)

    def memory(self, cfg: MethodConfig, table: TableSpec) -> MemoryEstimate:
        return cfg.memory(table, weight_dtype=self.weight_dtype, optimizer=self.optimizer)

    def cost(self, cfg: MethodConfig, table: TableSpec) -> int:
        return self.memory(cfg, table).bytes_for(self.scope)

    def plan(self, tps: list[TablePlan], layout: str, min_b: int, reason: str = "") -> Plan:
        total = sum((tp.memory for tp in tps), MemoryEstimate())
        ok = not reason and total.bytes_for(self.scope) <= self.budget_bytes
        if not ok and not reason:
            reason = f"needs at least {format_size(min_b)}"
        return Plan(self.cls.name, layout, self.scope, int(min(self.budget_bytes, 2**62)), ok, tuple(tps),
                    tuple(self.tables), total, int(min_b), self.full_bytes, self.optimizer, reason, self.fixed)


def solve(
    method: str | type[MethodConfig],
    tables: Sequence[TableSpec],
    budget_bytes: float,
    *,
    scope: str = "serve",
    optimizer: str = "adam",
    weight_dtype: str = "fp32",
    layout: str | None = None,
    threshold: int = 0,
    keep_small_share: float = 0.05,
    fixed: Mapping[str, Any] | None = None,
) -> Plan:
    """Solve ``method`` for ``tables`` under ``budget_bytes``.

    Args:
        method: registry name or config class.
        tables: the workload's tables (one per field).
        budget_bytes: the budget, covering ``scope``.
        scope: ``"serve"`` (serving storage) or ``"train"`` (training memory incl. optimizer state).
        optimizer: optimizer assumed for training memory.
        weight_dtype: float weight dtype.
        layout: ``"per_field"`` or ``"global"``; default: the method's preferred layout.
        threshold: per-field layout: tables with at most this many rows stay uncompressed.
        keep_small_share: per-field layout: the smallest tables whose full size adds up to at most
            this share of the budget stay uncompressed (squeezing a 3-row field saves nothing).
        fixed: hyperparameters to hold fixed (the size knob is solved).

    Returns:
        A :class:`Plan`; ``plan.feasible`` is False (with ``min_budget_bytes``) when nothing fits.
    """
    cls = get_method(method) if isinstance(method, str) else method
    if cls.tags.input != "table":
        raise InvalidConfigError(
            f"{cls.name} compresses a frozen vector corpus, not an embedding table; use it with "
            "`embadvisor recommend --task retrieval --vectors FILE` or `embadvisor.vectors`."
        )
    if scope not in SCOPES:
        raise InvalidConfigError(f"`scope` must be one of {SCOPES}, but got scope={scope!r}.")
    if not tables:
        raise InvalidConfigError("`tables` must be a non-empty list of tables, but got tables=[].")
    if layout is None:
        # the method's preferred layout; one global table needs one embedding dim for all fields
        layout = cls.tags.layout
        if layout == "global" and len({t.embedding_dim for t in tables}) > 1:
            layout = "per_field"
    problem = _Problem(cls, tables, budget_bytes, scope, optimizer, weight_dtype, threshold, keep_small_share,
                       dict(fixed or {}), [_full(t, weight_dtype, optimizer) for t in tables])
    if layout == "global":
        return _solve_global(problem)
    if layout != "per_field":
        raise InvalidConfigError(f"`layout` must be 'per_field' or 'global', but got layout={layout!r}.")
    return _solve_workload_rule(problem) or _solve_per_field(problem)


def _solve_global(p: _Problem) -> Plan:
    """Global layout: all fields share one table (ids offset per field), solved once."""
    merged = merged_table(p.tables)
    smallest = p.cls.min_config(merged, **p.fixed)
    min_b = p.cost(smallest, merged) if smallest is not None else math.inf
    if p.cls.name == "full":
        cfg: MethodConfig | None = FullConfig()
    else:
        cfg = p.cls.from_budget(merged, p.budget_bytes, **p.kw, **p.fixed)
    if cfg is None:
        why = "" if smallest is not None else "no configuration applies to the merged table"
        min_int = int(min_b) if math.isfinite(min_b) else 0
        return p.plan([], "global", min_int, why or f"needs at least {format_size(min_b)}")
    return p.plan([TablePlan(merged, cfg, p.memory(cfg, merged))], "global", int(min_b))


def _solve_workload_rule(p: _Problem) -> Plan | None:
    """Per-field layout with the method's own ``plan_tables`` (e.g. MDE's power law); None when it has none."""
    try:
        chosen = p.cls.plan_tables(p.tables, p.budget_bytes, **p.kw, **p.fixed)
    except NotImplementedError:
        return None
    min_b = _plan_min_budget(p.cls, p.tables, p.kw, p.fixed, p.full_plans, p.scope)
    if chosen is None:
        return p.plan([], "per_field", min_b, f"needs at least {format_size(min_b)}")
    tps = [p.full_plans[i] if c is None else TablePlan(t, c, p.memory(c, t))
           for i, (t, c) in enumerate(zip(p.tables, chosen, strict=True))]
    return p.plan(tps, "per_field", min_b)


#: Per table of the per-field layout: the method's smallest config (None: the table stays full)
#: and its bytes (inf when the table stays full).
_Floor = tuple[list[MethodConfig | None], list[float]]


def _solve_per_field(p: _Problem) -> Plan:
    """Per-field layout: bisect one global ratio r so that every compressible table gets about r of
    its full size (through ``from_budget``) and the total fits the budget."""
    floor = _smallest_configs(p, p.budget_bytes)
    lo_total, lo_tps = _per_field_total(p, floor, 0.0)
    if all(m is None for m in floor[0]) and p.cls.name != "full":
        return p.plan([], "per_field", lo_total, "no table gets smaller with this method")
    if lo_total > p.budget_bytes:
        return p.plan(lo_tps, "per_field", _per_field_min_budget(p, lo_total))
    hi_total, hi_tps = _per_field_total(p, floor, 1.0)
    if hi_total <= p.budget_bytes:
        return p.plan(hi_tps, "per_field", lo_total)
    lo, hi, best = 0.0, 1.0, lo_tps
    for _ in range(40):
        mid = (lo + hi) / 2
        t_mid, tps = _per_field_total(p, floor, mid)
        if t_mid <= p.budget_bytes:
            lo, best = mid, tps
            if t_mid >= 0.999 * p.budget_bytes:
                break
        else:
            hi = mid
        if hi - lo < 1e-7:
            break
    return p.plan(best, "per_field", lo_total)


def _smallest_configs(p: _Problem, budget: float) -> _Floor:
    """Per table: the method's smallest config (None: the table stays full) and its bytes.

    Tables no bigger than ``threshold`` stay full, and so do the smallest tables that fit in
    ``keep_small_share`` of the budget (the benchmark's rule), so the set depends on the budget.
    """
    full_b = [tp.memory.bytes_for(p.scope) for tp in p.full_plans]
    keep_full = {i for i, t in enumerate(p.tables) if t.num_embeddings <= p.threshold}
    room = p.keep_small_share * budget
    for i in sorted(range(len(p.tables)), key=lambda i: full_b[i]):
        if full_b[i] > room:
            break
        keep_full.add(i)
        room -= full_b[i]
    mins: list[MethodConfig | None] = []
    min_bytes: list[float] = []
    for i, (t, fb) in enumerate(zip(p.tables, full_b, strict=True)):
        m = None if (i in keep_full or p.cls.name == "full") else p.cls.min_config(t, **p.fixed)
        mb = p.cost(m, t) if m is not None else math.inf
        if mb >= fb:
            m, mb = None, math.inf
        mins.append(m)
        min_bytes.append(mb)
    return mins, min_bytes


def _per_field_total(p: _Problem, floor: _Floor, r: float) -> tuple[int, list[TablePlan]]:
    """Each table at about ``r`` of its full size (never below its floor; full when that is no smaller)."""
    mins, min_bytes = floor
    tps = []
    for i, (t, m) in enumerate(zip(p.tables, mins, strict=True)):
        full = p.full_plans[i]
        full_b = full.memory.bytes_for(p.scope)
        if m is None:
            tps.append(full)
            continue
        target = max(r * full_b, min_bytes[i])
        cfg = p.cls.from_budget(t, target, **p.kw, **p.fixed) or m
        mem = p.memory(cfg, t)
        tps.append(full if mem.bytes_for(p.scope) >= full_b else TablePlan(t, cfg, mem))
    return sum(tp.memory.bytes_for(p.scope) for tp in tps), tps


def _per_field_min_budget(p: _Problem, need: int) -> int:
    """The smallest feasible budget of the per-field layout, from the floor total ``need`` at the
    given budget: a larger budget keeps more small tables full, which costs more, so iterate to
    the fixed point (at most one step per table)."""
    for _ in range(len(p.tables) + 1):
        need_next = _per_field_total(p, _smallest_configs(p, need), 0.0)[0]
        if need_next <= need:
            break
        need = need_next
    return need


def _plan_min_budget(cls: type[MethodConfig], tables: Sequence[TableSpec], kw: dict[str, Any],
                     fixed: dict[str, Any], full_plans: list[TablePlan], scope: str) -> int:
    """Smallest budget a method with a custom ``plan_tables`` can meet (bisection on the budget)."""
    full_total = sum(tp.memory.bytes_for(scope) for tp in full_plans)
    if cls.plan_tables(tables, full_total, **kw, **fixed) is None:
        return full_total
    lo, hi = 0.0, float(full_total)
    for _ in range(50):
        mid = (lo + hi) / 2
        if cls.plan_tables(tables, mid, **kw, **fixed) is None:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1:
            break
    return int(math.ceil(hi))
