"""How FileStorage turns names (namespaces, keys, streams) into path components.

Why not use the key as the file name: keys are arbitrary Unicode up to 1024
UTF-8 bytes, and a file name is not. ``../x`` and ``/etc/passwd`` would escape
the root, ``A`` and ``a`` are the same file on case-insensitive filesystems,
``CON`` and ``NUL.txt`` are devices on Windows, trailing dots and spaces are
silently stripped there, and NAME_MAX is 255 bytes.

So every name is encoded as the lowercase, unpadded base32hex (RFC 4648 §7) of
its UTF-8 bytes. That alphabet (``0-9a-v``) has no separator, no dot, no upper
case and no space, so escaping, case folding and trailing-dot stripping are
impossible by construction; base32hex also keeps the byte order of the names.
The encoded text is cut into chunks of at most ``CHUNK`` characters; each chunk
becomes one path component with a one-letter tag in front:

* ``d`` — a partial chunk (a directory; more of the same name follows),
* ``m`` / ``k`` / ``s`` — the last chunk of a namespace / key / stream name.

The tag makes the split unambiguous (a 200-character key can never collide with
a longer key's first directory) and means no component is ever a Windows
device name: those (CON, PRN, AUX, NUL, COM1, LPT1, CONIN$, CLOCK$ ...) all
start with ``a``, ``c``, ``l``, ``n`` or ``p``, and no tag does. Components are
at most ``CHUNK + 1`` = 201 bytes, never empty, never ``.`` or ``..``.
"""

from __future__ import annotations

import base64
import binascii
import re

from taskloom.contracts import MAX_KEY_BYTES

CHUNK = 200
"""Characters of encoded name per path component (a multiple of 8: whole base32 groups)."""

ALPHABET = "0123456789abcdefghijklmnopqrstuv"
"""Every character an encoded chunk may contain."""

PARTIAL = "d"
NAMESPACE = "m"
KEY = "k"
STREAM = "s"
TAGS = frozenset({PARTIAL, NAMESPACE, KEY, STREAM})

_COMPONENT = re.compile(r"[dmks][0-9a-v]{1,200}")


def _encoded_len(size: int) -> int:
    """Length of unpadded base32 text for ``size`` bytes."""
    return (size * 8 + 4) // 5


MAX_COMPONENTS = -(-_encoded_len(MAX_KEY_BYTES) // CHUNK)
"""Most path components one name can take."""

MAX_NAME_PATH = _encoded_len(MAX_KEY_BYTES) + 2 * MAX_COMPONENTS
"""Most characters one encoded name takes in a path, with tags and separators."""


def encode(name: str, tag: str) -> tuple[str, ...]:
    """Return the path components for ``name``; ``tag`` is NAMESPACE, KEY or STREAM.

    Works for any ``str`` that encodes to UTF-8 (NUL included); callers check
    names with ``check_name`` first, so the lengths stay within MAX_NAME_PATH.
    """
    if tag not in (NAMESPACE, KEY, STREAM):
        raise ValueError(f"unknown tag {tag!r}")
    text = base64.b32hexencode(name.encode("utf-8")).decode("ascii").rstrip("=").lower()
    if not text:
        raise ValueError("names must not be empty")
    chunks = [text[i : i + CHUNK] for i in range(0, len(text), CHUNK)]
    return (*(PARTIAL + c for c in chunks[:-1]), tag + chunks[-1])


def encoded_prefix(prefix: str) -> str:
    """Text that the encoding of every name starting with ``prefix`` starts with.

    Base32 turns each whole group of 5 bytes into 8 characters independently
    of what follows, so the groups of ``prefix`` that are complete carry over.
    """
    raw = prefix.encode("utf-8")
    whole = raw[: len(raw) - len(raw) % 5]
    return base64.b32hexencode(whole).decode("ascii").lower()


def is_component(component: str) -> bool:
    """True if ``component`` has the shape of something ``encode`` produces."""
    return _COMPONENT.fullmatch(component) is not None


def is_partial(component: str) -> bool:
    """True if ``component`` is a full-length partial chunk (a directory of a long name)."""
    return len(component) == CHUNK + 1 and component[0] == PARTIAL and is_component(component)


def decode(components: tuple[str, ...] | list[str], tag: str) -> str:
    """Invert ``encode``; raise ValueError for anything ``encode`` could not have produced."""
    if not components:
        raise ValueError("no components")
    for component in components:
        if not is_component(component):
            raise ValueError(f"{component!r} is not an encoded name component")
    *partial, last = components
    if last[0] != tag or any(c[0] != PARTIAL or len(c) != CHUNK + 1 for c in partial):
        raise ValueError(f"components {components!r} do not form a {tag!r} name")
    text = "".join(c[1:] for c in components)
    padded = text.upper() + "=" * (-len(text) % 8)
    try:
        raw = base64.b32hexdecode(padded)
        name = raw.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise ValueError(f"{text[:40]!r} is not a valid encoded name") from exc
    if encode(name, tag) != tuple(components):
        # Non-canonical trailing bits: another spelling of a name we would write differently.
        raise ValueError(f"{text[:40]!r} is not the canonical encoding of a name")
    return name
