"""Byte formulas by hand, packing, and the budget solver (fits, is the largest, reports the minimum)."""

from __future__ import annotations

import numpy as np
import pytest

from embadvisor.advisor.vector_search import VectorSearch, VectorSearchSettings, vector_workload
from embadvisor.errors import InfeasibleError, InvalidConfigError
from embadvisor.methods import get_method, list_methods
from embadvisor.methods._vectors import corpus_table, pack_bits, unpack_bits
from embadvisor.methods.vec_dedup import VecDedupConfig
from embadvisor.methods.vec_grouped_sq import VecGroupedSqConfig
from embadvisor.methods.vec_pq import VecPqConfig, split_dims
from embadvisor.methods.vec_prune import VecPruneConfig
from embadvisor.methods.vec_sq import VecSqConfig
from embadvisor.methods.vec_svd import VecSvdConfig
from embadvisor.profiles.schema import TableSpec
from embadvisor.testing.vector_contract import small_corpus
from embadvisor.vectors.data import VectorData

T = TableSpec("c", 11429, 384)  # vaswani-minilm's shape


def mem(cfg) -> int:
    return cfg.memory(T).serve_bytes


def test_scalar_quantization_bytes() -> None:
    n, d = 11429, 384
    assert mem(VecSqConfig(bits=8)) == n * d + 2 * 4 * d
    assert mem(VecSqConfig(bits=4)) == n * d // 2 + 2 * 4 * d  # two codes per byte
    assert mem(VecSqConfig(bits=1, scale="per_row")) == n * d // 8 + 2 * 4 * n
    assert VecSqConfig(bits=4).memory(TableSpec("c", 10, 5)).serve_bytes == 10 * 3 + 2 * 4 * 5  # ceil(5/2)


def test_product_quantization_bytes() -> None:
    n, d = 11429, 384
    assert mem(VecPqConfig(num_subvectors=64, nbits=8, codebook_dtype="fp32")) == n * 64 + 256 * d * 4
    assert mem(VecPqConfig(num_subvectors=72, nbits=5)) == n * 45 + 32 * d * 2  # 360 bits = 45 bytes
    assert mem(VecPqConfig(num_subvectors=73, nbits=5)) == n * 46 + 32 * d * 2  # 365 bits -> 46 bytes
    assert split_dims(10, 4) == [(0, 3), (3, 6), (6, 8), (8, 10)]


def test_sparse_dedup_grouped_lowrank_bytes() -> None:
    n, d = 11429, 384
    nnz = int(0.1 * n * d)
    # values fp16 + uint16 column indices + int32 row pointers (nnz >= 2**16)
    assert mem(VecPruneConfig(density=0.1)) == nnz * (2 + 2) + (n + 1) * 4
    assert mem(VecPruneConfig(density=0.1, layout="per_row", value_dtype="fp32")) == n * 38 * (4 + 2)
    assert mem(VecDedupConfig(unique_blocks=256)) == 256 * d * 4 + n * 1  # uint8 block ids
    assert mem(VecDedupConfig(unique_blocks=257, segments=4)) == 257 * 96 * 4 + n * 4 * 2  # uint16 block ids
    assert mem(VecSvdConfig(rank=32, dtype="fp32", center=False)) == (n * 32 + 32 * d) * 4
    hi = int(0.25 * n)
    want = -(-n // 8) + hi * d + (n - hi) * d // 2 + 2 * 2 * 4 * d
    assert mem(VecGroupedSqConfig(high_share=0.25)) == want


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 7, 8, 11])
def test_pack_roundtrip(bits: int) -> None:
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 2**bits, (13, 9))
    packed = pack_bits(codes, bits)
    assert packed.shape == (13, -(-9 * bits // 8)) and packed.dtype == np.uint8
    assert np.array_equal(unpack_bits(packed, 9, bits), codes)


@pytest.mark.parametrize("name", [m for m in list_methods(input="vectors")])
@pytest.mark.parametrize("ratio", [0.25, 1 / 16, 1 / 32])
def test_solver_fits_the_budget(name: str, ratio: float) -> None:
    cls = get_method(name)
    budget = 11429 * 384 * 4 * ratio
    cfg = cls.from_budget(T, budget)
    if cfg is None:
        smallest = cls.min_config(T)
        assert smallest is None or mem(smallest) > budget
    else:
        assert mem(cfg) <= budget and cfg.check_feasible(T) is None


def test_solver_picks_the_largest_setting() -> None:
    budget = 11429 * 384 * 4 / 16
    pq = VecPqConfig.from_budget(T, budget, nbits=5)
    assert pq is not None and pq.num_subvectors == 148 and mem(pq) <= budget
    assert mem(VecPqConfig(num_subvectors=149, nbits=5)) > budget
    assert VecSqConfig.from_budget(T, budget) == VecSqConfig(bits=1)
    assert VecSqConfig.from_budget(T, 11429 * 384 * 4 / 4) == VecSqConfig(bits=4)  # 8 bits + scales do not fit


def test_infeasible_budget_reports_the_minimum() -> None:
    x = small_corpus(200, 16)
    data = VectorData(x, [str(i) for i in range(200)])
    w = vector_workload(data)
    with pytest.raises(InfeasibleError, match=r"Minimum budgets: .*raise --budget to at least"):
        VectorSearch(w, VectorSearchSettings(budget_bytes=50)).check_feasible()


def test_table_methods_are_refused_for_vectors() -> None:
    with pytest.raises(InvalidConfigError, match="frozen-vector compressors"):
        VectorSearchSettings(budget_bytes=10**6, methods=("qr",))


def test_corpus_table() -> None:
    assert corpus_table(np.zeros((7, 3), np.float32)) == TableSpec("corpus", 7, 3)
