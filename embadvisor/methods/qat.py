"""INT8 and INT16 quantization-aware training with real integer storage and a fused row update.

This module registers two methods that differ only in the code width: ``int8`` (255 levels per
row) and ``int16`` (65,535 levels per row). The table is stored as an integer buffer
``codes [n, d]`` (``int8`` or ``int16``) with one fp32 scale per row (symmetric absmax:
``w = codes * scale``, ``scale = max|row| / qmax`` with qmax = 127 or 32767). Lookups dequantize.
There is no fp32 shadow table: the gradient of the looked-up rows is applied inside the backward
pass (as FBGEMM's fused table-batched-embedding optimizers do): row-wise Adagrad (or SGD) on the
dequantized rows, whose new scale is re-derived from their new absmax, then stochastic rounding
back to integer codes (seeded generator, unbiased). The trainer's optimizer never sees the table.

Deviations from the benchmark (``--method quantize``): it keeps one global scale (default 0.01,
which rounds the ±3e-4 initialisation to {-0.01, 0, 0.01}) and a full fp32 Adam state; here each
row has its own scale, adapted at every update, so the initial values (uniform on ±sqrt(1/n),
placed directly on the integer grid) and any later growth are represented without clipping,
and the optimizer state is one value per row.

Memory:
    serving ``int8``: ``n·d`` int8 codes + ``n`` fp32 scales = ``n·(d + 4)`` bytes (0.3125 of
    fp32 at d = 16); ``int16``: ``2·n·d`` bytes of codes + ``n`` fp32 scales = ``n·(2d + 4)``
    bytes (0.5625 of fp32 at d = 16). Training adds the fused row-wise Adagrad state, ``n``
    fp32 (none with ``fused_optimizer="sgd"``). No trainable parameters, so no trainer
    optimizer state.

References:
    Zhang et al., "Experimental Analysis of Large-scale Learnable Vector Storage Compression",
    VLDB 2024, arXiv:2311.15578 (INT8/INT16 baseline). Stochastic rounding for low-precision
    training: Gupta et al., "Deep Learning with Limited Numerical Precision", ICML 2015,
    arXiv:1502.02551. Fused row-wise optimizer: FBGEMM_GPU table-batched embeddings (as
    used by TorchRec).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from embadvisor.methods._base import CompressedEmbedding, MethodTags
from embadvisor.methods._quant import FusedQuantConfig, FusedQuantEmbedding, qmax_for
from embadvisor.methods._registry import register_method
from embadvisor.profiles.schema import TableSpec

__all__ = ["Int8Config", "Int8Embedding", "Int16Config", "Int16Embedding", "IntQatConfig", "IntQatEmbedding"]

#: The methods this module registers (one per code width).
METHODS = ("int8", "int16")


def _tags(baseline: str) -> MethodTags:
    return MethodTags(
        category="quantization", compresses_training=True, layout="global", serve_differs_from_train=True,
        reference=f"Zhang et al., VLDB 2024, arXiv:2311.15578 ({baseline} baseline); Gupta et al., ICML 2015, "
                  "arXiv:1502.02551",
    )


class IntQatEmbedding(FusedQuantEmbedding):
    """Integer codes of ``config.bits`` bits + per-row scale with a fused update; ids ``[*S]`` -> ``[*S, d]``."""

    def __init__(self, config: IntQatConfig, table: TableSpec, *, device: Any = None, dtype: Any = None) -> None:
        super().__init__(config, table, bits=config.bits, init_levels=qmax_for(config.bits), device=device,
                         dtype=dtype)


class Int8Embedding(IntQatEmbedding):
    """int8 codes + per-row scale with a fused update; ids ``[*S]`` -> ``[*S, d]``."""


class Int16Embedding(IntQatEmbedding):
    """int16 codes + per-row scale with a fused update; ids ``[*S]`` -> ``[*S, d]``."""


@dataclass(frozen=True, kw_only=True)
class IntQatConfig(FusedQuantConfig):
    """Shared part of ``int8`` and ``int16`` (not registered itself): the code width ``bits``."""

    bits: ClassVar[int]

    def code_bits(self) -> int:
        return self.bits


@register_method
@dataclass(frozen=True, kw_only=True)
class Int8Config(IntQatConfig):
    """INT8 quantization-aware training (real int8 storage, per-row scale, fused update).

    Args:
        fused_optimizer: ``"rowwise_adagrad"`` (default; one fp32 accumulator per row during
            training) or ``"sgd"``.
        lr_scale: the fused update's learning rate is ``lr_scale`` x the trainer's.
        seed: seed of the stochastic rounding.

    Example:
        >>> Int8Config().memory(TableSpec("c", 1000, 16)).serve_bytes
        20000
    """

    name: ClassVar[str] = "int8"
    bits: ClassVar[int] = 8
    module_class: ClassVar[type[CompressedEmbedding]] = Int8Embedding
    tags: ClassVar[MethodTags] = _tags("INT8")


@register_method
@dataclass(frozen=True, kw_only=True)
class Int16Config(IntQatConfig):
    """INT16 quantization-aware training (real int16 storage, per-row scale, fused update).

    Args:
        fused_optimizer: ``"rowwise_adagrad"`` (default; one fp32 accumulator per row during
            training) or ``"sgd"``.
        lr_scale: the fused update's learning rate is ``lr_scale`` x the trainer's.
        seed: seed of the stochastic rounding.

    Example:
        >>> Int16Config().memory(TableSpec("c", 1000, 16)).serve_bytes
        36000
    """

    name: ClassVar[str] = "int16"
    bits: ClassVar[int] = 16
    module_class: ClassVar[type[CompressedEmbedding]] = Int16Embedding
    tags: ClassVar[MethodTags] = _tags("INT16")
