"""In-memory adapters: complete, fast, and gone when the process ends.

For tests, demos and ephemeral runs. Both pass the conformance suites of
``taskloom.contracts.testing``; ``reopen()`` on either gives a second adapter
over the same data, which stands in for "a new process opened the same location".
"""

from __future__ import annotations

from taskloom.adapters.memory._secrets import MemorySecretStore
from taskloom.adapters.memory._storage import MemoryStorage

__all__ = ["MemorySecretStore", "MemoryStorage"]
