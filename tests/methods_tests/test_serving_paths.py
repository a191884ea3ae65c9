"""Fast serving paths give the reference values: fused C hashing, huge-page tables, grouped per-field serving."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from embadvisor import kernels
from embadvisor.kernels.hugepages import advise_hugepages_
from embadvisor.methods import build_collection, list_methods, solve
from embadvisor.methods._hashing import hash_ids, make_seeds
from embadvisor.methods.qr import QREmbedding
from embadvisor.methods.robe import ROBEConfig
from embadvisor.profiles.schema import TableSpec

HAVE_CC = any(shutil.which(c) for c in ("cc", "gcc", "clang"))


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    """torch (and so the C kernels) on n threads, restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _ids(n: int = 5000) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    small = torch.randint(0, 1000, (n // 2,), generator=g)
    big = torch.randint(0, 2**62, (n - n // 2,), generator=g)  # ids far beyond 2**40 stay exact
    return torch.cat([small, big, torch.tensor([0, 2**63 - 1])])


@pytest.mark.skipif(not HAVE_CC, reason="no C compiler: the torch path is the only path")
def test_fused_kernels_build_where_a_compiler_exists() -> None:
    assert kernels.available()


@pytest.mark.parametrize("buckets", [1, 7, 1000, 2**31 - 1, 2**62])
@pytest.mark.parametrize("k", [0, 1, 3])  # 0: a scalar seed
def test_native_hash_ids_equal_the_torch_reference(buckets: int, k: int) -> None:
    seeds = make_seeds(11, max(k, 1))
    seeds = seeds[0] if k == 0 else seeds
    ids = _ids().view(-1, 2)  # any leading shape
    fast = hash_ids(ids, seeds, buckets)
    with kernels.disabled():
        ref = hash_ids(ids, seeds, buckets)
    assert fast.shape == ref.shape == ids.shape + (() if k == 0 else (k,))
    assert torch.equal(fast, ref)
    assert int(fast.min()) >= 0 and int(fast.max()) < buckets


@pytest.mark.parametrize("d", [7, 16, 64, 130])
@pytest.mark.parametrize("num_weights", [5, 1000])  # 5 < d: the block wraps around the array
def test_robe_serving_with_native_signs_equals_the_reference(d: int, num_weights: int) -> None:
    torch.manual_seed(0)
    mod = ROBEConfig(num_weights=num_weights, seed=4).build(TableSpec("t", 10**6, d))
    ids = _ids(400).view(-1, 2)
    with torch.no_grad():
        fast = mod(ids)
        with kernels.disabled():
            ref = mod(ids)
    train = mod(ids)  # the training path (autograd) is the definition
    assert torch.equal(fast, ref) and torch.equal(fast, train.detach())


def test_disabled_by_environment_and_a_broken_compiler_falls_back_with_a_warning(tmp_path: os.PathLike) -> None:
    code = ("import warnings, torch\nwarnings.simplefilter('always')\nfrom embadvisor import kernels\n"
            "from embadvisor.methods._hashing import hash_ids\n"
            "print(kernels.available(), int(hash_ids(torch.arange(5), torch.tensor(3), 7).sum()))")
    base = {**os.environ, "EMBADVISOR_NATIVE_CACHE": str(tmp_path)}
    runs = {
        "off": {**base, "EMBADVISOR_NATIVE": "0"},
        "broken": {**base, "CC": "false", "PATH": str(tmp_path)},  # `false` is not on PATH: no compiler at all
    }
    fake = os.path.join(str(tmp_path), "cc")
    with open(fake, "w") as f:
        f.write("#!/bin/sh\necho 'cc: error: broken' >&2\nexit 1\n")
    os.chmod(fake, 0o755)
    outs = {}
    for name, env in runs.items():
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        assert res.returncode == 0, res.stderr
        outs[name] = (res.stdout.split(), res.stderr)
    assert outs["off"][0][0] == "False" and "unavailable" not in outs["off"][1]
    assert outs["broken"][0][0] == "False" and "fused C kernels unavailable" in outs["broken"][1]
    assert outs["off"][0][1] == outs["broken"][0][1]  # same hashes either way
    with torch.no_grad(), kernels.disabled():
        assert int(outs["off"][0][1]) == int(hash_ids(torch.arange(5), torch.tensor(3), 7).sum())


def test_advise_hugepages_keeps_values_identity_and_bytes() -> None:
    lin = torch.nn.Linear(64, 32)
    lin.register_buffer("counts", torch.arange(10))
    before = {n: t.detach().clone() for n, t in lin.state_dict().items()}
    weight = lin.weight
    moved = advise_hugepages_(lin, min_bytes=0)
    assert lin.weight is weight  # optimizers keep their references
    for n, t in lin.state_dict().items():
        assert torch.equal(t, before[n]) and t.dtype == before[n].dtype
    on_linux = sys.platform.startswith("linux") and "[never]" not in open(
        "/sys/kernel/mm/transparent_hugepage/enabled").read() if os.path.exists(
        "/sys/kernel/mm/transparent_hugepage/enabled") else False
    assert moved == (sum(t.nbytes for t in before.values()) if on_linux else 0)
    assert advise_hugepages_(lin) == 0  # below the default threshold nothing moves


TABLES = [TableSpec("a", 3, 8), TableSpec("b", 400, 8), TableSpec("c", 5000, 8), TableSpec("d", 9000, 8)]


def _per_field_pair(method: str, **fixed: object) -> tuple[torch.nn.Module, torch.nn.Module]:
    budget = 0.3 * sum(t.num_embeddings * t.embedding_dim * 4 for t in TABLES)
    plan = solve(method, TABLES, math.inf if method == "full" else budget, layout="per_field", **fixed)
    if not plan.feasible:  # e.g. int8 needs 1/4 of full: take its smallest feasible budget
        plan = solve(method, TABLES, plan.min_budget_bytes, layout="per_field", **fixed)
    assert plan.feasible, plan.reason
    counts = [np.maximum(1, 1000 // np.arange(1, t.num_embeddings + 1)) for t in TABLES]
    torch.manual_seed(0)
    a = build_collection(plan)
    a.prepare(counts)
    torch.manual_seed(0)
    b = build_collection(plan)
    b.prepare(counts)
    return a.eval(), b.export()


@pytest.mark.parametrize("method", list_methods())
def test_collection_serving_gives_the_reference_values(method: str) -> None:
    """Serving (fused kernels: grouped per-field lookups, hashing, quantized rows) equals the torch reference."""
    _, served = _per_field_pair(method)
    ids = torch.stack([torch.randint(0, t.num_embeddings, (64,)) for t in TABLES], 1)
    with torch.no_grad():
        out, sub, multi = served(ids), served(ids[:, [3, 1]], fields=[3, 1]), served.lookup(2, ids[:, 2].view(8, 8))
        with kernels.disabled():
            ref = torch.stack([m(ids[:, f]) for f, m in enumerate(served.tables)], 1)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sub, ref[:, [3, 1]], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(multi, ref[:, 2].reshape(8, 8, -1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["full", "qr", "mde", "adapt", "int8", "int16", "alpt", "tt_rec"])
def test_per_field_serving_uses_one_kernel_pass_where_every_field_has_one(method: str) -> None:
    _, served = _per_field_pair(method)
    fields = [m.field_kernel() for m in served.tables]
    assert all(k is not None and k.usable() for k in fields), method
    ids = torch.stack([torch.randint(0, t.num_embeddings, (32,)) for t in TABLES], 1)
    with torch.no_grad():
        assert kernels.grouped_lookup(ids, fields, 8) is not None
        bad = ids.clone()
        bad[0, 2] = TABLES[2].num_embeddings  # one past the field's last id
        with pytest.raises(IndexError, match="out of range"):
            served(bad)


def test_qr_concat_has_no_kernel_and_serves_through_torch() -> None:
    plan = solve("qr", TABLES, 0.6 * sum(t.num_embeddings * 32 for t in TABLES), layout="per_field",
                 fixed={"operation": "concat"})
    served = build_collection(plan).export()
    assert any(isinstance(m, QREmbedding) and m.field_kernel() is None for m in served.tables)
    ids = torch.stack([torch.randint(0, t.num_embeddings, (16,)) for t in TABLES], 1)
    with torch.no_grad():
        out = served(ids)
        with kernels.disabled():
            assert torch.equal(out, served(ids))


@pytest.mark.parametrize("dtype", [torch.int8, torch.int16])
def test_quantized_rows_pack_codes_and_scale_in_one_row_with_the_same_bytes(dtype: torch.dtype) -> None:
    from embadvisor.methods._quant import QuantizedRows

    g = torch.Generator().manual_seed(0)
    codes = torch.randint(-100, 100, (300, 16), generator=g).to(dtype)
    scale = torch.rand(300, generator=g)
    rows = QuantizedRows(codes, scale)
    assert rows.codes.untyped_storage().data_ptr() == rows.scale.untyped_storage().data_ptr()  # one packed table
    assert torch.equal(rows.codes, codes) and torch.equal(rows.scale, scale)
    assert rows.codes.untyped_storage().nbytes() == codes.nbytes + scale.nbytes  # no padding
    ids = torch.randint(0, 300, (7, 5), generator=g)
    with torch.no_grad():
        fast = rows(ids)
        with kernels.disabled():
            ref = rows(ids)
    assert torch.equal(fast, ref) and torch.equal(ref, codes[ids].float() * scale[ids].unsqueeze(-1))
    again = QuantizedRows(torch.zeros_like(codes), torch.zeros_like(scale))
    again.load_state_dict(rows.state_dict())
    assert torch.equal(again(ids), ref)
    odd = QuantizedRows(codes[:, :3].to(torch.int8).contiguous(), scale)  # 3-byte rows: kept apart
    assert odd.codes.untyped_storage().data_ptr() != odd.scale.untyped_storage().data_ptr()


@pytest.mark.parametrize("d", [8, 16, 40])  # below, at and off the kernels' 16-column vector chunks
@pytest.mark.parametrize("layout", ["global", "per_field"])
@pytest.mark.parametrize("method", ["full", "hash", "qr", "robe", "mde", "adapt", "int8", "int16", "alpt", "tt_rec"])
def test_large_batches_on_two_threads_give_the_reference_values(method: str, layout: str, d: int) -> None:
    """Batches above the kernels' one-thread limit (16384 lookups) split over two threads, each with its own
    prefetch pipeline: every row must still land in its place."""
    tables = [TableSpec(f"t{i}", n, d) for i, n in enumerate((3, 700, 5000, 20000))]
    full_bytes = sum(t.num_embeddings * d * 4 for t in tables)
    plan = solve(method, tables, math.inf if method == "full" else 0.4 * full_bytes, layout=layout)
    if not plan.feasible:
        plan = solve(method, tables, plan.min_budget_bytes, layout=layout)
    if not plan.feasible:
        pytest.skip(f"{method} has no {layout} layout")
    counts = [np.maximum(1, 1000 // np.arange(1, t.num_embeddings + 1)) for t in tables]
    torch.manual_seed(0)
    emb = build_collection(plan)
    emb.prepare(counts)
    served = emb.export()
    g = torch.Generator().manual_seed(5)
    ids = torch.stack([torch.randint(0, t.num_embeddings, (5003,), generator=g) for t in tables], 1)
    with _threads(2), torch.no_grad():
        out = served(ids)
        with kernels.disabled():
            ref = served(ids)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("d", [7, 16, 40])
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_hash_serving_sums_k_hashed_rows_as_the_reference(k: int, d: int) -> None:
    from embadvisor.methods.hash import HashConfig

    torch.manual_seed(0)
    mod = HashConfig(num_buckets=997, num_hashes=k, seed=3).build(TableSpec("t", 10**6, d)).eval()
    ids = _ids(20000).view(-1, 2)  # above the one-thread limit: two threads, each its own share
    with _threads(2), torch.no_grad():
        fast = mod(ids)
        with kernels.disabled():
            ref = mod(ids)
    torch.testing.assert_close(fast, ref, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("cached", ["none", "prefix", "sorted ids"])
@pytest.mark.parametrize("rank,d", [(1, 16), (3, 12), (8, 16), (32, 16), (33, 64), (5, 7)])
def test_tt_serving_kernel_equals_the_torch_path(rank: int, d: int, cached: str) -> None:
    """TT-Rec's C lookup (cache hits, repeated ids, ids grouped by the middle core) equals the torch path."""
    from embadvisor.methods.tt_rec import TTRecConfig

    n = 100_003
    torch.manual_seed(0)
    mod = TTRecConfig(rank=rank, cache_rows=0 if cached == "none" else 50).build(TableSpec("t", n, d)).eval()
    if cached == "sorted ids":
        mod.cache_ids.copy_(torch.sort(torch.randperm(n)[:50]).values)
    assert mod.cache_is_prefix == (cached == "prefix")
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, n, (3000, 3), generator=g)
    ids[:100] = 7  # a hot uncached id, computed once
    ids[100:110] = n - 1
    if cached == "sorted ids":
        ids[200:300, 0] = mod.cache_ids.long().repeat(2)  # cache hits found by binary search
    with torch.no_grad():
        fast = mod(ids)
        with kernels.disabled():
            ref = mod(ids)
        assert kernels.tt_lookup(ids, mod.field_kernel()) is not None  # the kernel ran
        with pytest.raises(IndexError, match="out of range"):
            mod(torch.tensor([0, n]))
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-6)


def test_tt_cache_prefix_is_read_from_the_buffer_after_load_state_dict() -> None:
    """The prefix shortcut (slot = id) must follow the cached ids a state dict brings, not the constructor's."""
    from embadvisor.methods.tt_rec import TTRecConfig

    torch.manual_seed(0)
    cfg, table = TTRecConfig(rank=4, cache_rows=20), TableSpec("t", 5000, 16)
    trained = cfg.build(table)
    trained.prepare(np.random.default_rng(0).integers(1, 1000, 5000))  # hot ids are not 0..19
    fresh = cfg.build(table)
    assert fresh.cache_is_prefix
    fresh.load_state_dict(trained.state_dict())
    assert not fresh.cache_is_prefix
    ids = trained.cache_ids.long()[:10]
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(ids), trained.cache.weight[:10])
