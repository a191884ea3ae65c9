"""From data files to :class:`~embadvisor.tasks.api.TaskData`: splits and evaluation protocols.

CTR: rows split at random (seeded) or in file order into train / validation / test.

Retrieval protocols:
- ``given``: a directory holding ``train.txt`` and ``test.txt`` (e.g. movielens-1m-implicit), or
  ``--test FILE``: the given split; validation = a seeded random share of the training pairs.
- ``leave-last-out``: sequence files (amazon-s3rec): each user's last item is test, the second
  last validation.
- ``random``: otherwise, a seeded random split of the interactions (80/10/10).
Id counts for frequency-aware methods always come from the training split only. A split that
leaves nothing to evaluate is refused (DataError); one without validation or without test
interactions warns (EmbAdvisorWarning). CTR files need enough rows for a row in every split part.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import torch

from embadvisor.data import load_ctr, load_interactions, split_leave_last_out, split_ordered, split_random
from embadvisor.data._text import check_file
from embadvisor.data.dataset import InteractionDataset
from embadvisor.errors import DataError, EmbAdvisorWarning, InvalidConfigError
from embadvisor.profiles.schema import FrequencySummary, TableSpec
from embadvisor.tasks.api import TaskData
from embadvisor.tasks.ctr import CtrTensors
from embadvisor.tasks.retrieval import RetrievalTensors, csr_from_pairs

__all__ = ["PROTOCOLS", "ctr_task_data", "load_task_data", "retrieval_task_data"]

PROTOCOLS = ("given", "leave-last-out", "random")


def ctr_task_data(
    path: str | Path,
    *,
    fmt: str | None = None,
    label: str | None = None,
    fields: list[str] | None = None,
    split: str = "random",
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
) -> TaskData:
    """Load a labelled file and split it (``random`` with ``seed``, or ``ordered``)."""
    ds = load_ctr(path, fmt=fmt, label=label, fields=fields)
    if ds.labels is None:
        raise DataError(f"{path} has no label column; pass --label COLUMN for CSV/Parquet files.")
    if split not in ("random", "ordered"):
        raise InvalidConfigError(f"`split` must be 'random' or 'ordered', but got split={split!r}.")
    sp = split_random(ds.num_rows, fractions, seed) if split == "random" else split_ordered(ds.num_rows, fractions)
    if min(sp.sizes()) == 0:
        raise DataError(_too_few_rows(path, ds.num_rows, fractions))
    train_rows = sp.train
    counts: list[np.ndarray] = []
    tables: list[TableSpec] = []
    for j, name in enumerate(ds.field_names):
        n = ds.num_embeddings[name]
        c = np.bincount(ds.ids[train_rows, j], minlength=n).astype(np.int64)
        counts.append(c)
        tables.append(TableSpec(name, n, 16, FrequencySummary.from_counts(c)))
    multi = []
    for name, arr in ds.multi_hot.items():
        n = ds.num_embeddings[name]
        sub = arr[train_rows]
        c = np.bincount(sub[sub >= 0], minlength=n).astype(np.int64)
        counts.append(c)
        tables.append(TableSpec(name, n, 16, FrequencySummary.from_counts(c)))
        multi.append(torch.from_numpy(np.ascontiguousarray(arr)))
    tensors = CtrTensors(
        tables=tables,
        ids=torch.from_numpy(np.ascontiguousarray(ds.ids)),
        multi=multi,
        dense=torch.from_numpy(ds.dense) if ds.dense is not None else None,
        labels=torch.from_numpy(ds.labels.astype(np.float32)),
        splits={k: torch.from_numpy(v) for k, v in (("train", sp.train), ("valid", sp.valid), ("test", sp.test))},
        counts=counts,
        split_policy=sp.policy,
    )
    return TaskData("ctr", ctr=tensors, name=Path(path).name, source=f"{path} ({ds.format})")


def _too_few_rows(path: str | Path, rows: int, fractions: tuple[float, float, float]) -> str:
    """The message for a file too small to give every split part a row."""
    shares = "/".join(f"{100 * f:g}" for f in fractions)
    need = next((n for n in range(rows + 1, 10_000) if min(split_ordered(n, fractions).sizes()) > 0), None)
    at_least = f"at least {need} rows" if need is not None else "a row in each part"
    return (f"{str(path)!r} has {rows} row{'s' if rows != 1 else ''}, but CTR training needs {at_least}: the "
            f"{shares} train/validation/test split must leave a row in each part. Pass a larger file.")


def _check_evaluable(path: Path, protocol: str, ds: InteractionDataset, n_valid: int, n_test: int,
                     info: dict[str, Any]) -> None:
    """Refuse a split that leaves nothing to evaluate; warn when it leaves no validation or no test interactions."""
    if n_valid and n_test:
        return
    if protocol == "leave-last-out":
        longest = int(np.bincount(ds.users).max()) if ds.num_rows else 0
        why_valid = f"no user has 3 or more interactions (the longest history has {longest})"
        why_test = "every user has a single interaction"
        rule = ("; leave-last-out holds out the last interaction of users with 2 or more and the second last of "
                "users with 3 or more")
        fix = "Pass --protocol random, or data with longer user histories."
    elif protocol == "given":
        why_valid = (f"the seeded {info.get('valid_fraction', 0):.0%} validation share of the {ds.num_rows} "
                     "training interactions is empty")
        why_test = (f"none of the test interactions has a user and an item seen in training "
                    f"({info.get('test_rows_dropped_unseen', 0)} dropped)")
        rule = ""
        fix = "Pass more training data, or a test file whose users and items occur in training."
    else:
        why_valid = why_test = (f"{ds.num_rows} interaction{'s are' if ds.num_rows != 1 else ' is'} too few for "
                                "the 80/10/10 random split")
        rule = ""
        fix = "Pass more interactions."
    where = f"{str(path)!r} (protocol {protocol})"
    if not n_valid and not n_test:
        raise DataError(f"{where} leaves nothing to evaluate: {why_test}{rule}. {fix}")
    if not n_valid:
        msg = (f"{where} leaves no validation interactions: {why_valid}{rule}. Validation metrics are 0 and cannot "
               f"pick the best model or stop training early. {fix}")
    else:
        msg = f"{where} leaves no test interactions: {why_test}{rule}. No test metrics are reported. {fix}"
    warnings.warn(msg, EmbAdvisorWarning, stacklevel=3)


def _remap(ds: InteractionDataset, ref: InteractionDataset) -> tuple[np.ndarray, np.ndarray, int]:
    """Map ``ds``'s users/items into ``ref``'s id spaces; drop rows with ids ``ref`` never saw."""
    out = []
    for key, ids in (("user", ds.users), ("item", ds.items)):
        lut = pc.index_in(ds.vocabularies[key], value_set=ref.vocabularies[key])
        lut_np = np.asarray(lut.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)
        out.append(lut_np[ids])
    users, items = out
    keep = (users >= 0) & (items >= 0)
    return users[keep], items[keep], int((~keep).sum())


def _load_interactions(path: Path, fmt: str | None) -> InteractionDataset:
    """Interaction files through the readers; Parquet files with ``user`` and ``item`` columns directly."""
    if fmt == "parquet" or (fmt is None and path.suffix.lower() == ".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        from embadvisor.data.dataset import _positions, encode_interaction_ids

        check_file(path)
        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowInvalid) as e:
            raise DataError(f"{str(path)!r} is not a readable Parquet file ({e}). Pass a valid file.") from None
        missing = [c for c in ("user", "item") if c not in table.column_names]
        if missing:
            raise DataError(f"{str(path)!r} has no column {missing[0]!r} (columns: {', '.join(table.column_names)}). "
                            "Retrieval Parquet files need `user` and `item` columns.")
        if table.num_rows == 0:
            raise DataError(f"{str(path)!r} has no interactions. Pass a file with at least one.")
        users, uvocab, ucounts = encode_interaction_ids(table["user"], path, "user", "user")
        items, ivocab, icounts = encode_interaction_ids(table["item"], path, "item", "item")
        return InteractionDataset(users=users, items=items, num_users=len(uvocab), num_items=len(ivocab),
                                  order=_positions(users), counts={"user": ucounts, "item": icounts},
                                  vocabularies={"user": uvocab, "item": ivocab}, path=path, format="parquet")
    return load_interactions(path, fmt)


def retrieval_task_data(
    path: str | Path,
    *,
    fmt: str | None = None,
    protocol: str | None = None,
    test_path: str | Path | None = None,
    valid_fraction: float = 0.05,
    seed: int = 0,
    history_len: int = 50,
) -> TaskData:
    """Load interactions and apply an evaluation protocol (see the module docstring)."""
    path = Path(path)
    if path.is_dir():
        train_file, test_file = path / "train.txt", path / "test.txt"
        if not (train_file.is_file() and test_file.is_file()):
            raise DataError(f"directory {str(path)!r} must hold train.txt and test.txt for the given split. "
                            "Pass a file instead, or --test FILE.")
        path, test_path = train_file, test_file
    if protocol is None:
        protocol = "given" if test_path is not None else None
    if protocol is not None and protocol not in PROTOCOLS:
        raise InvalidConfigError(f"`protocol` must be one of {', '.join(PROTOCOLS)}, but got protocol={protocol!r}.")
    if protocol == "given" and test_path is None:
        raise InvalidConfigError("protocol 'given' needs a test file: pass a directory with train.txt and "
                                 "test.txt, or --test FILE.")
    ds = _load_interactions(path, fmt)
    rng = np.random.default_rng(seed)
    info: dict[str, Any] = {}
    if protocol is None:
        # sequence files (one user per line, several items) use leave-last-out; pair files random
        per_user = ds.num_rows / max(1, ds.num_users)
        protocol = "leave-last-out" if ds.format == "interactions" and ds.weights is None and per_user >= 3 \
            else "random"
    if protocol == "given":
        assert test_path is not None
        test_ds = _load_interactions(Path(test_path), fmt)
        tu, ti, dropped = _remap(test_ds, ds)
        valid = rng.random(ds.num_rows) < valid_fraction
        train_idx, valid_idx = np.flatnonzero(~valid), np.flatnonzero(valid)
        test_pairs = (tu, ti)
        info = {"kind": "given", "train": str(path), "test": str(test_path), "valid_fraction": valid_fraction,
                "seed": seed, "test_rows_dropped_unseen": dropped}
    else:
        sp = split_leave_last_out(ds.users, ds.order) if protocol == "leave-last-out" \
            else split_random(ds.num_rows, (0.8, 0.1, 0.1), seed)
        train_idx, valid_idx = sp.train, sp.valid
        test_pairs = (ds.users[sp.test], ds.items[sp.test])
        info = dict(sp.policy)
    _check_evaluable(path, protocol, ds, len(valid_idx), len(test_pairs[0]), info)
    users, items = ds.users, ds.items
    tensors = RetrievalTensors(
        num_users=ds.num_users,
        num_items=ds.num_items,
        train_users=torch.from_numpy(users[train_idx].astype(np.int64)),
        train_items=torch.from_numpy(items[train_idx].astype(np.int64)),
        valid=csr_from_pairs(users[valid_idx], items[valid_idx], ds.num_users),
        test=csr_from_pairs(test_pairs[0], test_pairs[1], ds.num_users) if len(test_pairs[0]) else None,
        history_len=history_len,
        protocol=info,
    )
    return TaskData("retrieval", retrieval=tensors, name=path.parent.name if path.name == "train.txt" else path.name,
                    source=f"{path} ({ds.format}, protocol {protocol})")


def load_task_data(task: str, path: str | Path, **kw: Any) -> TaskData:
    """``ctr_task_data`` or ``retrieval_task_data`` by task name."""
    if task == "ctr":
        return ctr_task_data(path, **{k: v for k, v in kw.items() if k in ("fmt", "label", "fields", "split", "seed")})
    if task == "retrieval":
        return retrieval_task_data(path, **{k: v for k, v in kw.items()
                                            if k in ("fmt", "protocol", "test_path", "seed")})
    raise InvalidConfigError(f"`task` must be 'ctr' or 'retrieval', but got task={task!r}.")
