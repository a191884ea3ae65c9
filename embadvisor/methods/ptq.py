"""Post-training INT8 and INT4 quantization: train the full table, serve codes with a per-row scale and minimum.

This module registers two methods that differ only in the code width: ``ptq_int8`` and
``ptq_int4``. Training is exactly ``full`` (``nn.Embedding(n, d, sparse=True)``, the trainer's
optimizer). ``export()`` quantizes every row asymmetrically to ``2^b`` levels:
``w ≈ codes · scale + min`` with ``scale = (max − min) / (2^b − 1)`` and round-to-nearest codes
in ``[0, 2^b − 1]`` (``[0, 255]`` for int8; ``[0, 15]`` for int4, two codes packed per byte, even
column in the low nibble, unpacked on lookup). The serving module holds only the codes and the two
fp32 row parameters. The per-element error is at most ``scale / 2 ≤ max|row| / (2^b − 1)``
(the declared ``export_tolerance``).

Memory:
    training: ``n·d`` fp32 weights plus the trainer's optimizer state (as ``full``);
    serving ``ptq_int8``: ``n·d`` uint8 codes + ``n`` fp32 scales + ``n`` fp32 minima
    = ``n·(d + 8)`` bytes (0.375 of fp32 at d = 16); ``ptq_int4``: ``n·ceil(d/2)`` bytes of
    packed codes + ``n`` fp32 scales + ``n`` fp32 minima = ``n·(ceil(d/2) + 8)`` bytes (0.25 of
    fp32 at d = 16).

References:
    Guan et al., "Post-Training 4-bit Quantization on Embedding Tables", arXiv:1911.02079
    (2019) (row-wise min/max uniform quantization of embedding tables, as in FBGEMM's fused
    8-bit rowwise format); Zhang et al., VLDB 2024, arXiv:2311.15578 (offline ``Quantizer``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from embadvisor.methods._base import CompressedEmbedding, MethodTags
from embadvisor.methods._quant import PostTrainingQuantConfig, PostTrainingQuantEmbedding
from embadvisor.methods._registry import register_method

__all__ = ["PtqInt4Config", "PtqInt4Embedding", "PtqInt8Config", "PtqInt8Embedding"]

#: The methods this module registers (one per code width).
METHODS = ("ptq_int8", "ptq_int4")

_TAGS = MethodTags(
    category="quantization", compresses_training=False, layout="global", post_training_only=True,
    serve_differs_from_train=True,
    reference="Guan et al., Post-Training 4-bit Quantization on Embedding Tables, arXiv:1911.02079 (2019)",
)


class PtqInt8Embedding(PostTrainingQuantEmbedding):
    """Full fp table in training; ``export()`` -> uint8 codes + row scale and min. ids ``[*S]`` -> ``[*S, d]``."""

    bits: ClassVar[int] = 8


class PtqInt4Embedding(PostTrainingQuantEmbedding):
    """Full fp table in training; ``export()`` -> packed int4 codes + row scale and min. ids ``[*S]`` -> ``[*S, d]``."""

    bits: ClassVar[int] = 4


@dataclass(frozen=True, kw_only=True)
class _PtqConfig(PostTrainingQuantConfig):
    """Shared part of ``ptq_int8`` and ``ptq_int4`` (not registered itself): tags and the code width ``bits``."""

    tags: ClassVar[MethodTags] = _TAGS
    bits: ClassVar[int]

    def code_bits(self) -> int:
        return self.bits


@register_method
@dataclass(frozen=True, kw_only=True)
class PtqInt8Config(_PtqConfig):
    """Post-training row-wise INT8 quantization (no hyperparameters).

    Args:
        (none)

    Example:
        >>> PtqInt8Config().memory(TableSpec("c", 1000, 16)).serve_bytes
        24000
    """

    name: ClassVar[str] = "ptq_int8"
    bits: ClassVar[int] = 8
    module_class: ClassVar[type[CompressedEmbedding]] = PtqInt8Embedding
    #: max |export - trained| / max |trained|: at most half a step, (max - min) / 510 <= max|row| / 255.
    export_tolerance: ClassVar[float] = 1 / 255


@register_method
@dataclass(frozen=True, kw_only=True)
class PtqInt4Config(_PtqConfig):
    """Post-training row-wise INT4 quantization (no hyperparameters).

    Args:
        (none)

    Example:
        >>> PtqInt4Config().memory(TableSpec("c", 1000, 16)).serve_bytes
        16000
    """

    name: ClassVar[str] = "ptq_int4"
    bits: ClassVar[int] = 4
    module_class: ClassVar[type[CompressedEmbedding]] = PtqInt4Embedding
    #: max |export - trained| / max |trained|: at most half a step, (max - min) / 30 <= max|row| / 15.
    export_tolerance: ClassVar[float] = 1 / 15
