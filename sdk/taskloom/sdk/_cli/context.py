"""What every CLI command shares: the configuration, the output, and lazily opened resources."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import sys
from collections.abc import Callable
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table
from rich.text import Text

from taskloom.contracts import Secret, SecretStore, StorageAdapter, UsageError
from taskloom.sdk._config.toml import CliConfig

# C0 and C1 controls but newline and tab, DEL, and the invisible format characters that
# reorder or hide text (bidi overrides and isolates, zero-width marks, line separators).
_UNSAFE = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb]"
)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group(0))
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def clean(text: str) -> str:
    """``text`` with terminal escapes and text-reordering characters shown as ``\\x1b``-style
    escapes: a plugin directory or publisher name must print as what it is, never move
    the cursor, retitle the window or turn the rest of the line around."""
    return _UNSAFE.sub(_escape, text)


_UNWRAPPED = 1_000_000
"""The width of a console that is not a terminal: a table piped to a file keeps each
row on one line instead of folding it at rich's fallback of 80 columns."""


class _CleanConsole(Console):
    """A rich Console for text that is data: never markup or emoji codes (a model's
    ``[echo]`` prints as written, ``[/oops]`` cannot crash a command), every string
    cleaned (see ``clean``), and no wrapping at 80 columns when it is not a terminal."""

    def __init__(self, *, file: TextIO) -> None:
        terminal = file.isatty() if hasattr(file, "isatty") else False
        super().__init__(
            file=file,
            highlight=False,
            soft_wrap=True,
            markup=False,
            emoji=False,
            width=None if terminal else _UNWRAPPED,
        )

    def print(self, *objects: Any, **kwargs: Any) -> None:
        kwargs.setdefault("markup", False)
        super().print(*(clean(o) if isinstance(o, str) else o for o in objects), **kwargs)


def _json_text(value: Any) -> str:
    # json.dumps escapes C0 controls already; C1 and format characters it leaves raw
    text = json.dumps(value, ensure_ascii=False, default=str)
    return _UNSAFE.sub(lambda m: f"\\u{ord(m.group(0)):04x}", text)


class Output:
    """Human output through rich, or one JSON document per command with ``--json``.

    It also remembers the secret values a command read (``remember``), so that
    error texts can be masked (``redact``) before they reach the terminal.
    """

    def __init__(
        self, *, json_mode: bool, stream: TextIO | None = None, redactor: Any = None
    ) -> None:
        self.json_mode = json_mode
        self.stream = stream or sys.stdout
        self.console = _CleanConsole(file=self.stream)
        self.err = _CleanConsole(file=sys.stderr)
        self.documents = 0
        self._redactor = redactor

    @property
    def redactor(self) -> Any:
        """The ``taskloom.security.Redactor`` of the secret values read so far."""
        if self._redactor is None:
            from taskloom.security import Redactor

            self._redactor = Redactor()
        return self._redactor

    def remember(self, secret: Secret) -> None:
        """Mask this secret's value in every error text from now on."""
        self.redactor.add(secret)

    def redact(self, text: str) -> str:
        return text if self._redactor is None else str(self._redactor.redact(text))

    def redact_data(self, value: Any) -> Any:
        return value if self._redactor is None else self._redactor.redact_data(value)

    def data(self, value: Any, human: Callable[[], None] | None = None) -> None:
        """Print ``value`` as JSON in JSON mode, else call ``human`` (or pretty-print it)."""
        if self.json_mode:
            self.stream.write(_json_text(value) + "\n")
            self.stream.flush()
            self.documents += 1
        elif human is not None:
            human()
        elif isinstance(value, str):
            self.console.print(value, markup=False)
        else:
            self.console.print_json(_json_text(value))

    def table(self, title: str, columns: list[str], rows: list[list[Any]]) -> None:
        table = Table(title=Text(clean(title)), title_justify="left")
        for index, column in enumerate(columns):
            # the first column is an id people copy: never fold it
            table.add_column(Text(column), overflow="fold", no_wrap=index == 0)
        for row in rows:  # cells are data: Text, never parsed as markup
            table.add_row(*[Text("" if cell is None else clean(str(cell))) for cell in row])
        self.console.print(table)

    def note(self, text: str) -> None:
        """A human remark on stderr (never mixed into JSON on stdout)."""
        self.err.print(text, markup=False, highlight=False)


class CliContext:
    """Resources a command may need, opened on first use and closed at the end."""

    def __init__(self, config: CliConfig, out: Output, *, debug: bool = False) -> None:
        self.config = config
        self.out = out
        self.debug = debug
        self._storage: StorageAdapter | None = None
        self._secrets: SecretStore | None = None

    async def storage(self) -> StorageAdapter:
        if self._storage is None:
            dsn = self.config.storage_options.get("dsn")
            needs_secrets = self.config.storage_kind == "postgres" and isinstance(dsn, dict)
            secrets = await self.secrets() if needs_secrets else None
            self._storage = await open_storage(self.config, secrets)
        return self._storage

    async def secrets(self) -> SecretStore:
        if self._secrets is None:
            from taskloom.sdk._config.secrets import open_secret_store

            self._secrets = await open_secret_store(self.config)
        return self._secrets

    def root_key(self) -> Any:
        """The public key that must have signed the trust store (``[plugins] root_key``)."""
        if self.config.trust_root_key is None:
            return None
        from taskloom.security import check_public_key, load_public_key

        key = load_public_key(self.config.trust_root_key)
        check_public_key(key)
        return key

    def trust(self, *, check_marks: bool = True) -> Any:
        """The trust store (an empty one if the file does not exist yet), its signature
        checked when a root key is configured and its version checked against the
        rollback marks beside it (an older copy is refused)."""
        from taskloom.security import TrustStore

        path = self.config.trust_path
        if not path.is_file():
            return TrustStore()
        store = TrustStore.load(path, root_key=self.root_key())
        if check_marks:
            self.marks().check_trust_version(store.version, source=f"trust store {path}")
        return store

    def marks(self) -> Any:
        """The rollback marks kept beside the trust store (``taskloom.security.RollbackMarks``)."""
        from taskloom.security import RollbackMarks

        return RollbackMarks(RollbackMarks.beside(self.config.trust_path))

    async def aclose(self) -> None:
        if self._secrets is not None:
            await self._secrets.aclose()
            self._secrets = None
        if self._storage is not None:
            await self._storage.aclose()
            self._storage = None


async def open_storage(config: CliConfig, secrets: SecretStore | None = None) -> StorageAdapter:
    """Open the configured store, creating its directory if needed.

    ``secrets`` resolves a PostgreSQL DSN given as ``{ secret = "name" }``.
    """
    if config.storage_kind == "postgres":
        from taskloom.sdk._config.postgres import make_postgres_storage

        storage = make_postgres_storage(
            dict(config.storage_options), secrets, where=str(config.source or "config")
        )
        await storage.__aenter__()
        return storage  # type: ignore[no-any-return]
    if config.storage_kind == "none":
        raise UsageError(
            f"{config.source}: storage kind 'none' keeps no state, so the CLI cannot use it "
            "(it is for Engine.from_config); choose sqlite, filesystem, memory or postgres"
        )
    if config.storage_kind == "memory":
        from taskloom.adapters.memory import MemoryStorage

        return MemoryStorage()
    config.storage_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if config.storage_kind == "filesystem":
        from taskloom.adapters.filesystem import FileStorage

        return await FileStorage.open(config.storage_path, **config.storage_options)
    from taskloom.adapters.sqlite import SQLiteStorage

    return await SQLiteStorage.open(config.storage_path, **config.storage_options)


def read_secret_value(prompt: str, *, stdin: TextIO | None = None) -> str:
    """A value from a hidden prompt on a terminal, or the first line of stdin otherwise.

    Never from the command line, where it would land in shell history and ``ps``.
    """
    stream = stdin or sys.stdin
    value = getpass.getpass(prompt) if stream.isatty() else stream.readline().rstrip("\r\n")
    if not value:
        raise UsageError("no value given (type it at the prompt or pipe it on stdin)")
    return value


def passphrase(env_name: str, prompt: str, *, confirm: bool = False) -> str:
    """A passphrase from ``env_name`` or a hidden prompt."""
    value = os.environ.get(env_name)
    if value:
        return value
    if not sys.stdin.isatty():
        raise UsageError(f"set {env_name} or run in a terminal to be asked for the passphrase")
    value = getpass.getpass(prompt)
    if confirm and getpass.getpass("again: ") != value:
        raise UsageError("the passphrases differ")
    if not value:
        raise UsageError("an empty passphrase is not allowed")
    return value


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
