"""Byte-size parsing and formatting."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from embadvisor.errors import InvalidConfigError
from embadvisor.units import MAX_SIZE, format_size, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("64MB", 64_000_000),
        ("64 MB", 64_000_000),
        ("64MiB", 64 * 2**20),
        ("1.5GB", 1_500_000_000),
        ("512kB", 512_000),
        ("512KB", 512_000),
        ("1 KiB", 1024),
        ("2e9", 2_000_000_000),
        ("2000000000", 2_000_000_000),
        ("  3 GiB ", 3 * 2**30),
        ("100B", 100),
        (4096, 4096),
    ],
)
def test_parse_accepted_forms(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("0", "greater than zero"),
        ("0MB", "greater than zero"),
        ("-5MB", "greater than zero"),
        ("nan", "finite"),
        ("inf GB", "finite"),
        ("", "empty"),
        ("   ", "empty"),
        ("64M", "ambiguous"),
        ("64Mb", "bits"),
        ("64mB", "milli"),
        ("12XB", "unknown unit"),
        ("abc", "not a number"),
        ("1e-3", "less than one byte"),
        (0, "greater than zero"),
        (True, "not a size"),
    ],
)
def test_parse_rejects_with_accepted_forms(text: object, why: str) -> None:
    with pytest.raises(InvalidConfigError) as e:
        parse_size(text, name="budget")  # type: ignore[arg-type]
    msg = str(e.value)
    assert why in msg
    assert "budget must be" in msg and "Accepted forms" in msg and "\n" not in msg


@given(st.integers(min_value=1, max_value=MAX_SIZE))
def test_plain_integer_round_trip(n: int) -> None:
    assert parse_size(str(n)) == n


@given(st.integers(min_value=1, max_value=2**60), st.sampled_from(["B", "kB", "MB", "GB", "KiB", "MiB", "GiB"]))
def test_unit_round_trip(n: int, unit: str) -> None:
    mult = {"B": 1, "kB": 10**3, "MB": 10**6, "GB": 10**9, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}[unit]
    n = min(n, MAX_SIZE // mult)
    assert parse_size(f"{n}{unit}") == n * mult


@given(st.integers(min_value=1, max_value=2**55))
def test_format_then_parse_is_close(n: int) -> None:
    text = format_size(n)
    back = parse_size(text)
    # one decimal of the unit: relative error below 5% (0.05 of 1 unit at >= 1 unit)
    assert abs(back - n) <= max(0.05 * n, 1)


def test_format_examples() -> None:
    assert format_size(66_480_000) == "63.4 MiB"
    assert format_size(512) == "512 B"
    assert format_size(2**30) == "1.0 GiB"


@pytest.mark.parametrize("text", ["1e400", "1e308", "1e400MB", "1000001PB", "1" + "0" * 19, 10**400, 1e300])
def test_sizes_above_one_exabyte_are_refused_at_once(text: object) -> None:
    # 1e400 used to overflow float arithmetic downstream; 1e999999999 built an integer of a billion digits
    with pytest.raises(InvalidConfigError, match=r"larger than 1 EB \(10\*\*18 bytes\)") as info:
        parse_size(text, name="budget")  # type: ignore[arg-type]
    assert "budget must be" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(("text", "why"), [("1e999999999", "larger than 1 EB"),
                                           ("1e-999999999", "less than one byte"),
                                           ("-1e-999999999", "greater than zero"),
                                           ("0e999999999", "greater than zero"),
                                           ("1" * 101, "more than 100 characters")])
def test_extreme_exponents_and_lengths_are_refused_at_once(text: str, why: str) -> None:
    # an exact Fraction of these took minutes (a billion-digit power of ten): run apart, with a timeout
    code = ("from embadvisor.units import parse_size\n"
            f"try:\n    parse_size({text!r})\nexcept ValueError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert why in out.stdout and "size must be a positive byte size" in out.stdout


def test_the_largest_size_is_accepted() -> None:
    assert parse_size("1e18") == parse_size("1000PB") == parse_size(MAX_SIZE) == 10**18
