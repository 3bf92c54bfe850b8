"""taskloom's HTTP API: submit, list, watch, cancel, resume and delete runs over HTTP.

``create_app(engine_or_config)`` returns a Starlette ASGI app (mountable in any
Starlette or FastAPI application); ``taskloom serve`` runs it under uvicorn. Needs the
``server`` extra (starlette, uvicorn, sse-starlette).

Inside: ``_app`` (routes, handlers, the viewer page), ``_openapi`` (the endpoint table
and the OpenAPI document, both from ``_models``), ``_auth`` and ``_tokens`` (bearer
tokens with scopes, stored hashed), ``_feed`` (live events for Server-Sent Events),
``_runs`` (what the API does to runs), ``_requests`` (bodies, parameters, cursors),
``_pipelines`` (pipelines by name), ``_problems`` (RFC 9457 errors), ``_settings``;
``_ui/`` holds the viewer's static files. May import ``_engine``, ``_runs``,
``_pipeline``, ``_config`` and ``_registry``; only ``_cli`` imports this package.
"""

from __future__ import annotations

from taskloom.sdk.server._app import TaskloomApi, create_app
from taskloom.sdk.server._auth import NotAuthenticated, NotAuthorized
from taskloom.sdk.server._openapi import OPERATIONS, Operation, openapi_document
from taskloom.sdk.server._settings import ServerSettings
from taskloom.sdk.server._tokens import (
    SCOPES,
    Scope,
    TokenInfo,
    TokenStore,
    parse_duration,
)

__all__ = [
    "OPERATIONS",
    "SCOPES",
    "NotAuthenticated",
    "NotAuthorized",
    "Operation",
    "Scope",
    "ServerSettings",
    "TaskloomApi",
    "TokenInfo",
    "TokenStore",
    "create_app",
    "openapi_document",
    "parse_duration",
]
