"""taskloom's adapters: storage, LLM executors and secret stores built on the contracts.

Import each adapter from its own module (``taskloom.adapters.sqlite``,
``taskloom.adapters.memory`` ...): importing this package loads none of them.
"""

from __future__ import annotations

__all__: list[str] = []
