"""Reusable test batteries (the method contract suite) and toy tasks for tests.

The whole contract of a method, table or vector, in two lines of pytest::

    from embadvisor.testing import parametrize_with_checks

    @parametrize_with_checks([MyConfig])
    def test_contract(check):
        check()

:func:`checks_for` yields the same checks for other runners. The checks live in
:mod:`embadvisor.testing.method_contract` (table methods) and
:mod:`embadvisor.testing.vector_contract` (frozen-vector compressors); this repository's own
conventions for its built-in methods are :func:`embadvisor.testing.conventions.check_repo_conventions`.
"""

from embadvisor.testing._check import Check
from embadvisor.testing._parametrize import checks_for, parametrize_with_checks
from embadvisor.testing.conventions import check_repo_conventions

__all__ = ["Check", "check_repo_conventions", "checks_for", "parametrize_with_checks"]
