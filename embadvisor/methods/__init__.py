"""The method library: a registry of compression methods behind one contract.

Each built-in method lives in its own module and registers itself on import; adding a method is
one new file plus one import line here. A module may register several variants of one method
and then lists their names in its ``METHODS`` tuple (``qat``: int8, int16; ``ptq``: ptq_int8,
ptq_int4).
"""

from embadvisor._constraints import Interval, Options
from embadvisor.methods._base import (
    CATEGORIES,
    INPUTS,
    OPTIMIZERS,
    SCOPES,
    CompressedEmbedding,
    MemoryEstimate,
    MethodConfig,
    MethodTags,
    Stage,
    TensorSpec,
)
from embadvisor.methods._registry import create_embedding, get_method, list_methods, register_method
from embadvisor.methods._solver import Plan, TablePlan, solve

from embadvisor.methods._collection import EmbeddingCollection, build_collection  # noqa: E402  isort: skip

# built-in methods (one import line each; order does not matter)
from embadvisor.methods import full  # noqa: E402,F401  isort: skip
from embadvisor.methods import hash  # noqa: E402,F401  isort: skip
from embadvisor.methods import qr  # noqa: E402,F401  isort: skip
from embadvisor.methods import tt_rec  # noqa: E402,F401  isort: skip
from embadvisor.methods import dhe  # noqa: E402,F401  isort: skip
from embadvisor.methods import robe  # noqa: E402,F401  isort: skip
from embadvisor.methods import mde  # noqa: E402,F401  isort: skip
from embadvisor.methods import autodim  # noqa: E402,F401  isort: skip
from embadvisor.methods import optembed  # noqa: E402,F401  isort: skip
from embadvisor.methods import adapt  # noqa: E402,F401  isort: skip
from embadvisor.methods import qat  # noqa: E402,F401  isort: skip  (int8, int16)
from embadvisor.methods import alpt  # noqa: E402,F401  isort: skip
from embadvisor.methods import ptq  # noqa: E402,F401  isort: skip  (ptq_int8, ptq_int4)
from embadvisor.methods import dpq  # noqa: E402,F401  isort: skip
from embadvisor.methods import mgqe  # noqa: E402,F401  isort: skip
from embadvisor.methods import dedup  # noqa: E402,F401  isort: skip
from embadvisor.methods import pep  # noqa: E402,F401  isort: skip
from embadvisor.methods import deeplight  # noqa: E402,F401  isort: skip
from embadvisor.methods import autosrh  # noqa: E402,F401  isort: skip
# frozen-vector compressors (tags.input == "vectors"; fit(corpus) instead of build(table))
from embadvisor.methods import vec_full  # noqa: E402,F401  isort: skip
from embadvisor.methods import vec_sq  # noqa: E402,F401  isort: skip
from embadvisor.methods import vec_pq  # noqa: E402,F401  isort: skip
from embadvisor.methods import vec_svd  # noqa: E402,F401  isort: skip
from embadvisor.methods import vec_prune  # noqa: E402,F401  isort: skip
from embadvisor.methods import vec_dedup  # noqa: E402,F401  isort: skip
from embadvisor.methods import vec_ttsvd  # noqa: E402,F401  isort: skip
from embadvisor.methods import vec_grouped_sq  # noqa: E402,F401  isort: skip
from embadvisor.methods import vec_grouped_svd  # noqa: E402,F401  isort: skip

__all__ = [
    "CATEGORIES",
    "INPUTS",
    "OPTIMIZERS",
    "SCOPES",
    "CompressedEmbedding",
    "EmbeddingCollection",
    "Interval",
    "Options",
    "Plan",
    "TablePlan",
    "build_collection",
    "solve",
    "MemoryEstimate",
    "MethodConfig",
    "MethodTags",
    "Stage",
    "TensorSpec",
    "create_embedding",
    "get_method",
    "list_methods",
    "register_method",
]
