"""Byte sizes: one parser and one formatter used everywhere (CLI, profiles, budgets, reports).

SI units are powers of 10 (``MB`` = 10**6 bytes), IEC units powers of 2 (``MiB`` = 2**20).
Accepted forms: a plain number of bytes (``2000000000``, ``2e9``) or a number and a unit, with or
without a space (``64MB``, ``64 MB``, ``64MiB``, ``1.5GB``, ``512kB``). A unit must end in an
upper-case ``B``: ``64M`` (MB or MiB?), ``64Mb`` (megabits?) and ``64mB`` (millibytes?) are
ambiguous and rejected, as are zero, negative, NaN, infinite and empty sizes, and sizes above
:data:`MAX_SIZE` (1 EB: no memory budget is larger, and larger numbers overflow float arithmetic).

Budgets (:func:`parse_budget`) also take a share of the full tables, ``12.5%``: the bytes the
uncompressed tables take in the budget's scope, times the share.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction

from embadvisor.errors import InvalidConfigError

__all__ = ["ACCEPTED_FORMS", "DTYPE_BYTES", "MAX_SIZE", "Budget", "format_size", "parse_budget", "parse_duration",
           "parse_size"]

_SI = {"": 1, "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15}
_IEC = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50}
_KI = {"KiB": 2**10}
_UNITS: dict[str, int] = {"": 1} | {p + "B": m for p, m in {**_SI, **_IEC}.items()} | _KI

ACCEPTED_FORMS = (
    "a number of bytes (2000000000, 2e9) or a number with a unit: "
    "B, kB, MB, GB, TB, PB (powers of 10) or KiB, MiB, GiB, TiB, PiB (powers of 2), "
    "e.g. 64MB, 64 MB, 64MiB, 1.5GB, 512kB"
)

#: largest accepted size: 1 EB (10**18 bytes, 1000 PB)
MAX_SIZE = 10**18

_PATTERN = re.compile(r"^\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*([A-Za-z]*)\s*$")

#: Bytes per element of the dtypes the methods store.
DTYPE_BYTES = {
    "fp64": 8, "fp32": 4, "fp16": 2, "bf16": 2,
    "int64": 8, "int32": 4, "int16": 2, "int8": 1, "uint8": 1, "uint16": 2,
}


def _fail(text: object, why: str) -> InvalidConfigError:
    return InvalidConfigError(
        f"size must be a positive byte size, but got size={text!r} ({why}). "
        f"Accepted forms: {ACCEPTED_FORMS}."
    )


def parse_size(text: str | int | float, *, name: str = "size") -> int:
    """Parse a byte size into a whole number of bytes.

    Args:
        text: the size, e.g. ``"64MB"``, ``"64 MiB"``, ``"2e9"`` or an int.
        name: parameter name used in the error message.

    Returns:
        The size in bytes, rounded to the nearest whole byte (at least 1).

    Raises:
        InvalidConfigError: for empty, zero, negative, NaN/inf, unknown or ambiguous units, and sizes
            above :data:`MAX_SIZE`.

    Example:
        >>> parse_size("64MB"), parse_size("64MiB"), parse_size("1.5GB")
        (64000000, 67108864, 1500000000)
    """
    if isinstance(text, bool):
        raise _rename(_fail(text, "not a size"), name)
    if isinstance(text, int | float):
        if isinstance(text, int):
            if text <= 0:
                raise _rename(_fail(text, "must be greater than zero"), name)
            if text > MAX_SIZE:
                raise _rename(_fail(text, _TOO_LARGE), name)
            return text
        if not math.isfinite(text):
            raise _rename(_fail(text, "not a finite number"), name)
        value, unit = Fraction(text), ""
    else:
        if not isinstance(text, str) or not text.strip():
            raise _rename(_fail(text, "empty"), name)
        match = _PATTERN.match(text)
        if match is None:
            low = text.strip().lower()
            if any(w in low for w in ("nan", "inf")):
                raise _rename(_fail(text, "not a finite number"), name)
            raise _rename(_fail(text, "not a number followed by a unit"), name)
        number, unit = match.group(1), match.group(2)
        if unit not in _UNITS:
            raise _rename(_fail(text, _unit_problem(unit)), name)
        if len(number) > 100:
            raise _rename(_fail(text, "more than 100 characters in the number"), name)
        # the magnitude from a float first: an exact Fraction of 1e999999999 is an integer of a
        # billion digits (minutes of work); a float says inf or 0.0 at once
        approx = float(number) * _UNITS[unit]
        if number.startswith("-") or not any(c in "123456789" for c in number.lower().partition("e")[0]):
            raise _rename(_fail(text, "must be greater than zero"), name)
        if approx > 2 * MAX_SIZE:
            raise _rename(_fail(text, _TOO_LARGE), name)
        if approx < 0.25:  # also a non-zero number that underflows to 0.0
            raise _rename(_fail(text, "less than one byte"), name)
        value = Fraction(number)  # cheap: at most 100 characters, the exponent within ~130
    if unit not in _UNITS:
        raise _rename(_fail(text, _unit_problem(unit)), name)
    nbytes = value * _UNITS[unit]
    if nbytes > MAX_SIZE:
        raise _rename(_fail(text, _TOO_LARGE), name)
    if nbytes <= 0:
        raise _rename(_fail(text, "must be greater than zero"), name)
    rounded = round(nbytes)
    if rounded < 1:
        raise _rename(_fail(text, "less than one byte"), name)
    return rounded


@dataclass(frozen=True)
class Budget:
    """A memory budget: a byte size, or a share of the full tables (``12.5%``) resolved once their size is known.

    Example:
        >>> parse_budget("12.5%").resolve(64_000_000), parse_budget("8MB").resolve(64_000_000)
        (8000000, 8000000)
    """

    nbytes: int | None = None
    share: float | None = None

    def resolve(self, full_bytes: int) -> int:
        """Bytes: the size itself, or the share of ``full_bytes`` (the full tables in the budget's scope)."""
        if self.nbytes is not None:
            return self.nbytes
        assert self.share is not None
        return max(1, round(self.share * full_bytes))

    def __str__(self) -> str:
        return f"{self.share * 100:g}%" if self.share is not None else format_size(self.nbytes or 0)


_SHARE = re.compile(r"^\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*%\s*$")


def parse_budget(value: str | int | float | Budget, *, name: str = "budget") -> Budget:
    """A byte size (see :func:`parse_size`) or a share of the full tables: ``12.5%``, in (0, 100].

    Example:
        >>> parse_budget("12.5%"), parse_budget("64MB")
        (Budget(nbytes=None, share=0.125), Budget(nbytes=64000000, share=None))
    """
    if isinstance(value, Budget):
        return value
    if isinstance(value, str) and "%" in value:
        m = _SHARE.match(value)
        number = float(m.group(1)) if m and len(m.group(1)) <= 100 else math.nan
        if not (math.isfinite(number) and 0 < number <= 100):
            raise InvalidConfigError(
                f"`{name}` as a share of the full tables must be a percentage in (0, 100], such as 12.5%, "
                f"but got {name}={value!r}. Pass a share such as 12.5% or a byte size such as 64MB.")
        return Budget(share=number / 100)
    try:
        return Budget(nbytes=parse_size(value, name=name))
    except InvalidConfigError as e:
        raise InvalidConfigError(f"{e} A budget may also be a share of the full tables, such as 12.5%.") from None


_TOO_LARGE = "larger than 1 EB (10**18 bytes), the largest size accepted"


def _unit_problem(unit: str) -> str:
    if unit and unit[-1] == "b":
        return f"unit {unit!r} is ambiguous: a lower-case b means bits; write {unit[:-1]}B"
    if unit and unit[0] == "m" and unit.endswith("B"):
        return f"unit {unit!r} is ambiguous: m means milli; write M{unit[1:]}"
    if unit in _SI or unit in _IEC or unit.upper() in {"K", "M", "G", "T", "P"}:
        return f"unit {unit!r} is ambiguous: write {unit}B (powers of 10) or {unit[0].upper()}iB (powers of 2)"
    return f"unknown unit {unit!r}"


def _rename(err: InvalidConfigError, name: str) -> InvalidConfigError:
    if name != "size":
        err.args = (str(err).replace("size must", f"{name} must", 1).replace("got size=", f"got {name}=", 1),)
    return err


def format_size(nbytes: float, *, precision: int = 1) -> str:
    """Format a byte count with IEC units, e.g. ``63.4 MiB``; below 1 KiB as ``512 B``.

    Example:
        >>> format_size(66480000)
        '63.4 MiB'
    """
    if not math.isfinite(nbytes):
        return str(nbytes)
    sign = "-" if nbytes < 0 else ""
    value = abs(float(nbytes))
    if value < 1024:
        return f"{sign}{int(round(value))} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if round(value, precision) < 1024:
            return f"{sign}{value:.{precision}f} {unit}"
    return f"{sign}{value / 1024:.{precision}f} PiB"


_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|sec|m|min|h)?\s*$")
_DUR_UNITS = {None: 1.0, "s": 1.0, "sec": 1.0, "ms": 1e-3, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_duration(text: str | float, *, name: str = "time limit") -> float:
    """Parse a duration such as ``90``, ``90s``, ``10m``, ``1.5h`` into seconds (> 0).

    Example:
        >>> parse_duration("10m"), parse_duration("1.5h"), parse_duration(30)
        (600.0, 5400.0, 30.0)
    """
    if isinstance(text, int | float) and not isinstance(text, bool):
        value = float(text)
    else:
        m = _DURATION.match(str(text))
        if m is None:
            raise InvalidConfigError(
                f"{name} must be a positive duration such as 90s, 10m or 1.5h, but got {name}={text!r}."
            )
        value = float(m.group(1)) * _DUR_UNITS[m.group(2)]
    if not math.isfinite(value) or value <= 0:
        raise InvalidConfigError(f"{name} must be a positive duration such as 90s, 10m or 1.5h, but got {name}={text!r}.")
    return value
