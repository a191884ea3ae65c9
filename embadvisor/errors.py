"""Exception hierarchy.

Every error a user can cause derives from :class:`EmbAdvisorError`. The CLI turns these into one
line on stderr and exit code 2 (``InfeasibleError`` too: a budget nobody can meet is bad input).
Messages follow the house style: "`<param>` must be <constraint>, but got <param>=<value!r>." and
end with what to do about it.
"""

from __future__ import annotations

from collections.abc import Sequence


class EmbAdvisorError(Exception):
    """Base class of all errors embadvisor raises on purpose."""


class InvalidConfigError(EmbAdvisorError, ValueError, TypeError):
    """A configuration value violates its declared constraint."""


class DataError(EmbAdvisorError, ValueError):
    """An input file is missing, unreadable, empty or not in the expected format."""


class UnknownNameError(EmbAdvisorError, KeyError):
    """An unknown registry key (method, preset, format, ...); the message lists the valid ones."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class InfeasibleError(EmbAdvisorError):
    """No configuration fits the budget; ``solutions`` lists what to relax, with numbers."""

    def __init__(self, message: str, solutions: Sequence[str] = ()) -> None:
        self.solutions = list(solutions)
        text = message
        if self.solutions:
            text += " Possible solutions: " + "; ".join(self.solutions) + "."
        super().__init__(text)


class DeviceUnavailableError(EmbAdvisorError):
    """The requested device (``cuda``, ``cuda:N``) does not exist on this machine."""


class DeviceOutOfMemory(EmbAdvisorError):
    """Training or evaluation ran out of memory on the accelerator (a CUDA out-of-memory error).

    The message says what was running, on which device, and the allocator's own reason; a search
    records the trial as failed with it and goes on (see :mod:`embadvisor.devices`).
    """


class EmbAdvisorWarning(UserWarning):
    """Warnings emitted by embadvisor (turned into errors in the test suite)."""


def suggest(name: str, choices: Sequence[str]) -> str:
    """A 'did you mean' hint for an unknown name, or an empty string."""
    import difflib

    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""
