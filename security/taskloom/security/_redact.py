"""Scrub known secret values, and the usual encodings of them, from text and data.

``Secret`` masks itself, but a value that was revealed for its destination can come
back in an error text ("401 for key sk-..."), a provider's echo, or a header someone
logged. A ``Redactor`` knows every value in use and replaces each occurrence with
``MASK`` before an event payload, error text or log line is stored or shown.

What it finds, for a value ``v`` (UTF-8 for the byte encodings):

* ``v`` itself;
* base64 of ``v``, standard and URL-safe alphabets, with and without ``=`` padding;
* base64 of ``v`` embedded in a longer encoded string (``user:v`` in a Basic auth
  header): for each of the three byte alignments, the run of base64 characters that
  depends on ``v``'s bytes alone. Such a run is searched only when it is at least
  ``MIN_EMBEDDED_BASE64`` characters long, so a short value does not mask random text.
  The one character at each edge that mixes with a neighbouring byte stays visible; it
  carries at most 6 bits of ``v``;
* URL encoding (``quote`` with and without ``/`` kept, ``quote_plus``, and each with
  lower-case ``%xx`` escapes); and beyond those spellings, any run of URL-encoded text
  (``%xx`` escapes in either case, every byte escaped, encoded twice) whose decoded
  form holds a value: such a run is masked whole;
* base64 wrapped into lines (MIME, PEM: a value's encoding may straddle a line
  break): a block of base64 lines whose joined text holds an encoded value is masked
  whole;
* hex, lower and upper case;
* JSON string escaping (ASCII-only and not) and Python ``repr`` escaping.

Rule for short values: a value shorter than ``MIN_SECRET_LENGTH`` (4) characters is
ignored, since masking every ``"ab"`` would wreck texts while hiding almost nothing; so
is a value made only of the mask character ``*``, which ``MASK`` itself would reveal.

Efficiency: all variants of all values form one compiled regex, rebuilt on ``add``: an
alternation factored as a trie of shared prefixes (longest form first at each position),
so matching costs about the same for one secret or a hundred. ``redact`` is one ``sub``
over the text (a second pass runs only when a value holds ``*``, since the mask beside
the text may spell it again).
"""

from __future__ import annotations

import base64
import json
import re
import threading
from collections.abc import Iterable
from typing import Any, NoReturn
from urllib.parse import quote, quote_plus, unquote, unquote_plus

import attrs

from taskloom.contracts import MASK, Secret, UsageError

MIN_SECRET_LENGTH = 4
"""Values shorter than this many characters are not redacted (see the module docstring)."""

MIN_EMBEDDED_BASE64 = 8
"""Shortest alignment-independent base64 run searched for inside longer encodings."""

_PERCENT = re.compile(r"%[0-9A-F]{2}")
_PERCENT_RUN = re.compile(
    r"(?<![A-Za-z0-9._~+/%\-])[A-Za-z0-9._~+/\-]*(?:%[0-9A-Fa-f]{2}[A-Za-z0-9._~+/\-]*)+"
)
"""A run of URL-encoded text: unreserved characters, ``+``, ``/`` and ``%xx`` escapes.
It starts only where such a run starts (the lookbehind), so a long run without a
``%`` costs one attempt, not one per character (that would be quadratic)."""
_BASE64_LINES = re.compile(
    r"(?<![A-Za-z0-9+/=])(?:[A-Za-z0-9+/]{8,}={0,2}[ \t]*\r?\n[ \t]*)+[A-Za-z0-9+/]+={0,2}"
)
"""Base64 wrapped into lines (MIME's 76 characters, PEM's 64); starts only where a
run of base64 characters starts, for the same reason."""
_MAX_DECODES = 3


def _lower_percent(text: str) -> str:
    return _PERCENT.sub(lambda m: m.group(0).lower(), text)


# A base64 quantum is 3 bytes → 4 characters. With ``shift`` unknown bytes before the
# value, the first characters that depend on the value's bytes alone are at index 0, 2
# or 3; with 1 or 2 value bytes left in a last, partial quantum, 1 or 2 more characters
# after the last whole quantum still depend on them alone.
_FIRST_PURE = (0, 2, 3)
_TAIL_PURE = (0, 1, 2)


def _embedded_base64(raw: bytes) -> set[str]:
    """For each alignment of ``raw`` inside a longer byte string, the base64 characters
    that only ``raw``'s bytes decide (both alphabets)."""
    runs: set[str] = set()
    for shift in range(3):
        padded = b"\0" * shift + raw
        encoded = base64.b64encode(padded).decode("ascii")
        end = (len(padded) // 3) * 4 + _TAIL_PURE[len(padded) % 3]
        run = encoded[_FIRST_PURE[shift] : end]
        if len(run) >= MIN_EMBEDDED_BASE64:
            runs.add(run)
            runs.add(run.replace("+", "-").replace("/", "_"))
    return runs


def variants(value: str) -> set[str]:
    """Every form of ``value`` a ``Redactor`` looks for (see the module docstring)."""
    raw = value.encode("utf-8")
    found = {value}
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        text = encode(raw).decode("ascii")
        found.update((text, text.rstrip("=")))
    found.update(_embedded_base64(raw))
    for quoted in (quote(value, safe=""), quote(value), quote_plus(value)):
        found.update((quoted, _lower_percent(quoted)))
    found.update((raw.hex(), raw.hex().upper()))
    found.update((json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]))
    found.add(repr(value)[1:-1])
    return {v for v in found if v}


def _trie_pattern(forms: Iterable[str]) -> str:
    """One regex matching any of ``forms``, longest first, as a trie of shared prefixes.

    A flat ``a|b|c`` alternation makes the engine try every form at every position of the
    text; the trie tries one branch per character, so the cost of ``redact`` hardly grows
    with the number of secrets. Runs of single-child nodes are emitted without recursion,
    so a long value does not hit the recursion limit.
    """
    trie: dict[str, Any] = {}
    for form in forms:
        node = trie
        for char in form:
            node = node.setdefault(char, {})
        node[""] = {}  # marks the end of a form

    def emit(node: dict[str, Any]) -> str:
        parts: list[str] = []
        while len(node) == 1 and "" not in node:  # a plain chain: no choice to make
            ((char, node),) = node.items()
            parts.append(re.escape(char))
        branches = [re.escape(char) + emit(child) for char, child in sorted(node.items()) if char]
        if branches:
            body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
            # Greedy optional: the longer form wins, the shorter one matches if it fails.
            parts.append(f"(?:{body})?" if "" in node else body)
        return "".join(parts)

    return emit(trie)


def _text_of(secret: Secret | str) -> str:
    if isinstance(secret, Secret):
        return secret.reveal()
    if isinstance(secret, str):
        return secret
    raise UsageError(f"a Redactor takes Secret or str, got {type(secret).__name__}")


def _wanted(value: str) -> bool:
    return len(value) >= MIN_SECRET_LENGTH and value.strip("*") != ""


class Redactor:
    """Knows the secret values in use and replaces them, and their encodings, with
    ``MASK`` in text (:meth:`redact`) and nested data (:meth:`redact_data`).

    Thread-safe: ``add`` builds a new pattern and swaps it in whole. The redactor holds
    the values it knows, so it refuses to be pickled and its repr shows only a count.
    """

    __slots__ = ("_compiled", "_forms", "_lock", "_values")

    def __init__(self, secrets: Iterable[Secret | str] = ()) -> None:
        self._values: frozenset[str] = frozenset()
        self._forms: frozenset[str] = frozenset()
        # The pattern and whether it needs a second pass, swapped in as one object so
        # that a concurrent ``redact`` never pairs a new pattern with an old flag.
        self._compiled: tuple[re.Pattern[str], bool] | None = None
        self._lock = threading.Lock()
        self.update(secrets)

    def __repr__(self) -> str:
        return f"<Redactor of {len(self._values)} secret value(s)>"

    def __len__(self) -> int:
        """How many values are redacted (short values ignored by the rule do not count)."""
        return len(self._values)

    def __reduce__(self) -> NoReturn:
        raise TypeError("a Redactor holds secret values and cannot be pickled")

    def add(self, secret: Secret | str) -> bool:
        """Redact ``secret`` from now on. Returns False, changing nothing, when the rule
        for short values ignores it or it is known already."""
        return self.update((secret,)) == 1

    def update(self, secrets: Iterable[Secret | str]) -> int:
        """Add several secrets with one rebuild of the pattern; returns how many were new."""
        wanted = {value for value in map(_text_of, secrets) if _wanted(value)}
        with self._lock:
            new = wanted - self._values
            if not new:
                return 0
            forms = self._forms.union(*(variants(value) for value in new))
            pattern = re.compile(_trie_pattern(forms))
            self._compiled = (pattern, any("*" in form for form in forms))
            self._forms = forms
            self._values = self._values | new
        return len(new)

    def redact(self, text: str) -> str:
        """``text`` with every known value and encoding of one replaced by ``MASK``."""
        compiled = self._compiled
        if compiled is None or not text:
            return text
        pattern, needs_second_pass = compiled
        if "\n" in text:  # first: masking inside a block would break it into pieces
            text = _BASE64_LINES.sub(lambda m: self._wrapped_base64(m.group(0), pattern), text)
        out = pattern.sub(MASK, text)
        if needs_second_pass:
            # A value holding '*' may appear again where MASK meets the text around it;
            # each pass removes at least one non-'*' character, so this ends.
            while pattern.search(out):
                out = pattern.sub(MASK, out)
        if "%" in out:
            out = _PERCENT_RUN.sub(lambda m: self._decoded_run(m.group(0), pattern), out)
        return out

    @staticmethod
    def _decoded_run(run: str, pattern: re.Pattern[str]) -> str:
        """``run`` masked whole when decoding it (up to three times) shows a value."""
        current = run
        for _ in range(_MAX_DECODES):
            plain = unquote(current)
            if pattern.search(plain) or ("+" in current and pattern.search(unquote_plus(current))):
                return MASK
            if plain == current:
                break
            current = plain
        return run

    @staticmethod
    def _wrapped_base64(block: str, pattern: re.Pattern[str]) -> str:
        """A block of base64 lines masked whole when its joined text holds an encoded value."""
        joined = "".join(block.split())
        return MASK if pattern.search(joined) else block

    def redact_data(self, obj: Any) -> Any:
        """A copy of ``obj`` with every string redacted, dict keys included.

        Walks dicts, lists, tuples, sets, frozensets and attrs instances (events, error
        infos: rebuilt with ``attrs.evolve``, so validators run again); a ``Secret``
        becomes ``MASK``; any other value is returned as it is.
        """
        if self._compiled is None and isinstance(obj, str | int | float | bool | None):
            return obj  # nothing known yet and no Secret inside: nothing to mask
        return self._walk(obj)

    def _walk(self, obj: Any) -> Any:
        if isinstance(obj, str):
            return self.redact(obj)
        if isinstance(obj, Secret):
            return MASK
        if isinstance(obj, dict):
            return {self._walk(k): self._walk(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self._walk(item) for item in obj]
        if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
            return tuple(self._walk(item) for item in obj)
        if isinstance(obj, tuple):  # a namedtuple: keep its type
            return type(obj)(*(self._walk(item) for item in obj))
        if isinstance(obj, set | frozenset):
            return type(obj)(self._walk(item) for item in obj)
        if attrs.has(type(obj)):
            changes = {
                field.alias: self._walk(getattr(obj, field.name))
                for field in attrs.fields(type(obj))
                if field.init
            }
            return attrs.evolve(obj, **changes)
        return obj
