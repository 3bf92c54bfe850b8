"""Reject Ed25519 public keys that make forged signatures verify.

OpenSSL's Ed25519 verification (and so ``cryptography``'s) accepts any 32
bytes as a public key. For a key of small order -- one of the eight torsion
points -- the signature ``R = A, S = 0`` (and relatives) verifies for *every*
message, so a trust store holding such a key trusts anyone. Non-canonical
encodings (``y >= p``, or ``x = 0`` with the sign bit set) are the same points
written differently and slip past byte comparisons with a list of bad keys, so
they are refused too, as are encodings that are not points of the curve at all.
The arithmetic is plain integers: it runs once per key, when a key is added.
"""

from __future__ import annotations

P = 2**255 - 19
"""The field prime."""

D = (-121665 * pow(121666, P - 2, P)) % P
"""The twisted Edwards curve constant d = -121665/121666."""

_SQRT_M1 = pow(2, (P - 1) // 4, P)


def _recover_x(y: int, sign: int) -> int | None:
    """The x of the point with this y and sign bit, or None if there is none."""
    u = (y * y - 1) % P
    v = (D * y * y + 1) % P
    x2 = (u * pow(v, P - 2, P)) % P
    if x2 == 0:
        return None if sign else 0
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P != 0:
        x = (x * _SQRT_M1) % P
    if (x * x - x2) % P != 0:
        return None
    if (x & 1) != sign:
        x = P - x
    return x


def _small_order_ys() -> frozenset[int]:
    """The y values of the eight points P with [8]P = identity, computed, not copied.

    Identity (y = 1), the point of order 2 (y = -1) and the two of order 4 (y = 0)
    are immediate. A point of order 8 doubles to one of order 4, whose y is 0;
    the doubling formula turns y(2P) = 0 into d*t^2 + 2*t - 1 = 0 with t = y^2,
    so t = (-1 +- sqrt(1 + d)) / d, and y = +-sqrt(t) where that root exists.
    """
    ys = {1, P - 1, 0}
    disc = (1 + D) % P
    root = pow(disc, (P + 3) // 8, P)
    if (root * root - disc) % P != 0:
        root = (root * _SQRT_M1) % P
    inv_d = pow(D, P - 2, P)
    for s in (root, P - root):
        t = ((P - 1 + s) * inv_d) % P
        y = pow(t, (P + 3) // 8, P)
        if (y * y - t) % P != 0:
            y = (y * _SQRT_M1) % P
        if (y * y - t) % P == 0:
            ys.add(y)
            ys.add(P - y)
    return frozenset(ys)


SMALL_ORDER_YS = _small_order_ys()


def weakness(raw: bytes) -> str | None:
    """Why ``raw`` is not an acceptable Ed25519 public key, or None if it is fine."""
    if len(raw) != 32:
        return f"an Ed25519 public key is 32 bytes, this one is {len(raw)}"
    number = int.from_bytes(raw, "little")
    sign = number >> 255
    y = number & ((1 << 255) - 1)
    if y >= P:
        return "its encoding is not canonical (y >= p)"
    x = _recover_x(y, sign)
    if x is None:
        return "it is not a point on the Ed25519 curve"
    if x == 0 and sign:
        return "its encoding is not canonical (x = 0 with the sign bit set)"
    if y in SMALL_ORDER_YS:
        return "it is a point of small order, which verifies forged signatures"
    return None
