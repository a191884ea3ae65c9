"""Refuse ``--storage`` values that would lose the study or silently mean something else.

Kept apart from :func:`embadvisor.advisor.recommend.open_storage` so that every command checks the
URL before it prepares data or starts a search.
"""

from __future__ import annotations

from urllib.parse import parse_qs

from embadvisor.errors import InvalidConfigError

__all__ = ["check_storage_url"]

_FIX = ("Pass sqlite:///path/to/studies.db, a journal file path ending in .log, or a "
        "postgresql://user:pass@host/db URL, or leave --storage out for the default "
        "(sqlite:///~/.embadvisor/studies.db).")


def check_storage_url(url: str | None, *, name: str = "--storage") -> str | None:
    """``url`` unchanged if it names a storage that outlives the command, else :class:`InvalidConfigError`.

    Refused: an empty or blank value (it used to fall back to the default without a word) and
    in-memory SQLite (``sqlite://``, ``sqlite:///``, ``sqlite:///:memory:``, ``?mode=memory``), which
    loses the study when the command ends and cannot be shared with the heartbeat thread or workers.
    ``None`` (option not given) is fine.
    """
    if url is None:
        return None
    if not url.strip():
        raise InvalidConfigError(f"`{name}` must be a storage URL or a journal file path, but got {name}={url!r}. "
                                 + _FIX)
    scheme, sep, rest = url.strip().partition("://")
    if sep and scheme.split("+", 1)[0].lower() == "sqlite":
        path, _, query = rest.partition("?")
        memory = "memory" in parse_qs(query).get("mode", []) or path.lstrip("/") in ("", ":memory:")
        if not path.startswith("/") or memory:
            raise InvalidConfigError(
                f"`{name}` must name an SQLite database file (sqlite:///path, three slashes), but got {name}={url!r}, "
                "an in-memory database: the study would be lost when the command ends, with nothing to resume, "
                "export or list. " + _FIX
            )
    return url
