"""The method plugin contract: config (hyperparameters), module (learned state), memory.

A built-in method is one file ``embadvisor/methods/<name>.py`` that defines an ``<X>Embedding``
(:class:`CompressedEmbedding`) and an ``@register_method`` ``<X>Config`` (:class:`MethodConfig`);
variants of one method may share a file that lists their names in ``METHODS``.

Memory is described once, analytically: :meth:`MethodConfig.tensor_specs` lists every parameter
and buffer the built module will hold (name, shape, dtype). Training and serving bytes, optimizer
state and the breakdown are all derived from that list by :func:`estimate`, and the contract
suite checks that the list equals the module built on the meta device, tensor by tensor. So a
memory figure can never drift from the code.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np
import torch
from torch import nn

from embadvisor import kernels
from embadvisor._constraints import validate_fields
from embadvisor.errors import InvalidConfigError
from embadvisor.profiles.schema import TableSpec
from embadvisor.units import DTYPE_BYTES

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution

__all__ = [
    "CATEGORIES",
    "INPUTS",
    "OPTIMIZERS",
    "SCOPES",
    "CompressedEmbedding",
    "MemoryEstimate",
    "MethodConfig",
    "MethodTags",
    "Stage",
    "TensorSpec",
    "estimate",
    "torch_dtype",
]

CATEGORIES = (
    "baseline",
    "inter-feature static",
    "inter-feature adaptive",
    "dimension reduction",
    "pruning",
    "quantization",
)
#: Optimizer state per trainable element: Adam keeps two moments, Adagrad one, row-wise Adagrad
#: one value per row (1/d of the elements), SGD none (torchrec's multipliers).
OPTIMIZERS = ("adam", "adagrad", "rowwise_adagrad", "sgd")
SCOPES = ("serve", "train")
#: What a method compresses: a trained embedding table, or a frozen corpus of vectors.
INPUTS = ("table", "vectors")

_TORCH_DTYPES = {
    "fp64": torch.float64, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
    "int64": torch.int64, "int32": torch.int32, "int16": torch.int16, "int8": torch.int8,
    "uint8": torch.uint8,
}
_DTYPE_NAMES = {v: k for k, v in _TORCH_DTYPES.items()}

C = TypeVar("C", bound="MethodConfig")


def torch_dtype(name: str) -> torch.dtype:
    return _TORCH_DTYPES[name]


@dataclass(frozen=True)
class MethodTags:
    """Capability flags the advisor, the trainer and the contract suite read (never names).

    Args:
        category: the paper's taxonomy (one of :data:`CATEGORIES`).
        compresses_training: whether training memory shrinks too (not only serving memory).
        reference: the paper, venue and arXiv id.
        layout: the preferred table layout: ``"global"`` (one table over all fields, ids offset
            per field) or ``"per_field"`` (one table per field).
        hash_based: ids go through a hash. The contract checks that the hash sees every bit of an
            id (consecutive ids near 2**31 and 2**40 get distinct vectors: no float32 on the way).
        supports_unseen_ids: ids beyond the training vocabulary still get a vector. The contract
            checks it: ids at and far beyond ``num_embeddings`` give finite vectors in training,
            in eval mode and from ``export()``.
        needs_frequencies: ``prepare()`` needs per-id counts.
        multi_stage: more than one training stage.
        serve_differs_from_train: ``export()`` returns a different (smaller) form.
        post_training_only: compression happens after training (PTQ).
        deterministic_forward: the forward pass has no randomness in eval mode. The contract
            checks it (repeated lookups and same-seed builds give identical vectors) and skips
            those comparisons for a method that sets it False.
        data_dependent_memory: the serving size depends on what training learns.
        input: what the method compresses: ``"table"`` (a trained embedding table, built with
            :meth:`MethodConfig.build`) or ``"vectors"`` (a frozen corpus of already-trained
            vectors, fitted after training with ``fit(corpus)``; see :mod:`embadvisor.methods._vectors`).
            The table code paths (contract suite, trained search, ``methods --solve``) list only
            ``"table"`` methods, the vector paths only ``"vectors"`` ones.
    """

    category: str
    compresses_training: bool
    reference: str
    layout: str = "per_field"
    hash_based: bool = False
    supports_unseen_ids: bool = False
    needs_frequencies: bool = False
    multi_stage: bool = False
    serve_differs_from_train: bool = False
    post_training_only: bool = False
    deterministic_forward: bool = True
    data_dependent_memory: bool = False
    input: str = "table"

    def __post_init__(self) -> None:
        if self.category not in CATEGORIES:
            raise InvalidConfigError(f"`category` must be one of {CATEGORIES}, but got category={self.category!r}.")
        if self.layout not in ("global", "per_field"):
            raise InvalidConfigError(f"`layout` must be 'global' or 'per_field', but got layout={self.layout!r}.")
        if self.input not in INPUTS:
            raise InvalidConfigError(f"`input` must be one of {INPUTS}, but got input={self.input!r}.")


@dataclass(frozen=True)
class Stage:
    """A training phase with its share of the training budget."""

    name: str
    budget_fraction: float = 1.0
    description: str = ""


@dataclass(frozen=True)
class TensorSpec:
    """One tensor the built module holds.

    Args:
        name: dotted name as in ``module.named_parameters()`` / ``named_buffers()``.
        shape: its shape.
        dtype: ``"float"`` (the weight dtype the module is built with) or a fixed dtype name
            such as ``"int8"``, ``"int32"``, ``"int64"``.
        trainable: a parameter (True) or a buffer (False).
        serve: needed to serve (False for training-only state such as optimizer buffers).
    """

    name: str
    shape: tuple[int, ...]
    dtype: str = "float"
    trainable: bool = True
    serve: bool = True

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def nbytes(self, weight_dtype: str = "fp32") -> int:
        return self.numel * DTYPE_BYTES[weight_dtype if self.dtype == "float" else self.dtype]


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of one configured table (or a sum of tables), modelled on torchrec's Storage.

    Args:
        param_bytes: bytes of trainable parameters.
        buffer_bytes: bytes of buffers (hash seeds, integer tables, remaps, fused-optimizer state).
        optimizer_bytes: optimizer state the trainer's optimizer keeps for the parameters.
        train_bytes: ``param_bytes + buffer_bytes + optimizer_bytes`` (gradients are not counted:
            the tables get sparse, row-wise gradients).
        serve_bytes: bytes of the serving form (``export()``).
        breakdown: bytes per tensor name (training form), plus ``optimizer`` and ``serve:<name>``.
    """

    param_bytes: int = 0
    buffer_bytes: int = 0
    optimizer_bytes: int = 0
    train_bytes: int = 0
    serve_bytes: int = 0
    breakdown: Mapping[str, int] = field(default_factory=dict)

    def __add__(self, other: MemoryEstimate) -> MemoryEstimate:
        bd: dict[str, int] = dict(self.breakdown)
        for k, v in other.breakdown.items():
            bd[k] = bd.get(k, 0) + v
        return MemoryEstimate(
            self.param_bytes + other.param_bytes,
            self.buffer_bytes + other.buffer_bytes,
            self.optimizer_bytes + other.optimizer_bytes,
            self.train_bytes + other.train_bytes,
            self.serve_bytes + other.serve_bytes,
            bd,
        )

    def bytes_for(self, scope: str) -> int:
        if scope not in SCOPES:
            raise InvalidConfigError(f"`scope` must be one of {SCOPES}, but got scope={scope!r}.")
        return self.serve_bytes if scope == "serve" else self.train_bytes

    def fits_in(self, budget_bytes: int, scope: str = "serve") -> bool:
        return self.bytes_for(scope) <= budget_bytes

    def ratio_to(self, other: MemoryEstimate, scope: str = "serve") -> float:
        return self.bytes_for(scope) / max(1, other.bytes_for(scope))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"breakdown": dict(self.breakdown)}


def optimizer_state_elements(spec: TensorSpec, optimizer: str) -> int:
    """Optimizer-state elements (fp32) the trainer's optimizer keeps for one parameter."""
    if optimizer not in OPTIMIZERS:
        raise InvalidConfigError(f"`optimizer` must be one of {OPTIMIZERS}, but got optimizer={optimizer!r}.")
    if not spec.trainable:
        return 0
    if optimizer == "adam":
        return 2 * spec.numel
    if optimizer == "adagrad":
        return spec.numel
    if optimizer == "rowwise_adagrad":
        return spec.numel // spec.shape[-1] if len(spec.shape) >= 2 else spec.numel
    return 0


def estimate(
    specs: Sequence[TensorSpec],
    serve_specs: Sequence[TensorSpec] | None = None,
    *,
    weight_dtype: str = "fp32",
    optimizer: str = "adam",
) -> MemoryEstimate:
    """Derive the memory figures from the tensor lists of the training and serving forms."""
    if weight_dtype not in ("fp32", "fp16", "bf16", "fp64"):
        raise InvalidConfigError(f"`weight_dtype` must be fp32, fp16, bf16 or fp64, but got {weight_dtype!r}.")
    params = sum(s.nbytes(weight_dtype) for s in specs if s.trainable)
    buffers = sum(s.nbytes(weight_dtype) for s in specs if not s.trainable)
    # Optimizer moments are kept in fp32 whatever the weight dtype (as torch's optimizers do
    # for fp32 weights; for low-precision weights this is the conservative figure).
    opt = sum(optimizer_state_elements(s, optimizer) for s in specs) * 4
    serve = [s for s in specs if s.serve] if serve_specs is None else list(serve_specs)
    bd: dict[str, int] = {s.name: s.nbytes(weight_dtype) for s in specs}
    if opt:
        bd["optimizer"] = opt
    for s in serve:
        bd[f"serve:{s.name}"] = s.nbytes(weight_dtype)
    return MemoryEstimate(
        param_bytes=params,
        buffer_bytes=buffers,
        optimizer_bytes=opt,
        train_bytes=params + buffers + opt,
        serve_bytes=sum(s.nbytes(weight_dtype) for s in serve),
        breakdown=bd,
    )


def module_specs(module: nn.Module) -> list[TensorSpec]:
    """The tensor list of a real (or meta) module, in the same form as ``tensor_specs``."""
    out = []
    for name, p in module.named_parameters():
        out.append(TensorSpec(name, tuple(p.shape), _spec_dtype(p.dtype), trainable=True))
    for name, b in module.named_buffers():
        out.append(TensorSpec(name, tuple(b.shape), _spec_dtype(b.dtype), trainable=False))
    return out


def _spec_dtype(dt: torch.dtype) -> str:
    return "float" if dt.is_floating_point else _DTYPE_NAMES[dt]


def frequency_order(frequencies: np.ndarray | None, n: int) -> np.ndarray:
    """Ids most frequent first (ties by id) from per-id counts; ``arange(n)`` when counts are None.

    Raises:
        InvalidConfigError: when the counts do not hold exactly one value per id.
    """
    if frequencies is None:
        return np.arange(n, dtype=np.int64)
    counts = np.asarray(frequencies)
    if counts.shape != (n,):
        raise InvalidConfigError(
            f"`frequencies` must hold one count per id, of shape ({n},), but got frequencies.shape={counts.shape}."
        )
    return np.argsort(-counts.astype(np.float64), kind="stable").astype(np.int64)


def frequency_ranks(frequencies: np.ndarray | None, n: int) -> np.ndarray:
    """Each id's frequency rank (0 = most frequent); the identity when counts are None."""
    order = frequency_order(frequencies, n)
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n, dtype=np.int64)
    return rank


def measured_bytes(module: nn.Module) -> int:
    """Bytes of every parameter and buffer a module really holds."""
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


class CompressedEmbedding(nn.Module):
    """Base of every method's module: int64 ids of any leading shape -> ``[*S, embedding_dim]``.

    Subclasses implement :meth:`forward` and may override the no-op hooks the generic trainer
    calls. The trainer never branches on the method name.
    """

    def __init__(
        self,
        config: MethodConfig,
        table: TableSpec,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.table = table
        self.num_embeddings = table.num_embeddings
        self.embedding_dim = table.embedding_dim
        self._factory: dict[str, Any] = {"device": device, "dtype": dtype or torch.float32}

    @property
    def stages(self) -> tuple[Stage, ...]:
        return type(self.config).stages

    # -- hooks (no-ops by default) -----------------------------------------------------------
    def prepare(self, frequencies: np.ndarray | None) -> None:
        """Data-dependent set-up from per-id counts (required when ``needs_frequencies``)."""

    def on_train_start(self, optimizer: str, lr: float) -> None:
        """Called once before training with the trainer's optimizer name and learning rate."""

    def on_stage_start(self, stage: Stage) -> None:
        """Called when a training stage starts."""

    def on_step(self, step: int) -> None:
        """Called after every optimizer step."""

    def on_epoch_end(self, epoch: int, stage: Stage) -> None:
        """Called at the end of every epoch."""

    def regularization_loss(self) -> torch.Tensor | None:
        """Extra loss the trainer adds to the task loss, or None."""
        return None

    def sparse_parameters(self) -> list[nn.Parameter]:
        """Parameters that receive sparse (row-wise) gradients; the trainer gives them a sparse optimizer."""
        out: list[nn.Parameter] = []
        for m in self.modules():
            if isinstance(m, nn.Embedding) and m.sparse and isinstance(m.weight, nn.Parameter):
                out.append(m.weight)
        return out

    def export(self) -> nn.Module:
        """The serving form, with the same forward contract (default: this module in eval mode)."""
        return self.eval()

    def field_kernel(self) -> kernels.FieldKernel | None:
        """This module's serving lookup in the fused kernel's terms (:class:`~embadvisor.kernels.FieldKernel`),
        or None (default). In the per-field layout, when every field's serving module has one, the
        collection embeds all fields in one pass of the C kernel instead of one torch lookup per field."""
        return None

    def unmet_target(self) -> str | None:
        """Why the serving form is larger than the serve estimate, or None when it is not.

        Only data-dependent methods can miss their target (e.g. Dedup without enough similar
        blocks); they override this with a one-line reason.
        """
        return None

    def measured_memory(self) -> int:
        return measured_bytes(self)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, config={self.config!r}"


@dataclass(frozen=True, kw_only=True)
class MethodConfig:
    """Base of every method config: frozen hyperparameters, validated eagerly.

    Class attributes a method sets: ``name`` (registry key), ``module_class``,
    ``tags``, ``stages``, and for budget solving ``size_knob`` (the field that controls the size)
    with ``knob_increasing`` (memory grows with the knob). Methods with a knob implement
    :meth:`knob_bounds`; :meth:`from_budget` then bisects it generically.
    """

    name: ClassVar[str] = ""
    module_class: ClassVar[type[CompressedEmbedding]]
    tags: ClassVar[MethodTags]
    stages: ClassVar[tuple[Stage, ...]] = (Stage("train", 1.0),)
    size_knob: ClassVar[str | None] = None
    knob_increasing: ClassVar[bool] = True

    def __post_init__(self) -> None:
        validate_fields(self)

    # -- contract -------------------------------------------------------------------------
    @classmethod
    def search_space(cls, table: TableSpec) -> dict[str, BaseDistribution]:
        """Optuna distributions keyed by field name (ranges may depend on the table)."""
        return {}

    @classmethod
    def example_configs(cls: type[C], table: TableSpec) -> list[C]:
        """One to four small configs covering every categorical branch."""
        return [cls()]

    def check_feasible(self, table: TableSpec) -> str | None:
        """Why this config cannot apply to ``table``, or None."""
        return None

    def tensor_specs(self, table: TableSpec) -> list[TensorSpec]:
        """Every parameter and buffer :meth:`build` creates, in the training form."""
        raise NotImplementedError

    def serve_specs(self, table: TableSpec) -> list[TensorSpec] | None:
        """The tensors of the serving form when it differs (``export()``); None = the ``serve`` ones."""
        return None

    def memory(self, table: TableSpec, *, weight_dtype: str = "fp32", optimizer: str = "adam") -> MemoryEstimate:
        """Analytic memory of this config on ``table`` (no allocation)."""
        return estimate(self.tensor_specs(table), self.serve_specs(table), weight_dtype=weight_dtype,
                        optimizer=optimizer)

    def build(
        self,
        table: TableSpec,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> CompressedEmbedding:
        reason = self.check_feasible(table)
        if reason is not None:
            raise InvalidConfigError(f"{self.name} cannot be built for table {table.name!r}: {reason}")
        return self.module_class(self, table, device=device, dtype=dtype)

    # -- budget solving -------------------------------------------------------------------------
    @classmethod
    def knob_bounds(cls, table: TableSpec, **fixed: Any) -> tuple[float, float]:
        """Smallest and largest sensible value of ``size_knob`` for ``table``."""
        raise NotImplementedError

    @classmethod
    def from_budget(
        cls: type[C],
        table: TableSpec,
        budget_bytes: float,
        *,
        scope: str = "serve",
        weight_dtype: str = "fp32",
        optimizer: str = "adam",
        **fixed: Any,
    ) -> C | None:
        """The largest config (by ``size_knob``) whose ``scope`` bytes fit ``budget_bytes``; None if none fits."""

        def cost(cfg: C) -> int:
            return cfg.memory(table, weight_dtype=weight_dtype, optimizer=optimizer).bytes_for(scope)

        def make(value: float) -> C | None:
            kw = dict(fixed)
            if cls.size_knob is not None:
                kw[cls.size_knob] = value
            try:
                cfg = cls(**kw)
            except InvalidConfigError:
                return None
            return cfg if cfg.check_feasible(table) is None else None

        if cls.size_knob is None:
            cfg = make(0)
            return cfg if cfg is not None and cost(cfg) <= budget_bytes else None
        lo, hi = cls.knob_bounds(table, **fixed)
        knob_type = next(f.type for f in dataclasses.fields(cls) if f.name == cls.size_knob)
        integer = knob_type in (int, "int")
        small, large = (lo, hi) if cls.knob_increasing else (hi, lo)  # small = least memory

        def fits(v: float) -> bool:
            cfg = make(v)
            return cfg is not None and cost(cfg) <= budget_bytes

        if not fits(small):
            return None
        if fits(large):
            return make(large)
        good, bad = small, large
        for _ in range(64 if not integer else 200):
            if integer and abs(bad - good) <= 1:
                break
            mid = (good + bad) / 2
            if integer:
                mid = int(math.floor(mid)) if good < bad else int(math.ceil(mid))
                if mid in (good, bad):
                    break
            if fits(mid):
                good = mid
            else:
                bad = mid
            if not integer and abs(bad - good) <= 1e-6 * max(1.0, abs(good)):
                break
        return make(good)

    @classmethod
    def plan_tables(
        cls,
        tables: Sequence[TableSpec],
        budget_bytes: float,
        *,
        scope: str = "serve",
        weight_dtype: str = "fp32",
        optimizer: str = "adam",
        **fixed: Any,
    ) -> list[MethodConfig | None] | None:
        """Optional workload-level solver (e.g. MDE's power-law dims across fields).

        Return one config per table (None = keep that table uncompressed) whose total fits
        ``budget_bytes``, or None when no plan fits. The default raises NotImplementedError and
        :func:`embadvisor.methods.solve` then uses its generic per-table ratio search.
        """
        raise NotImplementedError

    @classmethod
    def min_config(cls: type[C], table: TableSpec, **fixed: Any) -> C | None:
        """The smallest-memory config for ``table`` (knob at its memory-minimising bound)."""
        if cls.size_knob is None:
            try:
                cfg = cls(**fixed)
            except InvalidConfigError:
                return None
        else:
            lo, hi = cls.knob_bounds(table, **fixed)
            try:
                cfg = cls(**{**fixed, cls.size_knob: lo if cls.knob_increasing else hi})
            except InvalidConfigError:
                return None
        return cfg if cfg.check_feasible(table) is None else None

    # -- (de)serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise InvalidConfigError(
                f"{cls.__name__} got unknown parameters {unknown}; valid parameters: {sorted(names)}."
            )
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps({"method": self.name, "params": self.to_dict()}, sort_keys=True)
