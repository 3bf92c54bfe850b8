"""POST /api/tasks does no work twice: no read-back of a fresh run, no re-decoding of a
token record that did not change, no route lookup per task URL; answers unchanged."""

from __future__ import annotations

from typing import Any

import attrs
import httpx
import pytest
from server_support import hello_pipeline, make_engine, served_app, tokens_for

from taskloom.adapters.memory import MemoryStorage
from taskloom.sdk._runs.codec import encode
from taskloom.sdk.server import TokenStore, create_app
from taskloom.sdk.server import _tokens as tokens_module
from taskloom.sdk.server._tokens import TokenRecord


async def test_a_fresh_submission_is_not_read_back_but_a_keyed_one_is() -> None:
    """Without an Idempotency-Key the 202 says queued without loading the run; with
    one, a replay answers the earlier run's stored status."""
    async with served_app(workers=0) as s:
        store = s.api.control.runstore
        loads: list[str] = []
        original = store.load_run

        async def counting(run_id: str, *args: Any, **kwargs: Any) -> Any:
            loads.append(run_id)
            return await original(run_id, *args, **kwargs)

        store.load_run = counting
        fresh = await s.submit()
        assert fresh["status"] == "queued" and loads == []
        detail = await s.client.get(fresh["url"], headers=s.auth("read"))
        assert detail.json()["status"] == "queued"
        headers = {**s.auth("submit"), "idempotency-key": "k-1"}
        body = {"pipeline": hello_pipeline()}
        first = await s.client.post("/api/tasks", json=body, headers=headers)
        cancelled = await s.client.post(f"{first.json()['url']}/cancel", headers=s.auth("submit"))
        assert cancelled.status_code == 202
        loads.clear()
        again = await s.client.post("/api/tasks", json=body, headers=headers)
        assert again.json()["run_id"] == first.json()["run_id"]
        assert again.json()["status"] == "cancelled" and loads == [first.json()["run_id"]]


async def test_verify_decodes_a_record_once_and_still_sees_every_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Repeated checks of one token decode its record once; a changed record (a lower
    scope written by another process) and a revoke count at the next check."""
    decoded: list[str] = []
    original = tokens_module.decode

    def counting(value: bytes, kind: Any, *, where: str) -> Any:
        decoded.append(where)
        return original(value, kind, where=where)

    monkeypatch.setattr(tokens_module, "decode", counting)
    storage = MemoryStorage()
    store = TokenStore(storage)
    token, info = await store.create(scope="admin", name="ci")
    for _ in range(3):
        assert await store.verify(token) == info
    assert len(decoded) == 1
    stored = await storage.get("api_tokens", info.id)
    assert stored is not None
    lowered = attrs.evolve(tokens_module.decode(stored.value, TokenRecord, where="t"), scope="read")
    await storage.put("api_tokens", info.id, encode(lowered))
    seen = await store.verify(token)
    assert seen is not None and seen.scope == "read" and not seen.allows("submit")
    assert await store.revoke("ci") is not None
    assert await store.verify(token) is None


async def test_task_urls_follow_the_root_path_without_a_route_lookup_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Task URLs carry the root path the request came under (each its own), as
    url_for gives them, and the route is resolved once per root path, not per run."""
    engine = make_engine()
    app = create_app(engine)
    lookups: list[str] = []
    original = app.router.url_path_for

    def counting(name: str, /, **params: Any) -> Any:
        lookups.append(name)
        return original(name, **params)

    monkeypatch.setattr(app.router, "url_path_for", counting)
    async with engine:
        api = app.state.taskloom
        await api.ready()
        auth = {"authorization": f"Bearer {(await tokens_for(api.tokens))['submit']}"}
        for root in ("", "/base", "/other"):
            transport = httpx.ASGITransport(app=app, root_path=root)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                for _ in range(3):
                    response = await client.post(
                        "/api/tasks", json={"pipeline": hello_pipeline()}, headers=auth
                    )
                    assert response.status_code == 202, response.text
                    body = response.json()
                    assert body["url"] == f"{root}/api/tasks/{body['run_id']}"
                    assert response.headers["location"] == body["url"]
                    assert body["events_url"] == f"{body['url']}/events"
        assert lookups.count("get_task") == 3
        await api.aclose()


def test_a_task_url_is_what_url_for_gives_for_any_run_id() -> None:
    """Unusual run ids (spaces, non-ASCII, %, ?, #) get exactly url_for's path."""
    from starlette.requests import Request

    from taskloom.sdk.server._app import _task_url

    app = create_app(make_engine())
    for root in ("", "/base"):
        scope = {
            "type": "http",
            "app": app,
            "router": app.router,
            "root_path": root,
            "path": "/",
            "method": "GET",
            "scheme": "http",
            "server": ("t", 80),
            "headers": [],
            "query_string": b"",
        }
        request = Request(scope)
        for run_id in ("abc", "a b", "ünï", "x%2Fy", "a?b", "a#b", "0runid0x"):
            expected = str(request.url_for("get_task", run_id=run_id).path)
            assert _task_url(request, run_id) == expected, run_id
