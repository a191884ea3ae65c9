"""Quantization maths: rounding, packing, the fused row update (int8/int16/alpt) and PTQ export error."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from embadvisor.methods import get_method
from embadvisor.methods._quant import (
    ADAGRAD_EPS,
    FusedQuantEmbedding,
    pack_int4,
    quantize_affine,
    quantize_symmetric,
    stochastic_round,
    unpack_int4,
)
from embadvisor.methods.alpt import AlptConfig
from embadvisor.methods.full import init_bound
from embadvisor.methods.ptq import PtqInt4Config, PtqInt8Config
from embadvisor.methods.qat import Int8Config, Int16Config
from embadvisor.profiles.schema import TableSpec

QAT = [Int8Config(), Int8Config(fused_optimizer="sgd"), Int16Config(), AlptConfig(), AlptConfig(bits=16),
       AlptConfig(fused_optimizer="sgd")]
QAT_IDS = ["int8", "int8-sgd", "int16", "alpt8", "alpt16", "alpt8-sgd"]


# --------------------------------------------------------------------------- helpers
def test_stochastic_rounding_is_unbiased_and_seeded() -> None:
    x = torch.full((200_000,), 2.3)
    r = stochastic_round(x, torch.Generator().manual_seed(0))
    assert set(r.unique().tolist()) == {2.0, 3.0}
    assert r.mean().item() == pytest.approx(2.3, abs=5e-3)
    again = stochastic_round(x, torch.Generator().manual_seed(0))
    assert torch.equal(r, again)


@given(st.integers(1, 20), st.integers(1, 33), st.sampled_from([8, 16]), st.integers(0, 1000))
@settings(max_examples=60, deadline=None)
def test_symmetric_quantization_error_is_within_one_step(rows: int, d: int, bits: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, d, generator=g) * 10 ** torch.empty(rows, 1).uniform_(-4, 1, generator=g)
    qmax = 2 ** (bits - 1) - 1
    codes, scale = quantize_symmetric(w, qmax, g)
    assert codes.abs().max() <= qmax
    assert torch.equal(codes, codes.round())
    slack = qmax * 2.0**-22  # fp32 rounding of codes * scale, relative to one step
    err = (codes * scale[:, None] - w).abs()
    assert (err <= scale[:, None] * (1 + slack)).all()  # stochastic rounding: less than one step
    nearest, _ = quantize_symmetric(w, qmax, None)
    assert ((nearest * scale[:, None] - w).abs() <= scale[:, None] * (0.5 + slack)).all()


@given(st.integers(1, 20), st.integers(1, 33), st.sampled_from([4, 8]), st.integers(0, 1000))
@settings(max_examples=60, deadline=None)
def test_affine_error_bound_backs_the_export_tolerance(rows: int, d: int, bits: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, d, generator=g) * 10 ** torch.empty(rows, 1).uniform_(-4, 1, generator=g)
    codes, scale, bias = quantize_affine(w, bits)
    assert codes.dtype == torch.uint8 and int(codes.max()) <= 2**bits - 1
    err = (codes.float() * scale[:, None] + bias[:, None] - w).abs()
    row_max = w.abs().amax(1, keepdim=True)
    assert (err <= row_max / (2**bits - 1) * (1 + 1e-5) + 1e-12).all()


@given(st.integers(1, 10), st.integers(1, 17), st.integers(0, 1000))
@settings(max_examples=50, deadline=None)
def test_int4_packing_round_trip(rows: int, d: int, seed: int) -> None:
    codes = torch.randint(0, 16, (rows, d), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    packed = pack_int4(codes)
    assert packed.shape == (rows, math.ceil(d / 2)) and packed.dtype == torch.uint8
    assert torch.equal(unpack_int4(packed, d), codes)
    assert torch.equal(unpack_int4(packed.unsqueeze(0), d)[0], codes)  # any leading shape


# --------------------------------------------------------------------------- QAT: storage and init
@pytest.mark.parametrize(("cls", "bits"), [(Int8Config, 8), (Int16Config, 16)])
def test_qat_stores_integers_and_inits_on_the_full_grid(cls: type, bits: int) -> None:
    t = TableSpec("t", 5000, 16)
    m = cls().build(t)
    assert m.codes.dtype == {8: torch.int8, 16: torch.int16}[bits]
    assert not list(m.parameters())
    qmax = 2 ** (bits - 1) - 1
    # the whole code range is used, not {-1, 0, 1} (the row maximum lands on qmax, or one below it when
    # stochastic rounding meets a float error of an ulp)
    assert int(m.codes.abs().max()) >= qmax - 1
    b = init_bound(t)
    assert torch.allclose(m.scale, torch.full_like(m.scale, b / qmax))
    w = m.eval()(torch.arange(5000))
    assert w.abs().max() <= b * (1 + 1e-6)
    assert w.std().item() == pytest.approx(b / math.sqrt(3), rel=0.02)  # uniform on +-b


@pytest.mark.parametrize(("cfg", "per_row"), [(Int8Config(), 16 + 4), (Int16Config(), 32 + 4), (AlptConfig(), 16 + 4),
                                               (AlptConfig(bits=16), 32 + 4), (PtqInt8Config(), 16 + 8),
                                               (PtqInt4Config(), 8 + 8)])
def test_serving_bytes(cfg, per_row: int) -> None:
    t = TableSpec("t", 1000, 16)
    assert cfg.memory(t).serve_bytes == 1000 * per_row


def test_training_bytes_count_the_fused_state() -> None:
    t = TableSpec("t", 1000, 16)
    assert Int8Config().memory(t).train_bytes == 1000 * (16 + 4 + 4)
    assert Int8Config(fused_optimizer="sgd").memory(t).train_bytes == 1000 * (16 + 4)
    assert AlptConfig().memory(t).train_bytes == 1000 * (16 + 4 + 4 + 4)
    # the trainer's optimizer has nothing to keep
    assert Int8Config().memory(t, optimizer="adam").optimizer_bytes == 0
    # PTQ trains the full table
    assert PtqInt8Config().memory(t, optimizer="adam").train_bytes == 1000 * 16 * 4 * 3


# --------------------------------------------------------------------------- QAT: the fused update
def _toy_fit(cfg, steps: int = 60, lr: float = 0.05) -> tuple[float, float, FusedQuantEmbedding]:
    torch.manual_seed(0)
    t = TableSpec("t", 200, 8)
    m = cfg.build(t)
    assert isinstance(m, FusedQuantEmbedding)
    m.on_train_start("adam", lr)
    m.train()
    g = torch.Generator().manual_seed(1)
    target = torch.randn(200, 8, generator=g) * 0.1
    ids_all = torch.arange(200)

    def loss_now() -> float:
        with torch.no_grad():
            return (m(ids_all) - target).pow(2).mean().item()

    first = loss_now()
    for _ in range(steps):
        ids = torch.randint(0, 200, (256,), generator=g)
        loss = (m(ids) - target[ids]).pow(2).sum()
        loss.backward()
    return first, loss_now(), m


@pytest.mark.parametrize("cfg", QAT, ids=QAT_IDS)
def test_fused_update_reduces_a_toy_loss(cfg) -> None:
    first, last, _ = _toy_fit(cfg)
    assert last < 0.3 * first, f"{cfg}: loss {first:.4g} -> {last:.4g}"


@pytest.mark.parametrize("cfg", QAT, ids=QAT_IDS)
def test_no_update_in_eval_or_no_grad(cfg) -> None:
    m = cfg.build(TableSpec("t", 50, 4))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    m.train()
    with torch.no_grad():
        m(torch.arange(50))
    m.eval()
    out = m(torch.arange(50))
    assert not out.requires_grad
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k])


@pytest.mark.parametrize("cfg", QAT, ids=QAT_IDS)
def test_empty_batch_is_a_no_op(cfg) -> None:
    m = cfg.build(TableSpec("t", 50, 4))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    m.train()
    out = m(torch.empty(0, 3, dtype=torch.int64))
    assert out.shape == (0, 3, 4)
    out.sum().backward()
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())


@pytest.mark.parametrize("optimizer", ["rowwise_adagrad", "sgd"])
def test_fused_step_matches_the_reference_update(optimizer: str) -> None:
    """One backward = row-wise Adagrad/SGD on the summed row gradients, then re-quantization."""
    torch.manual_seed(0)
    t = TableSpec("t", 30, 6)
    m = Int16Config(fused_optimizer=optimizer).build(t)
    m.on_train_start("adam", 0.01)
    m.train()
    ids = torch.tensor([[3, 7, 3], [3, 0, 29]])
    w0 = m.codes.float() * m.scale[:, None]
    coef = torch.randn(2, 3, 6)
    (m(ids) * coef).sum().backward()
    g = torch.zeros(30, 6).index_add_(0, ids.flatten(), coef.reshape(-1, 6))
    touched = torch.tensor([0, 3, 7, 29])
    if optimizer == "sgd":
        expected = w0 - 0.01 * g
    else:
        mom = g.square().mean(1)
        assert torch.allclose(m.momentum[touched], mom[touched])
        assert m.momentum.count_nonzero() == 4
        expected = w0 - 0.01 * g / (mom.sqrt() + ADAGRAD_EPS)[:, None]
    w1 = m.codes.float() * m.scale[:, None]
    step = m.scale[:, None]
    assert ((w1 - expected).abs()[touched] <= step[touched] * (1 + 1e-4)).all()
    untouched = torch.ones(30, dtype=torch.bool)
    untouched[touched] = False
    assert torch.equal(w1[untouched], w0[untouched])


@pytest.mark.parametrize("cfg", QAT, ids=QAT_IDS)
def test_same_seed_same_training(cfg) -> None:
    a = _toy_fit(cfg, steps=5)[2]
    b = _toy_fit(cfg, steps=5)[2]
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k


@pytest.mark.parametrize("cfg", QAT, ids=QAT_IDS)
def test_export_drops_the_optimizer_state_and_keeps_the_forward(cfg) -> None:
    _, _, m = _toy_fit(cfg, steps=3)
    m.eval()
    ids = torch.randint(0, 200, (5, 7))
    with torch.no_grad():
        ref = m(ids)
        served = m.export()
        assert torch.equal(served(ids), ref)
    names = {n for n, _ in served.named_buffers()}
    assert names == {"codes", "scale"}
    assert sum(b.numel() * b.element_size() for b in served.buffers()) == cfg.memory(m.table).serve_bytes


# --------------------------------------------------------------------------- ALPT
def test_alpt_init_leaves_headroom() -> None:
    t = TableSpec("t", 4000, 16)
    m = AlptConfig().build(t)
    assert int(m.codes.abs().max()) == 127 // 4
    w = m.eval()(torch.arange(4000))
    assert w.abs().max() <= init_bound(t) * (1 + 1e-6)


def test_alpt_step_size_grows_when_rows_clip() -> None:
    """Rows pushed far beyond the representable range: the LSQ gradient (±qmax where clipped) enlarges Δ."""
    torch.manual_seed(0)
    t = TableSpec("t", 20, 4)
    m = AlptConfig(step_lr=0.1).build(t)
    m.on_train_start("adam", 0.5)
    m.train()
    delta0 = m.scale.clone()
    reach0 = 127 * delta0[0].item()  # largest representable value at init (~0.92)
    ids = torch.arange(10)
    for _ in range(30):
        (m(ids) - 3.0).pow(2).sum().backward()
    assert (m.scale[:10] > 2 * delta0[:10]).all()
    assert torch.equal(m.scale[10:], delta0[10:])  # untouched rows keep theirs
    assert (m.step_momentum[:10] > 0).all() and (m.step_momentum[10:] == 0).all()
    with torch.no_grad():
        assert m.eval()(ids).min() > 2 * reach0


def test_alpt_step_size_shrinks_for_sub_step_updates() -> None:
    """Updates smaller than half a step round away; LSQ's gradient then shrinks Δ (finer steps)."""
    torch.manual_seed(0)
    t = TableSpec("t", 64, 8)
    m = AlptConfig(step_lr=0.05).build(t)
    m.on_train_start("adam", 1e-4)
    m.train()
    delta0 = m.scale.clone()
    target = torch.zeros(64, 8)
    ids = torch.arange(64)
    for _ in range(20):
        (m(ids) - target).pow(2).sum().backward()
    assert (m.scale < delta0).float().mean() > 0.9
    assert torch.isfinite(m.scale).all() and (m.scale > 0).all()


# --------------------------------------------------------------------------- PTQ
@pytest.mark.parametrize(("cfg", "bits"), [(PtqInt8Config(), 8), (PtqInt4Config(), 4)])
@pytest.mark.parametrize("d", [16, 7])
def test_ptq_export_error_and_bytes(cfg, bits: int, d: int) -> None:
    torch.manual_seed(0)
    t = TableSpec("t", 3000, d)
    m = cfg.build(t)
    with torch.no_grad():
        m.embedding.weight.mul_(torch.logspace(-2, 2, 3000).unsqueeze(1))  # rows of very different scales
    m.eval()
    ids = torch.arange(3000)
    with torch.no_grad():
        ref = m(ids)
        served = m.export()
        out = served(ids)
    row_max = ref.abs().amax(1, keepdim=True)
    assert ((out - ref).abs() <= row_max / (2**bits - 1) * (1 + 1e-5)).all()
    rel = ((out - ref).abs().max() / ref.abs().max()).item()
    assert rel <= type(cfg).export_tolerance
    assert rel > type(cfg).export_tolerance / 20, "the tolerance should be tight, not loose"
    real = sum(b.numel() * b.element_size() for b in served.buffers())
    assert real == cfg.memory(t).serve_bytes == 3000 * ((math.ceil(d / 2) if bits == 4 else d) + 8)
    assert served(ids.reshape(3, 1000)).shape == (3, 1000, d)


def test_ptq_trains_exactly_like_full() -> None:
    t = TableSpec("t", 100, 8)
    torch.manual_seed(0)
    full = get_method("full")().build(t)
    torch.manual_seed(0)
    ptq = PtqInt4Config().build(t)
    assert torch.equal(full.embedding.weight, ptq.embedding.weight)
    assert ptq.sparse_parameters() == [ptq.embedding.weight]
    assert PtqInt4Config.tags.post_training_only and PtqInt4Config.tags.serve_differs_from_train
