"""The defaults of the library and the CLI, in one light module (no torch, no optuna), so that the CLI's
options show and use exactly the values the Python API uses."""

from __future__ import annotations

__all__ = ["DEFAULT_BATCH", "DEFAULT_DIM", "DEFAULT_LR", "DEFAULT_PATIENCE", "DEFAULT_RATIO", "DEFAULT_THREADS",
           "MAX_EPOCHS", "MIN_STEPS_PER_EPOCH"]

#: per task: the batch size on data large enough for it (halved on small data, see
#: :func:`embadvisor.tasks.api.default_batch_size`) and the embedding dim
DEFAULT_BATCH = {"ctr": 4096, "retrieval": 1024}
DEFAULT_DIM = {"ctr": 16, "retrieval": 64}
#: an epoch has at least this many steps with the default batch size
MIN_STEPS_PER_EPOCH = 64
#: base learning rate (a search's sampled trials search 1/3x-10x of it)
DEFAULT_LR = 1e-3
#: torch threads of one training process
DEFAULT_THREADS = 2
#: evaluations without improvement before training stops early
DEFAULT_PATIENCE = 3
#: training to convergence stops on validation; this many epochs is only the cap
MAX_EPOCHS = 100
#: `train`'s budget for a compressing method when none is given: this share of the full tables
DEFAULT_RATIO = 0.25
