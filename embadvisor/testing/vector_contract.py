"""The contract suite of the frozen-vector compressors (``tags.input == "vectors"``).

:func:`checks_for` yields every check for one vector config class, bound to its arguments;
:func:`embadvisor.testing.parametrize_with_checks` dispatches to it for vector compressors, and
``tests/vectors_tests/test_vector_contract.py`` runs it over every registered vector method, so
a new compressor is tested by registering it. The config half of the contract (frozen fields,
constraints, search space, ``from_budget``, docstring examples) reuses the table suite's checks;
the rest is specific to fitted indexes: the stored arrays are exactly the declared ones (so
``memory().serve_bytes`` is the real size), search over the codes agrees with the decoded
vectors, exclusion works, fitting is deterministic.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator

import numpy as np

from embadvisor.methods import CATEGORIES, get_method, list_methods
from embadvisor.methods._registry import is_registered
from embadvisor.methods._vectors import CompressedIndex, VectorConfig, corpus_table
from embadvisor.testing import method_contract as mc
from embadvisor.testing._check import Check

__all__ = ["VECTOR_CHECKS", "checks_for", "small_corpus", "vector_cases"]

_SNAKE = re.compile(r"^[a-z][a-z0-9_]*$")


def small_corpus(n: int = 600, d: int = 24, seed: int = 0) -> np.ndarray:
    """Clustered float32 vectors with varied norms and a few exact duplicate rows."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((12, d))
    x = centres[rng.integers(0, 12, n)] + 0.4 * rng.standard_normal((n, d))
    x *= rng.uniform(0.5, 2.0, (n, 1))
    x[n - 10 :] = x[:10]
    return x.astype(np.float32)


def check_registry(cls: type[VectorConfig]) -> None:
    """Tags, base classes and (when registered) the registry listing of a vector compressor."""
    name = cls.name
    assert _SNAKE.match(name), f"{name}: registry key must be snake_case"
    assert cls.tags.input == "vectors" and cls.tags.post_training_only, f"{name}: must be tagged input='vectors'"
    assert cls.tags.category in CATEGORIES
    assert issubclass(cls, VectorConfig) and issubclass(cls.index_class, CompressedIndex)
    if is_registered(cls):
        assert name in list_methods(input="vectors") and name not in list_methods(), f"{name}: wrong registry listing"


def check_docstring_examples(cls: type[VectorConfig]) -> None:
    mc.check_docstring_examples(cls)


def check_config(cls: type[VectorConfig], corpus: np.ndarray) -> None:
    mc.check_config(cls, corpus_table(corpus))


def check_search_space(cls: type[VectorConfig], corpus: np.ndarray) -> None:
    mc.check_search_space(cls, corpus_table(corpus))


def check_from_budget(cls: type[VectorConfig], corpus: np.ndarray) -> None:
    """The solved config fits, and one more step of the size knob would not (it is the largest)."""
    table = corpus_table(corpus)
    mc.check_from_budget(cls, table)
    full = table.num_embeddings * table.embedding_dim * 4
    for ratio in (0.5, 0.2, 0.06):
        cfg = cls.from_budget(table, full * ratio)
        if cfg is None or cls.size_knob is None:
            continue
        knob = getattr(cfg, cls.size_knob)
        if isinstance(knob, int) and not isinstance(knob, bool):
            try:
                bigger = dataclasses.replace(cfg, **{cls.size_knob: knob + 1})
            except Exception:
                continue
            if bigger.check_feasible(table) is None and bigger.memory(table).serve_bytes > cfg.memory(table).serve_bytes:
                assert bigger.memory(table).serve_bytes > full * ratio, (
                    f"{cls.name}: from_budget({ratio}) is not the largest fitting {cls.size_knob} ({knob})")


def check_bytes_exact(cfg: VectorConfig, corpus: np.ndarray) -> CompressedIndex:
    """The fitted index stores exactly the declared arrays; ``serve_bytes`` is their size."""
    table = corpus_table(corpus)
    index = cfg.fit(corpus)
    got = [(s.name, s.shape, s.dtype) for s in index.specs()]
    want = [(s.name, s.shape, s.dtype) for s in cfg.tensor_specs(table)]
    est = cfg.memory(table).serve_bytes
    if type(cfg).tags.data_dependent_memory:
        assert index.nbytes <= est, f"{cfg!r}: index holds {index.nbytes} bytes > estimate {est}"
    else:
        assert got == want, f"{cfg!r}: stored arrays {got} != declared {want}"
        assert index.nbytes == est, f"{cfg!r}: index holds {index.nbytes} bytes, memory() says {est}"
    return index


def check_search(cfg: VectorConfig, corpus: np.ndarray) -> None:
    """Scores from the codes equal the decoded vectors' inner products; results are the best k, sorted."""
    index = cfg.fit(corpus)
    rec = index.reconstruct()
    n, d = corpus.shape
    assert rec.shape == (n, d) and rec.dtype == np.float32 and np.isfinite(rec).all(), f"{cfg!r}: bad reconstruct"
    assert np.allclose(index.reconstruct(5, 17), rec[5:17]), f"{cfg!r}: reconstruct(start, stop) != a slice"
    rng = np.random.default_rng(1)
    q = rng.standard_normal((7, d)).astype(np.float32)
    k = 10
    for block in (n, 37):  # one block and many (the top-k merge)
        scores, ids = index.search(q, k, block_rows=block)
        assert scores.shape == (7, k) and ids.shape == (7, k) and ids.dtype == np.int64
        assert ((ids >= 0) & (ids < n)).all() and all(len(set(r)) == k for r in ids)
        assert (np.diff(scores, axis=1) <= 1e-6).all(), f"{cfg!r}: scores not sorted"
        ref = q @ rec.T
        tol = 1e-4 * (np.abs(ref).max() + 1)
        assert np.allclose(np.take_along_axis(ref, ids, 1), scores, atol=tol), f"{cfg!r}: code scores != decoded"
        assert np.allclose(-np.sort(-ref, axis=1)[:, :k], scores, atol=tol), f"{cfg!r}: not the best {k}"
    # corpus rows as their own queries: the row itself is never returned
    rows = np.array([0, 3, n - 1], dtype=np.int64)
    _, ids = index.search(corpus[rows], 5, exclude=rows)
    assert not (ids == rows[:, None]).any(), f"{cfg!r}: excluded rows returned"


def check_determinism(cfg: VectorConfig, corpus: np.ndarray) -> None:
    a, b = cfg.fit(corpus), cfg.fit(corpus)
    assert a.arrays.keys() == b.arrays.keys()
    for k in a.arrays:
        assert np.array_equal(a.arrays[k], b.arrays[k]), f"{cfg!r}: {k} differs between two fits"


def check_deterministic_search(cfg: VectorConfig, corpus: np.ndarray) -> None:
    """Tag ``deterministic_forward``: searching one index twice gives the same scores and ids."""
    index = cfg.fit(corpus)
    q = np.random.default_rng(2).standard_normal((5, corpus.shape[1])).astype(np.float32)
    (s1, i1), (s2, i2) = index.search(q, 7), index.search(q, 7)
    assert np.array_equal(s1, s2) and np.array_equal(i1, i2), f"{cfg!r}: two searches of one index differ"


def check_not_a_table_method(cfg: VectorConfig, corpus: np.ndarray) -> None:
    from embadvisor.errors import InvalidConfigError
    from embadvisor.methods import solve

    table = corpus_table(corpus)
    for call in (lambda: cfg.build(table), lambda: solve(type(cfg), [table], 1e9)):
        try:
            call()
        except InvalidConfigError as e:
            assert "vector" in str(e), f"{cfg!r}: the refusal must say why: {e}"
        else:
            raise AssertionError(f"{cfg!r}: table code paths must refuse a vector compressor")


VECTOR_CHECKS: dict[str, Callable[..., object]] = {
    "registry": check_registry,
    "docstring_examples": check_docstring_examples,
    "config": check_config,
    "search_space": check_search_space,
    "from_budget": check_from_budget,
    "bytes_exact": check_bytes_exact,
    "search": check_search,
    "determinism": check_determinism,
    "deterministic_search": check_deterministic_search,
    "not_a_table_method": check_not_a_table_method,
}


def checks_for(cls: type[VectorConfig], *, corpus: np.ndarray | None = None) -> Iterator[Check]:
    """Every check of the contract for the vector compressor ``cls``, bound to its arguments.

    The class checks run once; the index checks run for each of ``cls.example_configs`` on the
    corpus's table. ``cls`` need not be registered.

    Args:
        cls: a :class:`VectorConfig` subclass.
        corpus: the vectors the checks fit (default :func:`small_corpus`).
    """
    corpus = small_corpus() if corpus is None else corpus
    name = cls.name or cls.__name__
    yield Check(check_registry, cls, check_id=f"{name}-registry")
    yield Check(check_docstring_examples, cls, check_id=f"{name}-docstring_examples")
    for check in ("config", "search_space", "from_budget"):
        yield Check(VECTOR_CHECKS[check], cls, corpus, check_id=f"{name}-{check}")
    index_checks = ["bytes_exact", "search", "determinism", "not_a_table_method"]
    if cls.tags.deterministic_forward:
        index_checks.insert(3, "deterministic_search")
    for i, cfg in enumerate(cls.example_configs(corpus_table(corpus))):
        for check in index_checks:
            yield Check(VECTOR_CHECKS[check], cfg, corpus, check_id=f"{name}-{i}-{check}")


def vector_cases(names: list[str] | None = None, corpus: np.ndarray | None = None
                 ) -> Iterator[tuple[str, VectorConfig, np.ndarray]]:
    """(id, config, corpus) for every registered vector compressor and each of its example configs."""
    corpus = small_corpus() if corpus is None else corpus
    table = corpus_table(corpus)
    for name in names or list_methods(input="vectors"):
        cls = get_method(name)
        for i, cfg in enumerate(cls.example_configs(table)):
            yield f"{name}-{i}", cfg, corpus  # type: ignore[misc]
