"""The SQLite storage adapter: ``SQLiteStorage``, durable and shared by processes.

```python
from taskloom.adapters.sqlite import SQLiteStorage

async with SQLiteStorage("state.db") as storage:
    await storage.put("runs", "r1", b"{}")
```
"""

from __future__ import annotations

from taskloom.adapters.sqlite._storage import SQLiteStorage

__all__ = ["SQLiteStorage"]
