"""An optional storage capability: claim queued records without contention.

A run queue over the ``StorageAdapter`` contract keeps each queued run as a record
in one namespace, ordered by key. Workers *claim* them: delete the queue record at
the version they read and, in the same atomic commit, write what makes the run
theirs (its lease). ``claim_by_cas`` does that on any conformant adapter with
``commit`` and version checks; concurrent claimers that pick the same record lose
with ``ConflictError`` and try the next. An adapter that can do better -- the
PostgreSQL adapter with ``SELECT ... FOR UPDATE SKIP LOCKED``, the SQLite adapter in
one write transaction that holds the file's write lock -- implements
``ClaimingStorage`` and the run queue uses its ``claim`` instead. ``ops_for`` must only
compute operations: an adapter may call it on a thread of its own.

Invariants of ``ClaimingStorage.claim`` (``claim_by_cas`` keeps them all):

CL1 Every record returned was in ``namespace`` under ``prefix`` when claimed, and is
    gone afterwards: its deletion (at the version returned) and the operations
    ``ops_for(record)`` gave were committed together, all or nothing.
CL2 No record is returned by two claims, in this process or any other, and no
    operation of ``ops_for`` is applied for a record that another claim took.
CL3 Candidates are offered to ``ops_for`` in key order. ``ops_for`` returning None
    skips the record (left in place, nothing written). A candidate whose commit fails
    a version check (``ConflictError``: one of ``ops_for``'s checks, or the record
    changed) is skipped the same way; other errors propagate.
CL4 At most ``limit`` records are returned (``limit >= 1``), fewer when fewer are
    available, ``[]`` when none is; a record locked by a concurrent claim is
    skipped, never waited for.
CL5 ``ops_for`` is called for one candidate at a time, after the previous
    candidate's commit settled, and never for a record it already claimed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol, runtime_checkable

from taskloom.contracts._errors import ConflictError, UsageError
from taskloom.contracts._storage import CommitResult, Delete, Op, Record, StorageAdapter

ClaimOps = Callable[[Record], Sequence[Op] | None]
"""Given a candidate queue record: the operations that claim it, or None to skip it."""

CLAIM_SCAN_PAGE = 64
"""Most candidates read per ``scan`` by ``claim_by_cas`` (it reads 2 x limit, at least 8)."""


class ClaimedRecord(NamedTuple):
    """One claimed record (as it was before its deletion) and what the claim wrote.

    A return value, never stored: a plain named tuple, not a serialized data type.
    """

    record: Record
    result: CommitResult


@runtime_checkable
class ClaimingStorage(Protocol):
    """A storage adapter that claims queue records natively (see the module's CL1-CL5)."""

    async def claim(
        self, namespace: str, *, prefix: str = "", limit: int = 1, ops_for: ClaimOps
    ) -> list[ClaimedRecord]:
        """Claim up to ``limit`` records under ``prefix`` atomically (CL1-CL5)."""


@runtime_checkable
class WakeableStorage(Protocol):
    """A storage adapter that can tell a waiting worker that a namespace was written.

    WK1 ``wait_for_change(namespace, timeout=t)`` returns True soon after a write of
        a record in ``namespace`` by any process (one the adapter announces: the
        PostgreSQL adapter's ``notify_namespaces``), also one made since the previous
        call returned; otherwise False after about ``t`` seconds. It is only a hint:
        False never means nothing changed, so callers keep polling as the fallback.
    """

    async def wait_for_change(self, namespace: str, *, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a write in ``namespace`` (WK1); only a hint."""


def check_claim_limit(limit: object) -> int:
    """Return ``limit`` if it is an int >= 1; else ``UsageError``."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise UsageError(f"limit must be an int >= 1, got {limit!r}")
    return limit


async def claim_by_cas(
    storage: StorageAdapter,
    namespace: str,
    *,
    prefix: str = "",
    limit: int = 1,
    ops_for: ClaimOps,
) -> list[ClaimedRecord]:
    """Claim up to ``limit`` records with compare-and-set commits: CL1-CL5 on any adapter.

    Each candidate is claimed by one ``commit``: delete it at the version read, then
    ``ops_for``'s operations. A ``ConflictError`` means another claimer (or a check of
    ``ops_for``) won: the candidate is skipped.
    """
    check_claim_limit(limit)
    claimed: list[ClaimedRecord] = []
    start_after: str | None = None
    # a few candidates more than asked for (others may take some first), not a whole page
    # of a deep queue per claim
    size = min(CLAIM_SCAN_PAGE, max(8, 2 * limit))
    while len(claimed) < limit:
        page = await storage.scan(namespace, prefix=prefix, start_after=start_after, limit=size)
        for record in page:
            ops = ops_for(record)
            if ops is None:
                continue
            delete = Delete(namespace=namespace, key=record.key, if_version=record.version)
            try:
                result = await storage.commit([delete, *ops])
            except ConflictError:
                continue
            claimed.append(ClaimedRecord(record=record, result=result))
            if len(claimed) >= limit:
                break
        if len(page) < size:
            break
        start_after = page[-1].key
    return claimed
