"""SparseAdam with each table's update in one C pass: the same values as ``torch.optim.SparseAdam``, bit for bit.

torch's SparseAdam (``torch.optim._functional.sparse_adam``) makes about ten passes over the gradient's
rows after coalescing it: two gathers from the moments, three scatters back into the moments and the
parameter, and elementwise passes over temporaries. For embedding tables those rows are random rows of
tables of gigabytes, so the step's time goes to memory traffic. :class:`FusedSparseAdam` coalesces the
gradient with torch as before, then reads and writes each row of the parameter and its two moments
once (``embadvisor.kernels.sparse_adam``), with the same float32 operations in the same order.
Anything the kernel does not take (float64 tables, no compiler, ``EMBADVISOR_NATIVE=0``) runs torch's
own update.

:func:`sparse_adam` is the one place the sparse Adam is picked by device: :class:`FusedSparseAdam` for
CPU tables, ``torch.optim.SparseAdam`` for CUDA tables (the C kernel is CPU-only; torch's update runs
as CUDA kernels). Both apply the same lazy Adam rule (only the rows in the batch move), so a
method's update rule does not change with the device. A dense Adam over the whole table
(``torch.optim.Adam(fused=True)`` on a densified gradient) would be a different rule (every row's
moments decay and every row moves each step) and costs a pass over the whole table per step; it is
not used (``benchmarks/gpu.py`` times both on the GPU).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.optim import _functional as F  # noqa: N812 - torch's own name for it

from embadvisor import kernels

__all__ = ["FusedSparseAdam", "sparse_adam"]

_DENSE_GRAD = "SparseAdam does not support dense gradients, please consider Adam instead"


class FusedSparseAdam(torch.optim.SparseAdam):
    """``torch.optim.SparseAdam`` (same arguments, state and values) with a one-pass update per table.

    Example:
        >>> emb = torch.nn.Embedding(10, 4, sparse=True)
        >>> opt = FusedSparseAdam(emb.parameters(), lr=0.1)
        >>> emb(torch.tensor([1, 2, 2])).sum().backward(); opt.step()
    """

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            maximize, eps, lr = group.get("maximize", False), group["eps"], float(group["lr"])
            for p in group["params"]:
                if p.grad is None:
                    continue
                if not p.grad.is_sparse:
                    raise RuntimeError(_DENSE_GRAD)
                state = self.state[p]
                if len(state) == 0:  # as torch initialises it
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                step = state["step"]
                grad = (-p.grad if maximize else p.grad).coalesce()
                values = grad._values()
                if values.numel() == 0:
                    continue
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                step_size = lr * math.sqrt(1 - beta2**step) / (1 - beta1**step)
                if kernels.sparse_adam(p, grad._indices()[0], values, exp_avg, exp_avg_sq, beta1, beta2, eps,
                                       step_size):
                    for t in (p, exp_avg, exp_avg_sq):  # written through raw pointers: tell autograd
                        torch.autograd.graph.increment_version(t)
                else:
                    F.sparse_adam([p], [grad], [exp_avg], [exp_avg_sq], [step], eps=eps, beta1=beta1, beta2=beta2,
                                  lr=lr, maximize=False)
        return loss


def sparse_adam(params: list[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """SparseAdam for sparse-gradient ``params``, by their device: :class:`FusedSparseAdam` on the CPU,
    ``torch.optim.SparseAdam`` elsewhere (CUDA). All of ``params`` must be on one device."""
    devices = {p.device for p in params}
    if len(devices) > 1:
        raise ValueError(f"sparse_adam: the parameters must share one device, but they are on {sorted(map(str, devices))}")
    if not devices or devices.pop().type == "cpu":
        return FusedSparseAdam(params, lr=lr)
    return torch.optim.SparseAdam(params, lr=lr)
