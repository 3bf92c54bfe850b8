"""The durable run queue over the ``StorageAdapter`` contract: submit, claim, release.

``records`` holds what the queue stores (queue definitions, entries, tickets, slots,
pacing, idempotency keys); ``submit`` stores a queued run (idempotent by key or
run id); ``claim`` hands queued runs and runs whose lease expired to a holder --
through the adapter's native ``ClaimingStorage.claim`` when it has one, else by
compare-and-set (``claim_by_cas``) -- keeping each queue's concurrency and rate
limits across all workers, and fails a poison run after too many claims. Nothing
here runs a pipeline: the engine and the workers (``_workers``) do. May import
``taskloom.contracts``, ``_pipeline`` and ``_runs``.
"""
