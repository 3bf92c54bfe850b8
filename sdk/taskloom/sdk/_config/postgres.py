"""``[storage] kind = "postgres"``: where the DSN comes from, shared by the engine's
``from_config`` and the CLI.

```toml
[storage]
kind = "postgres"
dsn = { secret = "pg_dsn" }   # or leave dsn out: TASKLOOM_POSTGRES_DSN
schema = "taskloom"           # the other keys go to PostgresStorage
max_size = 10
pgbouncer = true
```

A DSN written into the file as plain text is accepted only without a password:
a config file is copied, committed and printed, so a password belongs in a
secret store (``taskloom secrets set pg_dsn``) or the environment.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from taskloom.contracts import Secret, UsageError

__all__ = ["POSTGRES_OPTIONS", "make_postgres_storage", "postgres_dsn"]

POSTGRES_OPTIONS = frozenset(
    {
        "dsn",
        "schema",
        "min_size",
        "max_size",
        "connect_timeout_s",
        "pool_timeout_s",
        "pgbouncer",
        "retries",
        "purge_interval_s",
        "application_name",
    }
)
"""The keys a ``[storage]`` table of kind "postgres" may hold besides ``kind``."""


class _Secrets(Protocol):
    async def get(self, name: str, /) -> Secret: ...


DsnValue = str | Callable[[], Awaitable[Secret]] | None


def postgres_dsn(value: object, secrets: _Secrets | None, *, where: str) -> DsnValue:
    """What ``PostgresStorage`` gets as its ``dsn`` for the config value ``value``.

    None (no ``dsn`` key): the adapter reads ``TASKLOOM_POSTGRES_DSN``.
    ``{ secret = "name" }``: looked up in ``secrets`` when the store opens.
    Plain text: used as is, if it holds no password.
    """
    if value is None:
        return None
    if isinstance(value, dict):
        name = value.get("secret")
        if set(value) != {"secret"} or not isinstance(name, str) or not name:
            raise UsageError(
                f'{where}: storage dsn must be text or {{ secret = "name" }}, got a table '
                f"with keys {sorted(value)}"
            )
        if secrets is None:
            raise UsageError(
                f"{where}: storage dsn refers to the secret {name!r}, but no secret store "
                "is configured: add a [secrets] section or pass secrets="
            )
        store = secrets

        async def fetch() -> Secret:
            return await store.get(name)

        return fetch
    if isinstance(value, str):
        _require_extra(where)
        import psycopg
        from psycopg.conninfo import conninfo_to_dict

        try:
            has_password = bool(conninfo_to_dict(value).get("password"))
        except psycopg.Error:  # the adapter reports a bad DSN, without quoting it
            has_password = False
        if has_password:
            raise UsageError(
                f"{where}: the storage dsn holds a password in plain text; store the DSN as "
                'a secret (taskloom secrets set pg_dsn) and write dsn = { secret = "pg_dsn" }, '
                "or set TASKLOOM_POSTGRES_DSN"
            )
        return value
    raise UsageError(
        f'{where}: storage dsn must be text or {{ secret = "name" }}, got {type(value).__name__}'
    )


def _require_extra(where: str) -> None:
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError as exc:
        raise UsageError(
            f"{where}: storage kind 'postgres' needs the postgres extra: "
            "pip install 'taskloom[postgres]'"
        ) from exc


def make_postgres_storage(options: dict[str, Any], secrets: _Secrets | None, *, where: str) -> Any:
    """A ``PostgresStorage`` (not opened yet) for the options of a ``[storage]`` table."""
    wrong = sorted(set(options) - POSTGRES_OPTIONS)
    if wrong:
        raise UsageError(
            f"{where}: [storage] option(s) {', '.join(wrong)} do not apply to kind 'postgres'; "
            f"known: {', '.join(sorted(POSTGRES_OPTIONS))}"
        )
    _require_extra(where)
    from taskloom.adapters.postgres import PostgresStorage

    settings = dict(options)
    dsn = postgres_dsn(settings.pop("dsn", None), secrets, where=where)
    try:
        return PostgresStorage(dsn, **settings)
    except TypeError as exc:
        raise UsageError(f"{where}: storage 'postgres': invalid option(s): {exc}") from exc
