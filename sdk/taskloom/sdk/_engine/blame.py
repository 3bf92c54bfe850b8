"""Whose fault a failure inside a step is: the step's, or taskloom's own.

A step fails (and its ``on_error`` policy applies) only for errors raised by its
executor or plugin function, and for taskloom's typed reply and timeout errors
(``ExecutorError``: a malformed reply, a schema violation, a timeout). Anything else
raised while the engine runs a step -- an ``AttributeError`` in the engine, say -- is a
bug of taskloom's: it must fail the run, never be swallowed by ``on_error: continue``.

Code that calls into an executor or a plugin marks what escapes with
``mark_step_code``; the mark is an attribute on the exception object, so it costs
nothing until something is raised.
"""

from __future__ import annotations

import contextlib

from taskloom.contracts import ExecutorError, InternalError, TaskloomError

_MARK = "_taskloom_raised_by_step_code"


def mark_step_code(exc: BaseException) -> None:
    """Record that ``exc`` came out of an executor's or a plugin's code."""
    with contextlib.suppress(AttributeError, TypeError):  # an exception refusing attributes
        setattr(exc, _MARK, True)


def is_step_failure(exc: BaseException) -> bool:
    """True when ``exc`` is the step's failure rather than the engine's."""
    return isinstance(exc, ExecutorError) or getattr(exc, _MARK, False) is True


def internal_error(exc: BaseException, *, run_id: str, step_id: str) -> TaskloomError:
    """The error a run fails with when the engine itself broke while running a step.

    A ``TaskloomError`` (storage, secrets, security, an unknown executor) passes
    unchanged: it says what is wrong already. Anything else becomes ``InternalError``.
    """
    if isinstance(exc, TaskloomError):
        return exc
    return InternalError(
        f"taskloom failed while running step {step_id!r} of run {run_id}: "
        f"{type(exc).__name__}: {exc} -- this is a bug in taskloom, not in the step; "
        f"the run is marked failed and 'taskloom resume {run_id}' continues it once fixed "
        "(--debug shows the traceback)"
    )
