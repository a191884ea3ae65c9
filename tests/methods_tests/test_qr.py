"""QR maths: exact id splitting, the three combiners, the symmetric init and the memory formula."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from embadvisor.methods._hashing import split_ids
from embadvisor.methods.full import init_bound
from embadvisor.methods.qr import QRConfig, QREmbedding, qr_widths
from embadvisor.profiles.schema import TableSpec

CRITEO_SIZES = [1460, 583, 10_131_227, 2_202_608, 305, 24, 12_517, 93_145, 8_351_593, 5_461_306, 7_046_547]


@given(st.integers(2, 2**40), st.integers(2, 2**21), st.lists(st.integers(0, 2**40 - 1), min_size=1, max_size=50))
@settings(max_examples=200, deadline=None)
def test_split_is_exact_up_to_2_pow_40(n: int, k: int, raw: list[int]) -> None:
    ids = torch.tensor([x % n for x in raw] + [n - 1, 0], dtype=torch.int64)
    q, r = split_ids(ids, k)
    assert torch.equal(q * k + r, ids)
    assert bool(((r >= 0) & (r < k)).all())
    assert bool((q < -(-n // k)).all()), "quotient must index the ceil(n/k)-row table"
    for x, qq, rr in zip(ids.tolist(), q.tolist(), r.tolist(), strict=True):
        assert (qq, rr) == divmod(x, k)


@given(st.integers(1, 5000), st.integers(2, 200))
@settings(max_examples=50, deadline=None)
def test_distinct_ids_get_distinct_pairs(n: int, k: int) -> None:
    ids = torch.arange(n)
    q, r = split_ids(ids, k)
    pairs = q * k + r
    assert torch.unique(pairs).numel() == n


def test_float_division_would_fail_but_split_does_not() -> None:
    x = torch.tensor([2**40 - 1, 2**33 + 1], dtype=torch.int64)
    q, r = split_ids(x, 3)
    assert q.tolist() == [(2**40 - 1) // 3, (2**33 + 1) // 3]
    assert r.tolist() == [(2**40 - 1) % 3, (2**33 + 1) % 3]
    # the DLRM trap: float32 division loses the low bits of such ids
    assert (x.float() / 3).floor().long().tolist() != q.tolist()


@pytest.mark.parametrize("operation", ["mult", "add", "concat"])
def test_forward_matches_the_two_tables(operation: str) -> None:
    table = TableSpec("t", 1000, 16)
    torch.manual_seed(0)
    m = QRConfig(num_collisions=7, operation=operation).build(table)
    assert isinstance(m, QREmbedding)
    ids = torch.tensor([[0, 999, 500], [6, 7, 13]])
    out = m(ids)
    assert out.shape == (2, 3, 16)
    eq = m.quotient.weight[ids // 7]
    er = m.remainder.weight[ids % 7]
    want = {"mult": eq * er, "add": eq + er, "concat": torch.cat([eq, er], -1)}[operation]
    assert torch.equal(out, want)


def test_big_ids_on_a_2_pow_40_table() -> None:
    k = 2**20
    table = TableSpec("big", 2**40, 1)
    torch.manual_seed(0)
    m = QRConfig(num_collisions=k).build(table)
    assert isinstance(m, QREmbedding)
    ids = [2**40 - 1, 2**40 - 2, 2**33 + 1, 0]
    out = m(torch.tensor(ids))[:, 0]
    for x, o in zip(ids, out.tolist(), strict=True):
        want = m.quotient.weight[x // k, 0] * m.remainder.weight[x % k, 0]
        assert o == pytest.approx(want.item(), rel=0, abs=0)


@pytest.mark.parametrize("operation", ["mult", "add", "concat"])
def test_init_is_symmetric_with_embedding_scale_variance(operation: str) -> None:
    table = TableSpec("t", 40_000, 16)
    torch.manual_seed(0)
    m = QRConfig(num_collisions=200, operation=operation).build(table)
    with torch.no_grad():
        out = m(torch.arange(table.num_embeddings))
    target = init_bound(table) ** 2 / 3
    assert out.var().item() == pytest.approx(target, rel=0.15)
    assert abs(out.mean().item()) < 0.05 * math.sqrt(target)
    assert (out > 0).float().mean().item() == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize("n", CRITEO_SIZES)
@pytest.mark.parametrize("operation", ["mult", "add", "concat"])
def test_memory_formula(n: int, operation: str) -> None:
    d, k = 16, 11
    cfg = QRConfig(num_collisions=k, operation=operation)
    d_q, d_r = qr_widths(operation, d)
    want = (math.ceil(n / k) * d_q + k * d_r) * 4
    if operation != "concat":
        assert want == (math.ceil(n / k) + k) * d * 4
    assert cfg.memory(TableSpec("t", n, d)).serve_bytes == want


def test_concat_widths() -> None:
    assert qr_widths("concat", 16) == (8, 8)
    assert qr_widths("concat", 7) == (4, 3)
    assert qr_widths("mult", 7) == (7, 7)


def test_from_budget_picks_fewer_collisions_for_more_memory() -> None:
    table = TableSpec("t", 10_131_227, 16)
    full = table.num_embeddings * 16 * 4
    cfgs = [QRConfig.from_budget(table, full * r) for r in (0.5, 0.1, 0.01)]
    ks = [c.num_collisions for c in cfgs if c is not None]
    assert ks == [3, 11, 101]  # k = 2 needs ceil(n/2) + 2 rows: just over half
    assert QRConfig(num_collisions=100).memory(table).serve_bytes > full * 0.01
    assert QRConfig.from_budget(table, full * 1e-5) is None  # below 2·sqrt(n)·d


def test_infeasible_when_more_collisions_than_ids() -> None:
    assert QRConfig(num_collisions=9).check_feasible(TableSpec("t", 8, 4)) is not None
    assert QRConfig(num_collisions=8).check_feasible(TableSpec("t", 8, 4)) is None


def test_lookup_without_gradients_equals_the_training_lookup() -> None:
    torch.manual_seed(0)
    m = QRConfig(num_collisions=7).build(TableSpec("t", 1000, 16))
    ids = torch.randint(0, 1000, (64, 5))
    with torch.no_grad():
        served = m(ids)
    trained = m(ids)
    assert trained.requires_grad and torch.equal(served, trained)
