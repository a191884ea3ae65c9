"""This repository's own conventions for its built-in methods (not part of the method contract).

A method written elsewhere passes the contract (:func:`embadvisor.testing.checks_for`) without
following these; ``tests/methods_tests/test_contract.py`` and
``tests/vectors_tests/test_vector_contract.py`` apply them to the built-in methods only.
"""

from __future__ import annotations

import doctest
import importlib

from embadvisor.methods import MethodConfig, get_method
from embadvisor.testing.method_contract import docstring_examples

__all__ = ["check_repo_conventions"]

_PACKAGE = "embadvisor.methods"


def check_repo_conventions(cls: type[MethodConfig]) -> None:
    """A built-in method (table or vector) follows the house rules.

    * It lives in ``embadvisor/methods/<module>.py``, the package imports that module, and the
      module is registered under its name: the module's file name is the registry key, or the
      key is listed in the module's ``METHODS`` tuple (a module registering several variants).
    * The module docstring states the memory formula (``Memory``) and cites the paper
      (``References``); the config docstring has ``Args`` and ``Example`` sections, and the
      example has at least one ``>>>`` line that runs (the contract checks its output).
    """
    name = cls.name
    package, _, mod_name = cls.__module__.rpartition(".")
    assert package == _PACKAGE, f"{name}: built-in methods live in {_PACKAGE}, not {cls.__module__}"
    mod = importlib.import_module(cls.__module__)
    declared = tuple(getattr(mod, "METHODS", (mod_name,)))
    assert name in declared, (
        f"{name}: registry key must equal its module file name, got {mod_name}"
        + (f" (whose METHODS are {declared})" if hasattr(mod, "METHODS") else ""))
    assert getattr(importlib.import_module(_PACKAGE), mod_name, None) is mod, (
        f"{name}: {_PACKAGE}/__init__.py must import the module {mod_name}")
    assert get_method(name) is cls, f"{name}: must be registered under its name"
    doc = mod.__doc__ or ""
    assert "References" in doc, f"{name}: module docstring must have a References section"
    assert "Memory" in doc, f"{name}: module docstring must state the memory formula (Memory section)"
    cdoc = cls.__doc__ or ""
    assert "Args" in cdoc and "Example" in cdoc, f"{name}: config docstring needs Args and Example sections"
    runnable = [ex for test in docstring_examples(cls) for ex in test.examples if not ex.options.get(doctest.SKIP)]
    assert runnable, f"{name}: the Example section needs at least one >>> line that runs (not +SKIP)"
