"""The calls a test made on the adapter, so that a failure can say which operation it
was about: ``Recording`` wraps the adapter handed to a test body and writes each call
(and what it returned or raised) into a ``Trail``; ``naming_invariant`` prints the
last few under the failure.

Values that may be secrets are never written down: a ``SecretStore``'s ``set`` shows
its value as ``<value>``, and a ``Secret`` shows only its mask by its own repr.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Mapping
from typing import Any

SHOWN_CALLS = 4
"""How many of the most recent calls a failure lists."""

_ARG_CHARS = 60
_RESULT_CHARS = 240


def _short(value: object, limit: int) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 15]}... ({len(text)} chars)"


class Trail:
    """The calls made on an adapter during one test, oldest first."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def start(self, call: str) -> int:
        self.calls.append(f"{call}  (did not return)")
        return len(self.calls) - 1

    def finish(self, index: int, text: str) -> None:
        self.calls[index] = text

    def text(self) -> str:
        """The last ``SHOWN_CALLS`` calls, one per line ("" if there were none)."""
        if not self.calls:
            return ""
        lines = "\n".join(f"  {call}" for call in self.calls[-SHOWN_CALLS:])
        return f"\nthe last calls to the adapter (of {len(self.calls)}):\n{lines}"


class Recording:
    """Forwards everything to ``inner``; each method call is written to ``trail``.

    ``hidden`` maps a method name to the positions of arguments never shown.
    """

    def __init__(
        self, inner: object, trail: Trail, hidden: Mapping[str, tuple[int, ...]] | None = None
    ) -> None:
        self._inner = inner
        self._trail = trail
        self._hidden = dict(hidden or {})

    def __repr__(self) -> str:
        return repr(self._inner)

    def __str__(self) -> str:
        return str(self._inner)

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._inner, name)
        if not callable(attribute) or name.startswith("__"):
            return attribute
        hidden = self._hidden.get(name, ())
        trail = self._trail

        def call(*args: Any, **kwargs: Any) -> Any:
            shown = [
                "<value>" if position in hidden else _short(arg, _ARG_CHARS)
                for position, arg in enumerate(args)
            ]
            shown += [f"{key}={_short(value, _ARG_CHARS)}" for key, value in kwargs.items()]
            text = f"{name}({', '.join(shown)})"
            index = trail.start(text)
            result = attribute(*args, **kwargs)
            if inspect.isawaitable(result):
                return _finish(result, trail, index, text)
            trail.finish(index, text)
            return result

        return call


async def _finish(awaitable: Awaitable[Any], trail: Trail, index: int, text: str) -> Any:
    try:
        value = await awaitable
    except BaseException as exc:
        trail.finish(index, f"{text} raised {type(exc).__name__}: {_short(str(exc), 120)}")
        raise
    trail.finish(index, f"{text} returned {_short(value, _RESULT_CHARS)}")
    return value
