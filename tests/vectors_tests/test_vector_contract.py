"""The frozen-vector contract suite over every registered ``vec_*`` compressor (and the repository's conventions)."""

from __future__ import annotations

import pytest

from embadvisor.methods import get_method, list_methods
from embadvisor.testing import check_repo_conventions, parametrize_with_checks

NAMES = list_methods(input="vectors")


def test_there_are_vector_compressors_and_table_lists_exclude_them() -> None:
    assert {"vec_full", "vec_sq", "vec_pq", "vec_svd", "vec_prune", "vec_dedup", "vec_ttsvd", "vec_grouped_sq",
            "vec_grouped_svd"} <= set(NAMES)
    assert not set(NAMES) & set(list_methods())
    assert set(list_methods(input=None)) == set(NAMES) | set(list_methods())


@parametrize_with_checks([get_method(name) for name in NAMES])
def test_contract(check) -> None:
    check()


@pytest.mark.parametrize("name", NAMES)
def test_repo_conventions(name: str) -> None:
    check_repo_conventions(get_method(name))
