"""FusedSparseAdam gives torch.optim.SparseAdam's values bit for bit, and falls back where the kernel cannot run."""

from __future__ import annotations

import copy

import pytest
import torch

from embadvisor import kernels
from embadvisor.tasks.optim import FusedSparseAdam

needs_kernels = pytest.mark.skipif(not kernels.available(), reason="the C kernels are not built here")


def _train_both(shape: tuple[int, int], ids_per_step: int, steps: int, dtype: torch.dtype = torch.float32,
                threads: int = 2, **opt_kw: object) -> tuple[torch.nn.Embedding, torch.nn.Embedding, torch.optim.Optimizer,
                                                           torch.optim.Optimizer]:
    torch.manual_seed(0)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ref = torch.nn.Embedding(*shape, sparse=True, dtype=dtype)
        fused = copy.deepcopy(ref)
        ref_opt = torch.optim.SparseAdam(ref.parameters(), **opt_kw)  # type: ignore[arg-type]
        fused_opt = FusedSparseAdam(fused.parameters(), **opt_kw)  # type: ignore[arg-type]
        for _ in range(steps):
            ids = torch.randint(0, shape[0], (ids_per_step,))  # with repeats: the gradient needs coalescing
            weight = torch.randn(ids_per_step, shape[1], dtype=dtype)
            for module, opt in ((ref, ref_opt), (fused, fused_opt)):
                opt.zero_grad(set_to_none=True)
                (module(ids) * weight).sum().backward()
                opt.step()
    finally:
        torch.set_num_threads(before)
    return ref, fused, ref_opt, fused_opt


def _assert_same(ref: torch.nn.Embedding, fused: torch.nn.Embedding, ref_opt: torch.optim.Optimizer,
                 fused_opt: torch.optim.Optimizer) -> None:
    assert torch.equal(ref.weight, fused.weight)
    rs, fs = ref_opt.state[ref.weight], fused_opt.state[fused.weight]
    assert rs["step"] == fs["step"]
    assert torch.equal(rs["exp_avg"], fs["exp_avg"])
    assert torch.equal(rs["exp_avg_sq"], fs["exp_avg_sq"])


@needs_kernels
@pytest.mark.parametrize("shape,ids_per_step", [((1000, 16), 5000), ((50, 7), 300), ((20000, 40), 60000), ((3, 1), 5)])
@pytest.mark.parametrize("threads", [1, 2])
def test_fused_sparse_adam_equals_torch_bit_for_bit(shape: tuple[int, int], ids_per_step: int, threads: int) -> None:
    ref, fused, ref_opt, fused_opt = _train_both(shape, ids_per_step, steps=6, threads=threads, lr=0.01)
    assert fused_opt.state[fused.weight]["exp_avg"].abs().sum() > 0  # it did train
    _assert_same(ref, fused, ref_opt, fused_opt)


@needs_kernels
def test_fused_sparse_adam_options_and_state_dict() -> None:
    kw = {"lr": 0.05, "betas": (0.8, 0.99), "eps": 1e-6, "maximize": True}
    ref, fused, ref_opt, fused_opt = _train_both((500, 16), 2000, steps=4, **kw)
    _assert_same(ref, fused, ref_opt, fused_opt)
    # the state dict is torch's: it loads into torch's optimizer and the two keep agreeing
    again = torch.optim.SparseAdam(fused.parameters(), **kw)  # type: ignore[arg-type]
    again.load_state_dict(fused_opt.state_dict())
    assert again.state[fused.weight]["step"] == 4


def test_fused_sparse_adam_falls_back_where_the_kernel_cannot_run() -> None:
    # float64 tables and EMBADVISOR_NATIVE-style switches go through torch's update: still the same values
    ref, fused, ref_opt, fused_opt = _train_both((200, 8), 500, steps=3, dtype=torch.float64, lr=0.01)
    _assert_same(ref, fused, ref_opt, fused_opt)
    with kernels.disabled():
        ref, fused, ref_opt, fused_opt = _train_both((200, 8), 500, steps=3, lr=0.01)
    _assert_same(ref, fused, ref_opt, fused_opt)


def test_fused_sparse_adam_rejects_dense_gradients() -> None:
    p = torch.nn.Parameter(torch.zeros(4, 2))
    p.grad = torch.ones(4, 2)
    with pytest.raises(RuntimeError, match="dense gradients"):
        FusedSparseAdam([p]).step()
