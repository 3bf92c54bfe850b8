"""Executor constructor arguments from a config table, with ``api_key`` read from secrets.

Shared by the OpenAI-compatible and the Anthropic ``from_config``: both accept
the same common settings, and both refuse a literal key in a config.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from taskloom.adapters._http.keys import check_secret
from taskloom.contracts import SecretRef, SecretStore, UsageError

_COMMON_SETTINGS = frozenset(
    {
        "type",
        "base_url",
        "model",
        "api_key",
        "headers",
        "connect_timeout_s",
        "read_timeout_s",
        "total_timeout_s",
        "max_connections",
        "max_response_bytes",
    }
)
_AUTH_HEADERS = frozenset({"authorization", "x-api-key", "api-key", "proxy-authorization"})


async def settings_to_kwargs(
    settings: Mapping[str, Any],
    secrets: SecretStore | None,
    *,
    type_name: str,
    extra: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """Constructor arguments from a config table, resolving ``api_key`` in ``secrets``.

    A literal key is refused (its value is never repeated in the message): configs
    and pipelines hold references such as ``{"secret": "openai_api_key"}`` only.
    """
    where = f"executor type {type_name!r}"
    if not isinstance(settings, Mapping):
        raise UsageError(f"{where}: settings must be a table (a dict)")
    unknown = sorted(set(settings) - _COMMON_SETTINGS - extra)
    if unknown:
        allowed = ", ".join(sorted(_COMMON_SETTINGS | extra))
        raise UsageError(f"{where}: unknown setting(s) {', '.join(unknown)}; allowed: {allowed}")
    declared = settings.get("type", type_name)
    if declared != type_name:
        raise UsageError(f"{where}: settings say type={declared!r}")
    kwargs = {k: v for k, v in settings.items() if k not in ("type", "api_key")}
    if "base_url" not in kwargs and "base_url" not in extra:
        raise UsageError(f"{where}: base_url is required, e.g. 'https://api.openai.com/v1'")
    headers = kwargs.get("headers")
    if headers is not None:
        if not isinstance(headers, Mapping):
            raise UsageError(f"{where}: headers must be a table of strings")
        bad = sorted(k for k in headers if isinstance(k, str) and k.lower() in _AUTH_HEADERS)
        if bad:
            raise UsageError(
                f"{where}: header(s) {', '.join(bad)} would put a credential in the config; "
                'use api_key = { secret = "NAME" } instead'
            )
    raw_key = settings.get("api_key")
    if raw_key is None:
        return kwargs
    if isinstance(raw_key, str):
        raise UsageError(
            f"{where}: api_key must be a secret reference such as "
            '{"secret": "openai_api_key"} (TOML: api_key = { secret = "openai_api_key" }), '
            "never the key itself; store the key with `taskloom secrets set openai_api_key`"
        )
    if isinstance(raw_key, SecretRef):
        name = raw_key.secret
    elif isinstance(raw_key, Mapping) and set(raw_key) == {"secret"}:
        name = SecretRef(secret=raw_key["secret"]).secret
    else:
        raise UsageError(
            f"{where}: api_key must be a secret reference such as {{'secret': 'openai_api_key'}}"
        )
    if secrets is None:
        raise UsageError(f"{where}: api_key refers to secret {name!r} but no SecretStore was given")
    secret = await secrets.get(name)
    check_secret(secret, where, name=name)  # a key a header cannot carry: name the secret
    kwargs["api_key"] = secret
    return kwargs
