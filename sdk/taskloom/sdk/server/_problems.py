"""Errors as RFC 9457 problem details (``application/problem+json``).

Every error response carries ``type`` (``urn:taskloom:error:<Name>``), ``title``,
``status``, ``detail`` (taskloom's one-line message), ``error`` (the name of the
typed error, e.g. ``PipelineInvalid``) and, for invalid pipelines or inputs,
``problems``: every problem with its JSON path, as ``taskloom validate`` lists them.

``ApiError`` is what a handler raises for an HTTP-level refusal (no token, wrong
scope, a body too large, malformed JSON); taskloom's own errors are mapped to a
status by ``status_of`` (most specific class first).
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from taskloom.contracts import (
    ConflictError,
    DecodeError,
    InputRejected,
    InputTimedOut,
    InvalidKey,
    NotAnInputStep,
    NotWaiting,
    PipelineChanged,
    PipelineInvalid,
    RecordDamaged,
    RunHeld,
    RunNotFound,
    StorageUnavailable,
    SubmissionConflict,
    TaskloomError,
    UnknownExecutor,
    UnknownQueue,
    UsageError,
    ValueTooLarge,
)

PROBLEM_JSON = "application/problem+json"

_STATUS: tuple[tuple[type[TaskloomError], int], ...] = (
    (PipelineInvalid, 422),
    (InputRejected, 422),
    (NotAnInputStep, 404),
    (NotWaiting, 409),
    (InputTimedOut, 409),
    (UnknownExecutor, 422),
    (UnknownQueue, 422),
    (SubmissionConflict, 409),
    (RunNotFound, 404),
    (RunHeld, 409),
    (PipelineChanged, 409),
    (ConflictError, 409),
    (ValueTooLarge, 413),
    (InvalidKey, 400),
    (RecordDamaged, 500),  # the store's data, not the request: before DecodeError
    (DecodeError, 400),
    (UsageError, 400),
    (StorageUnavailable, 503),
)


class ApiError(Exception):
    """An HTTP refusal with the typed error name it reports (``Unauthorized``...)."""

    def __init__(
        self,
        status: int,
        error: str,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra or {}


def status_of(exc: TaskloomError) -> int:
    """The HTTP status a taskloom error maps to (500 for anything unmapped)."""
    own = getattr(exc, "http_status", None)
    if isinstance(own, int):
        return own
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def problem(status: int, error: str, detail: str, **extra: Any) -> dict[str, Any]:
    """A problem-details document."""
    return {
        "type": f"urn:taskloom:error:{error}",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "error": error,
        **extra,
    }


def from_taskloom(exc: TaskloomError, redact: Callable[[str], str]) -> tuple[int, dict[str, Any]]:
    """The status and problem document of a taskloom error, secrets masked."""
    status = status_of(exc)
    extra: dict[str, Any] = {}
    if isinstance(exc, PipelineInvalid):
        problems = list(dict.fromkeys(exc.problems))
        extra["problems"] = [
            {"path": p.path, "message": redact(p.message), "hint": redact(p.hint)} for p in problems
        ]
        detail = f"pipeline is invalid ({len(problems)} problem(s))"
        if len(problems) == 1:
            detail = f"pipeline is invalid: {problems[0]}"
    elif isinstance(exc, InputRejected):
        extra["problems"] = [
            {"path": path, "message": redact(message), "hint": ""}
            for path, _sep, message in (p.partition(": ") for p in exc.problems)
        ]
        detail = one_line(exc)
    else:
        detail = one_line(exc)
    if status == 500:
        detail = f"internal error: {detail}"
    return status, problem(status, error_name(exc), redact(detail), **extra)


def error_name(exc: BaseException) -> str:
    """The public name of an error's type: a private subclass reports its public base."""
    for cls in type(exc).__mro__:
        if not cls.__name__.startswith("_"):
            return cls.__name__
    return type(exc).__name__


def one_line(exc: BaseException) -> str:
    """The first line of an error's message (or its class name)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
