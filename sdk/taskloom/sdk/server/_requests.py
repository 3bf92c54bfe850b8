"""What a request carries, checked: the JSON body (media type, size cap, syntax), the
shape of a submission, listing parameters, page cursors and where an event stream
resumes. Each bad value raises the error its status maps to (``ApiError`` or a
taskloom error), with a message that says what to send instead.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request

from taskloom.contracts import Problem, UsageError
from taskloom.sdk.server._problems import ApiError

MAX_PRIORITY = 1_000_000
"""The queue's priority range (``Engine.submit``): checked here so a bad one is a 422."""


async def read_json(request: Request, cap: int) -> Any:
    """The JSON body of ``request``: 415 for another media type, 413 past ``cap`` bytes
    (declared or streamed), 400 when it is not JSON."""
    media = request.headers.get("content-type", "application/json").split(";")[0]
    media = media.strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise ApiError(415, "UsageError", f"send the body as application/json, not {media!r}")
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "UsageError", "Content-Length is not a number")
        if int(declared) > cap:
            raise _too_large(int(declared), cap)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise _too_large(size, cap)
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks), parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ApiError(400, "DecodeError", f"the request body is not valid JSON: {exc}") from None


def _too_large(size: int, cap: int) -> ApiError:
    return ApiError(
        413,
        "ValueTooLarge",
        f"the request body is {size} bytes or more; the limit is {cap} bytes "
        "([server] max_body_bytes)",
    )


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def shape_problems(body: Any) -> list[Problem]:
    """What is wrong with the shape of a submission body (not with its pipeline)."""
    if not isinstance(body, dict):
        return [
            Problem(
                path="$",
                message="the body must be a JSON object",
                hint='{"pipeline": NAME_OR_OBJECT, "inputs": {...}}',
            )
        ]
    problems: list[Problem] = []
    known = {"pipeline", "inputs", "queue", "priority"}
    for name in sorted(set(body) - known):
        problems.append(
            Problem(
                path=f"$.{name}",
                message=f"unknown field {name!r}",
                hint=f"known fields: {', '.join(sorted(known))}",
            )
        )
    if "pipeline" not in body:
        problems.append(
            Problem(
                path="$.pipeline",
                message="missing field 'pipeline'",
                hint="a pipeline name or a pipeline/v1 object",
            )
        )
    elif not isinstance(body["pipeline"], str | dict):
        problems.append(
            Problem(
                path="$.pipeline",
                message="pipeline must be a name or a JSON object",
                hint="a pipeline name or a pipeline/v1 object",
            )
        )
    if not isinstance(body.get("inputs", {}), dict):
        problems.append(
            Problem(path="inputs", message="inputs must be a JSON object", hint='{"name": value}')
        )
    queue = body.get("queue", "default")
    if not isinstance(queue, str) or not queue:
        problems.append(Problem(path="$.queue", message="queue must be a non-empty string"))
    priority = body.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int) or abs(priority) > MAX_PRIORITY:
        problems.append(
            Problem(
                path="$.priority",
                message="priority must be an integer",
                hint=f"from {-MAX_PRIORITY} to {MAX_PRIORITY}; higher runs first",
            )
        )
    return problems


def int_param(text: str | None, name: str, default: int, low: int, high: int) -> int:
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"{name} must be a whole number, got {text!r}") from None
    if not low <= value <= high:
        raise UsageError(f"{name} must be between {low} and {high}, got {value}")
    return value


def time_param(text: str | None, name: str) -> float | None:
    """Epoch seconds or an ISO 8601 time (UTC unless it says otherwise)."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            raise UsageError(
                f"{name} must be epoch seconds or an ISO 8601 time, got {text!r}"
            ) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        value = when.timestamp()
    if not math.isfinite(value) or not 0 <= value < 10**11:
        raise UsageError(f"{name} must be a time between 1970 and 5000, got {text!r}")
    return value


def encode_cursor(key: str, created_at: float) -> str:
    """The cursor of a page that ends at the run with index ``key``, created at ``created_at``."""
    raw = json.dumps({"k": key, "t": created_at})
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, float]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw)
        key, when = data["k"], data["t"]
        if not isinstance(key, str) or isinstance(when, bool) or not isinstance(when, int | float):
            raise ValueError
        if not math.isfinite(when):
            raise ValueError
        return key, float(when)
    except (ValueError, TypeError, KeyError, binascii.Error, UnicodeDecodeError):
        raise UsageError(
            "cursor is not one this API returned: pass next_cursor from the previous page"
        ) from None


def event_after(request: Request) -> int:
    """Where the event stream resumes: ``Last-Event-ID`` (or ``?after=``), else 0."""
    text = request.headers.get("last-event-id")
    name = "Last-Event-ID"
    if text is None or not text.strip():
        text, name = request.query_params.get("after"), "after"
    if text is None or not text.strip():
        return 0
    text = text.strip()
    if not text.isdigit() or len(text) > 18:
        raise UsageError(f"{name} must be an event number (a whole number >= 0), got {text!r}")
    return int(text)


# --- the app ---------------------------------------------------------------------------
