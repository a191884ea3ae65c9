"""Where studies live: storage URLs, opening them, and showing them without their password.

``check_storage_url`` refuses values that would lose the study (blank, in-memory SQLite);
``open_storage`` checks and turns a URL (SQLite, PostgreSQL, MySQL) or a journal file path (``.log``) into an Optuna
storage. ``display_url`` is the only form in which a URL is printed, stored on a study or written into an
exported config: SQLAlchemy's rendering with the password replaced by ``***``.

``postgresql://`` (and ``postgres://``) URLs name no driver. SQLAlchemy 2.1 maps them to psycopg 3, while
the ``postgres`` extra installs psycopg2; :func:`normalise_url` picks the driver that is installed
(psycopg 3 first), so the documented form works with the extra.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import optuna

from embadvisor.errors import EmbAdvisorError, InvalidConfigError

__all__ = ["HEARTBEAT_S", "check_storage_url", "default_storage", "display_url", "normalise_url", "open_storage"]

#: heartbeat interval of RDB storages (PostgreSQL, MySQL) in seconds; a trial whose worker sent none
#: for 3 intervals is failed and re-run by another worker
HEARTBEAT_S = 10


def default_storage() -> str:
    """``sqlite:///$EMBADVISOR_HOME/studies.db`` (``~/.embadvisor/studies.db`` by default)."""
    from embadvisor.advisor.workloads import cache_dir

    return f"sqlite:///{cache_dir() / 'studies.db'}"


def is_journal(url: str) -> bool:
    return url.endswith((".log", ".journal")) and "://" not in url


def _password(url: str) -> str | None:
    if "://" not in url:
        return None
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).password  # type: ignore[return-value]
    except Exception:
        # not parseable by SQLAlchemy: take what sits between "user:" and the last "@" of the authority
        rest = url.split("://", 1)[1]
        auth = rest.split("/", 1)[0]
        if "@" not in auth or ":" not in auth.rsplit("@", 1)[0]:
            return None
        return auth.rsplit("@", 1)[0].split(":", 1)[1] or None


def display_url(url: str | None) -> str | None:
    """``url`` with its password replaced by ``***`` (unchanged when it has none, e.g. a file path)."""
    if url is None:
        return None
    secret = _password(url)
    if not secret:
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.replace(secret, "***")


def scrub(text: str, url: str | None) -> str:
    """``text`` with ``url``'s password replaced by ``***`` wherever it appears (e.g. a driver's error)."""
    secret = _password(url) if url else None
    if secret:
        text = text.replace(secret, "***")
        from urllib.parse import quote

        text = text.replace(quote(secret, safe=""), "***")
    return text


_FIX = ("Pass sqlite:///path/to/studies.db, a journal file path ending in .log, or a "
        "postgresql://user:pass@host/db URL, or leave --storage out for the default "
        "(sqlite:///~/.embadvisor/studies.db).")


def check_storage_url(url: str | None, *, name: str = "--storage") -> str | None:
    """``url`` unchanged if it names a storage that outlives the command, else :class:`InvalidConfigError`.

    Refused: an empty or blank value (leave the option out for the default) and
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


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def normalise_url(url: str) -> str:
    """A driver-less ``postgresql://``/``postgres://`` URL with the installed driver named (psycopg 3, else
    psycopg2); every other URL unchanged. Refuses a PostgreSQL URL when no driver is installed."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("postgresql", "postgres"):
        return url
    for module, driver in (("psycopg", "psycopg"), ("psycopg2", "psycopg2")):
        if _installed(module):
            return f"postgresql+{driver}://{rest}"
    raise EmbAdvisorError("a PostgreSQL storage needs a driver, and neither psycopg nor psycopg2 is installed. "
                          "Install one with: pip install 'embadvisor[postgres]'.")


def _check_journal(path: Path) -> None:
    """Refuse a file that exists and is not an Optuna journal (its log lines are JSON objects): Optuna appended
    to it and failed later with a JSONDecodeError or an AssertionError."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(1)
    except FileNotFoundError:
        return
    except OSError as e:
        raise EmbAdvisorError(f"cannot read the journal file {str(path)!r}: {e.strerror or e}. Pass a journal "
                              "file you can read and write, or a new path ending in .log.") from None
    if head and head != b"{":
        raise EmbAdvisorError(f"`storage` must be an Optuna journal file, but got storage={str(path)!r}, which "
                              "holds something else. Pass a new path ending in .log, or the journal the study "
                              "was created in.")


def open_storage(url: str | None, *, heartbeat_s: int | None = None) -> Any:
    """An Optuna storage for ``url`` (SQLite/PostgreSQL/MySQL URL, or a journal ``.log`` file).

    Server-backed RDB storages get heartbeats and Optuna's stale-trial retry callback, so trials of
    workers that die are failed and re-run.
    """
    url = default_storage() if url is None else check_storage_url(url, name="storage")
    assert url is not None
    try:
        if is_journal(url):
            from optuna.storages import JournalStorage
            from optuna.storages.journal import JournalFileBackend

            Path(url).parent.mkdir(parents=True, exist_ok=True)
            _check_journal(Path(url))
            journal = JournalStorage(JournalFileBackend(url))
            journal.get_all_studies()  # replays the log now: a corrupt line is an error here, not a traceback later
            return journal
        if url.startswith("sqlite:///"):
            Path(url[len("sqlite:///"):]).expanduser().parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.RDBStorage(url)
        hb = heartbeat_s or HEARTBEAT_S
        with warnings.catch_warnings():  # heartbeats are flagged experimental; Optuna's documented way
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                normalise_url(url), engine_kwargs={"pool_pre_ping": True}, heartbeat_interval=hb,
                grace_period=3 * hb,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3),
            )
    except EmbAdvisorError:
        raise
    except Exception as e:  # sqlalchemy / driver errors: one clear line, never the password
        first = (str(e).splitlines()[0] if str(e) else "").rstrip(". ")
        raise EmbAdvisorError(
            f"cannot open storage {display_url(url)!r}: {type(e).__name__}: {scrub(first, url)}. "
            "Use sqlite:///path/to/studies.db, a journal file path ending in .log, or a reachable "
            "postgresql://user:pass@host/db URL."
        ) from None
