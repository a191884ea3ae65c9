"""One entry point for the whole contract of any method (scikit-learn's ``parametrize_with_checks``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from embadvisor.methods import MethodConfig
from embadvisor.testing import method_contract, vector_contract
from embadvisor.testing._check import Check

__all__ = ["checks_for", "parametrize_with_checks"]

F = TypeVar("F", bound=Callable[..., Any])


def checks_for(method_cls: type[MethodConfig]) -> Iterator[Check]:
    """Every contract check of ``method_cls``, each a :class:`Check` (call it to run it).

    Table methods get :func:`embadvisor.testing.method_contract.checks_for`, frozen-vector
    compressors (``tags.input == "vectors"``) :func:`embadvisor.testing.vector_contract.checks_for`.
    The method need not be registered.
    """
    if method_cls.tags.input == "vectors":
        yield from vector_contract.checks_for(method_cls)  # type: ignore[arg-type]
    else:
        yield from method_contract.checks_for(method_cls)


def parametrize_with_checks(methods: Iterable[type[MethodConfig]]) -> Callable[[F], F]:
    """A ``pytest.mark.parametrize`` over every contract check of every method in ``methods``.

    The test receives one :class:`Check` as its ``check`` argument; the pytest id is the check's
    ``check_id`` (e.g. ``qr-0-forward_backward``), so ``-k`` selects by method or check::

        from embadvisor.testing import parametrize_with_checks

        @parametrize_with_checks([MyConfig])
        def test_contract(check):
            check()
    """
    import pytest

    checks = [c for cls in methods for c in checks_for(cls)]
    return pytest.mark.parametrize("check", checks, ids=[c.check_id for c in checks])  # type: ignore[no-any-return]
