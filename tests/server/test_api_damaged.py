"""The HTTP API over a store holding a damaged run record: the listing goes on and
names it, reading it is a 500 (the store's fault, not the request's), delete repairs it."""

from __future__ import annotations

from typing import Any

from server_support import Served, hello_pipeline, served_app


async def _two_runs_one_damaged(s: Served) -> tuple[str, str]:
    good = (await s.submit(hello_pipeline()))["run_id"]
    await s.finished(good)
    bad = (await s.submit(hello_pipeline()))["run_id"]
    await s.finished(bad)
    await s.engine.storage.put("runs", bad, b"{not json")
    return good, bad


async def _list(s: Served, **params: Any) -> dict[str, Any]:
    response = await s.client.get("/api/tasks", params=params, headers=s.auth("read"))
    assert response.status_code == 200, response.text
    return dict(response.json())


async def test_listing_goes_on_around_a_damaged_record_and_names_it() -> None:
    """GET /api/tasks lists the intact run and names the damaged one with why."""
    async with served_app() as s:
        good, bad = await _two_runs_one_damaged(s)
        page = await _list(s)
        assert [t["run_id"] for t in page["tasks"]] == [good]
        assert [d["run_id"] for d in page["damaged"]] == [bad]
        assert f"runs/{bad}" in page["damaged"][0]["error"]
        assert page["damaged"][0]["url"].endswith(f"/api/tasks/{bad}")
        assert (await _list(s, status="succeeded"))["tasks"][0]["run_id"] == good


async def test_paging_steps_over_a_damaged_record_exactly_once() -> None:
    """Pages of one: every run appears once, the damaged one among them, in order."""
    async with served_app() as s:
        good, bad = await _two_runs_one_damaged(s)
        newer = (await s.submit(hello_pipeline()))["run_id"]
        await s.finished(newer)
        seen: list[str] = []
        cursor = None
        for _ in range(10):
            params: dict[str, Any] = {"limit": 1}
            if cursor:
                params["cursor"] = cursor
            page = await _list(s, **params)
            seen += [t["run_id"] for t in page["tasks"]] + [d["run_id"] for d in page["damaged"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == [newer, bad, good]


async def test_reading_a_damaged_run_is_a_500_naming_the_record() -> None:
    """GET of the damaged run and of its events: 500 RecordDamaged saying what to do."""
    async with served_app() as s:
        good, bad = await _two_runs_one_damaged(s)
        for path in (f"/api/tasks/{bad}", f"/api/tasks/{bad}/events"):
            response = await s.client.get(path, headers=s.auth("read"))
            assert response.status_code == 500, (path, response.text)
            body = response.json()
            assert body["error"] == "RecordDamaged"
            assert f"runs/{bad}" in body["detail"] and "delete" in body["detail"]
        assert (await s.client.get(f"/api/tasks/{good}", headers=s.auth("read"))).status_code == 200


async def test_delete_removes_a_damaged_run_and_keeps_the_others() -> None:
    """DELETE of the damaged run answers 204 and repairs the listing; the intact run stays."""
    async with served_app() as s:
        good, bad = await _two_runs_one_damaged(s)
        response = await s.client.delete(f"/api/tasks/{bad}", headers=s.auth("admin"))
        assert response.status_code == 204, response.text
        page = await _list(s)
        assert [t["run_id"] for t in page["tasks"]] == [good] and page["damaged"] == []
        gone = await s.client.get(f"/api/tasks/{bad}", headers=s.auth("read"))
        assert gone.status_code == 404
