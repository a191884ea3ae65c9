"""Profile validation of issue #18: nesting, booleans as counts, bounds on rows and dims, named file and field."""

from __future__ import annotations

import json

import pytest

from embadvisor.errors import DataError, InvalidConfigError
from embadvisor.profiles import load_profile
from embadvisor.profiles.io import profile_from_text
from embadvisor.profiles.schema import MAX_EMBEDDING_DIM, MAX_NUM_EMBEDDINGS, FieldProfile, TableSpec, WorkloadProfile


def _json(**edit) -> str:
    field = {"name": "a", "num_embeddings": 100} | edit.pop("field", {})
    return json.dumps({"version": 1, "task": "ctr", "fields": [field]} | edit)


@pytest.mark.parametrize("fmt", ["json", "toml"])
def test_deep_nesting_is_a_data_error_not_a_recursion_error(fmt: str) -> None:
    deep = "[" * 50_000 + "]" * 50_000
    text = ('{"task": "ctr", "fields": ' + deep + "}") if fmt == "json" else f'task = "ctr"\nfields = {deep}\n'
    with pytest.raises(DataError, match="nests lists or tables more than 8 levels deep"):
        profile_from_text(text, fmt=fmt, origin="profile 'p'")


def test_moderate_nesting_is_refused_before_validation_recurses() -> None:
    with pytest.raises(DataError, match="more than 8 levels"):
        profile_from_text(_json(field={"num_embeddings": json.loads("[" * 900 + "]" * 900)}), fmt="json")


@pytest.mark.parametrize("key", ["num_embeddings", "embedding_dim", "cardinality"])
def test_booleans_are_not_counts(key: str) -> None:
    with pytest.raises(InvalidConfigError, match=rf"`a\.{key}` must be .*but got a\.{key}=True"):
        profile_from_text(_json(field={key: True}), fmt="json")
    with pytest.raises(InvalidConfigError, match="num_rows"):
        profile_from_text(_json(num_rows=True), fmt="json")
    with pytest.raises(InvalidConfigError, match="num_embeddings"):
        TableSpec("t", True, 4)  # type: ignore[arg-type]


def test_num_embeddings_and_dims_are_bounded_and_the_message_names_file_and_field(tmp_path) -> None:
    p = tmp_path / "huge.toml"
    p.write_text(f'task = "ctr"\n[[fields]]\nname = "c7"\nnum_embeddings = {10**30}\n')
    with pytest.raises(InvalidConfigError) as info:
        load_profile(p)
    msg = str(info.value)
    assert str(p) in msg and "fields[0]" in msg and "`c7.num_embeddings` must be an integer in [1, 2**40" in msg
    assert msg.endswith("Fix that value in the file.") and ".." not in msg
    FieldProfile("ok", MAX_NUM_EMBEDDINGS)
    with pytest.raises(InvalidConfigError, match="c.num_embeddings"):
        FieldProfile("c", MAX_NUM_EMBEDDINGS + 1)
    WorkloadProfile(task="ctr", fields=(FieldProfile("a", 3, embedding_dim=MAX_EMBEDDING_DIM),),
                    embedding_dim=MAX_EMBEDDING_DIM)
    with pytest.raises(InvalidConfigError, match=r"`embedding_dim` must be an integer in \[1, 65536\]"):
        profile_from_text(_json(embedding_dim=10**9), fmt="json")
    with pytest.raises(InvalidConfigError, match=r"`a.embedding_dim` must be an integer in \[1, 65536\] or absent"):
        profile_from_text(_json(field={"embedding_dim": 65537}), fmt="json")


def test_frequency_errors_name_the_field() -> None:
    freq = {"total": True, "cumulative_shares": [1.0], "rank_fractions": [1.0]}
    with pytest.raises(InvalidConfigError, match=r"fields\[0\]\.frequency: `total` must be an integer >= 0"):
        profile_from_text(_json(field={"frequency": freq}), fmt="json")
