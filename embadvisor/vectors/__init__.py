"""Retrieval over frozen vector corpora: load, compress under a byte budget, search, evaluate, rebuild.

The compressors are the ``vec_*`` methods of the registry (``list_methods(input="vectors")``);
this package holds what surrounds them: validated inputs (:mod:`.data`), exact search, metrics
and timing (:mod:`.evaluate`), and :func:`build_index` to rebuild an exported configuration.
"""

from embadvisor.vectors.data import VectorData, load_vector_data
from embadvisor.vectors.evaluate import (
    QuerySet,
    compress,
    evaluate_index,
    exact_search,
    qrels_metrics,
    split_queries,
)
from embadvisor.vectors.rebuild import build_index, vector_config

__all__ = [
    "QuerySet",
    "VectorData",
    "build_index",
    "compress",
    "evaluate_index",
    "exact_search",
    "load_vector_data",
    "qrels_metrics",
    "split_queries",
    "vector_config",
]
