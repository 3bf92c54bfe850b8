"""Bearer-token checks: deny by default, 401 without a valid token, 403 for a weak scope.

The errors follow RFC 6750: a ``WWW-Authenticate: Bearer`` challenge with
``error="invalid_token"`` for a token that is unknown, revoked or expired and
``error="insufficient_scope"`` (and the scope needed) for a 403.
"""

from __future__ import annotations

from starlette.requests import Request

from taskloom.contracts import SecurityError
from taskloom.sdk.server._problems import ApiError
from taskloom.sdk.server._tokens import Scope, TokenInfo, TokenStore

_REALM = 'Bearer realm="taskloom"'
MAX_TOKEN_CHARS = 200


class NotAuthenticated(SecurityError):
    """The request has no valid bearer token (HTTP 401)."""


class NotAuthorized(SecurityError):
    """The token's scope does not cover the endpoint (HTTP 403)."""


def _unauthenticated(detail: str, error: str | None) -> ApiError:
    challenge = _REALM if error is None else f'{_REALM}, error="{error}"'
    return ApiError(401, "NotAuthenticated", detail, headers={"WWW-Authenticate": challenge})


async def authorize(request: Request, tokens: TokenStore | None, scope: Scope) -> TokenInfo:
    """The token of ``request`` if it allows ``scope``; ApiError 401/403 otherwise."""
    header = request.headers.get("authorization")
    if header is None:
        raise _unauthenticated(
            f"this endpoint needs a bearer token of scope {scope!r} or above "
            "(Authorization: Bearer <token>); create one with "
            f"`taskloom tokens create --scope {scope}`",
            None,
        )
    kind, _, token = header.strip().partition(" ")
    token = token.strip()
    if kind.lower() != "bearer" or not token or len(token) > MAX_TOKEN_CHARS:
        raise _unauthenticated(
            "the Authorization header must read 'Bearer <token>'", "invalid_request"
        )
    if tokens is None:
        raise _unauthenticated(
            "this server has no token store (its engine keeps no state), so no token "
            "is valid: serve an engine with storage",
            "invalid_token",
        )
    info = await tokens.verify(token)
    if info is None:
        raise _unauthenticated(
            "the token is unknown, revoked or expired: create a new one with "
            "`taskloom tokens create`",
            "invalid_token",
        )
    if not info.allows(scope):
        raise ApiError(
            403,
            "NotAuthorized",
            f"token {info.name!r} has scope {info.scope!r}; this endpoint needs {scope!r} or above",
            headers={"WWW-Authenticate": f'{_REALM}, error="insufficient_scope", scope="{scope}"'},
        )
    return info
