"""A contract check bound to its arguments, with a readable id (what pytest shows)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

__all__ = ["Check"]


class Check(functools.partial[object]):
    """``functools.partial`` of one check function and its arguments, named by :attr:`check_id`.

    Calling it runs the check; it raises ``AssertionError`` when the method breaks the contract.
    ``check_id`` reads ``<method>-<check>`` for checks of the class and ``<method>-<i>-<check>``
    for checks of its ``i``-th example config.
    """

    check_id: str

    def __new__(cls, func: Callable[..., object], /, *args: Any, check_id: str, **kwargs: Any) -> Check:
        self = super().__new__(cls, func, *args, **kwargs)
        self.check_id = check_id
        return self

    def __repr__(self) -> str:
        return f"Check({self.check_id})"
