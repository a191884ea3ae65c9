"""The whole method contract for a method defined outside embadvisor, in two lines."""

from embadvisor.testing import parametrize_with_checks
from third_party_example.lowrank import LowRankConfig


@parametrize_with_checks([LowRankConfig])
def test_contract(check) -> None:
    check()
