"""API tokens: bearer secrets with a scope, shown once and stored only as a hash.

A token reads ``tlk_<id>_<secret>``: the id (16 hex digits) finds the stored record,
the secret (43 URL-safe characters, 256 bits) is what proves possession. Only the
SHA-256 of the whole token is stored; a token of that entropy needs no slow hash,
and whoever reads the store learns nothing that authenticates. Hashes are compared
with ``hmac.compare_digest``, and an unknown id is compared against a dummy hash, so
the answer takes as long whatever was wrong.

Records live in the engine's ``StorageAdapter`` (namespace ``api_tokens``, one key
per id; ``api_token_names`` maps each name to its id), so ``taskloom tokens create``
and ``taskloom serve`` share them through the configured store, and a name is
unique across processes: both keys are written in one commit that must create them.

Scopes are ordered: ``read`` (list and watch runs) < ``submit`` (also submit,
cancel and resume) < ``admin`` (also delete). A token grants its scope and those
below it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from typing import Literal

import attrs

from taskloom.contracts import (
    ConflictError,
    Delete,
    Put,
    StorageAdapter,
    UsageError,
)
from taskloom.sdk._runs.codec import decode, encode

Scope = Literal["read", "submit", "admin"]
SCOPES: tuple[Scope, ...] = ("read", "submit", "admin")
"""Every scope, weakest first: a token grants its own scope and every one before it."""

NS_TOKENS = "api_tokens"
NS_TOKEN_NAMES = "api_token_names"
TOKEN_PREFIX = "tlk_"
_TOKEN = re.compile(r"tlk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_DUMMY_HASH = hashlib.sha256(b"taskloom: no such token").hexdigest()
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

_v = attrs.validators


def _float(value: object) -> object:
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


@attrs.frozen(kw_only=True)
class TokenRecord:
    """What is stored of a token: never the token, only its SHA-256."""

    id: str = attrs.field(validator=_v.instance_of(str))
    name: str = attrs.field(validator=_v.instance_of(str))
    scope: Scope = attrs.field(validator=_v.in_(SCOPES))
    sha256: str = attrs.field(validator=_v.instance_of(str))
    created_at: float = attrs.field(converter=_float, validator=_v.instance_of(float))
    expires_at: float | None = attrs.field(
        default=None, converter=_float, validator=_v.optional(_v.instance_of(float))
    )
    format: int = attrs.field(default=1, validator=[_v.instance_of(int), _v.ge(1)])


@attrs.frozen(kw_only=True)
class TokenInfo:
    """A token as it may be shown: its id, name, scope and lifetime (never its secret)."""

    id: str
    name: str
    scope: Scope
    created_at: float
    expires_at: float | None

    def expired(self, now: float) -> bool:
        """Whether the token is past its expiry time at ``now``."""
        return self.expires_at is not None and now >= self.expires_at

    def allows(self, needed: Scope) -> bool:
        """Whether this token's scope covers ``needed`` (admin > submit > read)."""
        return SCOPES.index(self.scope) >= SCOPES.index(needed)


def _info(record: TokenRecord) -> TokenInfo:
    return TokenInfo(
        id=record.id,
        name=record.name,
        scope=record.scope,
        created_at=record.created_at,
        expires_at=record.expires_at,
    )


def parse_duration(text: str) -> float:
    """``"30d"``, ``"12h"``, ``"90m"``, ``"2w"``, ``"45s"`` as seconds; UsageError otherwise."""
    match = _DURATION.fullmatch(text.strip())
    if match is None or float(match.group(1)) <= 0:
        raise UsageError(
            f"expiry {text!r} is not a positive duration: give a number and a unit, "
            "s, m, h, d or w (for example 30d or 12h)"
        )
    return float(match.group(1)) * _UNIT_S[match.group(2)]


def check_scope(scope: object) -> Scope:
    """``scope`` if it is one of SCOPES; UsageError naming them otherwise."""
    for known in SCOPES:
        if scope == known:
            return known
    raise UsageError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")


_MAX_DECODED = 1024
"""How many decoded token records a ``TokenStore`` keeps (it starts over when full)."""


class TokenStore:
    """Create, list, revoke and verify API tokens kept in a ``StorageAdapter``."""

    def __init__(self, storage: StorageAdapter, *, clock: Callable[[], float] = time.time) -> None:
        self._storage = storage
        self._clock = clock
        # the decoded record of each token id, beside the stored bytes it came from:
        # every check still reads the store (a revoke anywhere counts at once), and
        # decodes only when those bytes changed
        self._decoded: dict[str, tuple[bytes, TokenRecord]] = {}

    async def create(
        self, *, scope: Scope, name: str | None = None, expires_in_s: float | None = None
    ) -> tuple[str, TokenInfo]:
        """Store a new token; return the token (its only appearance) and its info.

        ``UsageError`` for a bad scope, name or expiry, or a name already in use.
        """
        scope = check_scope(scope)
        token_id = secrets.token_hex(8)
        if name is None:
            name = f"token-{token_id[:8]}"
        if not isinstance(name, str) or _NAME.fullmatch(name) is None:
            raise UsageError(
                f"token name {name!r} must be 1-64 letters, digits, '_', '.' or '-', "
                "starting with a letter or digit"
            )
        if expires_in_s is not None and (
            isinstance(expires_in_s, bool)
            or not isinstance(expires_in_s, int | float)
            or not expires_in_s > 0
        ):
            raise UsageError(f"expires_in_s must be a positive number, got {expires_in_s!r}")
        token = f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
        now = self._clock()
        record = TokenRecord(
            id=token_id,
            name=name,
            scope=scope,
            sha256=hashlib.sha256(token.encode("ascii")).hexdigest(),
            created_at=now,
            expires_at=None if expires_in_s is None else now + float(expires_in_s),
        )
        try:
            await self._storage.commit(
                [
                    Put(namespace=NS_TOKENS, key=token_id, value=encode(record), if_version=0),
                    Put(
                        namespace=NS_TOKEN_NAMES,
                        key=name,
                        value=token_id.encode("ascii"),
                        if_version=0,
                    ),
                ]
            )
        except ConflictError:
            raise UsageError(
                f"a token named {name!r} exists already: pick another name, or revoke it "
                f"first with `taskloom tokens revoke {name}`"
            ) from None
        return token, _info(record)

    async def list(self) -> list[TokenInfo]:
        """Every stored token (expired ones too), oldest first."""
        found: list[TokenInfo] = []
        start_after: str | None = None
        while True:
            page = await self._storage.scan(NS_TOKENS, start_after=start_after, limit=500)
            for stored in page:
                found.append(_info(decode(stored.value, TokenRecord, where=stored.key)))
            if len(page) < 500:
                break
            start_after = page[-1].key
        return sorted(found, key=lambda info: (info.created_at, info.id))

    async def revoke(self, name_or_id: str) -> TokenInfo | None:
        """Delete the token with that name (or id); return it, or None if there was none."""
        record = await self._by_name(name_or_id) or await self._by_id(name_or_id)
        if record is None:
            return None
        await self._storage.commit(
            [
                Delete(namespace=NS_TOKENS, key=record.id),
                Delete(namespace=NS_TOKEN_NAMES, key=record.name),
            ]
        )
        return _info(record)

    async def has_active(self) -> bool:
        """Whether at least one stored token is not expired."""
        now = self._clock()
        return any(not info.expired(now) for info in await self.list())

    async def verify(self, token: str) -> TokenInfo | None:
        """The token's info if it is stored, unexpired and matches; None otherwise."""
        match = _TOKEN.fullmatch(token)
        record = await self._by_id(match.group(1)) if match is not None else None
        expected = record.sha256 if record is not None else _DUMMY_HASH
        given = hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()
        if not hmac.compare_digest(given, expected) or record is None:
            return None
        info = _info(record)
        return None if info.expired(self._clock()) else info

    async def _by_id(self, token_id: str) -> TokenRecord | None:
        if re.fullmatch(r"[0-9a-f]{16}", token_id) is None:
            return None
        stored = await self._storage.get(NS_TOKENS, token_id)
        if stored is None:
            self._decoded.pop(token_id, None)
            return None
        value = bytes(stored.value)
        seen = self._decoded.get(token_id)
        if seen is not None and seen[0] == value:
            return seen[1]
        record = decode(value, TokenRecord, where=f"{NS_TOKENS}/{token_id}")
        if len(self._decoded) >= _MAX_DECODED:
            self._decoded.clear()
        self._decoded[token_id] = (value, record)
        return record

    async def _by_name(self, name: str) -> TokenRecord | None:
        if _NAME.fullmatch(name) is None:
            return None
        stored = await self._storage.get(NS_TOKEN_NAMES, name)
        if stored is None:
            return None
        return await self._by_id(stored.value.decode("ascii", "replace"))
