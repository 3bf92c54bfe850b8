"""``/openapi.json``: OpenAPI 3.1, generated from the API's attrs types and route table.

``OPERATIONS`` is the one list of endpoints: the app builds its routes from it (each
operation id names a handler, each scope is enforced by the same table) and this
module describes them. The schemas of request and response bodies are written from
the attrs classes of ``_models`` (and the ``taskloom.contracts`` types they hold), so
the document cannot drift from what the handlers return.
"""

from __future__ import annotations

import types
import typing
from typing import Any

import attrs

from taskloom.contracts import EVENT_TYPES
from taskloom.sdk._runs.records import RUN_STATUSES
from taskloom.sdk.server import _models as m
from taskloom.sdk.server._tokens import Scope


@attrs.frozen(kw_only=True)
class Operation:
    """One endpoint: method, path, the scope it needs (None: public) and its bodies."""

    id: str
    method: str
    path: str
    scope: Scope | None
    summary: str
    request: type[Any] | None = None
    responses: tuple[tuple[int, type[Any] | str], ...] = ()
    """(status, attrs class) for JSON bodies; a media type string for other bodies."""
    errors: tuple[int, ...] = ()
    parameters: tuple[dict[str, Any], ...] = ()
    links: tuple[str, ...] = ()
    """Operations that take the ``run_id`` this one's success body returns."""
    example: dict[str, Any] | None = None
    """An example request body."""


_RUN_ID = {
    "name": "run_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "minLength": 1, "maxLength": 512},
}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


OPERATIONS: tuple[Operation, ...] = (
    Operation(
        id="health",
        method="GET",
        path="/healthz",
        scope=None,
        summary="Liveness: the server is up and its store answers",
        responses=((200, m.Health),),
        errors=(503,),
    ),
    Operation(
        id="openapi",
        method="GET",
        path="/openapi.json",
        scope=None,
        summary="This document",
        responses=((200, "application/json"),),
    ),
    Operation(
        id="list_pipelines",
        method="GET",
        path="/api/pipelines",
        scope="read",
        summary="The pipelines that can be submitted by name",
        responses=((200, m.PipelineList),),
    ),
    Operation(
        id="list_tasks",
        method="GET",
        path="/api/tasks",
        scope="read",
        summary="Runs, newest first, filtered by status, pipeline and creation time",
        responses=((200, m.TaskList),),
        errors=(400,),
        parameters=(
            _query(
                "status",
                {"type": "string", "enum": list(RUN_STATUSES)},
                "only runs with this status",
            ),
            _query("pipeline", {"type": "string"}, "only runs of this pipeline name"),
            _query(
                "since",
                {"type": "string"},
                "only runs created at or after this time (epoch seconds or ISO 8601)",
            ),
            _query(
                "until",
                {"type": "string"},
                "only runs created at or before this time (epoch seconds or ISO 8601)",
            ),
            _query(
                "limit",
                {"type": "integer", "minimum": 1, "maximum": 500, "default": 50},
                "at most this many runs per page",
            ),
            _query("cursor", {"type": "string"}, "the next_cursor of the previous page"),
        ),
    ),
    Operation(
        id="submit_task",
        method="POST",
        path="/api/tasks",
        scope="submit",
        summary="Submit a run; the same Idempotency-Key returns the same run",
        request=m.SubmitRequest,
        responses=((202, m.TaskSubmitted),),
        links=("get_task", "task_events", "cancel_task", "resume_task", "delete_task"),
        example={"pipeline": "hello", "inputs": {"name": "Ada"}},
        errors=(400, 409, 413, 415, 422),
        parameters=(
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "schema": {"type": "string", "minLength": 1, "maxLength": 200},
                "description": "submitting again with the same key returns the same run",
            },
        ),
    ),
    Operation(
        id="get_task",
        method="GET",
        path="/api/tasks/{run_id}",
        scope="read",
        summary="One run: record, steps, outputs, usage, timings, outcome",
        responses=((200, m.TaskDetail),),
        errors=(400, 404),
        parameters=(_RUN_ID,),
    ),
    Operation(
        id="task_events",
        method="GET",
        path="/api/tasks/{run_id}/events",
        scope="read",
        summary=(
            "The run's events as Server-Sent Events: stored history, then live events; "
            "each stored event's id is its gapless number (Last-Event-ID resumes); "
            "streamed token chunks are live-only and carry no id"
        ),
        responses=((200, "text/event-stream"),),
        errors=(400, 404),
        parameters=(
            _RUN_ID,
            {
                "name": "Last-Event-ID",
                "in": "header",
                "required": False,
                "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"},
                "description": "resume after this event number",
            },
            _query(
                "after",
                {"type": "integer", "minimum": 0},
                "resume after this event number (for clients that cannot set headers)",
            ),
        ),
    ),
    Operation(
        id="cancel_task",
        method="POST",
        path="/api/tasks/{run_id}/cancel",
        scope="submit",
        summary="Cancel a run; what finished is kept and it can be resumed",
        responses=((202, m.TaskAction),),
        errors=(400, 404, 409),
        parameters=(_RUN_ID,),
    ),
    Operation(
        id="resume_task",
        method="POST",
        path="/api/tasks/{run_id}/resume",
        scope="submit",
        summary="Continue a cancelled, failed or crashed run from its checkpoints",
        responses=((202, m.TaskAction),),
        errors=(400, 404, 409, 422),
        parameters=(_RUN_ID,),
    ),
    Operation(
        id="provide_input",
        method="POST",
        path="/api/tasks/{run_id}/input/{step_id}",
        scope="submit",
        summary="Give a waiting input or approval step its value; the run continues here",
        request=m.ProvideRequest,
        responses=((202, m.TaskAction),),
        example={"value": {"decision": "approve", "comment": "looks right"}},
        errors=(400, 404, 409, 413, 415, 422),
        parameters=(
            _RUN_ID,
            {
                "name": "step_id",
                "in": "path",
                "required": True,
                "schema": {"type": "string", "minLength": 1, "maxLength": 64},
            },
        ),
    ),
    Operation(
        id="delete_task",
        method="DELETE",
        path="/api/tasks/{run_id}",
        scope="admin",
        summary="Delete a run, its checkpoints and its history",
        responses=((204, ""),),
        errors=(400, 404, 409),
        parameters=(_RUN_ID,),
    ),
)
"""Every endpoint of the API (the viewer page under ``/ui`` is static and not listed)."""


# --- JSON Schema from attrs types ----------------------------------------------------


def _ref(cls: type[Any]) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{cls.__name__}"}


def _type_schema(tp: Any, found: dict[str, type[Any]]) -> dict[str, Any]:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return {}
    simple = {str: "string", bool: "boolean", int: "integer", float: "number", type(None): "null"}
    if tp in simple:
        return {"type": simple[tp]}
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin in (types.UnionType, typing.Union):
        return {"anyOf": [_type_schema(a, found) for a in args]}
    if origin in (list, tuple):
        return {"type": "array", "items": _type_schema(args[0] if args else Any, found)}
    if origin is dict:
        schema: dict[str, Any] = {"type": "object"}
        if len(args) == 2 and args[1] is not Any:
            schema["additionalProperties"] = _type_schema(args[1], found)
        return schema
    if isinstance(tp, type) and attrs.has(tp):
        found.setdefault(tp.__name__, tp)
        return _ref(tp)
    raise TypeError(f"no JSON Schema mapping for {tp!r}")


def class_schema(cls: type[Any], found: dict[str, type[Any]]) -> dict[str, Any]:
    """The JSON Schema of an attrs class (fields, required ones, no other keys)."""
    hints = typing.get_type_hints(cls)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for field in attrs.fields(cls):
        if field.name == "format":
            continue
        prop = {**_type_schema(hints[field.name], found), **field.metadata.get("schema", {})}
        if field.default is attrs.NOTHING:
            required.append(field.name)
        elif not isinstance(field.default, attrs.Factory):  # type: ignore[arg-type]
            default = field.default
            if default is None or isinstance(default, str | bool | int | float):
                prop = {**prop, "default": default}
        properties[field.name] = prop
    schema: dict[str, Any] = {
        "type": "object",
        "description": " ".join((cls.__doc__ or "").split()),
        "properties": properties,
        "additionalProperties": cls is m.ProblemDetails,
    }
    if required:
        schema["required"] = required
    return schema


def _components(roots: list[type[Any]]) -> dict[str, Any]:
    found: dict[str, type[Any]] = {cls.__name__: cls for cls in roots}
    schemas: dict[str, Any] = _event_schemas(found)
    while missing := [name for name in found if name not in schemas]:
        for name in missing:
            schemas[name] = class_schema(found[name], found)
    return dict(sorted(schemas.items()))


def _event_schemas(found: dict[str, type[Any]]) -> dict[str, Any]:
    """One schema per event type (tagged by ``type``), and ``Event``: any of them."""
    schemas: dict[str, Any] = {}
    for tag, cls in EVENT_TYPES.items():
        schema = class_schema(cls, found)
        schema["properties"] = {"type": {"const": tag}, **schema["properties"]}
        schema["required"] = ["type", *schema.get("required", [])]
        schemas[cls.__name__] = schema
    schemas["Event"] = {
        "description": "Any event of a run, told apart by its 'type'.",
        "oneOf": [_ref(cls) for cls in EVENT_TYPES.values()],
    }
    return schemas


_SSE_EVENT = {
    "type": "object",
    "description": (
        "One Server-Sent Event: 'event' is the event's type, 'id' its gapless number "
        "(absent on live-only step.chunk events), 'data' the event as JSON."
    ),
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": sorted(EVENT_TYPES)},
        "id": {"type": "string", "pattern": "^[0-9]+$"},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {"$ref": "#/components/schemas/Event"},
        },
        "retry": {"type": "integer"},
    },
}


def _content(body: type[Any] | str) -> dict[str, Any]:
    if isinstance(body, str):
        if body == "text/event-stream":
            return {body: {"schema": _SSE_EVENT}}
        return {body: {"schema": {"type": "object"}}}
    return {"application/json": {"schema": _ref(body)}}


_PROBLEM = {"application/problem+json": {"schema": _ref(m.ProblemDetails)}}
_ERROR_TEXT = {
    400: "the request is malformed (bad JSON, a bad parameter or header)",
    401: "no valid bearer token (missing, unknown, expired or revoked)",
    403: "the token's scope does not allow this",
    404: "no such run",
    409: "the run's state does not allow this now",
    413: "the request body is over the limit",
    415: "the body is not JSON",
    422: "the pipeline or its inputs are invalid: every problem with its JSON path",
    500: "an internal error",
    503: "the store cannot be reached",
}


def openapi_document(*, version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the API."""
    roots: list[type[Any]] = [m.ProblemDetails]
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        responses: dict[str, Any] = {}
        for status, body in op.responses:
            entry: dict[str, Any] = {"description": op.summary}
            if body != "":
                entry["content"] = _content(body)
            if op.links and 200 <= status < 300:
                entry["links"] = {
                    target: {
                        "operationId": target,
                        "parameters": {"run_id": "$response.body#/run_id"},
                    }
                    for target in op.links
                }
            if not isinstance(body, str):
                roots.append(body)
            responses[str(status)] = entry
        errors = set(op.errors) | {500}
        if op.scope is not None:
            errors |= {401, 403}
        for status in sorted(errors):
            responses[str(status)] = {"description": _ERROR_TEXT[status], "content": _PROBLEM}
        operation: dict[str, Any] = {
            "operationId": op.id,
            "summary": op.summary,
            "parameters": list(op.parameters),
            "responses": responses,
        }
        if op.request is not None:
            roots.append(op.request)
            media: dict[str, Any] = {"schema": _ref(op.request)}
            if op.example is not None:
                media["example"] = op.example
            operation["requestBody"] = {"required": True, "content": {"application/json": media}}
        if op.scope is not None:
            operation["security"] = [{"bearer": []}]
            operation["description"] = f"Needs a token of scope {op.scope!r} or above."
        else:
            operation["security"] = []
        paths.setdefault(op.path, {})[op.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "taskloom",
            "version": version,
            "description": (
                "Submit and watch taskloom runs. Errors are RFC 9457 problem details "
                "whose 'error' member names taskloom's typed error."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": _components(roots),
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": (
                        "a token from `taskloom tokens create --scope read|submit|admin`"
                    ),
                }
            },
        },
    }
