"""Hypothesis strategies for every data type of ``taskloom.contracts``.

Reuse them in your own property tests::

    from hypothesis import given
    from taskloom.contracts.testing import strategies as tst

    @given(tst.pipelines())
    def test_my_pipeline_tool(pipeline): ...

Names (keys, namespaces, streams) are drawn from a deliberately small alphabet so
that generated operations hit the same keys again and again: collisions, version
conflicts and overwrites are where storage bugs live. Floats are always finite
(JSON has no NaN), so every generated instance can round-trip through
``taskloom.contracts.serde``.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from taskloom.contracts import (
    EVENT_TYPES,
    FINISH_REASONS,
    Append,
    ApprovalRequest,
    ApprovalStep,
    Budget,
    CacheHit,
    Capabilities,
    Check,
    ChunkStreamed,
    CommitResult,
    CompletionChunk,
    CompletionRequest,
    CompletionResult,
    Delete,
    ErrorInfo,
    Event,
    FileEntry,
    InputProvided,
    InputRequest,
    InputSpec,
    InputStep,
    LLMStep,
    MapStep,
    Message,
    ParallelStep,
    Pipeline,
    PluginManifest,
    PluginStep,
    Problem,
    Put,
    Record,
    ResponseFormat,
    RetryPolicy,
    RunCancelledEvent,
    RunFailed,
    RunStarted,
    RunSucceeded,
    SecretRef,
    StepDefaults,
    StepFailedEvent,
    StepRetrying,
    StepSkipped,
    StepStarted,
    StepSucceeded,
    StepWaiting,
    StorageFinding,
    StreamEntry,
    Usage,
)
from taskloom.contracts._pipeline import INPUT_TYPES, STEP_ID
from taskloom.contracts._plugin import ENTRY_POINT, PLUGIN_NAME, SHA256_HEX

__all__ = [
    "KEY_ALPHABET",
    "NAMESPACES",
    "STREAMS",
    "appends",
    "approval_requests",
    "approval_steps",
    "capabilities",
    "checks",
    "commit_results",
    "completion_chunks",
    "completion_requests",
    "completion_results",
    "deletes",
    "error_infos",
    "events",
    "file_entries",
    "finite_floats",
    "if_versions",
    "input_requests",
    "input_specs",
    "input_steps",
    "json_values",
    "keys",
    "llm_steps",
    "map_steps",
    "messages",
    "namespaces",
    "ops",
    "parallel_steps",
    "pipelines",
    "plugin_manifests",
    "plugin_steps",
    "problems",
    "puts",
    "records",
    "response_formats",
    "retry_policies",
    "secret_names",
    "secret_refs",
    "step_defaults",
    "steps",
    "stream_entries",
    "stream_names",
    "timestamps",
    "ttls",
    "usages",
    "values",
]

KEY_ALPHABET = "ab/é"
"""Keys are 1-2 characters from this: few enough to collide, with a separator and a
non-ASCII letter so that encodings are exercised."""

NAMESPACES = ("ns", "ns2", "n")
"""Namespaces the storage strategies use; ``n`` is a prefix of the others on purpose."""

STREAMS = ("s", "s2", "ns")
"""Stream names; ``ns`` is also a namespace on purpose (streams and records are separate)."""


# --- building blocks ---------------------------------------------------------------


def finite_floats(min_value: float | None = None, max_value: float | None = None) -> Any:
    """Floats JSON can hold: no NaN, no infinity."""
    return st.floats(
        min_value=min_value, max_value=max_value, allow_nan=False, allow_infinity=False
    )


def timestamps() -> Any:
    """Epoch seconds between 1970 and about 2096."""
    return finite_floats(0.0, 4e9)


def json_values(max_leaves: int = 8) -> Any:
    """Any JSON value: null, booleans, integers, finite floats, text, lists, objects."""
    leaves = st.none() | st.booleans() | st.integers() | finite_floats() | st.text(max_size=8)
    return st.recursive(
        leaves,
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
        ),
        max_leaves=max_leaves,
    )


def _json_objects() -> Any:
    return st.dictionaries(st.text(max_size=5), json_values(4), max_size=3)


def _opt(strategy: Any) -> Any:
    return st.none() | strategy


# --- storage -------------------------------------------------------------------------


def keys() -> Any:
    """Record keys from the small ``KEY_ALPHABET`` (20 distinct keys)."""
    return st.text(KEY_ALPHABET, min_size=1, max_size=2)


def namespaces() -> Any:
    """One of ``NAMESPACES``."""
    return st.sampled_from(NAMESPACES)


def stream_names() -> Any:
    """One of ``STREAMS``."""
    return st.sampled_from(STREAMS)


def values(max_size: int = 8) -> Any:
    """Record values and stream payloads: short bytes, including empty."""
    return st.binary(max_size=max_size)


def if_versions() -> Any:
    """``None`` (no check) or a small version, 0 meaning "must not exist"."""
    return _opt(st.integers(0, 3))


def ttls() -> Any:
    """``None`` or an hour: long enough that nothing expires while a test runs."""
    return st.sampled_from([None, 3600.0])


def records() -> Any:
    """``Record`` instances."""
    return st.builds(
        Record,
        namespace=namespaces(),
        key=keys(),
        value=values(),
        version=st.integers(1, 10),
        updated_at=timestamps(),
        expires_at=_opt(timestamps()),
    )


def stream_entries() -> Any:
    """``StreamEntry`` instances."""
    return st.builds(
        StreamEntry,
        stream=stream_names(),
        seq=st.integers(1, 100),
        payload=values(),
        appended_at=timestamps(),
    )


def puts() -> Any:
    """``Put`` operations."""
    return st.builds(
        Put,
        namespace=namespaces(),
        key=keys(),
        value=values(),
        if_version=if_versions(),
        ttl=ttls(),
    )


def deletes() -> Any:
    """``Delete`` operations."""
    return st.builds(Delete, namespace=namespaces(), key=keys(), if_version=if_versions())


def appends() -> Any:
    """``Append`` operations."""
    return st.builds(Append, stream=stream_names(), payload=values())


def checks() -> Any:
    """``Check`` operations."""
    return st.builds(Check, namespace=namespaces(), key=keys(), version=st.integers(0, 3))


def ops() -> Any:
    """Any operation of a ``commit`` batch."""
    result: Any = st.one_of(puts(), deletes(), appends(), checks())
    return result


def commit_results() -> Any:
    """``CommitResult`` instances."""
    return st.builds(
        CommitResult,
        records=st.lists(records(), max_size=3).map(tuple),
        entries=st.lists(stream_entries(), max_size=3).map(tuple),
        deleted=st.lists(st.booleans(), max_size=3).map(tuple),
    )


# --- LLM -------------------------------------------------------------------------------


def messages() -> Any:
    """Chat ``Message`` instances."""
    return st.builds(
        Message,
        role=st.sampled_from(["system", "user", "assistant", "tool"]),
        content=st.text(max_size=20),
        name=_opt(st.text(min_size=1, max_size=8)),
    )


def response_formats() -> Any:
    """``ResponseFormat`` instances (text, or JSON with an optional schema)."""
    return st.builds(
        ResponseFormat,
        type=st.sampled_from(["text", "json"]),
        json_schema=_opt(_json_objects()),
    )


def completion_requests() -> Any:
    """``CompletionRequest`` instances."""
    return st.builds(
        CompletionRequest,
        messages=st.lists(messages(), min_size=1, max_size=3).map(tuple),
        model=_opt(st.text(min_size=1, max_size=10)),
        temperature=_opt(finite_floats(0.0, 2.0)),
        top_p=_opt(finite_floats(0.0, 1.0)),
        max_tokens=_opt(st.integers(1, 4096)),
        stop=st.lists(st.text(min_size=1, max_size=4), max_size=2).map(tuple),
        seed=_opt(st.integers(0, 2**31)),
        response_format=_opt(response_formats()),
    )


def usages() -> Any:
    """``Usage`` instances."""
    return st.builds(
        Usage,
        prompt_tokens=st.integers(0, 10**6),
        completion_tokens=st.integers(0, 10**6),
    )


def completion_results() -> Any:
    """``CompletionResult`` instances."""
    return st.builds(
        CompletionResult,
        text=st.text(max_size=30),
        finish_reason=st.sampled_from(FINISH_REASONS),
        usage=usages(),
        model=_opt(st.text(min_size=1, max_size=10)),
        latency_s=finite_floats(0.0, 600.0),
    )


def completion_chunks() -> Any:
    """``CompletionChunk`` instances."""
    return st.builds(
        CompletionChunk,
        delta=st.text(max_size=10),
        index=st.integers(0, 1000),
        finish_reason=_opt(st.sampled_from(FINISH_REASONS)),
        usage=_opt(usages()),
    )


# --- secrets ---------------------------------------------------------------------------


def secret_names() -> Any:
    """Valid secret names: 1 to 128 characters from ``[A-Za-z0-9_.-]``."""
    return st.from_regex(r"[A-Za-z0-9_.\-]{1,20}", fullmatch=True)


def secret_refs() -> Any:
    """``SecretRef`` instances."""
    return st.builds(SecretRef, secret=secret_names())


# --- events ----------------------------------------------------------------------------


def error_infos() -> Any:
    """``ErrorInfo`` instances."""
    return st.builds(
        ErrorInfo,
        type=st.sampled_from(["RateLimited", "ExecutorTimeout", "InvalidRequest", "StepFailed"]),
        message=st.text(max_size=20),
        retryable=st.booleans(),
    )


_run_ids = st.text("0123456789abcdef", min_size=1, max_size=8)
_step_ids = st.from_regex(STEP_ID, fullmatch=True)
_items = _opt(st.integers(0, 100))
_durations = finite_floats(0.0, 1e5)

_EVENT_STRATEGIES: dict[type[Any], Any] = {
    RunStarted: st.builds(
        RunStarted,
        run_id=_run_ids,
        at=timestamps(),
        pipeline=st.text(max_size=10),
        pipeline_digest=st.text("0123456789abcdef", max_size=16),
        resumed=st.booleans(),
    ),
    RunSucceeded: st.builds(
        RunSucceeded, run_id=_run_ids, at=timestamps(), duration_s=_durations, usage=usages()
    ),
    RunFailed: st.builds(
        RunFailed,
        run_id=_run_ids,
        at=timestamps(),
        error=error_infos(),
        step_id=_opt(_step_ids),
        duration_s=_durations,
        usage=usages(),
    ),
    RunCancelledEvent: st.builds(
        RunCancelledEvent, run_id=_run_ids, at=timestamps(), duration_s=_durations, usage=usages()
    ),
    StepStarted: st.builds(
        StepStarted,
        run_id=_run_ids,
        at=timestamps(),
        step_id=_step_ids,
        attempt=st.integers(1, 10),
        item=_items,
    ),
    StepRetrying: st.builds(
        StepRetrying,
        run_id=_run_ids,
        at=timestamps(),
        step_id=_step_ids,
        attempt=st.integers(1, 10),
        delay_s=_durations,
        error=error_infos(),
        item=_items,
    ),
    StepSucceeded: st.builds(
        StepSucceeded,
        run_id=_run_ids,
        at=timestamps(),
        step_id=_step_ids,
        attempt=st.integers(1, 10),
        duration_s=_durations,
        usage=usages(),
        item=_items,
        cached=st.booleans(),
    ),
    StepFailedEvent: st.builds(
        StepFailedEvent,
        run_id=_run_ids,
        at=timestamps(),
        step_id=_step_ids,
        attempt=st.integers(1, 10),
        error=error_infos(),
        item=_items,
        continued=st.booleans(),
    ),
    StepSkipped: st.builds(
        StepSkipped,
        run_id=_run_ids,
        at=timestamps(),
        step_id=_step_ids,
        reason=st.text(max_size=10),
        item=_items,
    ),
    ChunkStreamed: st.builds(
        ChunkStreamed,
        run_id=_run_ids,
        at=timestamps(),
        step_id=_step_ids,
        delta=st.text(max_size=10),
        index=st.integers(0, 100),
        item=_items,
    ),
    CacheHit: st.builds(
        CacheHit,
        run_id=_run_ids,
        at=timestamps(),
        step_id=_step_ids,
        cache_key=st.text("0123456789abcdef", min_size=1, max_size=16),
        item=_items,
    ),
    StepWaiting: st.builds(
        StepWaiting,
        run_id=_run_ids,
        at=timestamps(),
        step_id=_step_ids,
        prompt=st.text(max_size=10),
        schema=_opt(_json_objects()),
        timeout_at=_opt(timestamps()),
    ),
    InputProvided: st.builds(
        InputProvided,
        run_id=_run_ids,
        at=timestamps(),
        step_id=_step_ids,
        by=st.text(max_size=10),
    ),
}
if set(_EVENT_STRATEGIES) != set(EVENT_TYPES.values()):  # pragma: no cover - a contract grew
    raise ImportError("taskloom.contracts.testing.strategies lacks a strategy for an event type")


def events(*types: type[Event]) -> Any:
    """Events of the given types (every event type when none are given)."""
    chosen = types or tuple(EVENT_TYPES.values())
    return st.one_of(*(_EVENT_STRATEGIES[t] for t in chosen))


# --- plugins ---------------------------------------------------------------------------


def _name_tuples() -> Any:
    return st.lists(st.text(min_size=1, max_size=8), max_size=3).map(tuple)


def file_entries() -> Any:
    """``FileEntry`` instances."""
    return st.builds(
        FileEntry,
        path=st.text(min_size=1, max_size=16),
        size=st.integers(0, 10**9),
        sha256=st.from_regex(SHA256_HEX, fullmatch=True),
    )


def capabilities() -> Any:
    """``Capabilities`` instances."""
    return st.builds(
        Capabilities,
        network_hosts=_name_tuples(),
        secrets=_name_tuples(),
        storage_namespaces=_name_tuples(),
        executors=_name_tuples(),
        steps=_name_tuples(),
    )


def plugin_manifests() -> Any:
    """``PluginManifest`` instances (valid shape; not signed)."""
    return st.builds(
        PluginManifest,
        name=st.from_regex(PLUGIN_NAME, fullmatch=True),
        version=st.integers(0, 10**6),
        entry_point=st.from_regex(ENTRY_POINT, fullmatch=True),
        publisher=st.text(min_size=1, max_size=12),
        files=st.lists(file_entries(), max_size=3).map(tuple),
        capabilities=capabilities(),
        issued_at=st.integers(0, 2**40),
        expires_at=st.integers(0, 2**40),
        min_sdk_version=st.sampled_from(["0.1.0", "1.2.3"]),
        description=st.text(max_size=20),
    )


# --- pipelines -------------------------------------------------------------------------


def problems() -> Any:
    """``Problem`` instances (what pipeline validation reports)."""
    return st.builds(
        Problem, path=st.text(max_size=16), message=st.text(max_size=16), hint=st.text(max_size=8)
    )


def retry_policies() -> Any:
    """``RetryPolicy`` instances."""
    return st.builds(
        RetryPolicy,
        max_attempts=st.integers(1, 10),
        initial_delay_s=finite_floats(0.0, 10.0),
        max_delay_s=finite_floats(0.0, 100.0),
        multiplier=finite_floats(1.0, 5.0),
        jitter=finite_floats(0.0, 1.0),
    )


_positive = finite_floats(0.001, 1e5)
_on_error = _opt(st.sampled_from(["fail", "continue"]))


def step_defaults() -> Any:
    """``StepDefaults`` instances."""
    return st.builds(
        StepDefaults,
        executor=_opt(st.text(min_size=1, max_size=8)),
        model=_opt(st.text(min_size=1, max_size=8)),
        temperature=_opt(finite_floats(0.0, 2.0)),
        max_tokens=_opt(st.integers(1, 4096)),
        timeout_s=_opt(_positive),
        deadline_s=_opt(_positive),
        retry=_opt(retry_policies()),
        on_error=_on_error,
        cache=_opt(st.booleans()),
        cache_ttl_s=_opt(_positive),
        cache_nondeterministic=_opt(st.booleans()),
    )


def input_specs() -> Any:
    """``InputSpec`` instances."""
    return st.builds(
        InputSpec,
        type=st.sampled_from(INPUT_TYPES),
        required=st.booleans(),
        default=json_values(4),
        description=st.text(max_size=10),
    )


def _needs() -> Any:
    return st.lists(st.from_regex(STEP_ID, fullmatch=True), max_size=2).map(tuple)


def llm_steps() -> Any:
    """``LLMStep`` instances (a ``prompt`` or a list of ``messages``)."""
    prompt_or_messages = st.one_of(
        st.tuples(st.text(max_size=20), st.none()),
        st.tuples(st.none(), st.lists(messages(), min_size=1, max_size=2).map(tuple)),
    )

    def build(pm: tuple[str | None, tuple[Message, ...] | None], **fields: Any) -> LLMStep:
        return LLMStep(prompt=pm[0], messages=pm[1], **fields)

    return st.builds(
        build,
        prompt_or_messages,
        id=_step_ids,
        system=_opt(st.text(max_size=10)),
        executor=_opt(st.text(min_size=1, max_size=8)),
        model=_opt(st.text(min_size=1, max_size=8)),
        temperature=_opt(finite_floats(0.0, 2.0)),
        top_p=_opt(finite_floats(0.0, 1.0)),
        max_tokens=_opt(st.integers(1, 4096)),
        stop=st.lists(st.text(min_size=1, max_size=4), max_size=2).map(tuple),
        seed=_opt(st.integers(0, 2**31)),
        response_format=_opt(response_formats()),
        stream=st.booleans(),
        needs=_needs(),
        timeout_s=_opt(_positive),
        deadline_s=_opt(_positive),
        retry=_opt(retry_policies()),
        on_error=_on_error,
        cache=_opt(st.booleans()),
    )


def plugin_steps() -> Any:
    """``PluginStep`` instances."""
    return st.builds(
        PluginStep,
        id=_step_ids,
        uses=st.text(min_size=1, max_size=12),
        with_=_json_objects(),
        needs=_needs(),
        timeout_s=_opt(_positive),
        deadline_s=_opt(_positive),
        retry=_opt(retry_policies()),
        on_error=_on_error,
    )


def map_steps(body: Any = None) -> Any:
    """``MapStep`` instances whose body is an LLM or plugin step."""
    return st.builds(
        MapStep,
        id=_step_ids,
        map=st.text(min_size=1, max_size=20),
        as_=_step_ids,
        concurrency=st.integers(1, 64),
        step=body if body is not None else (llm_steps() | plugin_steps()),
        needs=_needs(),
        on_error=_on_error,
    )


def parallel_steps(children: Any = None) -> Any:
    """``ParallelStep`` instances."""
    inner = children if children is not None else (llm_steps() | plugin_steps())
    return st.builds(
        ParallelStep,
        id=_step_ids,
        parallel=st.lists(inner, min_size=1, max_size=3).map(tuple),
        needs=_needs(),
        on_error=_on_error,
    )


def input_requests() -> Any:
    """``InputRequest`` instances (a prompt, maybe a schema)."""
    return st.builds(InputRequest, prompt=st.text(max_size=12), schema=_opt(_json_objects()))


def approval_requests() -> Any:
    """``ApprovalRequest`` instances."""
    return st.builds(ApprovalRequest, prompt=st.text(max_size=12))


_on_timeout = st.sampled_from(["fail", "default"])


def input_steps() -> Any:
    """``InputStep`` instances."""
    return st.builds(
        InputStep,
        id=_step_ids,
        input=input_requests(),
        needs=_needs(),
        timeout_s=_opt(_positive),
        on_timeout=_on_timeout,
        default=json_values(3),
        on_error=_on_error,
    )


def approval_steps() -> Any:
    """``ApprovalStep`` instances."""
    return st.builds(
        ApprovalStep,
        id=_step_ids,
        approval=approval_requests(),
        needs=_needs(),
        timeout_s=_opt(_positive),
        on_timeout=_on_timeout,
        default=json_values(3),
        on_error=_on_error,
    )


def steps() -> Any:
    """Any ``Step``, groups nested a little."""
    leaves: Any = llm_steps() | plugin_steps() | map_steps() | input_steps() | approval_steps()
    result: Any = st.recursive(leaves, lambda inner: parallel_steps(inner), max_leaves=4)
    return result


def budgets() -> Any:
    """``Budget`` instances (either limit may be absent)."""
    limit = st.none() | st.integers(1, 10**6)
    result: Any = st.builds(Budget, max_tokens=limit, max_calls=limit)
    return result


def storage_findings() -> Any:
    """``StorageFinding`` instances, as a store's self-check reports them."""
    result: Any = st.builds(
        StorageFinding,
        where=st.text(max_size=20),
        problem=st.text(max_size=40),
        repaired=st.booleans(),
    )
    return result


def pipelines() -> Any:
    """``Pipeline`` instances (well-typed; not necessarily valid to run)."""
    result: Any = st.builds(
        Pipeline,
        name=st.text(min_size=1, max_size=12),
        description=st.text(max_size=12),
        inputs=st.dictionaries(st.text(min_size=1, max_size=6), input_specs(), max_size=2),
        defaults=step_defaults(),
        steps=st.lists(steps(), min_size=1, max_size=3).map(tuple),
        output=json_values(4),
        budget=st.none() | budgets(),
    )
    return result
