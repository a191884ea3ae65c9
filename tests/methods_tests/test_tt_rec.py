"""TT-Rec maths: the factorisations, the index decomposition, the lookup against the dense
reconstruction, the init scale and the memory formula."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from embadvisor.methods._hashing import split_ids
from embadvisor.methods.full import init_bound
from embadvisor.methods.tt_rec import TTRecConfig, TTRecEmbedding, tt_dim_factors, tt_params, tt_row_factors
from embadvisor.profiles.schema import TableSpec

CRITEO_SIZES = [1460, 583, 10_131_227, 2_202_608, 305, 24, 12_517, 633, 3, 93_145, 5683, 8_351_593, 3194, 27,
                14_992, 5_461_306, 10, 5652, 2173, 4, 7_046_547, 18, 15, 286_181, 105, 142_572]


def dense_table(module: object, cores: list[torch.Tensor] | None = None) -> torch.Tensor:
    """The full n x d table the cores (default: the module's own) represent (reference only: the module
    never forms it)."""
    assert isinstance(module, TTRecEmbedding)
    m = module
    (n_a, n_b, n_c), (d1, d2, d3) = m.row_factors, m.dim_factors
    r = m.rank
    c1, c2, c3 = cores if cores is not None else (m.core1, m.core2, m.core3)
    g1 = c1.view(n_a, d1, r)
    g2 = c2.view(n_b, r, d2, r)
    g3 = c3.view(n_c, r, d3)
    full = torch.einsum("axr,brys,csz->acbxyz", g1, g2, g3)  # [n_a, n_c, n_b, d1, d2, d3]
    return full.reshape(n_a * n_c * n_b, d1 * d2 * d3)[: m.num_embeddings]


@given(st.integers(1, 10**13))
@settings(max_examples=300, deadline=None)
def test_row_factors_cover_n_and_stay_near_the_cube_root(n: int) -> None:
    n_a, n_b, n_c = tt_row_factors(n)
    assert n_a * n_b * n_c >= n
    c = math.ceil(round(n ** (1 / 3), 6))
    assert max(n_a, n_b, n_c) <= c + 1
    assert n_b == min(n_a, n_b, n_c)
    assert n_a * n_b * n_c < n + 3 * (c + 1) ** 2  # waste at most a few cube-root^2 rows


@pytest.mark.parametrize("n", CRITEO_SIZES)
def test_row_factors_criteo(n: int) -> None:
    f = tt_row_factors(n)
    assert math.prod(f) >= n
    assert tt_row_factors(n) == f  # deterministic


def test_known_factorisations() -> None:
    assert tt_row_factors(10**6) == (100, 100, 100)
    assert tt_row_factors(10_131_227) == (217, 216, 217)
    assert tt_dim_factors(16) == (2, 2, 4)
    assert tt_dim_factors(8) == (2, 2, 2)
    assert tt_dim_factors(64) == (4, 4, 4)
    assert tt_dim_factors(7) == (1, 1, 7)


@given(st.integers(1, 4096))
def test_dim_factors_multiply_to_d(d: int) -> None:
    d1, d2, d3 = tt_dim_factors(d)
    assert d1 * d2 * d3 == d and d2 <= d1 <= d3


@given(st.integers(1, 3000))
@settings(max_examples=50, deadline=None)
def test_index_decomposition_is_a_bijection(n: int) -> None:
    n_a, n_b, n_c = tt_row_factors(n)
    ids = torch.arange(n)
    rest, i2 = split_ids(ids, n_b)
    i1, i3 = split_ids(rest, n_c)
    assert bool((i1 < n_a).all() and (i2 < n_b).all() and (i3 < n_c).all())
    assert torch.unique((i1 * n_c + i3) * n_b + i2).numel() == n


@given(
    st.sampled_from([1, 3, 27, 500, 1000, 4099]),
    st.sampled_from([4, 8, 16]),
    st.integers(1, 12),
    st.lists(st.integers(0, 10**6), min_size=1, max_size=200),
    st.sampled_from(["random", "same_i2", "skewed"]),
)
@settings(max_examples=60, deadline=None)
def test_lookup_equals_dense_reconstruction(n: int, d: int, rank: int, raw: list[int], pattern: str) -> None:
    table = TableSpec("t", n, d)
    torch.manual_seed(0)
    m = TTRecConfig(rank=rank).build(table)
    assert isinstance(m, TTRecEmbedding)
    n_b = m.row_factors[1]
    ids = torch.tensor(raw) % n
    if pattern == "same_i2":  # every id in one G2 slice: one group, split into chunks
        ids = (ids // n_b) * n_b
    elif pattern == "skewed":  # half the ids share slice 0, the rest spread out
        ids[: len(raw) // 2] = (ids[: len(raw) // 2] // n_b) * n_b
    with torch.no_grad():
        got = m(ids)
        want = dense_table(m)[ids]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_gradients_match_the_dense_reconstruction() -> None:
    table = TableSpec("t", 700, 8)
    torch.manual_seed(0)
    a = TTRecConfig(rank=5).build(table)
    ids = torch.tensor([[0, 699, 5], [5, 5, 300]])
    w = torch.randn(2, 3, 8)
    (a(ids) * w).sum().backward()
    assert isinstance(a, TTRecEmbedding)
    cores = (a.core1, a.core2, a.core3)
    got = []
    for p in cores:
        assert p.grad is not None
        got.append(p.grad.clone())
        p.grad = None
    (dense_table(a)[ids] * w).sum().backward()
    for g, p in zip(got, cores, strict=True):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-7)


def test_init_gives_embedding_scale_variance() -> None:
    table = TableSpec("t", 20_000, 16)
    torch.manual_seed(0)
    m = TTRecConfig(rank=16).build(table)
    with torch.no_grad():
        full = dense_table(m)
    target = init_bound(table) ** 2 / 3
    assert full.var().item() == pytest.approx(target, rel=0.35)
    assert abs(full.mean().item()) < 0.1 * math.sqrt(target)


@pytest.mark.parametrize("n", CRITEO_SIZES)
def test_memory_formula(n: int) -> None:
    d, r = 16, 13
    (n_a, n_b, n_c), (d1, d2, d3) = tt_row_factors(n), tt_dim_factors(d)
    want = r * (n_a * d1 + n_b * d2 * r + n_c * d3)
    # the benchmark's sum_j n_j d_j r_{j-1} r_j with ranks [1, r, r, 1]
    ranks = [1, r, r, 1]
    assert want == sum(nj * dj * ranks[j] * ranks[j + 1] for j, (nj, dj) in enumerate(zip((n_a, n_b, n_c), (d1, d2, d3),
                                                                                          strict=True)))
    assert tt_params(n, d, r) == want
    assert TTRecConfig(rank=r).memory(TableSpec("t", n, d)).serve_bytes == 4 * want


def test_knob_bounds_end_where_tt_stops_saving() -> None:
    table = TableSpec("t", 10_131_227, 16)
    lo, hi = TTRecConfig.knob_bounds(table)
    full = table.num_embeddings * 16
    assert lo == 1
    assert tt_params(table.num_embeddings, 16, int(hi)) >= full > tt_params(table.num_embeddings, 16, int(hi) - 1)


def test_from_budget_ranks_grow_with_budget() -> None:
    table = TableSpec("t", 10_131_227, 16)
    full = table.num_embeddings * 16 * 4
    ranks = [TTRecConfig.from_budget(table, full * r) for r in (0.001, 0.01, 0.1)]
    got = [c.rank for c in ranks if c is not None]
    assert len(got) == 3 and got == sorted(got) and got[0] >= 1


@pytest.mark.parametrize("direct_max", [0, 1 << 30], ids=["grouped", "direct"])
@pytest.mark.parametrize("pattern", ["all_ids", "one_slice", "few_slices_skewed"])
def test_every_lookup_path(pattern: str, direct_max: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Grouped by G2 slice: every slice in use (the core multiplied in place) and few slices (gathered
    chunks); and the per-id gather used without gradients and for small gathers. Same rows, same gradients."""
    import embadvisor.methods.tt_rec as tt

    monkeypatch.setattr(tt, "_DIRECT_MAX", direct_max)
    table = TableSpec("t", 1000, 16)
    torch.manual_seed(0)
    m = TTRecConfig(rank=3).build(table)
    assert isinstance(m, TTRecEmbedding) and m.row_factors == (10, 10, 10)
    ids = {
        "all_ids": torch.arange(1000).flip(0),
        "one_slice": torch.arange(0, 1000, 10),
        "few_slices_skewed": torch.cat([torch.arange(0, 1000, 10), torch.tensor([1, 2, 999])]),
    }[pattern]
    out = m(ids)
    torch.testing.assert_close(out, dense_table(m)[ids], rtol=1e-5, atol=1e-7)
    with torch.no_grad():  # serving and evaluation take the per-id gather whatever the size
        torch.testing.assert_close(m(ids), out.detach(), rtol=1e-5, atol=1e-7)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    assert m.core2.grad is not None and torch.isfinite(m.core2.grad).all()
    # the gradient of the weighted sum through the explicit table product, computed independently
    cores = [c.detach().clone().requires_grad_(True) for c in (m.core1, m.core2, m.core3)]
    ref = dense_table(m, cores)[ids]
    (ref * torch.linspace(-1, 1, ref.numel()).view_as(ref)).sum().backward()
    torch.testing.assert_close(m.core2.grad, cores[1].grad, rtol=1e-4, atol=1e-6)


def test_cache_serves_the_most_frequent_ids_and_the_rest_go_through_the_cores() -> None:
    table = TableSpec("c", 1000, 16)
    emb = TTRecConfig(rank=4, cache_rows=3).build(table)
    counts = np.ones(1000)
    counts[[7, 500, 999]] = 100  # the hot ids are not 0..2: the sorted-id lookup path
    emb.prepare(counts)
    assert emb.cache_ids.tolist() == [7, 500, 999] and not emb.cache_is_prefix
    ids = torch.tensor([[999, 3], [7, 500]])
    out = emb(ids)
    assert torch.equal(out[0, 0], emb.cache.weight[2]) and torch.equal(out[1, 0], emb.cache.weight[0])
    assert torch.equal(out[1, 1], emb.cache.weight[1])
    assert torch.allclose(out[0, 1], emb._tt(torch.tensor([3]))[0])
    out.sum().backward()
    assert emb.cache.weight.grad is not None and emb.core2.grad is not None


def test_solver_raises_rank_to_the_cap_then_fills_the_budget_with_cache_rows() -> None:
    from embadvisor.methods.tt_rec import CACHE_RANK

    table = TableSpec("c", 1_000_000, 16)
    full = 1_000_000 * 16 * 4
    for ratio in (0.5, 0.1, 0.01):
        cfg = TTRecConfig.from_budget(table, full * ratio)
        used = cfg.memory(table).serve_bytes
        assert 0.95 * full * ratio <= used <= full * ratio
        if ratio >= 0.1:
            assert cfg.rank == CACHE_RANK and cfg.cache_rows > 1000
        else:  # rank-32 cores alone would be 819 kB > 640 kB: the largest rank below, the rest cached
            assert cfg.rank < CACHE_RANK and cfg.memory(table).serve_bytes - TTRecConfig(
                rank=cfg.rank).memory(table).serve_bytes == cfg.cache_rows * (16 * 4 + 4)


def test_a_batch_of_cached_ids_only_never_touches_the_cores() -> None:
    table = TableSpec("c", 1000, 16)
    emb = TTRecConfig(rank=4, cache_rows=5).build(table)
    emb.prepare(None)  # ids 0..4 are the hot ones
    ids = torch.tensor([[4, 0], [2, 2]])
    out = emb(ids)
    assert out.shape == (2, 2, 16) and torch.equal(out[0, 0], emb.cache.weight[4])
    out.sum().backward()
    assert emb.core2.grad is None and emb.cache.weight.grad is not None
    assert emb.cache.weight.grad.coalesce().to_dense()[2].sum().item() == 2 * 16
