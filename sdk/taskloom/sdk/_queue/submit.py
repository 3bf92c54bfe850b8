"""Submitting runs to the queue, defining queues, and what the queue holds now.

A submission is one atomic commit: the run record (status ``queued``), its time-index
entry, its queue entry, its ticket and (with a key) its idempotency entry, each new
key written with ``if_version=0``. Of many concurrent submissions with one key or run
id exactly one commit lands; the others fail its check, read what landed and return
that run's id -- or raise ``SubmissionConflict`` when it is a different run.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from typing import Any

import attrs

from taskloom.contracts import (
    ConflictError,
    Op,
    Put,
    SubmissionConflict,
    UnknownQueue,
    UsageError,
    check_name,
    check_value,
)
from taskloom.sdk._pipeline.plan import Plan
from taskloom.sdk._queue.records import (
    DEFAULT_QUEUE,
    MAX_PRIORITY,
    NS_IDEMPOTENCY,
    NS_QUEUE,
    NS_QUEUES,
    NS_SLOTS,
    NS_TICKETS,
    IdempotencyEntry,
    QueueDefinition,
    QueueEntry,
    QueueTicket,
    entry_key,
)
from taskloom.sdk._runs.codec import decode, encode
from taskloom.sdk._runs.records import (
    NS_RUNS,
    NS_RUNS_BY_TIME,
    NS_TOMBSTONES,
    RunRecord,
    index_entry,
    index_key,
)
from taskloom.sdk._runs.store import RunStore

_QUEUE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}")
_SUBMIT_RETRIES = 8


def check_queue_name(name: object) -> str:
    """Return ``name`` if it can name a queue (1-100 of ``A-Za-z0-9_.-``); else UsageError."""
    if not isinstance(name, str) or not _QUEUE_NAME.fullmatch(name):
        raise UsageError(f"a queue name is 1-100 letters, digits, '_', '.' or '-', got {name!r}")
    return name


def check_priority(priority: object) -> int:
    """Return ``priority`` if it is an int within +-MAX_PRIORITY; else UsageError."""
    if (
        isinstance(priority, bool)
        or not isinstance(priority, int)
        or not -MAX_PRIORITY <= priority <= MAX_PRIORITY
    ):
        raise UsageError(
            f"priority must be an int from {-MAX_PRIORITY} to {MAX_PRIORITY} (higher runs "
            f"first), got {priority!r}"
        )
    return priority


async def queue_definition(store: RunStore, name: str) -> QueueDefinition:
    """The definition of queue ``name``; ``UnknownQueue`` if nobody defined it."""
    check_queue_name(name)
    stored = await store.storage.get(NS_QUEUES, name)
    if stored is not None:
        return decode(stored.value, QueueDefinition, where=f"{NS_QUEUES}/{name}")
    if name == DEFAULT_QUEUE:
        return QueueDefinition(name=DEFAULT_QUEUE)
    raise UnknownQueue(name, await queue_names(store))


async def queue_names(store: RunStore) -> list[str]:
    """Every defined queue's name (``default`` always among them)."""
    names = {DEFAULT_QUEUE}
    start_after: str | None = None
    while True:
        page = await store.storage.scan(NS_QUEUES, start_after=start_after, limit=500)
        names.update(record.key for record in page)
        if len(page) < 500:
            return sorted(names)
        start_after = page[-1].key


async def define_queue(
    store: RunStore,
    name: str,
    *,
    concurrency: int | None = None,
    starts_per_minute: float | None = None,
    max_claims: int | None = None,
) -> QueueDefinition:
    """Define (or redefine) queue ``name`` with its limits; return the definition."""
    check_queue_name(name)
    try:
        definition = QueueDefinition(
            name=name,
            concurrency=concurrency,
            starts_per_minute=starts_per_minute,
            **({} if max_claims is None else {"max_claims": max_claims}),
        )
    except (TypeError, ValueError) as exc:
        raise UsageError(f"queue {name!r}: {exc}") from None
    await store.storage.put(NS_QUEUES, name, encode(definition))
    return definition


async def submit_run(
    store: RunStore,
    plan: Plan,
    inputs: Mapping[str, Any],
    *,
    run_id: str | None,
    idempotency_key: str | None,
    queue: str,
    priority: int,
) -> str:
    """Store a queued run of ``plan`` (inputs already resolved); return its id.

    The same ``idempotency_key`` or ``run_id`` with the same pipeline and inputs
    returns the run stored first; with another pipeline or other inputs it raises
    ``SubmissionConflict`` and stores nothing.
    """
    check_queue_name(queue)
    check_priority(priority)
    if run_id is not None:
        check_name(run_id, what="run id")
    if idempotency_key is not None:
        check_name(idempotency_key, what="idempotency key")
    if queue != DEFAULT_QUEUE:  # (the default queue always exists: nothing to read)
        await queue_definition(store, queue)  # UnknownQueue before anything is stored
    storage = store.storage
    new_id = run_id if run_id is not None else uuid.uuid4().hex
    for _ in range(_SUBMIT_RETRIES):
        existing, marker_version = await _existing(store, plan, inputs, run_id, idempotency_key)
        if existing is not None:
            return existing
        if run_id is not None and await storage.get(NS_TOMBSTONES, new_id) is not None:
            raise UsageError(
                f"run id {new_id!r} belonged to a deleted run whose event stream cannot be "
                "erased; use a new run id (uuid4().hex)"
            )
        now = store.clock()
        record = RunRecord(
            run_id=new_id,
            pipeline_name=plan.pipeline.name,
            pipeline_digest=plan.digest,
            pipeline=plan.stored_pipeline,
            inputs=dict(inputs),
            status="queued",
            created_at=now,
        )
        entry = QueueEntry(
            run_id=new_id,
            queue=queue,
            priority=priority,
            submitted_at=now,
            idempotency_key=idempotency_key,
        )
        ticket = QueueTicket(
            run_id=new_id,
            queue=queue,
            priority=priority,
            submitted_at=now,
            idempotency_key=idempotency_key,
        )
        ops: list[Op] = [
            Put(
                namespace=NS_RUNS,
                key=new_id,
                value=check_value(encode(record), what=f"run record {new_id}"),
                if_version=0,
            ),
            Put(
                namespace=NS_RUNS_BY_TIME,
                key=index_key(new_id, now),
                value=encode(index_entry(record)),
            ),
            Put(namespace=NS_TICKETS, key=new_id, value=encode(ticket), if_version=0),
            Put(
                namespace=NS_QUEUE,
                key=entry_key(queue, priority, now, new_id),
                value=encode(entry),
            ),
        ]
        if idempotency_key is not None:
            marker = IdempotencyEntry(key=idempotency_key, run_id=new_id, created_at=now)
            ops.append(
                Put(
                    namespace=NS_IDEMPOTENCY,
                    key=idempotency_key,
                    value=encode(marker),
                    if_version=marker_version,
                )
            )
        try:
            await storage.commit(ops)
        except ConflictError:
            continue  # a concurrent submission with this key or id landed first: read it
        return new_id
    raise SubmissionConflict(
        f"run {new_id!r}: concurrent submissions kept changing it; try again",
        run_id=new_id,
    )


async def _existing(
    store: RunStore,
    plan: Plan,
    inputs: Mapping[str, Any],
    run_id: str | None,
    idempotency_key: str | None,
) -> tuple[str | None, int]:
    """The id of the run this submission repeats (or None), and the version the key's
    marker is at (0: none; a marker whose run was deleted frees the key again).
    ``SubmissionConflict`` if the key or id belongs to a run of another pipeline or
    other inputs."""
    storage = store.storage
    marker_version = 0
    if idempotency_key is not None:
        stored = await storage.get(NS_IDEMPOTENCY, idempotency_key)
        if stored is not None:
            marker = decode(
                stored.value, IdempotencyEntry, where=f"{NS_IDEMPOTENCY}/{idempotency_key}"
            )
            found = await storage.get(NS_RUNS, marker.run_id)
            if found is None:
                marker_version = stored.version  # its run was deleted: the key is free again
            else:
                if run_id is not None and marker.run_id != run_id:
                    raise SubmissionConflict(
                        f"idempotency key {idempotency_key!r} submitted run "
                        f"{marker.run_id!r}, not {run_id!r}: use a new key for a new run",
                        run_id=marker.run_id,
                    )
                _same(
                    decode(found.value, RunRecord, where=f"{NS_RUNS}/{marker.run_id}"),
                    plan,
                    inputs,
                    f"idempotency key {idempotency_key!r}",
                )
                return marker.run_id, stored.version
    if run_id is not None:
        found = await storage.get(NS_RUNS, run_id)
        if found is not None:
            _same(
                decode(found.value, RunRecord, where=f"{NS_RUNS}/{run_id}"),
                plan,
                inputs,
                f"run id {run_id!r}",
            )
            return run_id, marker_version
    return None, marker_version


def _same(record: RunRecord, plan: Plan, inputs: Mapping[str, Any], what: str) -> None:
    if record.pipeline_digest != plan.digest:
        raise SubmissionConflict(
            f"{what} is taken by run {record.run_id!r} of pipeline {record.pipeline_name!r} "
            f"(digest {record.pipeline_digest[:12]}...), not this pipeline "
            f"({plan.digest[:12]}...): use a new run id or key",
            run_id=record.run_id,
        )
    if record.inputs != dict(inputs):
        raise SubmissionConflict(
            f"{what} is taken by run {record.run_id!r} with other inputs: use a new run id "
            "or key for other inputs",
            run_id=record.run_id,
        )


@attrs.frozen(kw_only=True)
class QueueStats:
    """What one queue holds now: ``taskloom queue`` prints these."""

    name: str
    depth: int
    """Runs waiting to be claimed."""
    oldest_at: float | None
    """When the oldest waiting run was submitted (None: none waits)."""
    running: int
    """Claimed runs holding one of its concurrency slots (limited queues only)."""
    concurrency: int | None
    starts_per_minute: float | None


async def queue_stats(store: RunStore) -> list[QueueStats]:
    """Depth, oldest submission and running count of every defined queue."""
    stats: list[QueueStats] = []
    for name in await queue_names(store):
        definition = await queue_definition(store, name)
        depth, oldest = 0, None
        start_after: str | None = None
        while True:
            page = await store.storage.scan(
                NS_QUEUE, prefix=f"{name}/", start_after=start_after, limit=1000
            )
            for record in page:
                depth += 1
                entry = decode(record.value, QueueEntry, where=f"{NS_QUEUE}/{record.key}")
                if oldest is None or entry.submitted_at < oldest:
                    oldest = entry.submitted_at
            if len(page) < 1000:
                break
            start_after = page[-1].key
        running = len(await store.storage.scan(NS_SLOTS, prefix=f"{name}/"))
        stats.append(
            QueueStats(
                name=name,
                depth=depth,
                oldest_at=oldest,
                running=running,
                concurrency=definition.concurrency,
                starts_per_minute=definition.starts_per_minute,
            )
        )
    return stats
