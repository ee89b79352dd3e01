"""Parsing, normalizing and masking database URLs (SQLite files and PostgreSQL servers)."""

from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy.engine import URL, make_url

from storage._errors import StorageError

__all__ = ["mask_url", "normalize_url"]

_HINT = "use sqlite:///file.db or postgresql://user@host/db"
_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
_PG_SCHEMES = {"postgresql", "postgres", "postgresql+psycopg"}
_SQLITE_SCHEMES = {"sqlite", "sqlite+pysqlite"}
# user:password@ in the authority part; greedy up to the last '@' so an unescaped '@' in a password is hidden.
_USERINFO = re.compile(r"(://[^:/@\s]*:).*@")
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&]*", re.IGNORECASE)


def _mask_text(url: str) -> str:
    """Mask passwords with regular expressions only: the fallback that cannot fail."""
    return _QUERY_PASSWORD.sub(r"\1***", _USERINFO.sub(r"\1***@", url))


def mask_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``; never raises, whatever the input."""
    try:
        parsed = make_url(url)
        if "@" in (parsed.host or "") or "@" in (parsed.username or ""):
            return _mask_text(url)  # an unescaped '@' in the password confuses the parser
        if "password" in parsed.query:
            parsed = parsed.update_query_dict({"password": "***"})
        return parsed.render_as_string(hide_password=True).replace("%2A%2A%2A", "***")
    except Exception:
        try:
            return _mask_text(str(url))
        except Exception:
            return "<unprintable URL>"


def _bad(url: str, reason: str) -> StorageError:
    return StorageError(f"bad storage URL '{mask_url(url)}': {reason}; {_HINT}")


def _sqlite_url(path: str, url: str, base_dir: Path | None) -> str:
    if path in ("", ":memory:") or path.startswith("file:"):
        raise _bad(url, "an in-memory SQLite database cannot be shared between processes")
    file = Path(path).expanduser()
    if not file.is_absolute() and base_dir is not None:
        file = Path(base_dir) / file
    return URL.create("sqlite", database=str(file)).render_as_string(hide_password=False)


def normalize_url(url: str, *, base_dir: Path | None = None) -> str:
    """Return the canonical SQLAlchemy URL for a SQLite file or a PostgreSQL database (psycopg 3 driver).

    Bare ``*.db`` / ``*.sqlite`` paths become SQLite URLs; relative SQLite paths resolve against ``base_dir``.
    """
    text = str(url).strip()
    if "://" not in text:
        if text.lower().endswith(_SQLITE_SUFFIXES):
            return _sqlite_url(text, text, base_dir)
        raise _bad(text, "neither a URL nor a .db/.sqlite file path")
    try:
        parsed = make_url(text)
    except Exception as exc:
        raise _bad(text, f"cannot parse it ({type(exc).__name__})") from None
    scheme = parsed.drivername.lower()
    if scheme in _SQLITE_SCHEMES:
        return _sqlite_url(parsed.database or "", text, base_dir)
    if scheme not in _PG_SCHEMES:
        raise _bad(text, f"unsupported scheme '{parsed.drivername}'")
    if "@" in (parsed.host or "") or "@" in (parsed.username or ""):
        raise _bad(text, "'@' inside the user or password must be percent-encoded as %40")
    if not parsed.database:
        raise _bad(text, "no database name after the host")
    return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
