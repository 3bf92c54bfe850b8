"""GET /api/tasks/{id}/events: Server-Sent Events over a real uvicorn server."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from server_support import hello_pipeline, make_engine, served_app, wait_until

from taskloom.adapters.memory import MemoryStorage
from taskloom.sdk.server import ServerSettings

Sse = dict[str, Any]


class SseReader:
    """Parses SSE blocks from one response; keeps its line iterator between reads (a
    half-read async iterator that is dropped closes the connection)."""

    def __init__(self, response: httpx.Response) -> None:
        self._lines = response.aiter_lines()

    async def read(self, count: int | None = None) -> list[Sse]:
        """The next ``count`` events (all, until the stream ends, if None)."""
        found: list[Sse] = []
        block: dict[str, Any] = {}
        async for line in self._lines:
            if line == "":
                if "data" in block:
                    block["data"] = json.loads(block["data"])
                    found.append(block)
                    if count is not None and len(found) >= count:
                        return found
                block = {}
                continue
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            block[field] = value[1:] if value.startswith(" ") else value
        return found


async def read_events(response: httpx.Response, *, count: int | None = None) -> list[Sse]:
    """Parse SSE blocks from ``response`` until it ends (or ``count`` events came)."""
    return await SseReader(response).read(count)


def stored_ids(events: list[Sse]) -> list[int]:
    return [int(e["id"]) for e in events if "id" in e]


async def test_history_then_live_with_gapless_ids_until_the_outcome() -> None:
    """A stream opened on a running run sends the stored history, then live events,
    every stored one with its number as id (1, 2, 3...), and closes after the outcome;
    the ids equal the run store's numbers."""
    async with served_app(make_engine(latency_s=0.05)) as s:
        run = await s.submit(hello_pipeline(steps=4))
        async with s.client.stream(
            "GET", f"/api/tasks/{run['run_id']}/events", headers=s.auth("read")
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            events = await read_events(response)
        ids = stored_ids(events)
        assert ids == list(range(1, len(ids) + 1))
        assert events[-1]["event"] == "run.succeeded"
        assert events[0]["event"] == "run.started"
        stored = await s.engine.runstore.events(run["run_id"])  # type: ignore[union-attr]
        assert [n for n, _ in stored] == ids
        assert [e["event"] for e in events] == [e["data"]["type"] for e in events]


async def test_last_event_id_resumes_exactly_after_a_dropped_connection() -> None:
    """A client that drops its connection mid-run and reconnects with Last-Event-ID gets
    every later event exactly once: the two streams together are 1..N with no gap."""
    async with served_app(make_engine(latency_s=0.08)) as s:
        run = await s.submit(hello_pipeline(steps=6))
        url = f"/api/tasks/{run['run_id']}/events"
        async with s.client.stream("GET", url, headers=s.auth("read")) as response:
            first = await read_events(response, count=3)
        await asyncio.sleep(0.3)  # events keep being stored while nobody listens
        last = first[-1]["id"]
        async with s.client.stream(
            "GET", url, headers={**s.auth("read"), "last-event-id": last}
        ) as response:
            rest = await read_events(response)
        ids = stored_ids(first) + stored_ids(rest)
        assert ids == list(range(1, len(ids) + 1))
        assert rest[-1]["event"] == "run.succeeded"
        # ?after= does the same for clients that cannot set headers
        async with s.client.stream(
            "GET", url, params={"after": 5}, headers=s.auth("read")
        ) as response:
            tail = await read_events(response)
        assert stored_ids(tail) == list(range(6, ids[-1] + 1))


async def test_chunks_are_live_only_and_carry_no_id() -> None:
    """Streamed token chunks reach a live client as step.chunk events without an id;
    a client that resumes later gets the stored events only, still gapless."""
    from taskloom.adapters.scripted import ScriptedExecutor
    from taskloom.sdk import Engine, ExecutorRegistry

    registry = ExecutorRegistry()
    registry.register(
        "scripted",
        ScriptedExecutor(
            ["a fairly long streamed reply"], chunk_size=4, chunk_delay_s=0.05, latency_s=0.2
        ),
    )
    engine = Engine(storage=MemoryStorage(), registry=registry)
    pipeline = {
        "taskloom": "pipeline/v1",
        "name": "streamed",
        "steps": [{"id": "talk", "prompt": "go", "stream": True}],
    }
    async with served_app(engine) as s:
        run = await s.submit(pipeline)
        url = f"/api/tasks/{run['run_id']}/events"
        async with s.client.stream("GET", url, headers=s.auth("read")) as response:
            live = await read_events(response)
        chunks = [e for e in live if e["event"] == "step.chunk"]
        assert chunks and all("id" not in e for e in chunks)
        streamed = "".join(c["data"]["delta"] for c in chunks)  # those sent after we joined
        assert streamed and "a fairly long streamed reply".endswith(streamed)
        ids = stored_ids(live)
        assert ids == list(range(1, len(ids) + 1))
        async with s.client.stream("GET", url, headers=s.auth("read")) as response:
            again = await read_events(response)
        assert [e["event"] for e in again if e["event"] == "step.chunk"] == []
        assert stored_ids(again) == ids


async def test_a_disconnecting_client_frees_its_subscription() -> None:
    """Clients that go away mid-stream leave nothing behind: no listener, no feed, no
    bus subscription held by the server."""
    async with served_app(make_engine(latency_s=0.2)) as s:
        hub = s.api.hub
        baseline = len(s.engine.bus.subscriptions)
        run = await s.submit(hello_pipeline(steps=10))
        url = f"/api/tasks/{run['run_id']}/events"
        clients = [httpx.AsyncClient(base_url=str(s.client.base_url), timeout=30) for _ in range(5)]
        try:
            streams = []
            readers = []
            for client in clients:
                stream = client.stream("GET", url, headers=s.auth("read"))
                readers.append(SseReader(await stream.__aenter__()))
                await readers[-1].read(1)
                streams.append(stream)
            await wait_until(lambda: hub.listener_count == 5)
            assert hub.feed_count == 1 and hub.subscribed
            assert len(s.engine.bus.subscriptions) == baseline + 1
            for stream in streams:
                await stream.__aexit__(None, None, None)
        finally:
            for client in clients:
                await client.aclose()
        await wait_until(lambda: hub.listener_count == 0 and hub.feed_count == 0)
        assert not hub.subscribed
        assert len(s.engine.bus.subscriptions) == baseline
        await s.client.post(f"/api/tasks/{run['run_id']}/cancel", headers=s.auth("submit"))


async def test_a_finished_run_streams_its_history_and_closes() -> None:
    """The stream of a finished run is its stored history, then the end of the stream."""
    async with served_app() as s:
        run = await s.submit()
        await s.finished(run["run_id"])
        async with s.client.stream(
            "GET", f"/api/tasks/{run['run_id']}/events", headers=s.auth("read")
        ) as response:
            events = await asyncio.wait_for(read_events(response), 10)
        assert events[-1]["event"] == "run.succeeded"
        assert s.api.hub.listener_count == 0


async def test_runs_executed_by_another_process_are_followed_by_polling() -> None:
    """A run executed by another engine on the same store (no shared event bus) still
    streams live: the feed reads what was stored every poll_interval_s."""
    storage = MemoryStorage()
    server_engine = make_engine(storage=storage)
    other = make_engine(storage=storage, latency_s=0.05)
    settings = ServerSettings(poll_interval_s=0.05)
    async with served_app(server_engine, settings=settings, workers=0) as s, other:
        handle = other.start(hello_pipeline(steps=5))
        await wait_until(lambda: handle.run_id is not None)

        async def created() -> bool:
            response = await s.client.get(f"/api/tasks/{handle.run_id}", headers=s.auth("read"))
            return response.status_code == 200

        await wait_until(created)
        async with s.client.stream(
            "GET", f"/api/tasks/{handle.run_id}/events", headers=s.auth("read")
        ) as response:
            events = await asyncio.wait_for(read_events(response), 20)
        ids = stored_ids(events)
        assert ids == list(range(1, len(ids) + 1))
        assert events[-1]["event"] == "run.succeeded"
        await handle.result()


@pytest.mark.parametrize("value", ["x", "-1", "1.5", "9" * 30])
async def test_a_bad_last_event_id_is_400(value: str) -> None:
    """Last-Event-ID must be an event number; anything else is a 400 problem."""
    async with served_app() as s:
        run = await s.submit()
        response = await s.client.get(
            f"/api/tasks/{run['run_id']}/events",
            headers={**s.auth("read"), "last-event-id": value},
        )
        assert response.status_code == 400
        assert response.headers["content-type"] == "application/problem+json"


async def test_a_quiet_run_is_polled_less_and_less_often() -> None:
    """A stream on a run nobody executes (queued, no worker) backs its store reads off:
    over 40 poll intervals it reads far fewer than 40 times."""
    settings = ServerSettings(poll_interval_s=0.02)
    async with served_app(settings=settings, workers=0) as s:
        run = await s.submit()
        store = s.engine.runstore
        assert store is not None
        calls = 0
        original = store.events

        async def counted(*args: Any, **kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            return await original(*args, **kwargs)

        store.events = counted  # type: ignore[method-assign]
        try:
            async with s.client.stream(
                "GET", f"/api/tasks/{run['run_id']}/events", headers=s.auth("read")
            ) as response:
                assert response.status_code == 200
                await wait_until(lambda: s.api.hub.feed_count == 1)
                calls = 0
                await asyncio.sleep(40 * 0.02)
        finally:
            del store.events
        assert 0 < calls <= 16


async def test_a_client_that_falls_too_far_behind_is_dropped() -> None:
    """A listener whose queue is full is ended at once, without the events still queued
    (sending those after a dropped one would hide a gap; the client resumes with
    Last-Event-ID instead), rather than holding events without bound; others go on."""
    from taskloom.contracts import RunStarted
    from taskloom.sdk import EventBus
    from taskloom.sdk._runs.store import RunStore
    from taskloom.sdk.server._feed import EventHub

    store = RunStore(MemoryStorage())
    hub = EventHub(EventBus(), store, lambda n, e: b"x", queue_size=3)
    event = RunStarted(run_id="r", at=1.0)
    async with hub.listen("r") as slow, hub.listen("r") as fast:
        for number in range(1, 6):
            slow.feed.push((number, event, b"x"))
            if number <= 3:
                got = [item async for item in _take(fast, 1)]
                assert got[0][0] == number
        received = [item[0] async for item in slow.items()]
        assert slow.overflowed and received == []  # nothing after a gap: it resumes instead
        assert not fast.overflowed
    assert hub.listener_count == 0 and not hub.subscribed
    await store.aclose()


async def _take(listener: Any, count: int) -> Any:
    taken = 0
    async for item in listener.items():
        yield item
        taken += 1
        if taken >= count:
            return


async def test_the_stream_of_a_deleted_run_ends() -> None:
    """A stream on a queued run that an admin deletes ends instead of idling forever."""
    settings = ServerSettings(poll_interval_s=0.05)
    async with served_app(settings=settings, workers=0) as s:
        run = await s.submit()
        async with s.client.stream(
            "GET", f"/api/tasks/{run['run_id']}/events", headers=s.auth("read")
        ) as response:
            await wait_until(lambda: s.api.hub.feed_count == 1)
            deleted = await s.client.delete(run["url"], headers=s.auth("admin"))
            assert deleted.status_code == 204
            events = await asyncio.wait_for(read_events(response), 10)
        assert events == []
        await wait_until(lambda: s.api.hub.listener_count == 0)
