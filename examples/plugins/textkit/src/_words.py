"""Word helpers of the textkit example plugin."""

from __future__ import annotations

import re
from collections import Counter

_WORD = re.compile(r"[A-Za-z][A-Za-z'-]+")
_STOP = {"the", "and", "for", "with", "that", "this", "are", "was", "from", "into"}


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def top_words(text: str, limit: int) -> list[str]:
    counts = Counter(w.lower() for w in words(text) if w.lower() not in _STOP)
    return [word for word, _ in counts.most_common(limit)]
