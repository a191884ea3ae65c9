"""CTR models (DLRM, DCN, WDL, DeepFM) over any embedding collection, and the CTR task engine.

Models see an :class:`~embadvisor.methods.EmbeddingCollection` and never know which compression
method is inside. Single-valued fields are looked up together; multi-hot fields (padded with -1)
are sum-pooled per field.

:meth:`CtrEngine.to` puts the engine on the model's device: the whole tensors when they fit there
(:func:`embadvisor.devices.keep_on_device`), else each batch is cut on the CPU and moved alone.
Predictions come back to the CPU for the metrics.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from embadvisor import devices
from embadvisor._checks import check_fits_memory
from embadvisor.errors import UnknownNameError, suggest
from embadvisor.methods import EmbeddingCollection
from embadvisor.profiles.schema import TableSpec
from embadvisor.tasks.metrics import auc, logloss

__all__ = ["CTR_MODELS", "CtrEngine", "CtrTensors", "build_ctr_model"]


@dataclass
class CtrTensors:
    """A CTR dataset as tensors, with its splits.

    Args:
        tables: one table per field: the single-valued fields first, then the multi-hot ones.
        ids: ``[N, F1]`` int64 ids of the single-valued fields.
        multi: one ``[N, L]`` int64 array per multi-hot field, padded with -1.
        dense: ``[N, D]`` float32 dense features, or None.
        labels: ``[N]`` float32 labels in {0, 1}.
        splits: row indices per split name (``train``, ``valid``, ``test``).
        counts: per-field id counts on the training split (frequency-aware methods), or None.
        split_policy: how the splits were made (recorded in reports).
    """

    tables: list[TableSpec]
    ids: torch.Tensor
    multi: list[torch.Tensor]
    dense: torch.Tensor | None
    labels: torch.Tensor
    splits: dict[str, torch.Tensor]
    counts: list[np.ndarray] | None = None
    split_policy: dict | None = None

    @property
    def num_dense(self) -> int:
        return 0 if self.dense is None else int(self.dense.shape[1])

    def tensor_bytes(self) -> int:
        """Bytes of the tensors a device copy holds (ids, multi-hot ids, dense features, labels, splits)."""
        ts = [self.ids, *self.multi, self.labels, *self.splits.values(), *([self.dense] if self.dense is not None else [])]
        return sum(t.numel() * t.element_size() for t in ts)

    def to(self, device: torch.device) -> CtrTensors:
        """A copy with the tensors on ``device`` (tables, counts and policy shared)."""
        return dataclasses.replace(
            self, ids=self.ids.to(device), multi=[m.to(device) for m in self.multi],
            dense=self.dense.to(device) if self.dense is not None else None, labels=self.labels.to(device),
            splits={k: v.to(device) for k, v in self.splits.items()})


class FeatureEmbedder(nn.Module):
    """``(ids[B, F1], multi[...]) -> [B, F, D]`` through one embedding collection."""

    def __init__(self, emb: EmbeddingCollection, num_single: int, num_multi: int) -> None:
        super().__init__()
        self.emb = emb
        self.num_single = num_single
        self.num_multi = num_multi

    def forward(self, ids: torch.Tensor, multi: Sequence[torch.Tensor]) -> torch.Tensor:
        parts = [self.emb(ids, fields=range(self.num_single))] if self.num_single else []
        for j, m in enumerate(multi):
            mask = (m >= 0).unsqueeze(-1)
            vec = self.emb.lookup(self.num_single + j, m.clamp_min(0))
            parts.append((vec * mask).sum(1, keepdim=True))
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]


def mlp(sizes: Sequence[int], *, last_activation: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        lin = nn.Linear(sizes[i], sizes[i + 1])
        nn.init.xavier_normal_(lin.weight)
        nn.init.zeros_(lin.bias)
        layers.append(lin)
        if i < len(sizes) - 2 or last_activation:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class CtrModel(nn.Module):
    """Base: embeds the features, subclasses map ``(emb[B, F, D], dense[B, Dn] | None)`` to logits."""

    def __init__(self, embedder: FeatureEmbedder, num_fields: int, dim: int, num_dense: int) -> None:
        super().__init__()
        self.embedder = embedder
        self.num_fields, self.dim, self.num_dense = num_fields, dim, num_dense

    def forward(self, ids: torch.Tensor, multi: Sequence[torch.Tensor], dense: torch.Tensor | None) -> torch.Tensor:
        return self.head(self.embedder(ids, multi), dense)

    def head(self, e: torch.Tensor, dense: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError


#: training bytes per dense fp32 weight: the weight, its gradient and Adam's two moments
TRAIN_BYTES_PER_WEIGHT = 16


class DLRM(CtrModel):
    """DLRM: bottom MLP for dense features, pairwise dot interactions, top MLP (Naumov et al., 2019)."""

    li: torch.Tensor
    lj: torch.Tensor

    def __init__(self, embedder: FeatureEmbedder, num_fields: int, dim: int, num_dense: int,
                 bottom: Sequence[int] = (512, 256, 64), top: Sequence[int] = (512, 256)) -> None:
        super().__init__(embedder, num_fields, dim, num_dense)
        self.bottom = mlp([num_dense, *bottom, dim], last_activation=True) if num_dense else None
        n = num_fields + (1 if num_dense else 0)
        li, lj = torch.tril_indices(n, n, offset=-1)
        self.register_buffer("li", li, persistent=False)
        self.register_buffer("lj", lj, persistent=False)
        pairs = n * (n - 1) // 2
        # a single vector (one field, no dense features) has no pairs: the top MLP reads the vector itself
        # instead of an empty interaction (which would leave the model nothing to learn from)
        self.single = pairs == 0
        width = (num_fields * dim if self.single else pairs) + (dim if num_dense else 0)
        # the pairs grow with the square of the fields: 3,000 fields made a 4.5M-wide first layer (2.3G
        # weights) that took minutes to allocate; refuse it before allocating when it cannot fit
        check_fits_memory(TRAIN_BYTES_PER_WEIGHT * width * (top[0] if top else 1),
                          what=f"DLRM's top MLP over the {pairs:,} pairwise interactions of {n:,} features",
                          fix="use --model dcn, wdl or deepfm (linear in the fields), or select fewer --fields")
        self.top = mlp([width, *top, 1])

    def head(self, e: torch.Tensor, dense: torch.Tensor | None) -> torch.Tensor:
        if self.bottom is not None and dense is not None:
            x = self.bottom(dense)
            t = torch.cat([x.unsqueeze(1), e], dim=1)
        else:
            x, t = None, e
        z = e.flatten(1) if self.single else torch.bmm(t, t.transpose(1, 2))[:, self.li, self.lj]
        top_in = torch.cat([x, z], dim=1) if x is not None else z
        return self.top(top_in).squeeze(-1)


class DCN(CtrModel):
    """Deep & Cross: 3 cross layers x_{l+1} = x0 (x_l . w) + b + x_l, plus a deep MLP (Wang et al., 2017)."""

    def __init__(self, embedder: FeatureEmbedder, num_fields: int, dim: int, num_dense: int,
                 cross_layers: int = 3, deep: Sequence[int] = (256, 256, 256)) -> None:
        super().__init__(embedder, num_fields, dim, num_dense)
        width = num_fields * dim + num_dense
        self.cross_w = nn.ParameterList([nn.Parameter(torch.randn(width) * (1.0 / width) ** 0.5)
                                         for _ in range(cross_layers)])
        self.cross_b = nn.ParameterList([nn.Parameter(torch.zeros(width)) for _ in range(cross_layers)])
        self.deep = mlp([width, *deep], last_activation=True)
        self.out = nn.Linear(width + deep[-1], 1)

    def head(self, e: torch.Tensor, dense: torch.Tensor | None) -> torch.Tensor:
        x0 = torch.cat([e.flatten(1), dense], dim=1) if dense is not None else e.flatten(1)
        x = x0
        for w, b in zip(self.cross_w, self.cross_b, strict=True):
            x = x0 * (x @ w).unsqueeze(1) + b + x
        return self.out(torch.cat([x, self.deep(x0)], dim=1)).squeeze(-1)


class WDL(CtrModel):
    """Wide & Deep: a linear model plus a deep MLP over the same inputs (Cheng et al., 2016)."""

    def __init__(self, embedder: FeatureEmbedder, num_fields: int, dim: int, num_dense: int,
                 deep: Sequence[int] = (256, 256)) -> None:
        super().__init__(embedder, num_fields, dim, num_dense)
        width = num_fields * dim + num_dense
        self.wide = nn.Linear(width, 1)
        self.deep = mlp([width, *deep, 1])

    def head(self, e: torch.Tensor, dense: torch.Tensor | None) -> torch.Tensor:
        x0 = torch.cat([e.flatten(1), dense], dim=1) if dense is not None else e.flatten(1)
        return (self.wide(x0) + self.deep(x0)).squeeze(-1)


class DeepFM(CtrModel):
    """DeepFM: first embedding element = first-order term, FM and DNN on the rest (Guo et al., 2017)."""

    def __init__(self, embedder: FeatureEmbedder, num_fields: int, dim: int, num_dense: int,
                 deep: Sequence[int] = (256, 256)) -> None:
        super().__init__(embedder, num_fields, dim, num_dense)
        if dim < 2:
            raise ValueError("DeepFM needs embedding_dim >= 2")
        self.dnn = mlp([num_fields * (dim - 1) + num_dense, *deep, 1])
        self.bias = nn.Parameter(torch.zeros(1))

    def head(self, e: torch.Tensor, dense: torch.Tensor | None) -> torch.Tensor:
        first = e[:, :, 0].sum(1)
        v = e[:, :, 1:]
        fm = 0.5 * (v.sum(1).pow(2) - v.pow(2).sum(1)).sum(1)
        x = torch.cat([v.flatten(1), dense], dim=1) if dense is not None else v.flatten(1)
        return first + fm + self.dnn(x).squeeze(-1) + self.bias


CTR_MODELS: dict[str, type[CtrModel]] = {"dlrm": DLRM, "dcn": DCN, "wdl": WDL, "deepfm": DeepFM}


def build_ctr_model(name: str, emb: EmbeddingCollection, data: CtrTensors) -> CtrModel:
    """A CTR model named ``name`` over ``emb`` for ``data``'s fields."""
    if name not in CTR_MODELS:
        names = sorted(CTR_MODELS)
        raise UnknownNameError(f"`model` must be one of {', '.join(names)}, but got model={name!r}."
                               f"{suggest(name, names)}")
    embedder = FeatureEmbedder(emb, data.ids.shape[1], len(data.multi))
    return CTR_MODELS[name](embedder, len(data.tables), emb.embedding_dim, data.num_dense)


class CtrEngine:
    """Binary classification with BCE; validation metric AUC (log loss reported too)."""

    metric = "auc"
    higher_is_better = True

    def __init__(self, data: CtrTensors, eval_batch: int = 65536) -> None:
        self.data = data
        self.eval_batch = eval_batch
        self.loss = nn.BCEWithLogitsLoss()
        #: where batches go (the model's device)
        self.device = torch.device("cpu")
        #: the tensors batches are cut from: ``data`` itself, or its copy on the device
        self.source = data
        #: bytes of data this engine keeps on a non-CPU device (0 on the CPU, or when batches are moved)
        self.device_bytes = 0

    def to(self, device: torch.device | str, *, reserve_bytes: int = 0) -> CtrEngine:
        """Send batches to ``device``; keep the whole data there when it fits (see the module docstring).
        ``reserve_bytes``: device memory training will still claim (optimizer state, gradients)."""
        self.device = torch.device(device)
        nbytes = self.data.tensor_bytes()
        if self.device.type != "cpu" and devices.keep_on_device(nbytes, self.device, reserve_bytes):
            self.source, self.device_bytes = self.data.to(self.device), nbytes
        else:
            self.source, self.device_bytes = self.data, 0
        return self

    def num_train(self) -> int:
        return int(self.data.splits["train"].numel())

    def has_split(self, split: str) -> bool:
        return split in self.data.splits and self.data.splits[split].numel() > 0

    def _batch(self, rows: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor | None]:
        """The model's inputs for data rows ``rows``, on the engine's device."""
        d, dev = self.source, self.device
        rows = rows.to(d.ids.device)
        return (d.ids[rows].to(dev), [m[rows].to(dev) for m in d.multi],
                (d.dense[rows].to(dev) if d.dense is not None else None))

    def train_loss(self, model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
        d = self.source
        rows = d.splits["train"][idx.to(d.ids.device)]
        ids, multi, dense = self._batch(rows)
        return self.loss(model(ids, multi, dense), d.labels[rows].to(self.device))

    @torch.no_grad()
    def predict(self, model: nn.Module, rows: torch.Tensor) -> np.ndarray:
        model.eval()
        out = []
        for s in range(0, rows.numel(), self.eval_batch):
            r = rows[s : s + self.eval_batch]
            out.append(torch.sigmoid(model(*self._batch(r))).cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)

    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        rows = self.data.splits[split]
        probs = self.predict(model, rows)
        labels = self.data.labels[rows].numpy()
        return {"auc": auc(labels, probs), "logloss": logloss(labels, probs)}

    @torch.no_grad()
    def latency_ms(self, model: nn.Module, batch: int = 4096, repeats: int = 5) -> float:
        """Median forward time of one inference batch, in milliseconds (on CUDA: from a synchronised start
        to the synchronised end, so the time is the device's, not the launch's)."""
        model.eval()
        rows = self.data.splits["valid"][:batch] if self.has_split("valid") else self.data.splits["train"][:batch]
        args = self._batch(rows)
        times = []
        for _ in range(repeats):
            devices.synchronize(self.device)
            t0 = time.perf_counter()
            model(*args)
            devices.synchronize(self.device)
            times.append(time.perf_counter() - t0)
        return float(np.median(times) * 1000)
