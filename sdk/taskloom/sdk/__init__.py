"""taskloom's SDK: the engine that composes contracts, adapters and security.

``Engine`` runs pipelines (``async with Engine(...) as engine``), ``SyncEngine``
does the same for code without an event loop. ``load_pipeline`` and
``validate_pipeline`` check a pipeline before anything runs; ``ExecutorRegistry``
holds the LLM executors; ``EventBus`` fans typed events out to subscribers.
``RunStore`` keeps durable runs (history, retention, leases, the response
cache); ``PluginHost`` verifies plugins and loads them from verified bytes.
``Engine.submit`` queues a run in the store; a ``Worker`` (or ``taskloom worker``)
claims queued runs and runs whose holder crashed, in any number of processes.
"""

from __future__ import annotations

from taskloom.sdk._engine.bus import EventBus, Subscription
from taskloom.sdk._engine.engine import Engine
from taskloom.sdk._engine.handle import RunHandle, RunResult
from taskloom.sdk._engine.retry import backoff_delay
from taskloom.sdk._pipeline.validate import load_pipeline, validate_pipeline
from taskloom.sdk._plugins.host import PluginHost, PluginReport, PluginSource, discover
from taskloom.sdk._queue.records import QueueDefinition
from taskloom.sdk._queue.submit import QueueStats
from taskloom.sdk._registry import ExecutorRegistry, ExecutorSettings, register_executor_type
from taskloom.sdk._runs.records import RunRecord, RunStatus, StepRecord
from taskloom.sdk._runs.store import RunStore, cache_key, pipeline_digest
from taskloom.sdk._sync import SyncEngine
from taskloom.sdk._workers.worker import Worker, WorkerStats

__version__ = "0.1.0"

__all__ = [
    "Engine",
    "EventBus",
    "ExecutorRegistry",
    "ExecutorSettings",
    "PluginHost",
    "PluginReport",
    "PluginSource",
    "QueueDefinition",
    "QueueStats",
    "RunHandle",
    "RunRecord",
    "RunResult",
    "RunStatus",
    "RunStore",
    "StepRecord",
    "Subscription",
    "SyncEngine",
    "Worker",
    "WorkerStats",
    "__version__",
    "backoff_delay",
    "cache_key",
    "discover",
    "load_pipeline",
    "pipeline_digest",
    "register_executor_type",
    "validate_pipeline",
]
