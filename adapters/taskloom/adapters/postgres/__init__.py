"""The PostgreSQL storage adapter: ``PostgresStorage``, for workers on many hosts.

Needs the ``postgres`` extra (psycopg 3 and psycopg_pool); imports only
``taskloom.contracts``.

```python
from taskloom.adapters.postgres import PostgresStorage

async with PostgresStorage("postgresql://app@db.internal/app") as storage:
    await storage.put("runs", "r1", b"{}")
```
"""

from __future__ import annotations

from taskloom.adapters.postgres._dsn import ENV_VAR
from taskloom.adapters.postgres._schema import SCHEMA_VERSION
from taskloom.adapters.postgres._storage import PostgresStorage

__all__ = ["ENV_VAR", "SCHEMA_VERSION", "PostgresStorage"]
