"""Every registered method's training step, serving lookup and export on each device.

The module is built and prepared on the CPU and then moved, as ``embadvisor.tasks.api.train`` does, so
every tensor a method keeps must be a parameter or a buffer (``.to(device)`` moves only those), and every
tensor it makes while training, evaluating or exporting must be made on its tables' device. The C
kernels are CPU-only and must stay out of the way elsewhere; the sparse tables get the trainer's
optimizer for the device (:func:`embadvisor.tasks.optim.sparse_adam`).

The ``cuda`` cases (marker ``gpu``) run only where CUDA is available; CI runs ``-m "not gpu"``.
"""

from __future__ import annotations

import pytest
import torch

from embadvisor.methods import get_method, list_methods
from embadvisor.tasks.optim import sparse_adam
from embadvisor.testing.method_contract import prepared, small_table

HAS_CUDA = torch.cuda.is_available()
CUDA = pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")])
TABLE = small_table(300)
CASES = [pytest.param(cfg, id=f"{name}-{i}") for name in list_methods()
         for i, cfg in enumerate(get_method(name).example_configs(TABLE))]


def _on(module: torch.nn.Module, device: str) -> list[str]:
    """Names of the parameters and buffers that are not on ``device``."""
    return [n for n, t in (*module.named_parameters(), *module.named_buffers()) if t.device.type != device]


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("cfg", CASES)
def test_training_step_serving_and_export_on_the_device(cfg, device: str) -> None:
    n, d = TABLE.num_embeddings, TABLE.embedding_dim
    module = prepared(cfg, TABLE).to(device)
    assert not _on(module, device), f"{cfg!r}: left off {device}: {_on(module, device)}"
    params = [p for p in module.parameters() if p.requires_grad]
    sparse = {id(p) for p in module.sparse_parameters()}
    opts: list[torch.optim.Optimizer] = []
    if [p for p in params if id(p) not in sparse]:
        opts.append(torch.optim.Adam([p for p in params if id(p) not in sparse], lr=1e-2))
    if sparse:
        opts.append(sparse_adam([p for p in params if id(p) in sparse], lr=1e-2))
    module.on_train_start("adam", 1e-2)
    gen = torch.Generator().manual_seed(0)
    step = 0
    for stage in type(cfg).stages:
        module.on_stage_start(stage)
        module.train()
        for _ in range(2):
            ids = torch.cat([torch.tensor([0, n - 1]), torch.randint(0, n, (62,), generator=gen)]).to(device)
            out = module(ids.view(8, 8))
            assert out.shape == (8, 8, d) and out.device.type == device and torch.isfinite(out).all()
            loss = (out - 0.1).pow(2).mean()
            reg = module.regularization_loss()
            if reg is not None:
                assert reg.device.type == device and torch.isfinite(reg)
                loss = loss + reg
            for o in opts:
                o.zero_grad()
            loss.backward()
            for p in params:
                assert p.grad is None or p.grad.device.type == device
            for o in opts:
                o.step()
            step += 1
            module.on_step(step)
        module.on_epoch_end(0, stage)
    assert not _on(module, device), f"{cfg!r}: training moved {_on(module, device)} off {device}"
    module.eval()
    ids = torch.arange(n, device=device)
    with torch.no_grad():
        trained = module(ids)
        served = module.export()
        assert not _on(served, device), f"{cfg!r}: export() left {_on(served, device)} off {device}"
        out = served(ids.view(-1, 4))
    assert out.shape == (n // 4, 4, d) and out.device.type == device and torch.isfinite(out).all()
    tol = getattr(type(cfg), "export_tolerance", 0.0)
    err = (out.reshape(n, d) - trained).abs().max().item()
    assert err <= tol * (trained.abs().max().item() + 1e-12) + 1e-6, f"{cfg!r}: export differs by {err:.3g}"


@pytest.mark.parametrize("device", [CUDA])
@pytest.mark.parametrize("cfg", CASES)
def test_the_same_state_gives_the_same_vectors_on_the_device_as_on_the_cpu(cfg, device: str) -> None:
    if not type(cfg).tags.deterministic_forward:
        pytest.skip("random forward")
    cpu = prepared(cfg, TABLE).eval()
    dev = prepared(cfg, TABLE).to(device).eval()
    ids = torch.arange(TABLE.num_embeddings)
    with torch.no_grad():
        a, b = cpu(ids), dev(ids.to(device)).cpu()
    close = torch.isclose(a, b, rtol=1e-4, atol=1e-6 * (a.abs().max().item() + 1e-12)).all(dim=1)
    # float sums in another order may flip a near-tie (a code assignment, a pruning cut) for a few rows
    assert close.float().mean() >= 0.98, f"{cfg!r}: {int((~close).sum())} of {close.numel()} rows differ"
