"""Devices: the resolver, CPU results unchanged by the device option, data placement, device memory, OOM.

The ``cuda`` parameters (marker ``gpu``) run only where CUDA is available; CI runs ``-m "not gpu"``.
"""

from __future__ import annotations

import math

import pytest
import torch
from typer.testing import CliRunner

from embadvisor import devices
from embadvisor.advisor.cli import app
from embadvisor.errors import DeviceOutOfMemory, DeviceUnavailableError, InvalidConfigError
from embadvisor.methods import list_methods, solve
from embadvisor.tasks.api import OVERHEAD_FLOOR_BYTES, device_memory_warnings, train
from embadvisor.tasks.optim import FusedSparseAdam, sparse_adam
from embadvisor.tasks.trainer import TrainConfig

HAS_CUDA = torch.cuda.is_available()
CUDA = pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")])
DEVICES = ["cpu", CUDA]
FAST = TrainConfig(batch_size=256, max_steps=6, lr=1e-2, eval_every=3, patience=0)
runner = CliRunner()


def _plan(name: str, data, dim: int = 16):
    tables = data.tables(dim)
    full = sum(t.num_embeddings * dim * 4 for t in tables)
    plan = solve(name, tables, full * 0.25)
    return plan if plan.feasible else solve(name, tables, plan.min_budget_bytes)


def _result(rep) -> dict:
    d = rep.to_dict()
    return {k: d[k] for k in ("validation", "test", "history", "curve", "serve_bytes", "steps", "samples")}


# --------------------------------------------------------------------------- the resolver
def test_specs_resolve_and_bad_specs_are_refused(monkeypatch) -> None:
    assert devices.resolve_device("cpu") == torch.device("cpu")
    assert devices.resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert devices.check_device_spec(" CUDA:1 ") == "cuda:1"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.resolve_device("auto") == torch.device("cpu")
    for bad in ("gpu", "cuda:", "cpu:0", "auto:1", "cuda:x", "", None, 3):
        with pytest.raises(InvalidConfigError, match=r"`device` must be auto, cpu, cuda or cuda:N, but got device="):
            devices.check_device_spec(bad)


def test_cuda_without_cuda_is_one_clear_error(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for spec in ("cuda", "cuda:0"):
        with pytest.raises(DeviceUnavailableError) as e:
            devices.resolve_device(spec)
        msg = str(e.value)
        assert msg.startswith(f"`device` is {spec}, but this machine has no CUDA device "
                              "(torch.cuda.is_available() is False")
        assert "\n" not in msg and "--device cpu" in msg


def test_a_cuda_index_beyond_the_devices_is_refused(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(DeviceUnavailableError, match=r"`device` is cuda:7, but this machine has 1 CUDA device \(cuda:0\)"):
        devices.resolve_device("cuda:7")


@pytest.mark.skipif(HAS_CUDA, reason="this machine has CUDA")
def test_cli_train_on_cuda_without_cuda_exits_2_with_one_line(tmp_path) -> None:
    # the device is checked before the data is read: the file need not exist
    res = runner.invoke(app, ["train", "--task", "ctr", "--data", str(tmp_path / "none.csv"), "--device", "cuda"])
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "`device` is cuda, but this machine has no CUDA device" in lines[0], res.stderr
    res = runner.invoke(app, ["train", "--task", "ctr", "--data", str(tmp_path / "none.csv"), "--device", "tpu"])
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1, res.output


def test_the_cli_and_the_api_default_to_auto() -> None:
    import inspect

    import embadvisor
    from embadvisor.advisor import cli

    assert inspect.signature(cli.train).parameters["device"].default == "auto"
    assert inspect.signature(embadvisor.train).parameters["device"].default == "auto"


# --------------------------------------------------------------------------- CPU results do not change
@pytest.mark.parametrize("name", ["full", "hash", "pep", "int8", "dpq"])
def test_cpu_results_are_the_same_with_and_without_a_device(name: str, ctr_data) -> None:
    plan = _plan(name, ctr_data)
    base = _result(train(ctr_data, plan, config=FAST, seed=1))
    assert _result(train(ctr_data, plan, config=FAST, seed=1, device="cpu")) == base
    assert _result(train(ctr_data, plan, config=FAST, seed=1, device=torch.device("cpu"))) == base
    if not HAS_CUDA:
        assert _result(train(ctr_data, plan, config=FAST, seed=1, device="auto")) == base


def test_cpu_retrieval_results_are_the_same_with_and_without_a_device(retrieval_data) -> None:
    cfg = TrainConfig(batch_size=128, max_steps=6, eval_every=3, patience=0)
    opts = {"eval_users": 100, "num_negatives": 8}
    base = _result(train(retrieval_data, "hash", config=cfg, engine_options=opts))
    assert _result(train(retrieval_data, "hash", config=cfg, engine_options=opts, device="cpu")) == base


def test_cli_train_with_and_without_device_cpu_gives_the_same_metrics(shared_data) -> None:
    import json

    args = ["train", "--task", "ctr", "--data", str(shared_data / "ctr/avazu-10k/avazu_train"), "--label", "click",
            "--method", "hash", "--epochs", "1", "--threads", "1", "--json"]
    runs = []
    for extra in ([], ["--device", "cpu"]):
        res = runner.invoke(app, args + extra)
        assert res.exit_code == 0, res.output
        runs.append(json.loads(res.stdout))
    a, b = runs
    for key in ("validation", "test", "history", "curve", "serve_bytes", "steps"):
        assert a[key] == b[key], key
    if not HAS_CUDA:
        assert a["device"] == b["device"] == "cpu" and a["peak_device_bytes"] is None


def test_a_cpu_fit_reports_its_device_and_no_device_memory(ctr_data) -> None:
    rep = train(ctr_data, "hash", config=FAST, device="cpu")
    assert rep.fit.device == "cpu"
    assert rep.fit.peak_device_bytes is None and rep.fit.peak_train_device_bytes is None
    d = rep.to_dict()
    assert d["device"] == "cpu" and d["peak_device_bytes"] is None
    assert rep.fit.to_dict()["peak_device_bytes"] is None
    assert rep.engine.device_bytes == 0 and rep.engine.source is rep.engine.data  # the CPU tensors themselves


def test_the_sparse_adam_is_picked_by_device() -> None:
    emb = torch.nn.Embedding(10, 4, sparse=True)
    assert type(sparse_adam(list(emb.parameters()), lr=0.1)) is FusedSparseAdam
    meta = torch.nn.Embedding(10, 4, sparse=True, device="meta")
    assert type(sparse_adam(list(meta.parameters()), lr=0.1)) is torch.optim.SparseAdam
    with pytest.raises(ValueError, match="one device"):
        sparse_adam([emb.weight, meta.weight], lr=0.1)


def test_the_c_kernels_take_only_cpu_tensors() -> None:
    """Off the CPU (the meta device stands in for CUDA here) every kernel declines and torch runs."""
    from embadvisor import kernels
    from embadvisor.kernels import native

    i64 = {"dtype": torch.int64, "device": "meta"}
    ids, seeds = torch.zeros(8, **i64), torch.zeros(2, **i64)
    table = torch.zeros(100, 4, device="meta")
    assert not native._usable(ids) and native._usable(torch.zeros(8, dtype=torch.int64)) == kernels.available()
    assert kernels.hash_rows(ids, seeds, 10) is None
    assert kernels.hash_gather(ids, seeds, table) is None
    assert kernels.robe_gather(ids, torch.zeros(3, **i64), table.reshape(-1), 4) is None
    assert kernels.quant_gather(ids, torch.zeros(100, 4, dtype=torch.int8, device="meta"),
                                torch.zeros(100, device="meta")) is None
    assert kernels.LookupPlan.build([kernels.FieldKernel(kernels.ROWS, table, 100)], 4) is None
    assert kernels.embedding(ids, table).device.type == "meta"  # torch's F.embedding
    moments = [torch.zeros(100, 4, device="meta") for _ in range(2)]
    assert kernels.sparse_adam(table, ids, torch.zeros(8, 4, device="meta"), *moments, 0.9, 0.999, 1e-8, 1e-3) is False


# --------------------------------------------------------------------------- rules on numbers
def test_data_stays_whole_on_the_device_when_it_takes_at_most_half_the_free_memory() -> None:
    gib = 2**30
    assert devices.resident_fits(4 * gib, 10 * gib, reserve_bytes=2 * gib)
    assert not devices.resident_fits(4 * gib + 1, 10 * gib, reserve_bytes=2 * gib)
    assert not devices.resident_fits(1, 1 * gib, reserve_bytes=2 * gib)
    assert devices.keep_on_device(10**15, torch.device("cpu"))  # the CPU holds the data already


def test_device_memory_warnings_only_beyond_the_framework_overhead(ctr_data) -> None:
    plan = _plan("full", ctr_data)
    analytic = plan.memory.train_bytes
    assert device_memory_warnings(plan, analytic + 1000, dense_bytes=100, data_bytes=100) == []
    assert device_memory_warnings(plan, analytic + OVERHEAD_FLOOR_BYTES, dense_bytes=0, data_bytes=0) == []
    over = device_memory_warnings(plan, analytic + OVERHEAD_FLOOR_BYTES + 4000 + 1, dense_bytes=1000)
    assert len(over) == 1 and "under-counts" in over[0] and "full" in over[0]
    under = device_memory_warnings(plan, int(0.5 * analytic))
    assert len(under) == 1 and "over-counts" in under[0]


def test_a_cuda_out_of_memory_becomes_a_device_error_with_the_reason() -> None:
    text = ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which "
            "1.2 GiB is free. Of the allocated memory 70 GiB is allocated by PyTorch.")
    with pytest.raises(DeviceOutOfMemory) as e, devices.oom_guard(torch.device("cuda", 0), "training full", 2**30):
        raise torch.OutOfMemoryError(text)
    msg = str(e.value)
    assert msg.startswith("training full ran out of device memory on cuda:0")
    assert "Tried to allocate 2.00 GiB" in msg and "1.2 GiB is free" in msg and "1.0 GiB" in msg and "batch size" in msg
    assert "\n" not in msg
    with pytest.raises(torch.OutOfMemoryError), devices.oom_guard(torch.device("cpu"), "training full"):
        raise torch.OutOfMemoryError("DefaultCPUAllocator: not enough memory")  # the CPU's own error, as before
    with pytest.raises(KeyError), devices.oom_guard(torch.device("cuda", 0), "x"):
        raise KeyError("other errors pass through")
    with devices.oom_guard(torch.device("cuda", 0), "x"):
        pass


# --------------------------------------------------------------------------- every method, both engines, per device
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list_methods())
def test_every_method_trains_and_serves_through_the_ctr_engine_on_the_device(name: str, device: str, ctr_data) -> None:
    rep = train(ctr_data, _plan(name, ctr_data), config=FAST, device=device)
    d = rep.to_dict()
    assert 0.0 <= d["validation"]["auc"] <= 1.0 and math.isfinite(d["validation"]["logloss"])
    assert d["test"] is not None and d["steps"] == 6 and d["latency_ms"] > 0
    assert d["device"].startswith(device)
    assert all(t.device.type == device for t in (*rep.model.parameters(), *rep.model.buffers()))
    if device == "cuda":
        assert d["peak_device_bytes"] >= d["peak_train_device_bytes"] > 0


@pytest.mark.parametrize("device", [CUDA])
@pytest.mark.parametrize("name", ["full", "hash", "tt_rec", "dpq"])
def test_every_engine_trains_on_the_device_resident_or_streamed(name: str, device: str, ctr_data, retrieval_data,
                                                                monkeypatch) -> None:
    cfg = TrainConfig(batch_size=128, max_steps=6, eval_every=3, patience=0)
    for data in (ctr_data, retrieval_data):
        rep = train(data, _plan(name, data), config=cfg, device=device)
        assert rep.engine.device_bytes > 0  # small data: kept whole on the device
        assert all(math.isfinite(v) for v in rep.fit.validation.values())
    monkeypatch.setattr(devices, "RESIDENT_SHARE", 0.0)  # nothing fits: batches are moved one by one
    for data in (ctr_data, retrieval_data):
        rep = train(data, _plan(name, data), config=cfg, device=device)
        assert rep.engine.device.type == "cuda"
        assert all(math.isfinite(v) for v in rep.fit.validation.values())


@pytest.mark.parametrize("device", [CUDA])
def test_a_real_cuda_out_of_memory_is_a_failed_run_with_the_reason(device: str, ctr_data) -> None:
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(2**20 / total)  # a 1 MiB cap: the first 2 MiB segment fails
    try:
        with pytest.raises(DeviceOutOfMemory, match=r"ran out of device memory on cuda:\d"):
            train(ctr_data, "full", config=FAST, device=device)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    rep = train(ctr_data, "hash", config=FAST, device=device)  # the device is usable again
    assert rep.fit.steps == 6


@pytest.mark.parametrize("device", [CUDA])
def test_retrieval_scoring_on_the_device_matches_the_cpu(device: str) -> None:
    import numpy as np

    from embadvisor.tasks.metrics import topk_items

    gen = torch.Generator().manual_seed(0)
    uv, iv = torch.randn(300, 16, generator=gen), torch.randn(500, 16, generator=gen)
    indptr = np.arange(0, 301 * 3, 3, dtype=np.int64)
    seen = np.random.default_rng(0).integers(0, 500, size=900)
    cpu = topk_items(uv, iv, 20, seen_indptr=indptr, seen_items=seen, chunk=64)
    dev = topk_items(uv.to(device), iv.to(device), 20, seen_indptr=indptr, seen_items=seen, chunk=64)
    assert dev.device.type == "cuda"
    assert (dev.cpu() == cpu).float().mean() > 0.99  # exact up to near-ties in the float sums
