"""POST /api/tasks/{id}/input/{step}: a waiting run's value over HTTP."""

from __future__ import annotations

from typing import Any

from server_support import served_app, wait_until

from taskloom.contracts import InputProvided

PIPELINE = {
    "taskloom": "pipeline/v1",
    "name": "ask",
    "steps": [
        {
            "id": "topic",
            "input": {
                "prompt": "what about?",
                "schema": {
                    "type": "object",
                    "properties": {"topic": {"type": "string"}},
                    "required": ["topic"],
                },
            },
        },
        {"id": "ok", "approval": {"prompt": "go on?"}},
        {"id": "write", "prompt": "write about {{steps.topic.output.topic}}"},
    ],
    "output": "{{steps.write.output}}",
}


async def _waiting(s: Any) -> str:
    run = await s.submit(PIPELINE)

    async def waits() -> bool:
        got = await s.client.get(run["url"], headers=s.auth("read"))
        return bool(got.json()["status"] == "waiting")

    await wait_until(waits)
    return str(run["run_id"])


async def test_provide_over_http_records_the_token_name_and_finishes() -> None:
    """A queued run waits (status waiting in the listing); two POSTs with a submit token
    give its values, the token's name is recorded as ``by``, and the run succeeds."""
    async with served_app() as s:
        run_id = await _waiting(s)
        shown = await s.client.get(f"/api/tasks/{run_id}", headers=s.auth("read"))
        assert shown.json()["waiting"] == ["topic"]
        listed = await s.client.get("/api/tasks?status=waiting", headers=s.auth("read"))
        assert [t["run_id"] for t in listed.json()["tasks"]] == [run_id]
        url = f"/api/tasks/{run_id}/input"
        first = await s.client.post(
            f"{url}/topic", json={"value": {"topic": "owls"}}, headers=s.auth("submit")
        )
        assert first.status_code == 202, first.text
        second = await s.client.post(
            f"{url}/ok", json={"value": {"decision": "approve"}}, headers=s.auth("submit")
        )
        assert second.status_code == 202, second.text
        detail = await s.finished(run_id)
        assert detail["status"] == "succeeded" and detail["output"].endswith("write about owls")
        events = [e for _n, e in await s.engine.runstore.events(run_id)]
        by = [(e.step_id, e.by) for e in events if isinstance(e, InputProvided)]
        assert by == [("topic", "test-submit"), ("ok", "test-submit")]


async def test_bad_inputs_over_http_are_problem_details() -> None:
    """A wrong shape is 422 with its problems; a step that does not wait is 409; a step
    that is not an input step and an unknown run are 404; a read token is 403; a body
    without "value" is 422; nothing is recorded by any of them."""
    async with served_app() as s:
        run_id = await _waiting(s)
        url = f"/api/tasks/{run_id}/input"
        wrong = await s.client.post(
            f"{url}/topic", json={"value": {"topic": 1}}, headers=s.auth("submit")
        )
        assert wrong.status_code == 422
        body = wrong.json()
        assert body["error"] == "InputRejected"
        assert body["problems"][0]["path"] == "$.topic"
        early = await s.client.post(
            f"{url}/ok", json={"value": {"decision": "approve"}}, headers=s.auth("submit")
        )
        assert early.status_code == 409 and early.json()["error"] == "NotWaiting"
        other = await s.client.post(f"{url}/write", json={"value": 1}, headers=s.auth("submit"))
        assert other.status_code == 404 and other.json()["error"] == "NotAnInputStep"
        missing = await s.client.post(
            "/api/tasks/nosuchrun/input/topic", json={"value": 1}, headers=s.auth("submit")
        )
        assert missing.status_code == 404
        reader = await s.client.post(
            f"{url}/topic", json={"value": {"topic": "x"}}, headers=s.auth("read")
        )
        assert reader.status_code == 403
        shapeless = await s.client.post(
            f"{url}/topic", json={"topic": "x"}, headers=s.auth("submit")
        )
        assert shapeless.status_code == 422
        assert ("topic", None) not in await s.engine.runstore.finished_steps(run_id)
        done = await s.client.post(
            f"{url}/topic", json={"value": {"topic": "x"}}, headers=s.auth("submit")
        )
        assert done.status_code == 202
        twice = await s.client.post(
            f"{url}/topic", json={"value": {"topic": "y"}}, headers=s.auth("submit")
        )
        assert twice.status_code == 409 and twice.json()["error"] == "AlreadyProvided"
