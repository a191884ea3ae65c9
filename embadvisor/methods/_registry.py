"""The method registry: one entry per method, keyed by its name.

A built-in module ``embadvisor/methods/<name>.py`` registers the method ``<name>``; a module that
registers several variants of one method lists their names in a module-level ``METHODS`` tuple
(``qat``: ``int8``, ``int16``; ``ptq``: ``ptq_int8``, ``ptq_int4``).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

from embadvisor.errors import InvalidConfigError, UnknownNameError, suggest
from embadvisor.methods._base import MethodConfig

__all__ = ["create_embedding", "get_method", "is_registered", "isolated", "list_methods", "register_method"]

_REGISTRY: dict[str, type[MethodConfig]] = {}
C = TypeVar("C", bound=type[MethodConfig])


def register_method(cls: C) -> C:
    """Class decorator: add a :class:`MethodConfig` subclass to the registry under ``cls.name``."""
    name = getattr(cls, "name", "")
    if not name or not name.replace("_", "").isalnum() or name.lower() != name:
        raise InvalidConfigError(f"method name must be lowercase snake_case, but got name={name!r}.")
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise InvalidConfigError(f"method {name!r} is registered twice ({_REGISTRY[name].__module__} and "
                                 f"{cls.__module__}).")
    if not hasattr(cls, "tags"):
        raise InvalidConfigError(f"method {name!r} must define the class attribute `tags`.")
    # table methods build an nn.Module; frozen-vector compressors fit an index (tags.input)
    attr = "module_class" if cls.tags.input == "table" else "index_class"
    if not hasattr(cls, attr):
        raise InvalidConfigError(f"method {name!r} must define the class attribute `{attr}`.")
    _REGISTRY[name] = cls
    return cls


def list_methods(pattern: str = "*", *, input: str | None = "table") -> list[str]:  # noqa: A002
    """Registered method names (sorted), optionally filtered by a glob pattern.

    Args:
        pattern: glob over the names.
        input: only methods whose ``tags.input`` is this: ``"table"`` (the default: methods that
            compress a trained embedding table), ``"vectors"`` (compressors of a frozen vector
            corpus), or None for every registered method.
    """
    return sorted(n for n, c in _REGISTRY.items()
                  if fnmatch.fnmatch(n, pattern) and (input is None or c.tags.input == input))


def get_method(name: str) -> type[MethodConfig]:
    """The config class registered under ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        names = list_methods(input=None)
        raise UnknownNameError(
            f"`method` must be one of {', '.join(names)}, but got method={name!r}.{suggest(name, names)}"
        ) from None


def is_registered(cls: type[MethodConfig]) -> bool:
    """Whether ``cls`` is the class registered under ``cls.name``."""
    return _REGISTRY.get(getattr(cls, "name", "")) is cls


def create_embedding(name: str, table, **params):  # type: ignore[no-untyped-def]
    """``create_embedding("qr", table, num_collisions=8)`` = ``get_method("qr")(num_collisions=8).build(table)``."""
    return get_method(name).from_dict(params).build(table)


@contextmanager
def isolated() -> Iterator[dict[str, type[MethodConfig]]]:
    """Temporarily register extra methods (tests); the registry is restored afterwards."""
    saved = dict(_REGISTRY)
    try:
        yield _REGISTRY
    finally:
        _REGISTRY.clear()
        _REGISTRY.update(saved)
