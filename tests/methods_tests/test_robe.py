"""ROBE maths: the circular block read, the hashed signs, sparse gradients and the memory."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from embadvisor.methods.robe import ROBEConfig, ROBEEmbedding, row_width
from embadvisor.profiles.schema import TableSpec


def build(m: int, d: int = 16, n: int = 1000, seed: int = 0) -> ROBEEmbedding:
    torch.manual_seed(0)
    module = ROBEConfig(num_weights=m, seed=seed).build(TableSpec("t", n, d))
    assert isinstance(module, ROBEEmbedding)
    return module


def reference(module: ROBEEmbedding, ids: torch.Tensor) -> torch.Tensor:
    """``s(x, j)·A[(h(x) + j) mod M]`` element by element, from the flat array."""
    flat = module.array.weight.reshape(-1)
    start = module.offsets(ids)
    out = torch.empty(ids.numel(), module.embedding_dim)
    signs = module.signs(ids)
    for i, s in enumerate(start.tolist()):
        for j in range(module.embedding_dim):
            out[i, j] = signs[i, j] * flat[(s + j) % module.num_weights]
    return out


@given(st.integers(1, 5000), st.sampled_from([1, 3, 8, 16, 17, 70]),
       st.lists(st.integers(0, 2**40), min_size=1, max_size=30))
@settings(max_examples=60, deadline=None)
def test_block_read_wraps_around_the_array(m: int, d: int, raw: list[int]) -> None:
    module = build(m, d)
    ids = torch.tensor(raw)
    with torch.no_grad():
        got = module(ids)
    torch.testing.assert_close(got, reference(module, ids), rtol=0, atol=0)


def test_consecutive_positions() -> None:
    module = build(2000)
    pos = module.positions(torch.arange(100))
    step = (pos[:, 1:] - pos[:, :-1]) % 2000
    assert bool((step == 1).all())


def test_signs_are_balanced_and_seeded() -> None:
    a, b, c = build(512, seed=1), build(512, seed=1), build(512, seed=2)
    ids = torch.arange(20_000)
    s = a.signs(ids)
    assert set(s.unique().tolist()) == {-1.0, 1.0}
    assert s.mean().item() == pytest.approx(0.0, abs=0.01)
    assert torch.equal(s, b.signs(ids)) and not torch.equal(s, c.signs(ids))
    # the sign of (x, j) does not repeat the sign of (x, j + 1)
    assert (s[:, 1:] == s[:, :-1]).float().mean().item() == pytest.approx(0.5, abs=0.01)


def test_signs_beyond_62_columns() -> None:
    module = build(4096, d=130)
    s = module.signs(torch.arange(5000))
    assert s.shape == (5000, 130)
    assert s[:, 62:].mean().abs().item() < 0.02


def test_gradient_is_sparse_and_matches_dense_reference() -> None:
    module = build(96, d=16)
    ids = torch.tensor([[0, 5, 5], [2**40, 7, 0]])
    w = torch.randn(2, 3, 16)
    (module(ids) * w).sum().backward()
    grad = module.array.weight.grad
    assert grad is not None and grad.is_sparse
    dense = torch.zeros(96)
    pos = module.positions(ids.reshape(-1))
    signs = module.signs(ids.reshape(-1))
    dense.index_add_(0, pos.reshape(-1), (w.reshape(-1, 16) * signs).reshape(-1))
    torch.testing.assert_close(grad.to_dense().reshape(-1), dense)


@given(st.integers(1, 10**9), st.sampled_from([4, 16, 64]))
@settings(max_examples=50, deadline=None)
def test_memory_is_m_floats_plus_seeds(m: int, d: int) -> None:
    est = ROBEConfig(num_weights=m).memory(TableSpec("t", 10**12, d))
    assert est.param_bytes == 4 * m
    assert est.buffer_bytes == 8 * (1 + -(-d // 62))
    assert m % row_width(m) == 0


def test_from_budget_rounds_to_whole_rows() -> None:
    table = TableSpec("global", 33_762_577, 16)
    budget = 0.1 * table.num_embeddings * 16 * 4
    cfg = ROBEConfig.from_budget(table, budget)
    assert cfg is not None and cfg.num_weights % 16 == 0
    assert cfg.memory(table).serve_bytes <= budget
    assert cfg.memory(table).serve_bytes > budget - 16 * 4 - 64
    tiny = ROBEConfig.from_budget(table, 40)
    assert tiny is not None and tiny.num_weights == 6  # 6 floats + 2 seeds = 40 bytes


@pytest.mark.parametrize("d", [7, 16, 64, 130])
def test_signs_are_the_hash_bits(d: int) -> None:
    """Sign of column j: bit j % 62 of sign hash j // 62 (read a byte at a time by the module)."""
    from embadvisor.methods._hashing import hash_ids
    from embadvisor.methods.robe import SIGN_BITS

    module = build(4096, d=d)
    ids = torch.randint(0, 2**40, (3000,))
    h = hash_ids(ids, module.seeds[1:], 1 << SIGN_BITS)
    bits = [(h[:, j // SIGN_BITS] >> (j % SIGN_BITS)) & 1 for j in range(d)]
    want = 1.0 - 2.0 * torch.stack(bits, dim=1).float()
    assert torch.equal(module.signs(ids), want)


@pytest.mark.parametrize(("m", "d"), [(5000, 16), (17, 16), (7, 16), (999, 70), (3, 1)])
def test_serving_lookup_equals_the_training_lookup(m: int, d: int) -> None:
    """Without autograd the block is read from a strided window and the signs flip sign bits."""
    module = build(m, d)
    ids = torch.randint(0, 2**40, (4000,))
    trained = module(ids)
    with torch.no_grad():
        served = module(ids)
    assert trained.requires_grad and torch.equal(served, trained.detach())
    assert torch.equal(module.serve_rows(ids), trained.detach())
    wide = ROBEConfig(num_weights=m).build(TableSpec("t", 1000, d), dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(wide(ids), wide.values(ids) * wide.signs(ids))
