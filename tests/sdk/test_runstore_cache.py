"""The response cache: canonical keys, deterministic-only policy, TTL; pipeline digests."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_runstore_support import STORAGE_KINDS, FakeClock, open_storage

from taskloom.contracts import (
    CompletionRequest,
    CompletionResult,
    DecodeError,
    LLMStep,
    Message,
    Pipeline,
    Usage,
    UsageError,
)
from taskloom.contracts.serde import converter
from taskloom.sdk._runs.records import NS_CACHE
from taskloom.sdk._runs.store import RunStore, cache_key, is_cacheable, pipeline_digest


def _request(**changes: object) -> CompletionRequest:
    fields: dict[str, object] = {
        "messages": (Message(role="user", content="Summarize: hello"),),
        "model": "m1",
        "temperature": 0.0,
    }
    fields.update(changes)
    return CompletionRequest(**fields)  # type: ignore[arg-type]


RESULT = CompletionResult(text="hi", usage=Usage(prompt_tokens=3, completion_tokens=1))


def test_cache_key_is_stable_and_hex_sha256() -> None:
    """Equal requests give equal 64-hex-digit keys, also when built separately."""
    key = cache_key("openai", _request())
    assert key == cache_key("openai", _request())
    assert len(key) == 64 and int(key, 16) >= 0


def test_cache_key_ignores_int_versus_float_spelling() -> None:
    """temperature=0 and temperature=0.0 are the same request, so the same key."""
    assert cache_key("e", _request(temperature=0)) == cache_key("e", _request(temperature=0.0))


@pytest.mark.parametrize(
    "change",
    [
        {"model": "m2"},
        {"temperature": 0.5},
        {"seed": 1},
        {"max_tokens": 10},
        {"stop": ("\n",)},
        {"messages": (Message(role="user", content="Summarize: hello!"),)},
        {"messages": (Message(role="system", content="Summarize: hello"),)},
    ],
)
def test_cache_key_changes_with_any_request_field(change: dict[str, object]) -> None:
    """Changing any field of the request changes the key."""
    assert cache_key("e", _request()) != cache_key("e", _request(**change))


def test_cache_key_depends_on_the_executor() -> None:
    """The same request to two executors has two keys."""
    assert cache_key("a", _request()) != cache_key("b", _request())


@given(st.text(max_size=40), st.text(max_size=40))
def test_cache_key_separates_different_prompts(a: str, b: str) -> None:
    """Two different prompts never share a key (property)."""
    ka = cache_key("e", _request(messages=(Message(role="user", content=a),)))
    kb = cache_key("e", _request(messages=(Message(role="user", content=b),)))
    assert (ka == kb) == (a == b)


def test_only_deterministic_requests_are_cacheable_by_default() -> None:
    """Temperature 0 or a seed is cacheable; sampling is only with the opt-in."""
    assert is_cacheable(_request(temperature=0.0))
    assert is_cacheable(_request(temperature=0.9, seed=7))
    assert not is_cacheable(_request(temperature=0.9))
    assert not is_cacheable(_request(temperature=None))
    assert is_cacheable(_request(temperature=0.9), nondeterministic=True)


@pytest.mark.parametrize("kind", STORAGE_KINDS)
async def test_cache_round_trip_and_ttl(kind: str, tmp_path: Path) -> None:
    """A cached reply comes back until its TTL passes, then it is gone."""
    clock = FakeClock()
    async with open_storage(kind, tmp_path, clock=clock) as storage:
        store = RunStore(storage, clock=clock)
        key = cache_key("e", _request())
        assert await store.cache_get(key) is None
        await store.cache_put(key, RESULT, ttl_s=60)
        assert await store.cache_get(key) == RESULT
        clock.advance(59)
        assert await store.cache_get(key) == RESULT
        clock.advance(2)
        assert await store.cache_get(key) is None
        await store.cache_put(key, RESULT, ttl_s=None)
        clock.advance(10**6)
        assert await store.cache_get(key) == RESULT
        await store.aclose()


async def test_cache_rejects_bad_ttl(tmp_path: Path) -> None:
    """A non-positive TTL raises UsageError."""
    async with open_storage("memory", tmp_path) as storage:
        with pytest.raises(UsageError):
            await RunStore(storage).cache_put("k", RESULT, ttl_s=0)


async def test_damaged_cache_entry_is_a_decode_error(tmp_path: Path) -> None:
    """A cache entry that does not decode raises DecodeError naming it, never a miss."""
    async with open_storage("memory", tmp_path) as storage:
        await storage.put(NS_CACHE, "k", b'{"format":1,"result":{"text":5},"stored_at":1}')
        with pytest.raises(DecodeError, match="cache/k"):
            await RunStore(storage).cache_get("k")


def _pipeline(prompt: str = "Summarize {{inputs.doc}}") -> Pipeline:
    return Pipeline(name="p", steps=(LLMStep(id="s", prompt=prompt, temperature=0.0),))


def test_pipeline_digest_is_stable_and_sensitive() -> None:
    """Equal pipelines share a digest; a changed prompt changes it; dict and object agree."""
    digest = pipeline_digest(_pipeline())
    assert digest == pipeline_digest(_pipeline())
    assert digest != pipeline_digest(_pipeline("Translate {{inputs.doc}}"))
    assert digest == pipeline_digest(converter.unstructure(_pipeline()))
    assert len(digest) == 64
