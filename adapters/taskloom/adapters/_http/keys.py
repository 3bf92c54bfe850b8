"""API keys and headers an HTTP request can carry, checked when an executor is configured.

A key with a trailing newline or a non-ASCII character cannot be sent as a
header: httpx refuses it with an error that quotes the value, or fails with a
bare ``UnicodeEncodeError``. Either way the key would reach error texts, events
and stored records, so it is refused before any call, naming the secret.
"""

from __future__ import annotations

from taskloom.contracts import Secret, UsageError


def key_problem(value: str) -> str | None:
    """What makes ``value`` unusable in an HTTP header, never quoting it; None if fine.

    httpx refuses such a header with an error that quotes the value (a trailing
    newline), or fails with a bare UnicodeEncodeError (non-ASCII): either way the
    key would reach error texts, events and stored records.
    """
    if not value:
        return "is empty"
    if value != value.strip():
        ends = "newline" if value[-1:] in "\r\n" or value[:1] in "\r\n" else "space"
        return f"starts or ends with a {ends} (a copy-paste left it there?)"
    for position, char in enumerate(value, 1):
        if not char.isascii():
            return f"holds a non-ASCII character at position {position}"
        if not char.isprintable():
            return f"holds a control character at position {position}"
    return None


def check_secret(api_key: object, owner: str, *, name: str = "api_key") -> Secret | None:
    """``api_key`` if it is a usable Secret or None; anything else is refused unseen.

    A key with a trailing newline or a non-ASCII character is refused here, at
    configuration, naming ``name`` (the secret's name when known), never the value.
    """
    if api_key is None:
        return api_key
    if not isinstance(api_key, Secret):
        raise UsageError(
            f"{owner}: api_key must be a taskloom Secret (or None), got "
            f"{type(api_key).__name__}; wrap it as Secret(value) in code, or give "
            "{'secret': NAME} in a config"
        )
    problem = key_problem(api_key.reveal())
    if problem is not None:
        raise UsageError(
            f"{owner}: the API key in secret {name!r} {problem}; an HTTP header cannot carry it. "
            f"Store the key again without it (taskloom secrets set {name})"
            if name != "api_key"
            else f"{owner}: the API key (api_key) {problem}; an HTTP header cannot carry "
            "it. Pass the key without it"
        )
    return api_key
