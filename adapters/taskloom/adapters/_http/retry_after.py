"""How long a provider asked us to wait: ``Retry-After`` and the providers' own reset headers.

Kept apart from the error mapping because it is pure header parsing, with its
own table of provider header names and its own property tests.
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Mapping
from datetime import datetime

_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)(h|ms|m|s))")
_MAX_WAIT_S = 24 * 3600.0
_PROVIDER_RESETS: tuple[tuple[str, str], ...] = (
    ("x-ratelimit-reset-requests", "x-ratelimit-remaining-requests"),
    ("x-ratelimit-reset-tokens", "x-ratelimit-remaining-tokens"),
    ("anthropic-ratelimit-requests-reset", "anthropic-ratelimit-requests-remaining"),
    ("anthropic-ratelimit-tokens-reset", "anthropic-ratelimit-tokens-remaining"),
    ("anthropic-ratelimit-input-tokens-reset", "anthropic-ratelimit-input-tokens-remaining"),
    ("anthropic-ratelimit-output-tokens-reset", "anthropic-ratelimit-output-tokens-remaining"),
)
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def _clamp(seconds: float) -> float | None:
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), _MAX_WAIT_S)


def _parse_seconds(text: str) -> float | None:
    try:
        return _clamp(float(text))
    except ValueError:
        return None


def _parse_duration(text: str) -> float | None:
    """OpenAI's reset durations: ``1s``, ``6m0s``, ``20ms``, ``1h2m3.5s``, or bare seconds."""
    text = text.strip()
    plain = _parse_seconds(text)
    if plain is not None:
        return plain
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return _clamp(sum(float(n) * _UNIT_S[u] for n, u in parts))


def _parse_instant(text: str, now: float) -> float | None:
    """Seconds from ``now`` until an HTTP date or an RFC 3339 timestamp."""
    text = text.strip()
    when: datetime | None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        when = None
    if when is None:
        try:
            when = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return None
    if when.tzinfo is None:
        return None
    return _clamp(when.timestamp() - now)


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """How long the provider asked us to wait, in seconds, or None when it did not say.

    In order: ``retry-after-ms`` (OpenAI), ``Retry-After`` as seconds or an HTTP
    date (RFC 9110), then the providers' reset headers: OpenAI's
    ``x-ratelimit-reset-*`` durations and Anthropic's ``anthropic-ratelimit-*-reset``
    timestamps. Of the reset headers, those whose ``remaining`` is 0 are the
    limits that were hit, so the longest of those wins; when none says so, the
    shortest reset is the earliest moment worth trying again. Waits are clamped
    to [0, 24 h]; anything unreadable is ignored.
    """
    clock = time.time() if now is None else now
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None:
        ms = _parse_seconds(raw_ms)
        if ms is not None:
            return _clamp(ms / 1000.0)
    raw = headers.get("retry-after")
    if raw is not None:
        seconds = _parse_seconds(raw)
        if seconds is None:
            seconds = _parse_instant(raw, clock)
        if seconds is not None:
            return seconds
    exhausted: list[float] = []
    others: list[float] = []
    for reset_name, remaining_name in _PROVIDER_RESETS:
        value = headers.get(reset_name)
        if value is None:
            continue
        wait = _parse_instant(value, clock) if reset_name.startswith("anthropic") else None
        if wait is None:
            wait = _parse_duration(value)
        if wait is None:
            continue
        (exhausted if headers.get(remaining_name, "").strip() == "0" else others).append(wait)
    if exhausted:
        return max(exhausted)
    if others:
        return min(others)
    return None
