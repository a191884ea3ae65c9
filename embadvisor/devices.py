"""Where training runs: resolving ``--device``, placing data, measuring device memory, out-of-memory errors.

``resolve_device("auto" | "cpu" | "cuda" | "cuda:N")`` is the one place a device spec becomes a
``torch.device``; everything else takes the resolved device. Models are always built (and initialised)
on the CPU, then moved, so a seed gives the same initial weights on every device (see
:func:`resolve_device` for what a seed guarantees per device).

Data placement (:func:`keep_on_device`): a task engine keeps its whole data tensors on the device
when they take at most :data:`RESIDENT_SHARE` of the device memory that is free once the model is
there and the memory training will still claim (optimizer state, gradients) is set aside; otherwise
it cuts each batch on the CPU and moves only the batch.

Memory: on CUDA the trainer reads ``torch.cuda.max_memory_allocated`` after
``torch.cuda.reset_peak_memory_stats`` (bytes of live tensors at the peak; the CUDA context and the
allocator's cached but unused blocks are not in it). On the CPU there is no such counter and the
figures are None. A CUDA out-of-memory error becomes :class:`~embadvisor.errors.DeviceOutOfMemory`
(:func:`oom_guard`), so a search records the trial as failed with the reason and goes on.

torch is imported inside the functions: importing this module stays cheap (the CLI's rule).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from embadvisor.errors import DeviceOutOfMemory, DeviceUnavailableError, InvalidConfigError
from embadvisor.units import format_size

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["DEVICE_CHOICES", "RESIDENT_SHARE", "check_device_spec", "check_fits_device", "describe",
           "is_device_oom", "keep_on_device", "module_device", "oom_guard", "peak_memory", "release_device_memory",
           "reset_peak_memory", "resident_fits", "resolve_device", "snapshot_state", "synchronize"]

#: What ``--device`` accepts.
DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")
#: Share of the free device memory (after the model and the memory training will claim) that a task's
#: data may take to be kept whole on the device; above it, batches are moved one at a time.
RESIDENT_SHARE = 0.5

_SPEC = re.compile(r"^(auto|cpu|cuda)(?::(\d+))?$")


def check_device_spec(spec: object) -> str:
    """``spec`` normalised (``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``), checked for its form only: no
    torch import, nothing about this machine (a worker elsewhere resolves the spec on its own machine).

    Raises:
        InvalidConfigError: when ``spec`` is not one of :data:`DEVICE_CHOICES`.
    """
    text = str(spec).strip().lower() if spec is not None else ""
    m = _SPEC.match(text)
    if m is None or (m.group(2) is not None and m.group(1) != "cuda"):
        raise InvalidConfigError(f"`device` must be auto, cpu, cuda or cuda:N, but got device={spec!r}.")
    return text


def resolve_device(spec: object = "auto") -> torch.device:
    """The ``torch.device`` that ``spec`` names on this machine.

    ``auto`` is the current CUDA device when CUDA is available, else the CPU; ``cuda`` is the current
    CUDA device; ``cuda:N`` the N-th. A ``torch.device`` is accepted as well.

    What a seed guarantees, per device:

    - **CPU**: bitwise reproducible. The same seed, data, settings and torch thread count give the same
      weights, metrics and curves, run after run (the fused C kernels give torch's values bit for bit).
    - **CUDA**: the same seed gives the same initial weights as on the CPU (models are built and
      initialised on the CPU, then moved), the same batch order and the same sampled negatives (both
      drawn from CPU generators). Runs are *not* bitwise equal, to each other or to the CPU: the
      backward passes of embedding lookups, ``index_add_`` and scatter reductions accumulate with
      atomics in a varying order, and GEMMs may pick different kernels. embadvisor sets no global flag:
      ``torch.use_deterministic_algorithms`` stays off, ``torch.backends.cudnn`` and TF32 settings stay
      at torch's defaults (no TF32 for matmuls). For bitwise-repeatable CUDA runs, call
      ``torch.use_deterministic_algorithms(True)`` and set ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` before
      training (slower; an operation without a deterministic CUDA implementation then raises). Methods
      with randomness inside training draw it on the table's device (``int8``/``int16`` stochastic
      rounding, PEP's pruning sample): the same seed, a different stream on CUDA than on the CPU.

    Raises:
        InvalidConfigError: ``spec`` is not ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        DeviceUnavailableError: ``cuda`` on a machine without a CUDA device (or ``cuda:N`` beyond the
            devices it has).
    """
    import torch

    if isinstance(spec, torch.device):
        spec = str(spec)
    text = check_device_spec(spec)
    if text == "cpu":
        return torch.device("cpu")
    available = torch.cuda.is_available()
    if text == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if available else torch.device("cpu")
    if not available:
        build = (f"; this torch {torch.__version__} is a CPU-only build" if torch.version.cuda is None
                 else f"; torch {torch.__version__} was built for CUDA {torch.version.cuda} but finds no GPU")
        raise DeviceUnavailableError(
            f"`device` is {text}, but this machine has no CUDA device (torch.cuda.is_available() is False{build}). "
            "Pass --device cpu or --device auto, or run on a machine with an NVIDIA GPU and a CUDA build of torch.")
    index = int(text.split(":")[1]) if ":" in text else torch.cuda.current_device()
    count = torch.cuda.device_count()
    if index >= count:
        raise DeviceUnavailableError(
            f"`device` is {text}, but this machine has {count} CUDA device{'s' if count != 1 else ''} "
            f"(cuda:0{f' to cuda:{count - 1}' if count > 1 else ''}). Pass one of those, or --device auto.")
    return torch.device("cuda", index)


def describe(device: torch.device) -> str:
    """``"cpu"``, or ``"cuda:0 (NVIDIA H100 80GB HBM3, 79.1 GiB)"``."""
    if device.type != "cuda":
        return str(device)
    import torch

    props = torch.cuda.get_device_properties(device)
    return f"{device} ({props.name}, {format_size(props.total_memory)})"


def module_device(module: nn.Module) -> torch.device:
    """The device of ``module``'s first parameter (or buffer); the CPU for a module without tensors."""
    import torch

    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return torch.device("cpu")


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on the CPU. Timers read the clock after this."""
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak: ``torch.cuda.reset_peak_memory_stats`` (the peak becomes the bytes allocated now)."""
    if device.type == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> int | None:
    """Peak bytes of live tensors on the device since the last :func:`reset_peak_memory`; None on the CPU."""
    if device.type != "cuda":
        return None
    import torch

    return int(torch.cuda.max_memory_allocated(device))


def keep_on_device(nbytes: int, device: torch.device, reserve_bytes: int = 0) -> bool:
    """Whether data of ``nbytes`` should be kept whole on ``device``.

    Always True on the CPU (the data is there already). On CUDA: True when ``nbytes`` is at most
    :data:`RESIDENT_SHARE` of the memory free now (``torch.cuda.mem_get_info``) less ``reserve_bytes``
    (what training will still allocate: optimizer state, gradients); else False and batches are moved
    one at a time.
    """
    if device.type != "cuda":
        return True
    import torch

    free, _total = torch.cuda.mem_get_info(device)
    return resident_fits(nbytes, free, reserve_bytes)


def resident_fits(nbytes: int, free_bytes: int, reserve_bytes: int = 0) -> bool:
    """The rule of :func:`keep_on_device` on numbers: ``nbytes <= RESIDENT_SHARE * (free - reserve)``."""
    return nbytes <= RESIDENT_SHARE * max(0, free_bytes - reserve_bytes)


def check_fits_device(nbytes: int, device: torch.device, *, what: str, fix: str) -> None:
    """Refuse work whose analytic memory ``nbytes`` exceeds the device's total memory, before anything moves.

    Raises:
        DeviceOutOfMemory: when ``nbytes`` is larger than the CUDA device's memory (nothing on the CPU:
            see :func:`embadvisor._checks.check_fits_memory`).
    """
    if device.type != "cuda":
        return
    import torch

    total = torch.cuda.get_device_properties(device).total_memory
    if nbytes > total:
        raise DeviceOutOfMemory(f"{what} needs about {format_size(nbytes)} of device memory (analytic estimate), "
                                f"but {describe(device)} has {format_size(total)} in total. Possible solutions: {fix}.")


def is_device_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is torch's out-of-memory error (``torch.OutOfMemoryError``, raised by CUDA allocations)."""
    import torch

    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    return isinstance(exc, oom)


def _reason(exc: BaseException) -> str:
    """The allocator's reason in one line: its first three sentences ("CUDA out of memory. Tried to allocate ... GPU 0 has ... free.")."""
    text = " ".join(str(exc).split())
    parts = re.split(r"(?<=\.) ", text)
    return " ".join(parts[:3])[:400] if parts else text[:400]


@contextmanager
def oom_guard(device: torch.device, what: str, analytic_bytes: int | None = None) -> Iterator[None]:
    """Turn a device out-of-memory error inside the block into :class:`DeviceOutOfMemory`.

    The message names ``what`` ran, the device, the allocator's reason, the analytic memory when given,
    and what to change. Other errors pass through unchanged, and so does everything on the CPU (a host
    allocation failure stays torch's own error there, as before devices existed).
    """
    try:
        yield
        return
    except Exception as e:
        if device.type == "cpu" or not is_device_oom(e):
            raise
        msg = _oom_message(device, what, analytic_bytes, e)
    raise DeviceOutOfMemory(msg)  # outside the except block: the message, not the failed step, travels on


def _oom_message(device: torch.device, what: str, analytic_bytes: int | None, exc: BaseException) -> str:
    analytic = "" if analytic_bytes is None else f" (the tables' analytic training memory: {format_size(analytic_bytes)})"
    try:
        where = describe(device)
    except Exception:  # the device's properties are unreadable: its name is enough
        where = str(device)
    return (f"{what} ran out of device memory on {where}"
            f"{analytic}: {_reason(exc)} Lower the batch size, the budget or the embedding dim, or use a device "
            "with more memory.")


def snapshot_state(module: nn.Module) -> dict[str, Any]:
    """A copy of ``module.state_dict()`` that later training cannot change: a deep copy on the CPU (as
    before devices existed), copies on the CPU for a model elsewhere (device memory is the scarce one)."""
    import copy

    import torch

    state = module.state_dict()
    if module_device(module).type == "cpu":
        return copy.deepcopy(state)
    return {k: v.detach().to("cpu", copy=True) if isinstance(v, torch.Tensor) else copy.deepcopy(v)
            for k, v in state.items()}


def release_device_memory() -> None:
    """Return the CUDA caching allocator's unused blocks to the device (after a trial that ran out of memory,
    so the next one starts with the memory free); nothing on a machine without CUDA."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
