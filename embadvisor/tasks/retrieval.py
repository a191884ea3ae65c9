"""Two-tower retrieval over id embeddings, trained with in-batch sampled softmax, evaluated exactly.

Both towers read one :class:`~embadvisor.methods.EmbeddingCollection` with two tables, ``user``
(field 0) and ``item`` (field 1), so any compression method applies to both. The user tower adds
the mean of the user's training-history item vectors (a side feature; the target item is masked
out of the history while training). Training: in-batch softmax over cosine scores with a
temperature and the log-Q popularity correction (Yi et al., RecSys 2019), accidental hits masked;
optional extra uniformly sampled negatives. Evaluation: every user against the full item corpus,
training items excluded, exact top-K by chunked matrix products.

Sampled validation (``RetrievalEngine(eval_users=n)``): during a search, validation over tens of
thousands of users can cost more than the training it judges. With ``eval_users`` set, validation
scores a fixed, seeded sample of ``n`` of the ``N`` users who have validation items (drawn once;
the same users at every call) against the whole item corpus, and averages over them, so the value
is an unbiased estimate of the all-users value with standard error
``s / sqrt(n) * sqrt((N - n) / (N - 1))`` (``s``: the per-user metric's standard deviation), reported
as ``"recall@20_stderr"``. Measured on movielens-1m-implicit (6,022 users, N = 5,455 with
validation items; two-tower ``full`` at dim 16 after 600 steps of batch 1024, Recall@20 = 0.187,
per-user std s = 0.252): 0.0010 at n = 5,000 and 0.0072 at n = 1,000 (the spread over 200 seeds
was 0.0010 and 0.0066). Validation took 34 ms at n = 1,000, 66 ms at 2,000 and 163 ms at 5,000
against 195 ms for all users (median of 3, 1 thread; nearly all of it the scoring and top-K).
The test split and ``evaluate(..., full=True)`` always use all users.

Devices: :meth:`RetrievalEngine.to` puts the engine on the model's device (the training pairs whole
when they fit, see :func:`embadvisor.devices.keep_on_device`, else per batch). Evaluation scores on
the device (chunked matmul, seen-item mask and top-K there); only the top-K ids come back to the CPU
for the metrics. Negatives are drawn from a CPU generator on every device.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from embadvisor import devices
from embadvisor.errors import InvalidConfigError
from embadvisor.methods import EmbeddingCollection
from embadvisor.profiles.schema import TableSpec
from embadvisor.tasks.metrics import ranking_metrics, ranking_metrics_per_user, sampled_metric_stderr, topk_items

__all__ = ["RetrievalEngine", "RetrievalTensors", "TwoTower", "csr_from_pairs", "csr_rows"]


def csr_from_pairs(users: np.ndarray, items: np.ndarray, num_users: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-user item lists as CSR (indptr, items), items in input order within each user."""
    users = np.asarray(users, dtype=np.int64)
    order = np.argsort(users, kind="stable")
    indptr = np.zeros(num_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(users, minlength=num_users), out=indptr[1:])
    return indptr, np.asarray(items, dtype=np.int64)[order]


def csr_rows(indptr: np.ndarray, items: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The CSR ``(indptr, items)`` restricted to ``rows`` (row ``j`` of the result is row ``rows[j]``)."""
    indptr = np.asarray(indptr, dtype=np.int64)
    rows = np.asarray(rows, dtype=np.int64)
    starts, sizes = indptr[rows], indptr[rows + 1] - indptr[rows]
    out_ptr = np.zeros(rows.size + 1, dtype=np.int64)
    np.cumsum(sizes, out=out_ptr[1:])
    # positions of every kept element in the original items array
    pos = np.repeat(starts - out_ptr[:-1], sizes) + np.arange(int(out_ptr[-1]), dtype=np.int64)
    return out_ptr, np.asarray(items, dtype=np.int64)[pos]


@dataclass
class RetrievalTensors:
    """An implicit-feedback dataset with its evaluation protocol.

    Args:
        num_users, num_items: id ranges (ids are frequency-ordered, 0 most frequent).
        train_users, train_items: training pairs (int64).
        valid: per-user held-out validation items (CSR ``(indptr, items)``).
        test: per-user held-out test items (CSR), or None.
        history_len: max history items per user fed to the user tower (0 = no history feature).
        protocol: how the split was made (recorded in reports).
    """

    num_users: int
    num_items: int
    train_users: torch.Tensor
    train_items: torch.Tensor
    valid: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray] | None
    history_len: int = 50
    protocol: dict | None = None

    def __post_init__(self) -> None:
        tu, ti = self.train_users.numpy(), self.train_items.numpy()
        self.seen = csr_from_pairs(tu, ti, self.num_users)
        self.item_counts = np.bincount(ti, minlength=self.num_items).astype(np.int64)
        self.user_counts = np.bincount(tu, minlength=self.num_users).astype(np.int64)
        # history: up to history_len training items per user (a fixed random subset), padded with -1
        L = self.history_len
        hist = np.full((self.num_users, max(L, 1)), -1, dtype=np.int64)
        if L > 0:
            indptr, items = self.seen
            rng = np.random.default_rng(0)
            sizes = np.diff(indptr)
            # random permutation inside each user's block via sort on (user, random key)
            keys = rng.random(items.size)
            user_of = np.repeat(np.arange(self.num_users), sizes)
            perm = np.lexsort((keys, user_of))
            shuffled = items[perm]
            pos = np.arange(items.size) - np.repeat(indptr[:-1], sizes)
            keep = pos < L
            hist[user_of[keep], pos[keep]] = shuffled[keep]
        self.history = torch.from_numpy(hist)
        # masks for test evaluation: training items plus validation items
        vu = np.repeat(np.arange(self.num_users), np.diff(self.valid[0]))
        self.seen_with_valid = csr_from_pairs(np.concatenate([tu, vu]), np.concatenate([ti, self.valid[1]]),
                                              self.num_users)

    def tables_at(self, dim: int) -> list[TableSpec]:
        """The user and item tables at embedding dim ``dim``, with their training frequencies."""
        from embadvisor.profiles.schema import FrequencySummary

        return [
            TableSpec("user", self.num_users, dim, FrequencySummary.from_counts(self.user_counts)),
            TableSpec("item", self.num_items, dim, FrequencySummary.from_counts(self.item_counts)),
        ]


class TwoTower(nn.Module):
    """User tower: user vector + projected mean of history item vectors; item tower: item vector.

    Both are L2-normalised; scores are cosine similarities.
    """

    history: torch.Tensor | None

    def __init__(self, emb: EmbeddingCollection, history: torch.Tensor | None, temperature: float = 0.1) -> None:
        super().__init__()
        self.emb = emb
        d = emb.embedding_dim
        # a buffer, so that .to(device) moves it; not in the state dict (it is data, not learned state)
        self.register_buffer("history", history, persistent=False)
        self.hist_proj = nn.Linear(d, d, bias=False) if history is not None else None
        if self.hist_proj is not None:
            nn.init.eye_(self.hist_proj.weight)
        self.temperature = temperature

    def user_vectors(self, users: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
        u = self.emb.lookup(0, users)
        if self.history is not None and self.hist_proj is not None:
            h = self.history[users]
            mask = h >= 0
            if exclude is not None:
                mask = mask & (h != exclude.unsqueeze(1))
            hv = self.emb.lookup(1, h.clamp_min(0)) * mask.unsqueeze(-1)
            mean = hv.sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
            u = u + self.hist_proj(mean)
        return F.normalize(u, dim=-1)

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.emb.lookup(1, items), dim=-1)


class RetrievalEngine:
    """In-batch sampled softmax with log-Q correction; validation metric Recall@20.

    Args:
        data: the dataset and its split.
        num_negatives: extra uniformly sampled negatives per batch.
        ks: cut-offs of the reported Recall@K / NDCG@K.
        eval_chunk: users per matrix product in evaluation.
        eval_users: validate on a fixed random sample of this many of the users who have validation
            items (None = all of them). The sample is drawn once, here, with
            ``numpy.random.default_rng(eval_seed)`` and used by every ``evaluate(model, "valid")``;
            user vectors are computed for the sampled users only, item vectors for the whole corpus,
            and each metric is the mean over the sample, the same definition as the all-users value
            (a mean over users with at least one validation item), of which it is an unbiased
            estimate. ``evaluate`` then also returns ``"recall@20_stderr"``, the standard error the
            sampling adds: ``s / sqrt(n) * sqrt((N - n) / (N - 1))`` for per-user Recall@20 standard
            deviation ``s``, ``n`` sampled of ``N`` users (see
            :func:`~embadvisor.tasks.metrics.sampled_metric_stderr`). On movielens-1m-implicit
            (N = 5,455, trained two-tower Recall@20 0.187, s = 0.252) it is 0.252 / sqrt(5000) * 0.289
            = 0.0010 at 5,000 users and 0.252 / sqrt(1000) * 0.904 = 0.0072 at 1,000 users. Trust
            differences of several standard errors only, and re-evaluate the final pick with
            ``full=True``. A value >= N uses every user (exact; stderr 0.0).
        eval_seed: seed of that sample (the same seed gives the same users).
    """

    metric = "recall@20"
    higher_is_better = True

    def __init__(self, data: RetrievalTensors, *, num_negatives: int = 0, ks: tuple[int, ...] = (10, 20, 50),
                 eval_chunk: int = 2048, eval_users: int | None = None, eval_seed: int = 0) -> None:
        self.data = data
        self.num_negatives = num_negatives
        self.ks = ks
        self.eval_chunk = eval_chunk
        if eval_users is not None and (isinstance(eval_users, bool) or not isinstance(eval_users, (int, np.integer))
                                       or eval_users < 1):
            raise InvalidConfigError(f"`eval_users` must be a positive int or None, but got eval_users={eval_users!r}.")
        self.eval_users = None if eval_users is None else int(eval_users)
        self.eval_seed = eval_seed
        # the validation population: users with at least one validation item
        self.valid_population = np.flatnonzero(np.diff(np.asarray(data.valid[0], dtype=np.int64)) > 0)
        #: the sampled validation users (sorted), or None when validation uses every user
        self.eval_user_ids: np.ndarray | None = None
        if self.eval_users is not None and self.eval_users < self.valid_population.size:
            rng = np.random.default_rng(eval_seed)
            pick = rng.choice(self.valid_population.size, size=self.eval_users, replace=False)
            self.eval_user_ids = np.sort(self.valid_population[pick])
        q = data.item_counts / max(1, data.item_counts.sum())
        self.log_q = torch.from_numpy(np.log(np.maximum(q, 1e-12))).float()
        self.gen = torch.Generator().manual_seed(0)
        #: where batches go (the model's device)
        self.device = torch.device("cpu")
        #: the training pairs batches are cut from (on the CPU, or copies on the device)
        self.users, self.items = data.train_users, data.train_items
        #: bytes of data this engine keeps on a non-CPU device (0 on the CPU, or when batches are moved)
        self.device_bytes = 0

    def to(self, device: torch.device | str, *, reserve_bytes: int = 0) -> RetrievalEngine:
        """Send batches to ``device``; keep the training pairs there when they fit (module docstring).
        ``reserve_bytes``: device memory training will still claim (optimizer state, gradients)."""
        self.device = torch.device(device)
        d = self.data
        self.log_q = self.log_q.to(self.device)
        nbytes = sum(t.numel() * t.element_size() for t in (d.train_users, d.train_items))
        if self.device.type != "cpu" and devices.keep_on_device(nbytes, self.device, reserve_bytes):
            self.users, self.items = d.train_users.to(self.device), d.train_items.to(self.device)
            self.device_bytes = nbytes
        else:
            self.users, self.items, self.device_bytes = d.train_users, d.train_items, 0
        if self.device.type != "cpu":  # the popularity correction is on the device either way
            self.device_bytes += self.log_q.numel() * self.log_q.element_size()
        return self

    def num_train(self) -> int:
        return int(self.data.train_users.numel())

    def has_split(self, split: str) -> bool:
        return split == "valid" or (split == "test" and self.data.test is not None)

    def train_loss(self, model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
        assert isinstance(model, TwoTower)
        idx = idx.to(self.users.device)
        users, items = self.users[idx].to(self.device), self.items[idx].to(self.device)
        u = model.user_vectors(users, exclude=items)
        cand = items
        if self.num_negatives:
            neg = torch.randint(0, self.data.num_items, (self.num_negatives,), generator=self.gen)
            cand = torch.cat([items, neg.to(self.device)])
        v = model.item_vectors(cand)
        logits = u @ v.t() / model.temperature - self.log_q[cand]
        # accidental hits: the same item elsewhere among the candidates is not a negative
        hit = items.unsqueeze(1) == cand.unsqueeze(0)
        diag = torch.arange(items.numel(), device=self.device)
        hit[diag, diag] = False
        logits = logits.masked_fill(hit, float("-inf"))
        return F.cross_entropy(logits, diag)

    @torch.no_grad()
    def _vectors(self, model: nn.Module, users: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """User vectors of ``users`` (default: every user) and item vectors of the whole corpus, on the device."""
        assert isinstance(model, TwoTower)
        model.eval()
        d = self.data
        users = torch.arange(d.num_users, device=self.device) if users is None else users.to(self.device)
        uv = torch.cat([model.user_vectors(users[s : s + 8192]) for s in range(0, int(users.numel()), 8192)])
        items = torch.arange(d.num_items, device=self.device)
        iv = torch.cat([model.item_vectors(items[s : s + 65536]) for s in range(0, d.num_items, 65536)])
        return uv, iv

    def evaluate(self, model: nn.Module, split: str, *, full: bool = False) -> dict[str, float]:
        """Recall@K and NDCG@K on ``split`` (``valid`` or ``test``), averaged over users with held-out items.

        With ``eval_users`` set, ``valid`` uses the engine's fixed user sample unless ``full=True``, and
        the result also holds ``"recall@20_stderr"``: the sampling standard error of Recall@20 as an
        estimate of the all-users value (0.0 when every user was evaluated). ``test`` always uses every
        user.
        """
        d = self.data
        truth = d.valid if split == "valid" else d.test
        assert truth is not None
        seen = d.seen if split == "valid" else d.seen_with_valid
        users = self.eval_user_ids if split == "valid" and not full else None
        if users is None:
            uv, iv = self._vectors(model)
        else:
            uv, iv = self._vectors(model, torch.from_numpy(users))
            seen, truth = csr_rows(*seen, users), csr_rows(*truth, users)
        top = topk_items(uv, iv, max(self.ks), seen_indptr=seen[0], seen_items=seen[1], chunk=self.eval_chunk).cpu()
        if self.eval_users is None:
            return ranking_metrics(top, truth[0], truth[1], self.ks)
        per_user = ranking_metrics_per_user(top, truth[0], truth[1], self.ks)
        out = {name: float(v.sum() / max(1, v.size)) for name, v in per_user.items()}
        if "recall@20" in per_user:
            population = per_user["recall@20"].size if users is None else self.valid_population.size
            out["recall@20_stderr"] = sampled_metric_stderr(per_user["recall@20"], population)
        return out

    @torch.no_grad()
    def latency_ms(self, model: nn.Module, batch: int = 1024, repeats: int = 5) -> float:
        """Median time to embed a batch of users and score them against the whole corpus (ms; on CUDA from
        a synchronised start to the synchronised end)."""
        assert isinstance(model, TwoTower)
        model.eval()
        _, iv = self._vectors(model)
        users = torch.arange(min(batch, self.data.num_users), device=self.device)
        times = []
        for _ in range(repeats):
            devices.synchronize(self.device)
            t0 = time.perf_counter()
            torch.topk(model.user_vectors(users) @ iv.t(), min(20, self.data.num_items), dim=1)
            devices.synchronize(self.device)
            times.append(time.perf_counter() - t0)
        return float(np.median(times) * 1000)
