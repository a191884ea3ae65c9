"""The contract suite over every registered method and each of its example configs."""

from __future__ import annotations

import pytest

from embadvisor.methods import get_method, list_methods
from embadvisor.profiles.schema import TableSpec
from embadvisor.testing import method_contract as mc

CASES = list(mc.contract_cases())
IDS = [c[0] for c in CASES]
CRITEO_SIZES = [10_131_227, 2_202_608, 93_145, 1460]


@pytest.mark.parametrize("name", list_methods())
def test_registry(name: str) -> None:
    mc.check_registry(get_method(name))


@pytest.mark.parametrize("name", list_methods())
def test_config(name: str) -> None:
    mc.check_config(get_method(name), mc.small_table())


@pytest.mark.parametrize("name", list_methods())
def test_search_space(name: str) -> None:
    mc.check_search_space(get_method(name), mc.small_table())


@pytest.mark.parametrize("name", list_methods())
def test_from_budget(name: str) -> None:
    mc.check_from_budget(get_method(name), mc.small_table())


@pytest.mark.parametrize(("case", "cfg", "table"), CASES, ids=IDS)
def test_memory_matches_module(case: str, cfg, table) -> None:
    mc.check_memory_matches_module(cfg, table)


@pytest.mark.parametrize("name", list_methods())
@pytest.mark.parametrize("n", CRITEO_SIZES)
def test_memory_matches_module_criteo_size(name: str, n: int) -> None:
    """Criteo-size tables on the meta device: exact bytes in milliseconds, no allocation."""
    cls = get_method(name)
    table = mc.small_table(n)
    cfg = cls.from_budget(table, n * 16 * 4 * 0.1) or cls.min_config(table) or cls()
    if cfg.check_feasible(table) is None:
        mc.check_memory_matches_module(cfg, table)


@pytest.mark.parametrize(("case", "cfg", "table"), CASES, ids=IDS)
def test_forward_backward(case: str, cfg, table) -> None:
    mc.check_forward_backward(cfg, table)


@pytest.mark.parametrize(("case", "cfg", "table"), CASES, ids=IDS)
def test_large_ids(case: str, cfg, table) -> None:
    mc.check_large_ids(cfg)


@pytest.mark.parametrize(("case", "cfg", "table"), CASES, ids=IDS)
def test_determinism(case: str, cfg, table) -> None:
    mc.check_determinism(cfg, table)


@pytest.mark.parametrize(("case", "cfg", "table"), CASES, ids=IDS)
def test_stages_and_export(case: str, cfg, table) -> None:
    mc.check_stages_and_export(cfg, table)


def test_unknown_method_suggests() -> None:
    from embadvisor.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match="Did you mean 'hash'"):
        get_method("hsh")


def test_every_method_module_is_imported_by_the_package() -> None:
    import pkgutil

    import embadvisor.methods as pkg

    files = {m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_")}
    assert files == set(list_methods(input=None)), "each methods/<name>.py must register exactly the method <name>"


def test_table_spec_rejects_bad_sizes() -> None:
    from embadvisor.errors import InvalidConfigError

    with pytest.raises(InvalidConfigError, match="num_embeddings"):
        TableSpec("t", 0, 16)
