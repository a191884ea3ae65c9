"""The frozen-vector contract suite over every registered ``vec_*`` compressor and its example configs."""

from __future__ import annotations

import pytest

from embadvisor.methods import get_method, list_methods
from embadvisor.testing import vector_contract as vc

NAMES = list_methods(input="vectors")
CORPUS = vc.small_corpus()
CASES = list(vc.vector_cases(corpus=CORPUS))
IDS = [c[0] for c in CASES]


def test_there_are_vector_compressors_and_table_lists_exclude_them() -> None:
    assert {"vec_full", "vec_sq", "vec_pq", "vec_svd", "vec_prune", "vec_dedup", "vec_ttsvd", "vec_grouped_sq",
            "vec_grouped_svd"} <= set(NAMES)
    assert not set(NAMES) & set(list_methods())
    assert set(list_methods(input=None)) == set(NAMES) | set(list_methods())


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("check", ["registry", "config", "search_space", "from_budget"])
def test_class_checks(name: str, check: str) -> None:
    cls = get_method(name)
    if check == "registry":
        vc.check_registry(cls)  # type: ignore[arg-type]
    else:
        vc.VECTOR_CHECKS[check](cls, CORPUS)  # type: ignore[operator]


@pytest.mark.parametrize(("case", "cfg", "corpus"), CASES, ids=IDS)
@pytest.mark.parametrize("check", ["bytes_exact", "search", "determinism", "not_a_table_method"])
def test_index_checks(case: str, cfg, corpus, check: str) -> None:
    vc.VECTOR_CHECKS[check](cfg, corpus)
