"""An example taskloom plugin: two pipeline steps that need no network and no secrets.

Its manifest declares the steps ``word_count`` and ``keywords``; pipelines use
them as ``"uses": "textkit.word_count"``. Modules of a plugin import each other
relatively (``from . import _words``): the host serves them from verified bytes
under a private package.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import _words


class TextKit:
    async def setup(self, context: Any) -> None:
        context.register_step("word_count", self.word_count)
        context.register_step("keywords", self.keywords)

    async def teardown(self) -> None:
        return None

    async def word_count(self, args: Mapping[str, Any]) -> dict[str, int]:
        text = str(args.get("text", ""))
        return {"words": len(_words.words(text)), "characters": len(text)}

    async def keywords(self, args: Mapping[str, Any]) -> list[str]:
        text = str(args.get("text", ""))
        limit = int(args.get("limit", 5))
        return _words.top_words(text, limit)


plugin = TextKit()
