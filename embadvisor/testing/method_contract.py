"""The method contract suite: one battery of checks every table method must pass.

:func:`checks_for` yields every check of the contract for one config class, bound to its
arguments (a :class:`~embadvisor.testing.Check`); :func:`embadvisor.testing.parametrize_with_checks`
turns them into pytest cases, so a method defined anywhere runs the whole contract with::

    from embadvisor.testing import parametrize_with_checks

    @parametrize_with_checks([MyConfig])
    def test_contract(check):
        check()

``tests/methods_tests/test_contract.py`` does this for every registered method, so a new method
gets the contract by registering, with no new test code. The ``check_*`` functions can also be
called one by one. Each check raises ``AssertionError`` with a message that names the method and
the config. The checks read the method's tags, never its name: ``hash_based``,
``deterministic_forward`` and ``supports_unseen_ids`` each add a check that enforces them. This repository's own conventions
(file name, docstring headings) are not part of the contract; they are
:func:`embadvisor.testing.conventions.check_repo_conventions`.
"""

from __future__ import annotations

import dataclasses
import doctest
import importlib
import json
import math
import re
import sys
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from embadvisor.errors import InvalidConfigError
from embadvisor.methods import CATEGORIES, CompressedEmbedding, MethodConfig, get_method, list_methods
from embadvisor.methods._base import module_specs
from embadvisor.profiles.schema import FrequencySummary, TableSpec
from embadvisor.testing._check import Check

__all__ = [
    "CHECKS",
    "LARGE_SIZES",
    "check_config",
    "check_determinism",
    "check_deterministic_forward",
    "check_docstring_examples",
    "check_forward_backward",
    "check_from_budget",
    "check_hash_spread",
    "check_large_ids",
    "check_memory_at_scale",
    "check_memory_matches_module",
    "check_registry",
    "check_search_space",
    "check_stages_and_export",
    "check_unseen_ids",
    "checks_for",
    "contract_cases",
    "docstring_examples",
    "small_table",
]

_SNAKE = re.compile(r"^[a-z][a-z0-9_]*$")


def small_table(n: int = 1000, d: int = 16, name: str = "t") -> TableSpec:
    """A small table with a Zipf frequency summary (for frequency-aware methods)."""
    return TableSpec(name, n, d, FrequencySummary.zipf(n, 1.1, total=20 * n))


def zipf_counts(n: int, seed: int = 0) -> np.ndarray:
    """Per-id counts with a Zipf-like skew, id 0 most frequent (as the readers order ids)."""
    rng = np.random.default_rng(seed)
    base = 10_000.0 / np.arange(1, n + 1) ** 1.1
    return np.maximum(1, rng.poisson(base)).astype(np.int64)


def prepared(cfg: MethodConfig, table: TableSpec, **kw: Any) -> CompressedEmbedding:
    """Build and run the data-dependent ``prepare`` step (with counts when the method needs them)."""
    torch.manual_seed(0)
    module = cfg.build(table, **kw)
    counts = zipf_counts(table.num_embeddings) if type(cfg).tags.needs_frequencies else None
    if kw.get("device") != "meta":
        module.prepare(counts)
    return module


#: Criteo's field sizes, large to small: ``check_memory_at_scale`` builds tables of these sizes on
#: the meta device (exact bytes in milliseconds, no allocation).
LARGE_SIZES = (10_131_227, 2_202_608, 93_145, 1460)


# --------------------------------------------------------------------------- checks
def check_registry(cls: type[MethodConfig]) -> None:
    """The class attributes the registry, the advisor and the trainer read are well formed."""
    name = cls.name
    assert _SNAKE.match(name), f"{name}: registry key must be snake_case"
    assert cls.tags.category in CATEGORIES, f"{name}: unknown category {cls.tags.category!r}"
    assert issubclass(cls.module_class, CompressedEmbedding)
    assert sum(s.budget_fraction for s in cls.stages) == 1.0 or math.isclose(
        sum(s.budget_fraction for s in cls.stages), 1.0), f"{name}: stage budget fractions must sum to 1"


def docstring_examples(cls: type) -> list[doctest.DocTest]:
    """The doctests of ``cls``'s own docstring (not its methods').

    They run in the namespace of the module that defines ``cls``, plus ``cls`` itself and
    :class:`TableSpec` (so an example may use both without importing them).
    """
    mod = sys.modules.get(cls.__module__) or importlib.import_module(cls.__module__)
    globs = {**vars(mod), "TableSpec": TableSpec, cls.__name__: cls}
    finder = doctest.DocTestFinder(recurse=False)
    return finder.find(cls, cls.__qualname__, module=mod, globs=globs)


def check_docstring_examples(cls: type) -> None:
    """The ``>>>`` examples of the config's docstring (its ``Example`` section) print what they show."""
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report: list[str] = []
    failed = sum(runner.run(test, out=report.append).failed for test in docstring_examples(cls))
    name = getattr(cls, "name", "") or cls.__name__
    assert failed == 0, f"{name}: {failed} docstring example(s) failed:\n" + "".join(report)


def check_config(cls: type[MethodConfig], table: TableSpec) -> None:
    cfg = cls()
    try:
        setattr(cfg, "name", "x")  # noqa: B010
        raise AssertionError(f"{cls.name}: configs must be frozen")
    except dataclasses.FrozenInstanceError:
        pass
    for c in [cfg, *cls.example_configs(table)]:
        assert cls(**dataclasses.asdict(c)) == c
        again = cls.from_dict(json.loads(json.dumps(c.to_dict())))
        assert again == c, f"{cls.name}: JSON round trip changed {c} into {again}"
    # every declared constraint rejects values outside it, with a message naming the parameter
    for f in dataclasses.fields(cls):
        constraint = f.metadata.get("constraint")
        if constraint is None:
            continue
        bad_values: list[Any] = ["not-a-number"] if hasattr(constraint, "low") else ["<no such option>"]
        if getattr(constraint, "low", None) is not None:
            bad_values.append(constraint.low - 1)
        if getattr(constraint, "high", None) is not None:
            bad_values.append(constraint.high + 1)
        for bad in bad_values:
            try:
                cls(**{f.name: bad})
            except InvalidConfigError as e:
                assert f.name in str(e), f"{cls.name}: error for {f.name}={bad!r} must name the parameter: {e}"
            else:
                raise AssertionError(f"{cls.name}: {f.name}={bad!r} must raise InvalidConfigError")


def check_search_space(cls: type[MethodConfig], table: TableSpec) -> None:
    import optuna

    space = cls.search_space(table)
    names = {f.name for f in dataclasses.fields(cls)}
    assert set(space) <= names, f"{cls.name}: search-space keys {set(space) - names} are not config fields"
    if not space:
        return
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(50):
        trial = study.ask(space)
        try:
            cfg = cls(**trial.params)
        except InvalidConfigError as e:
            raise AssertionError(f"{cls.name}: search space proposed an invalid config {trial.params}: {e}") from e
        reason = cfg.check_feasible(table)
        assert reason is None or (isinstance(reason, str) and reason), f"{cls.name}: bad check_feasible result"
        study.tell(trial, 0.0)


def check_memory_matches_module(cfg: MethodConfig, table: TableSpec) -> None:
    """The analytic tensor list equals the meta-built module, tensor by tensor; bytes add up."""
    module = cfg.build(table, device="meta")
    got = sorted((s.name, s.shape, s.dtype, s.trainable) for s in module_specs(module))
    want = sorted((s.name, s.shape, s.dtype, s.trainable) for s in cfg.tensor_specs(table))
    assert got == want, f"{cfg!r} on {table}: module tensors {got} != declared {want}"
    est = cfg.memory(table)
    params = sum(p.numel() * 4 for p in module.parameters())
    buffers = sum(b.numel() * b.element_size() for b in module.buffers())
    assert est.param_bytes == params, f"{cfg!r}: param bytes {est.param_bytes} != module {params}"
    assert est.buffer_bytes == buffers, f"{cfg!r}: buffer bytes {est.buffer_bytes} != module {buffers}"
    n_param = sum(p.numel() for p in module.parameters())
    assert cfg.memory(table, optimizer="sgd").optimizer_bytes == 0
    assert cfg.memory(table, optimizer="adam").optimizer_bytes == 2 * 4 * n_param
    assert cfg.memory(table, optimizer="adagrad").optimizer_bytes == 4 * n_param
    half = cfg.memory(table, weight_dtype="fp16")
    assert half.param_bytes * 2 == est.param_bytes, f"{cfg!r}: fp16 weights must halve parameter bytes"
    if not type(cfg).tags.post_training_only and not type(cfg).tags.serve_differs_from_train:
        assert est.serve_bytes <= est.train_bytes


def check_memory_at_scale(cls: type[MethodConfig], n: int) -> None:
    """:func:`check_memory_matches_module` on an ``n``-row table (meta device), for the config
    solved at 10% of the full size (else the smallest, else the default) when it is feasible."""
    table = small_table(n)
    cfg = cls.from_budget(table, n * 16 * 4 * 0.1) or cls.min_config(table) or cls()
    if cfg.check_feasible(table) is None:
        check_memory_matches_module(cfg, table)


def check_forward_backward(cfg: MethodConfig, table: TableSpec) -> None:
    module = prepared(cfg, table)
    module.train()
    n, d = table.num_embeddings, table.embedding_dim
    ids = torch.tensor([0, n - 1, n // 2, 1 % n, 0], dtype=torch.int64)
    out = module(ids)
    assert out.shape == (5, d), f"{cfg!r}: output shape {tuple(out.shape)} != (5, {d})"
    assert out.dtype.is_floating_point and torch.isfinite(out).all(), f"{cfg!r}: non-finite output"
    ids2 = torch.randint(0, n, (4, 3), generator=torch.Generator().manual_seed(1))
    out2 = module(ids2)
    assert out2.shape == (4, 3, d)
    (out.pow(2).mean() + out2.pow(2).mean()).backward()
    for pname, p in module.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{cfg!r}: parameter {pname} received no gradient"
            g = p.grad.coalesce().values() if p.grad.is_sparse else p.grad
            assert torch.isfinite(g).all(), f"{cfg!r}: non-finite gradient in {pname}"


def check_large_ids(cfg: MethodConfig, d: int = 16) -> None:
    """Methods whose size does not grow with n embed ids up to 2**40 exactly (no float division)."""
    big = TableSpec("big", 2**40, d, FrequencySummary.zipf(2**40, 1.1))
    if cfg.check_feasible(big) is not None or type(cfg).tags.needs_frequencies:
        return
    if cfg.memory(big).train_bytes > 256 * 2**20:
        return
    module = cfg.build(big)
    module.eval()
    ids = torch.tensor([2**40 - 1, 2**40 - 2, 2**33 + 1, 0], dtype=torch.int64)
    with torch.no_grad():
        out = module(ids)
    assert out.shape == (4, d) and torch.isfinite(out).all(), f"{cfg!r}: bad output for ids near 2**40"


def check_hash_spread(cfg: MethodConfig, d: int = 16) -> None:
    """Tag ``hash_based``: consecutive ids near 2**31 and 2**40 spread over the hash range as small
    ids do (at least half as many distinct vectors), so the hash sees every bit of an id.

    An id that passes through float32 on its way to the hash (24-bit mantissa; the DLRM trap)
    maps a run of 64 consecutive large ids to one or two vectors. Runs on an n = 2**40 table, when
    the config's memory for it stays small (as :func:`check_large_ids`).
    """
    big = TableSpec("big", 2**40, d, FrequencySummary.zipf(2**40, 1.1))
    if cfg.check_feasible(big) is not None or type(cfg).tags.needs_frequencies:
        return
    if cfg.memory(big).train_bytes > 256 * 2**20:
        return
    torch.manual_seed(0)
    module = cfg.build(big)
    module.eval()
    run = torch.arange(64, dtype=torch.int64)
    with torch.no_grad():
        small = module(run).unique(dim=0).shape[0]
        for base in (2**31 - 32, 2**40 - 64):
            got = module(run + base).unique(dim=0).shape[0]
            assert 2 * got >= small, (
                f"{cfg!r}: 64 consecutive ids from {base} give {got} distinct vectors, ids 0..63 give {small}")


def check_determinism(cfg: MethodConfig, table: TableSpec) -> None:
    """Two builds under the same torch seed hold the same state (hash seeds included: they are buffers)."""
    a, b = prepared(cfg, table), prepared(cfg, table)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"{cfg!r}: {k} differs between two builds with the same seed"


def check_deterministic_forward(cfg: MethodConfig, table: TableSpec) -> None:
    """Tag ``deterministic_forward``: in eval mode, lookups are a function of the state and the ids.

    Two builds under the same seed give identical outputs, and the same module (and its
    ``export()``) gives identical outputs on a second call.
    """
    a, b = prepared(cfg, table), prepared(cfg, table)
    ids = torch.arange(min(50, table.num_embeddings))
    a.eval()
    b.eval()
    with torch.no_grad():
        assert torch.equal(a(ids), b(ids))
        assert torch.equal(a(ids), a(ids)), f"{cfg!r}: two forwards of one module differ in eval mode"
        served = a.export()
        assert torch.equal(served(ids), served(ids)), f"{cfg!r}: two forwards of export() differ"


def check_unseen_ids(cfg: MethodConfig, table: TableSpec) -> None:
    """Tag ``supports_unseen_ids``: ids at or beyond ``num_embeddings`` get finite vectors, in
    training (with finite gradients), in eval mode and from ``export()``."""
    module = prepared(cfg, table)
    n, d = table.num_embeddings, table.embedding_dim
    ids = torch.tensor([n, n + 1, 2 * n + 3, 2**31 + 5, 2**40 + 7], dtype=torch.int64)
    module.train()
    out = module(ids)
    assert out.shape == (5, d) and torch.isfinite(out).all(), f"{cfg!r}: bad output for unseen ids in training"
    out.pow(2).mean().backward()
    for pname, p in module.named_parameters():
        if p.grad is not None:
            g = p.grad.coalesce().values() if p.grad.is_sparse else p.grad
            assert torch.isfinite(g).all(), f"{cfg!r}: non-finite gradient in {pname} from unseen ids"
    module.eval()
    with torch.no_grad():
        for form, m in (("module", module), ("export()", module.export())):
            got = m(ids.view(1, 5))
            assert got.shape == (1, 5, d) and torch.isfinite(got).all(), f"{cfg!r}: {form} fails on unseen ids"


def check_stages_and_export(cfg: MethodConfig, table: TableSpec) -> None:
    module = prepared(cfg, table)
    params = [p for p in module.parameters() if p.requires_grad]
    sparse = {id(p) for p in module.sparse_parameters()}
    dense_params = [p for p in params if id(p) not in sparse]
    sparse_params = [p for p in params if id(p) in sparse]
    opts: list[torch.optim.Optimizer] = []
    if dense_params:
        opts.append(torch.optim.Adam(dense_params, lr=1e-2))
    if sparse_params:
        opts.append(torch.optim.SparseAdam(sparse_params, lr=1e-2))
    module.on_train_start("adam", 1e-2)
    step = 0
    gen = torch.Generator().manual_seed(0)
    for stage in type(cfg).stages:
        module.on_stage_start(stage)
        for _ in range(2):
            ids = torch.randint(0, table.num_embeddings, (64,), generator=gen)
            loss = (module(ids) - 0.1).pow(2).mean()
            reg = module.regularization_loss()
            if reg is not None:
                assert torch.isfinite(reg), f"{cfg!r}: non-finite regularization loss"
                loss = loss + reg
            for o in opts:
                o.zero_grad()
            loss.backward()
            for o in opts:
                o.step()
            step += 1
            module.on_step(step)
        module.on_epoch_end(0, stage)
    module.eval()
    ids = torch.arange(min(200, table.num_embeddings))
    with torch.no_grad():
        trained = module(ids)
        served = module.export()
        out = served(ids)
    assert out.shape == trained.shape and torch.isfinite(out).all()
    tol = getattr(type(cfg), "export_tolerance", 0.0)
    err = (out - trained).abs().max().item()
    scale = trained.abs().max().item() + 1e-12
    assert err <= tol * scale + 1e-7, f"{cfg!r}: exported output differs by {err:.3g} (tolerance {tol} x {scale:.3g})"
    est = cfg.memory(table).serve_bytes
    real = sum(t.numel() * t.element_size() for t in (*served.parameters(), *served.buffers()))
    if type(cfg).tags.data_dependent_memory:
        assert real <= est * 1.1 + 64, f"{cfg!r}: exported bytes {real} exceed the estimate {est}"
    else:
        assert real == est, f"{cfg!r}: exported module holds {real} bytes, serve estimate says {est}"


def check_from_budget(cls: type[MethodConfig], table: TableSpec) -> None:
    full = table.num_embeddings * table.embedding_dim * 4
    for ratio in (0.5, 0.25, 0.1):
        budget = full * ratio
        cfg = cls.from_budget(table, budget)
        if cfg is None:
            smallest = cls.min_config(table)
            assert smallest is None or smallest.memory(table).serve_bytes > budget, (
                f"{cls.name}: from_budget found nothing at {ratio} but min_config fits")
            continue
        assert cfg.check_feasible(table) is None
        got = cfg.memory(table).serve_bytes
        assert got <= budget, f"{cls.name}: from_budget({ratio}) gave {got} bytes > budget {budget}"


#: Every check by name. Checks of the class take ``(cls, table)`` (``registry`` and
#: ``docstring_examples``: ``(cls)``; ``memory_at_scale``: ``(cls, n)``); checks of one example
#: config take ``(cfg, table)`` (``large_ids`` and ``hash_spread``: ``(cfg)``). :func:`checks_for` binds them.
CHECKS: dict[str, Callable[..., object]] = {
    "registry": check_registry,
    "docstring_examples": check_docstring_examples,
    "config": check_config,
    "search_space": check_search_space,
    "from_budget": check_from_budget,
    "memory_at_scale": check_memory_at_scale,
    "memory_matches_module": check_memory_matches_module,
    "forward_backward": check_forward_backward,
    "large_ids": check_large_ids,
    "hash_spread": check_hash_spread,
    "determinism": check_determinism,
    "deterministic_forward": check_deterministic_forward,
    "unseen_ids": check_unseen_ids,
    "stages_and_export": check_stages_and_export,
}


def checks_for(cls: type[MethodConfig], *, table: TableSpec | None = None,
               large_sizes: tuple[int, ...] = LARGE_SIZES) -> Iterator[Check]:
    """Every check of the contract for the table method ``cls``, bound to its arguments.

    The class checks run once; the config checks run for each of ``cls.example_configs(table)``;
    tags add checks (``hash_based``, ``deterministic_forward``, ``supports_unseen_ids``), so a
    tag is a claim the suite tests. ``cls`` need not be registered.

    Args:
        cls: a :class:`MethodConfig` subclass with ``tags.input == "table"``.
        table: the small table the checks use (default :func:`small_table`).
        large_sizes: table sizes for ``memory_at_scale`` (meta device).
    """
    table = table or small_table()
    name = cls.name or cls.__name__

    def bind(check: str, *args: Any, case: str = "") -> Check:
        return Check(CHECKS[check], *args, check_id=f"{name}-{case}{check}")

    yield bind("registry", cls)
    yield bind("docstring_examples", cls)
    for check in ("config", "search_space", "from_budget"):
        yield bind(check, cls, table)
    for n in large_sizes:
        yield Check(check_memory_at_scale, cls, n, check_id=f"{name}-memory_at_scale-{n}")
    for i, cfg in enumerate(cls.example_configs(table)):
        case = f"{i}-"
        yield bind("memory_matches_module", cfg, table, case=case)
        yield bind("forward_backward", cfg, table, case=case)
        yield bind("large_ids", cfg, case=case)
        # a capability tag is a claim about behaviour, so each one the suite can observe adds the
        # check that tests it (the advisor may rely on a tag only the suite keeps honest)
        if cls.tags.hash_based:
            yield bind("hash_spread", cfg, case=case)
        yield bind("determinism", cfg, table, case=case)
        if cls.tags.deterministic_forward:
            yield bind("deterministic_forward", cfg, table, case=case)
        if cls.tags.supports_unseen_ids:
            yield bind("unseen_ids", cfg, table, case=case)
        yield bind("stages_and_export", cfg, table, case=case)


def contract_cases(names: list[str] | None = None, table: TableSpec | None = None) -> Iterator[tuple[str, MethodConfig, TableSpec]]:
    """(id, config, table) for every registered method and each of its example configs."""
    table = table or small_table()
    for name in names or list_methods():
        cls = get_method(name)
        for i, cfg in enumerate(cls.example_configs(table)):
            yield f"{name}-{i}", cfg, table
