"""The connection string: where it comes from, and how it never shows its password.

A DSN is held as a ``Secret`` from the moment it is given. What taskloom ever
prints about it is ``describe()`` (user, host, port, database: never the
password), and every message that passes through an error or a log record of
this adapter goes through ``scrub()`` first, which removes the password in
every spelling the DSN could have put it (plain, percent-encoded).
"""

from __future__ import annotations

import logging
import os
from urllib.parse import quote, quote_plus

import psycopg
from psycopg.conninfo import conninfo_to_dict

from taskloom.contracts import Secret, UsageError

__all__ = ["ENV_VAR", "MASKED", "Dsn", "LogScrubber"]

ENV_VAR = "TASKLOOM_POSTGRES_DSN"
"""The environment variable read when no DSN is given."""

MASKED = "***"


class Dsn:
    """A parsed PostgreSQL connection string whose password never leaves ``conninfo()``."""

    __slots__ = ("_params", "_password_forms", "_secret")

    def __init__(self, dsn: str | Secret | None) -> None:
        if dsn is None:
            text = os.environ.get(ENV_VAR)
            if not text:
                raise UsageError(
                    "PostgresStorage needs a DSN: pass dsn=..., set "
                    f'{ENV_VAR}, or in taskloom.toml write dsn = {{ secret = "pg_dsn" }}'
                )
            dsn = Secret(text)
        elif isinstance(dsn, str):
            dsn = Secret(dsn)
        elif not isinstance(dsn, Secret):
            raise UsageError(f"dsn must be text or a Secret, got {type(dsn).__name__}")
        self._secret = dsn
        try:
            params = conninfo_to_dict(dsn.reveal())
        except psycopg.Error:
            # libpq's parse errors quote pieces of the string: the password may be one.
            raise UsageError(
                "the PostgreSQL DSN is not a valid connection string or URI (libpq's detail "
                "is withheld because it may quote the password); check its syntax, e.g. "
                "postgresql://user:password@host:5432/dbname"
            ) from None
        password = str(params.pop("password", "") or "")
        forms = {password, quote(password, safe=""), quote_plus(password)} if password else set()
        self._password_forms = tuple(sorted((f for f in forms if f), key=len, reverse=True))
        self._params = {k: str(v) for k, v in params.items() if v is not None}

    def conninfo(self) -> str:
        """The full connection string, for psycopg only."""
        return self._secret.reveal()

    @property
    def params(self) -> dict[str, str]:
        """The connection parameters without the password."""
        return dict(self._params)

    def describe(self) -> str:
        """``user@host:port/dbname``, never the password."""
        user = self._params.get("user", "")
        host = self._params.get("host") or self._params.get("hostaddr") or "localhost"
        port = self._params.get("port", "5432")
        dbname = self._params.get("dbname", user or "")
        return f"{user + '@' if user else ''}{host}:{port}/{dbname}"

    def scrub(self, text: str) -> str:
        """``text`` with the password and the DSN itself replaced by ``***``."""
        whole = self._secret.reveal()
        if whole and whole in text:
            text = text.replace(whole, self.describe())
        for form in self._password_forms:
            text = text.replace(form, MASKED)
        return text

    def __repr__(self) -> str:
        return f"Dsn({self.describe()!r})"


class LogScrubber(logging.Filter):
    """Removes the DSN's password from psycopg's log records while the store is open."""

    def __init__(self, dsn: Dsn) -> None:
        super().__init__()
        self._dsn = dsn

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        clean = self._dsn.scrub(text)
        if clean != text:
            record.msg, record.args = clean, ()
        return True
