"""The contract suite over every registered table method (and this repository's conventions for them)."""

from __future__ import annotations

import pytest

from embadvisor.methods import get_method, list_methods
from embadvisor.profiles.schema import TableSpec
from embadvisor.testing import check_repo_conventions, parametrize_with_checks


@parametrize_with_checks([get_method(name) for name in list_methods()])
def test_contract(check) -> None:
    check()


@pytest.mark.parametrize("name", list_methods())
def test_repo_conventions(name: str) -> None:
    check_repo_conventions(get_method(name))


def test_unknown_method_suggests() -> None:
    from embadvisor.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match="Did you mean 'hash'"):
        get_method("hsh")


def test_every_method_module_is_imported_by_the_package() -> None:
    import importlib
    import pkgutil

    import embadvisor.methods as pkg

    files = {m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_")}
    declared: dict[str, set[str]] = {}
    for file in files:
        mod = importlib.import_module(f"embadvisor.methods.{file}")
        declared[file] = set(getattr(mod, "METHODS", (file,)))
        registered = {n for n in list_methods(input=None) if get_method(n).__module__ == mod.__name__}
        assert registered == declared[file], (
            f"methods/{file}.py must register exactly the method {file} (or the names in its METHODS)")
    assert set().union(*declared.values()) == set(list_methods(input=None)), (
        "each registered method must come from its own methods/<name>.py or a module's METHODS")


def test_table_spec_rejects_bad_sizes() -> None:
    from embadvisor.errors import InvalidConfigError

    with pytest.raises(InvalidConfigError, match="num_embeddings"):
        TableSpec("t", 0, 16)
