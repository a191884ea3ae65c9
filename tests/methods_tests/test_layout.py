"""Table layouts: full's global table (one per workload of one dim) and the per-field fallback."""

from __future__ import annotations

import math

import pytest
import torch

from embadvisor.errors import InvalidConfigError
from embadvisor.methods import build_collection, solve
from embadvisor.methods.full import FullConfig
from embadvisor.profiles.schema import TableSpec

TABLES = [TableSpec("a", 3, 8), TableSpec("b", 100, 8), TableSpec("c", 1000, 8)]


def test_full_is_one_global_table_whose_fields_are_initialised_like_separate_tables() -> None:
    torch.manual_seed(0)
    glob = build_collection(solve("full", TABLES, math.inf))
    torch.manual_seed(0)
    per = build_collection(solve("full", TABLES, math.inf, layout="per_field"))
    assert glob.layout == "global" and per.layout == "per_field" and len(glob.tables) == 1
    weight = glob.tables[0].embedding.weight
    assert torch.equal(weight, torch.cat([t.embedding.weight for t in per.tables]))
    for (lo, hi), t in zip([(0, 3), (3, 103), (103, 1103)], TABLES, strict=True):
        bound = math.sqrt(1 / t.num_embeddings)
        seg = weight[lo:hi]
        assert seg.abs().max().item() <= bound and seg.abs().max().item() > 0.5 * bound
    ids = torch.tensor([[0, 5, 7], [2, 99, 999]])
    assert torch.equal(glob(ids), per(ids))
    assert torch.equal(glob.lookup(2, ids[:, 2]), per.lookup(2, ids[:, 2]))


def test_full_global_memory_is_the_tables_bytes_and_fits_exactly_that_budget() -> None:
    # the global layout's int64 per-field offsets are layout bookkeeping: counted neither in the plan nor
    # in the measured memory, so the full tables fit a budget of exactly their own bytes (issue #18)
    plan = solve("full", TABLES, math.inf)
    weights = sum(FullConfig().memory(t).serve_bytes for t in TABLES)
    coll = build_collection(plan)
    assert coll.layout == "global" and coll.offsets.numel() == len(TABLES)
    assert plan.memory.serve_bytes == weights == plan.full_bytes == coll.measured_memory()
    for scope in ("serve", "train"):
        full_b = solve("full", TABLES, math.inf, scope=scope).full_bytes
        tight = solve("full", TABLES, full_b, scope=scope)
        assert tight.feasible and tight.bytes == full_b == tight.min_budget_bytes and tight.ratio == 1.0
        assert not solve("full", TABLES, full_b - 1, scope=scope).feasible
        per = solve("full", TABLES, full_b, scope=scope, layout="per_field")
        assert per.feasible and per.bytes == full_b


def test_fields_of_different_dims_fall_back_to_one_table_each() -> None:
    mixed = [TableSpec("a", 5000, 8), TableSpec("b", 6000, 4)]
    for method, budget in (("full", math.inf), ("hash", 0.5 * (5000 * 8 + 6000 * 4) * 4)):
        plan = solve(method, mixed, budget)
        assert plan.layout == "per_field" and plan.feasible
        out = build_collection(plan).lookup(1, torch.tensor([1, 2]))
        assert out.shape == (2, 4)
    with pytest.raises(InvalidConfigError, match="one embedding dim"):
        solve("full", mixed, math.inf, layout="global")


def test_segments_must_add_up() -> None:
    assert TableSpec("g", 10, 4, None, (3, 7)).segments == (3, 7)
    with pytest.raises(InvalidConfigError, match="segments"):
        TableSpec("g", 10, 4, None, (3, 8))


@pytest.mark.parametrize("method", ["int8", "int16", "alpt", "ptq_int8", "qr", "hash", "tt_rec", "adapt"])
def test_per_field_min_budget_is_the_smallest_feasible_budget(method: str) -> None:
    # small tables stay full when they fit in a share of the budget, so the kept set grows with the
    # budget: the hint must account for that (it used to be one step short for int16 here)
    tables = [TableSpec("a", 3, 8), TableSpec("b", 400, 8), TableSpec("c", 5000, 8), TableSpec("d", 9000, 8)]
    hint = solve(method, tables, 1000, layout="per_field").min_budget_bytes
    assert solve(method, tables, hint, layout="per_field").feasible
    assert not solve(method, tables, hint - 1, layout="per_field").feasible
