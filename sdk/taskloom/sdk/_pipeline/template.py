"""Templates: ``{{ reference }}`` substitution, and nothing else.

A pipeline is data from possibly untrusted hands, so a template can only *name*
a value: ``{{inputs.doc}}``, ``{{steps.summary.output}}``, a path into JSON
(``{{steps.extract.output.items.0.title}}``), the map element ``{{item}}`` (or
the name given by ``as``) and its position ``{{index}}``. There is no
expression language, no attribute access on Python objects, no ``eval`` and no
``str.format``: a path segment is a dict key or a list index, looked up in plain
JSON values.

A string that is exactly one template keeps the referenced value's JSON type
(``"{{inputs.documents}}"`` is a list); otherwise each reference is rendered as
text (strings as they are, everything else as compact JSON) and spliced in.

Templates are compiled once per pipeline into small closures so that rendering
on the hot path is a few dict lookups.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal

import attrs

RefKind = Literal["inputs", "steps", "local"]

_OPEN = "{{"
_CLOSE = "}}"
_SEGMENT = re.compile(r"[A-Za-z0-9_\-]+")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")


class TemplateSyntaxError(Exception):
    """A template string cannot be parsed; ``hint`` says how to write it."""

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class TemplateRenderError(Exception):
    """A reference could not be resolved at run time (a missing key, a bad index)."""


@attrs.frozen(kw_only=True)
class Ref:
    """One reference: ``kind`` (inputs, steps or a local such as item/index), a name, a path."""

    kind: RefKind
    name: str
    path: tuple[str, ...] = ()
    source: str = ""

    def __str__(self) -> str:
        return self.source


class Scope:
    """What templates can see while one step renders: inputs, step outputs, locals."""

    __slots__ = ("inputs", "locals", "outputs")

    def __init__(
        self,
        inputs: Mapping[str, Any],
        outputs: Mapping[str, Any],
        locals_: Mapping[str, Any] | None = None,
    ) -> None:
        self.inputs = inputs
        self.outputs = outputs
        self.locals: Mapping[str, Any] = locals_ or {}

    def child(self, locals_: Mapping[str, Any]) -> Scope:
        """A scope with the same inputs and outputs and these locals (one map item)."""
        return Scope(self.inputs, self.outputs, locals_)


Renderer = Callable[[Scope], Any]
"""A compiled template or JSON value: call it with a scope to get the value."""


def _parse_ref(body: str) -> Ref:
    text = body.strip()
    if not text:
        raise TemplateSyntaxError(
            "empty template '{{}}'", hint="write a reference such as {{inputs.name}}"
        )
    parts = text.split(".")
    for part in parts:
        if not _SEGMENT.fullmatch(part):
            raise TemplateSyntaxError(
                f"'{{{{{text}}}}}' is not a reference",
                hint="templates only name values: inputs.x, steps.id.output(.path), item, index; "
                "path segments are keys or list indexes made of letters, digits, _ and -",
            )
    root = parts[0]
    if root == "inputs":
        if len(parts) < 2:
            raise TemplateSyntaxError(
                "'{{inputs}}' needs an input name", hint="write {{inputs.<name>}}"
            )
        return Ref(kind="inputs", name=parts[1], path=tuple(parts[2:]), source=text)
    if root == "steps":
        if len(parts) < 3 or parts[2] != "output":
            raise TemplateSyntaxError(
                f"'{{{{{text}}}}}' must name a step's output",
                hint="write {{steps.<id>.output}} or a path into it: {{steps.<id>.output.field}}",
            )
        return Ref(kind="steps", name=parts[1], path=tuple(parts[3:]), source=text)
    if not _NAME.fullmatch(root):
        raise TemplateSyntaxError(
            f"unknown template root {root!r}",
            hint="a template starts with inputs, steps, item (or the map's 'as' name) or index",
        )
    return Ref(kind="local", name=root, path=tuple(parts[1:]), source=text)


def parse(text: str) -> list[str | Ref]:
    """Split ``text`` into literal pieces and references; raise TemplateSyntaxError."""
    pieces: list[str | Ref] = []
    pos = 0
    while True:
        start = text.find(_OPEN, pos)
        if start < 0:
            if pos < len(text):
                pieces.append(text[pos:])
            return pieces
        end = text.find(_CLOSE, start + 2)
        if end < 0:
            raise TemplateSyntaxError(
                f"unclosed template at character {start}: {text[start : start + 30]!r}",
                hint="close it with '}}'",
            )
        inner = text[start + 2 : end]
        if _OPEN in inner:
            raise TemplateSyntaxError(
                f"template at character {start} opens twice before closing",
                hint="close each '{{' with '}}' before opening another",
            )
        if start > pos:
            pieces.append(text[pos:start])
        pieces.append(_parse_ref(inner))
        pos = end + 2


def has_template(text: str) -> bool:
    """True when ``text`` contains ``{{`` (so it must be parsed)."""
    return _OPEN in text


def refs(value: Any) -> Iterator[tuple[str, Ref]]:
    """Every reference inside a JSON value, with the JSON path suffix of its string.

    Raises TemplateSyntaxError (with a ``path`` attribute added) on the first bad string.
    """
    if isinstance(value, str):
        if has_template(value):
            for piece in parse(value):
                if isinstance(piece, Ref):
                    yield "", piece
    elif isinstance(value, Mapping):
        for key, item in value.items():
            for suffix, ref in refs(item):
                step = f".{key}" if str(key).isidentifier() else f"[{key!r}]"
                yield f"{step}{suffix}", ref
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            for suffix, ref in refs(item):
                yield f"[{index}]{suffix}", ref


def to_text(value: Any) -> str:
    """How a value is spliced into text: strings as they are, the rest as compact JSON.

    Plain ints (map items are often indexes or ids) skip the JSON encoder: their JSON
    text is ``str(value)``. Exact type check: ``bool`` and int subclasses (enums) differ.
    """
    if isinstance(value, str):
        return value
    if type(value) is int:
        return str(value)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _lookup(value: Any, ref: Ref) -> Any:
    for segment in ref.path:
        if value is None:
            return None
        if isinstance(value, Mapping):
            try:
                value = value[segment]
            except KeyError:
                known = ", ".join(sorted(map(str, value))[:10]) or "none"
                raise TemplateRenderError(
                    f"{{{{{ref.source}}}}}: no key {segment!r} (keys: {known})"
                ) from None
        elif isinstance(value, list):
            if not segment.isdigit():
                raise TemplateRenderError(
                    f"{{{{{ref.source}}}}}: {segment!r} is not a list index"
                ) from None
            index = int(segment)
            if index >= len(value):
                raise TemplateRenderError(
                    f"{{{{{ref.source}}}}}: index {index} is out of range (length {len(value)})"
                )
            value = value[index]
        else:
            raise TemplateRenderError(
                f"{{{{{ref.source}}}}}: cannot look up {segment!r} in a {type(value).__name__}"
            )
    return value


def resolve(ref: Ref, scope: Scope) -> Any:
    """The value ``ref`` names in ``scope``."""
    try:
        if ref.kind == "steps":
            base = scope.outputs[ref.name]
        elif ref.kind == "inputs":
            base = scope.inputs[ref.name]
        else:
            base = scope.locals[ref.name]
    except KeyError:
        raise TemplateRenderError(f"{{{{{ref.source}}}}}: {ref.name!r} is not available") from None
    if not ref.path:
        return base
    return _lookup(base, ref)


def compile_text(text: str) -> Renderer:
    """Compile one string: a constant, a single reference (typed) or text with references."""
    if not has_template(text):
        return lambda _scope: text
    pieces = parse(text)
    if len(pieces) == 1 and isinstance(pieces[0], Ref):
        only = pieces[0]
        return lambda scope: resolve(only, scope)
    frozen = tuple(pieces)

    def render(scope: Scope) -> str:
        return "".join(
            piece if isinstance(piece, str) else to_text(resolve(piece, scope)) for piece in frozen
        )

    return render


def compile_json(value: Any) -> Renderer:
    """Compile a JSON value whose strings may hold templates (plugin ``with``, ``output``)."""
    if isinstance(value, str):
        return compile_text(value)
    if isinstance(value, Mapping):
        items = [(key, compile_json(item)) for key, item in value.items()]
        if not any(_is_dynamic(item) for item in value.values()):
            return lambda _scope: value
        return lambda scope: {key: render(scope) for key, render in items}
    if isinstance(value, list | tuple):
        renders = [compile_json(item) for item in value]
        if not any(_is_dynamic(item) for item in value):
            constant = list(value)
            return lambda _scope: constant
        return lambda scope: [render(scope) for render in renders]
    return lambda _scope: value


def _is_dynamic(value: Any) -> bool:
    if isinstance(value, str):
        return has_template(value)
    if isinstance(value, Mapping):
        return any(_is_dynamic(item) for item in value.values())
    if isinstance(value, list | tuple):
        return any(_is_dynamic(item) for item in value)
    return False
