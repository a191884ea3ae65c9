"""Shared machinery of the quantization methods (``int8``, ``int16``, ``alpt``, ``ptq_int8``, ``ptq_int4``).

* Row-wise quantizers: symmetric (codes in ``[-qmax, qmax]`` times a per-row scale) for the
  quantization-aware methods, affine (``uint8`` codes times a per-row scale plus a per-row
  minimum) for post-training quantization, with int4 packing (two codes per byte).
* Stochastic rounding from a seeded :class:`torch.Generator` (unbiased: ``E[SR(x)] = x``).
* :class:`FusedQuantEmbedding`: an integer table whose training update is fused into the
  backward pass (FBGEMM's fused table-batched-embedding optimizer idea): the gradient of the
  looked-up rows is aggregated per unique row, a row-wise Adagrad (or SGD) step is applied to the
  dequantized rows in fp32, and the rows are re-quantized with stochastic rounding. The trainer's
  optimizer never sees the table; no fp32 shadow copy of the table exists.
* Serving modules holding only codes and row parameters (what ``export()`` returns).

Everything is vectorised over rows and ids (``torch.unique`` + ``index_add_``); no Python loop
over ids or rows.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any, ClassVar, cast

import torch
from optuna.distributions import CategoricalDistribution, FloatDistribution
from torch import nn
from torch.autograd.function import once_differentiable

from embadvisor import kernels
from embadvisor._constraints import Interval, Options
from embadvisor.kernels.hugepages import hugepage_empty
from embadvisor.methods._base import CompressedEmbedding, MethodConfig, TensorSpec
from embadvisor.methods.full import FullEmbedding, init_bound
from embadvisor.profiles.schema import TableSpec

__all__ = [
    "AffineQuantizedRows",
    "FusedQuantConfig",
    "FusedQuantEmbedding",
    "PostTrainingQuantConfig",
    "PostTrainingQuantEmbedding",
    "QuantizedRows",
    "code_dtype",
    "dequantize_affine",
    "pack_int4",
    "qmax_for",
    "quantize_affine",
    "quantize_symmetric",
    "stochastic_round",
    "unpack_int4",
]

#: Learning rate of the fused optimizer until the trainer calls ``on_train_start``.
DEFAULT_LR = 0.01
#: Row-wise Adagrad epsilon (FBGEMM's default).
ADAGRAD_EPS = 1e-8
#: Fused optimizers of the quantization-aware methods.
FUSED_OPTIMIZERS = ("rowwise_adagrad", "sgd")
#: Rows quantized per chunk in ``export()`` (bounds the fp32 temporaries on 10M-row tables).
CHUNK_ROWS = 1 << 20


def qmax_for(bits: int) -> int:
    """Largest symmetric code: 127 for int8, 32767 for int16."""
    return 2 ** (bits - 1) - 1


def code_dtype(bits: int) -> torch.dtype:
    return {8: torch.int8, 16: torch.int16}[bits]


def stochastic_round(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """``floor(x + u)`` with ``u ~ U[0, 1)``: rounds up with probability ``frac(x)`` (unbiased)."""
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return torch.floor(x + u)


def quantize_symmetric(w: torch.Tensor, qmax: int, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise absmax quantization with stochastic rounding.

    Args:
        w: fp32 rows ``[r, d]``.
        qmax: largest code (127 or 32767).
        generator: random source of the stochastic rounding (None = round to nearest).

    Returns:
        ``(codes, scale)``: float codes in ``[-qmax, qmax]`` (integral values) ``[r, d]`` and
        the per-row scale ``max|w| / qmax`` ``[r]`` (0 for an all-zero row, whose codes are 0).
    """
    scale = w.abs().amax(dim=1) / qmax
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    x = w / safe.unsqueeze(1)
    q = stochastic_round(x, generator) if generator is not None else torch.round(x)
    return q.clamp_(-qmax, qmax), scale


def quantize_affine(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row-wise asymmetric (min/max) quantization with round-to-nearest.

    Returns ``(codes uint8 [r, d] in [0, 2**bits - 1], scale [r], bias [r])`` with
    ``w ~ codes * scale + bias``; the error is at most ``scale / 2 = (max - min) / (2 (2**bits - 1))``
    per element, i.e. at most ``max|row| / (2**bits - 1)``.
    """
    levels = 2**bits - 1
    lo = w.amin(dim=1)
    hi = w.amax(dim=1)
    scale = (hi - lo) / levels
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.round((w - lo.unsqueeze(1)) / safe.unsqueeze(1)).clamp_(0, levels).to(torch.uint8)
    return codes, scale, lo


def dequantize_affine(codes: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return codes.to(scale.dtype) * scale.unsqueeze(-1) + bias.unsqueeze(-1)


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """``uint8`` codes in ``[0, 15]`` ``[r, d]`` -> ``[r, ceil(d / 2)]`` bytes (even column in the low nibble)."""
    r, d = codes.shape
    if d % 2:
        codes = torch.cat([codes, codes.new_zeros(r, 1)], dim=1)
    return codes[:, 0::2] | (codes[:, 1::2] << 4)


def unpack_int4(packed: torch.Tensor, d: int) -> torch.Tensor:
    """Inverse of :func:`pack_int4` on rows of any leading shape ``[*S, ceil(d / 2)]`` -> ``[*S, d]``."""
    lo = packed & 0x0F
    hi = packed >> 4
    out = torch.stack([lo, hi], dim=-1).flatten(-2)
    return out[..., :d]


# --------------------------------------------------------------------------- serving forms
class QuantizedRows(nn.Module):
    """Serving form of a symmetric row-quantized table: ``codes[id] * scale[id]`` (codes int8/int16).

    On the CPU, with a float32 scale and rows of a whole number of 4-byte words, each id's codes and
    scale are stored side by side in one packed row (``codes`` and ``scale`` are views of it): a
    lookup then reads one place in memory instead of two. The bytes are the same either way.
    """

    codes: torch.Tensor
    scale: torch.Tensor

    def __init__(self, codes: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = codes.shape
        codes, scale = _packed(codes, scale)
        self.register_buffer("codes", codes)
        self.register_buffer("scale", scale)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        out = kernels.quant_gather(flat, self.codes, self.scale)
        if out is None:
            out = self.codes.index_select(0, flat).to(self.scale.dtype) * self.scale.index_select(0, flat).unsqueeze(1)
        return out.reshape(*ids.shape, self.embedding_dim)

    def field_kernel(self) -> kernels.FieldKernel | None:
        kind = {torch.int8: kernels.QUANT8, torch.int16: kernels.QUANT16}.get(self.codes.dtype)
        if kind is None or self.scale.dtype != torch.float32:
            return None
        return kernels.FieldKernel(kind, self.codes, self.num_embeddings, aux=self.scale)


class AffineQuantizedRows(nn.Module):
    """Serving form of post-training quantization: ``uint8`` codes (int4: packed pairs) + row scale and min."""

    codes: torch.Tensor
    scale: torch.Tensor
    bias: torch.Tensor

    def __init__(self, codes: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, *, bits: int, dim: int) -> None:
        super().__init__()
        self.bits = bits
        self.num_embeddings = codes.shape[0]
        self.embedding_dim = dim
        self.register_buffer("codes", codes)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", bias)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        codes = self.codes.index_select(0, flat)
        if self.bits == 4:
            codes = unpack_int4(codes, self.embedding_dim)
        out = dequantize_affine(codes, self.scale.index_select(0, flat), self.bias.index_select(0, flat))
        return out.reshape(*ids.shape, self.embedding_dim)


def _packed(codes: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``codes`` and ``scale`` as views of one ``[n, row_bytes + 4]`` byte table (see QuantizedRows)."""
    row_bytes = codes.shape[1] * codes.element_size()
    if codes.device.type != "cpu" or scale.dtype != torch.float32 or row_bytes % 4 or codes.dim() != 2:
        return codes, scale
    packed = hugepage_empty((codes.shape[0], row_bytes + 4), torch.uint8)
    packed_codes = packed[:, :row_bytes].view(codes.dtype)
    packed_scale = packed[:, row_bytes:].view(torch.float32).squeeze(1)
    packed_codes.copy_(codes)
    packed_scale.copy_(scale)
    return packed_codes, packed_scale


def quantize_table_affine(weight: torch.Tensor, bits: int) -> AffineQuantizedRows:
    """Post-training quantization of a whole fp table, in chunks of rows (vectorised within a chunk)."""
    n, d = weight.shape
    width = (d + 1) // 2 if bits == 4 else d
    codes = torch.empty(n, width, dtype=torch.uint8, device=weight.device)
    scale = torch.empty(n, dtype=torch.float32, device=weight.device)
    bias = torch.empty(n, dtype=torch.float32, device=weight.device)
    with torch.no_grad():
        for start in range(0, n, CHUNK_ROWS):
            rows = slice(start, min(n, start + CHUNK_ROWS))
            c, s, b = quantize_affine(weight[rows].float(), bits)
            codes[rows] = pack_int4(c) if bits == 4 else c
            scale[rows] = s
            bias[rows] = b
    return AffineQuantizedRows(codes, scale, bias, bits=bits, dim=d)


# --------------------------------------------------------------------------- fused training
class _FusedLookup(torch.autograd.Function):
    """Dequantizing lookup whose backward applies the fused row update (and returns no gradient)."""

    @staticmethod
    def forward(ctx: Any, ids: torch.Tensor, anchor: torch.Tensor, module: FusedQuantEmbedding) -> torch.Tensor:
        ctx.module = module
        ctx.save_for_backward(ids)
        return module.dequantize(ids)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, None, None]:
        (ids,) = ctx.saved_tensors
        ctx.module.fused_update(ids, grad)
        return None, None, None


class FusedQuantEmbedding(CompressedEmbedding):
    """Integer table ``codes [n, d]`` (int8/int16) with per-row fp scale; ids ``[*S]`` -> ``[*S, d]``.

    In training mode with grad enabled, the lookup goes through a custom autograd Function whose
    backward updates the looked-up rows in place (fused optimizer, then stochastic
    re-quantization). The module has no trainable parameters: the trainer's optimizer has nothing
    to do for it, and one backward = one update of the rows it touched.

    Buffers: ``codes``; ``scale`` (per row, weight dtype); ``momentum`` (row-wise Adagrad state,
    one value per row, training only; absent with the ``sgd`` fused optimizer).

    Subclasses choose the initial code range (``init_levels``) and may override
    :meth:`requantize` (ALPT learns the scale there).
    """

    codes: torch.Tensor
    scale: torch.Tensor
    momentum: torch.Tensor | None

    def __init__(self, config: MethodConfig, table: TableSpec, *, bits: int, init_levels: int,
                 device: Any = None, dtype: Any = None) -> None:
        super().__init__(config, table, device=device, dtype=dtype)
        n, d = table.num_embeddings, table.embedding_dim
        fdtype = self._factory["dtype"]
        self.bits = bits
        self.qmax = qmax_for(bits)
        config = cast(FusedQuantConfig, config)
        self.fused_optimizer = config.fused_optimizer
        self.lr_scale = config.lr_scale
        self.lr = DEFAULT_LR * self.lr_scale
        self.seed = (int(config.seed) * 1_000_003 + zlib.crc32(table.name.encode())) % (2**63)
        self._generator: torch.Generator | None = None
        self.register_buffer("codes", torch.empty(n, d, dtype=code_dtype(bits), device=device))
        self.register_buffer("scale", torch.empty(n, dtype=fdtype, device=device))
        if self.fused_optimizer == "rowwise_adagrad":
            self.register_buffer("momentum", torch.empty(n, dtype=fdtype, device=device))
        else:
            self.register_buffer("momentum", None)
        if self.codes.device.type != "meta":
            # uniform init on +-init_bound, directly on the integer grid (no fp32 temporary)
            self.codes.random_(-init_levels, init_levels + 1)
            self.scale.fill_(init_bound(table) / init_levels)
            if self.momentum is not None:
                self.momentum.zero_()

    # -- hooks ---------------------------------------------------------------------------------
    def on_train_start(self, optimizer: str, lr: float) -> None:
        """The fused optimizer is the config's ``fused_optimizer``; it takes the trainer's lr (times ``lr_scale``)."""
        self.lr = float(lr) * self.lr_scale

    def export(self) -> nn.Module:
        """Codes and scales only (the optimizer state is dropped); same forward in eval mode."""
        return QuantizedRows(self.codes, self.scale).eval()

    # -- lookup ---------------------------------------------------------------------------------
    def dequantize(self, flat_ids: torch.Tensor) -> torch.Tensor:
        codes = self.codes.index_select(0, flat_ids)
        return codes.to(self.scale.dtype) * self.scale.index_select(0, flat_ids).unsqueeze(1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        if self.training and torch.is_grad_enabled():
            anchor = torch.empty(0, device=flat.device, requires_grad=True)
            out = _FusedLookup.apply(flat, anchor, self)
        else:
            out = self.dequantize(flat)
        return out.reshape(*ids.shape, self.embedding_dim)

    # -- fused update ---------------------------------------------------------------------------
    def generator(self) -> torch.Generator:
        dev = self.codes.device
        if self._generator is None or self._generator.device != dev:
            self._generator = torch.Generator(device=dev)
            self._generator.manual_seed(self.seed)
        return self._generator

    @torch.no_grad()
    def fused_update(self, flat_ids: torch.Tensor, grad: torch.Tensor) -> None:
        """One optimizer step on the rows ``flat_ids`` touched, with their output gradient ``[N, d]``."""
        if flat_ids.numel() == 0:
            return
        uniq, inv = torch.unique(flat_ids, return_inverse=True)
        g = torch.zeros(uniq.numel(), self.embedding_dim, dtype=torch.float32, device=grad.device)
        g.index_add_(0, inv, grad.float())
        w = self.codes.index_select(0, uniq).float() * self.scale.index_select(0, uniq).float().unsqueeze(1)
        if self.momentum is not None:
            mom = self.momentum.index_select(0, uniq).float() + g.square().mean(dim=1)
            self.momentum.index_copy_(0, uniq, mom.to(self.momentum.dtype))
            w.addcmul_(g, (-self.lr / (mom.sqrt() + ADAGRAD_EPS)).unsqueeze(1))
        else:
            w.add_(g, alpha=-self.lr)
        codes, scale = self.requantize(uniq, w, g, flat_ids.numel())
        self.codes.index_copy_(0, uniq, codes.to(self.codes.dtype))
        self.scale.index_copy_(0, uniq, scale.to(self.scale.dtype))

    def requantize(self, rows: torch.Tensor, w: torch.Tensor, grad: torch.Tensor,
                   num_lookups: int) -> tuple[torch.Tensor, torch.Tensor]:
        """New codes and scales of the updated fp32 rows ``w``: per-row absmax scale, stochastic rounding."""
        return quantize_symmetric(w, self.qmax, self.generator())


@dataclass(frozen=True, kw_only=True)
class FusedQuantConfig(MethodConfig):
    """Shared fields of the fused quantization-aware methods (not registered itself).

    Args:
        fused_optimizer: the row update fused into the backward: ``"rowwise_adagrad"`` (one fp32
            accumulator per row, training only) or ``"sgd"`` (no state).
        lr_scale: fused learning rate = ``lr_scale`` x the trainer's learning rate.
        seed: seed of the stochastic-rounding generator (mixed with the table name).
    """

    export_tolerance: ClassVar[float] = 0.0

    fused_optimizer: str = field(default="rowwise_adagrad", metadata={"constraint": Options(FUSED_OPTIMIZERS)})
    lr_scale: float = field(default=1.0, metadata={"constraint": Interval(float, 0.0, None, closed="neither")})
    seed: int = field(default=0, metadata={"constraint": Interval(int, 0, 2**31 - 1)})

    @classmethod
    def search_space(cls, table: TableSpec) -> dict[str, Any]:
        return {
            "fused_optimizer": CategoricalDistribution(list(FUSED_OPTIMIZERS)),
            "lr_scale": FloatDistribution(0.1, 10.0, log=True),
        }

    @classmethod
    def example_configs(cls, table: TableSpec) -> list[Any]:
        return [cls(), cls(fused_optimizer="sgd", lr_scale=10.0, seed=3)]

    def code_bits(self) -> int:
        """Bits per stored code (8 or 16)."""
        raise NotImplementedError

    def row_specs(self, table: TableSpec) -> list[TensorSpec]:
        """Codes, per-row scale and the fused optimizer's per-row state (training only)."""
        n, d = table.num_embeddings, table.embedding_dim
        specs = [
            TensorSpec("codes", (n, d), f"int{self.code_bits()}", trainable=False),
            TensorSpec("scale", (n,), trainable=False),
        ]
        if self.fused_optimizer == "rowwise_adagrad":
            specs.append(TensorSpec("momentum", (n,), trainable=False, serve=False))
        return specs

    def tensor_specs(self, table: TableSpec) -> list[TensorSpec]:
        return self.row_specs(table)


# --------------------------------------------------------------------------- post-training quantization
class PostTrainingQuantEmbedding(FullEmbedding):
    """Training form of PTQ: the full table (``nn.Embedding(n, d, sparse=True)``, as ``full``);
    :meth:`export` quantizes it row-wise (asymmetric min/max, round to nearest)."""

    bits: ClassVar[int] = 8

    def export(self) -> nn.Module:
        return quantize_table_affine(self.embedding.weight.detach(), self.bits).eval()


@dataclass(frozen=True, kw_only=True)
class PostTrainingQuantConfig(MethodConfig):
    """Shared part of the PTQ methods (not registered itself; no hyperparameters)."""

    def code_bits(self) -> int:
        raise NotImplementedError

    def tensor_specs(self, table: TableSpec) -> list[TensorSpec]:
        return [TensorSpec("embedding.weight", (table.num_embeddings, table.embedding_dim))]

    def serve_specs(self, table: TableSpec) -> list[TensorSpec] | None:
        n, d = table.num_embeddings, table.embedding_dim
        width = (d + 1) // 2 if self.code_bits() == 4 else d
        return [
            TensorSpec("codes", (n, width), "uint8", trainable=False),
            TensorSpec("scale", (n,), "fp32", trainable=False),
            TensorSpec("bias", (n,), "fp32", trainable=False),
        ]
