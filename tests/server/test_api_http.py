"""The HTTP API against a real uvicorn server on 127.0.0.1, through httpx."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_support import Served, hello_pipeline, make_engine, served_app, wait_until

from taskloom.sdk.server import OPERATIONS, SCOPES, ServerSettings, TokenStore

PROBLEM = "application/problem+json"


@pytest.fixture
async def served() -> Any:
    async with served_app() as s:
        yield s


def _path(op_path: str, run_id: str) -> str:
    return op_path.replace("{run_id}", run_id)


async def _call(s: Served, method: str, path: str, headers: dict[str, str]) -> httpx.Response:
    if method == "POST" and path == "/api/tasks":
        return await s.client.post(path, json={"pipeline": hello_pipeline()}, headers=headers)
    if path.endswith("/events"):
        async with s.client.stream(method, path, headers=headers) as response:
            await response.aread()
            return response
    return await s.client.request(method, path, headers=headers)


async def test_auth_matrix_covers_every_endpoint(served: Served) -> None:
    """Every endpoint with a scope: no token, a malformed header, an unknown, expired or
    revoked token get 401; each weaker scope gets 403; its own scope gets neither."""
    s = served
    store: TokenStore = s.api.tokens
    expired, _ = await store.create(scope="admin", name="expired", expires_in_s=0.001)
    revoked, _ = await store.create(scope="admin", name="revoked")
    await store.revoke("revoked")
    await asyncio.sleep(0.01)
    run_id = (await s.submit())["run_id"]
    await s.finished(run_id)
    guarded = [op for op in OPERATIONS if op.scope is not None]
    assert {op.id for op in guarded} >= {
        "list_pipelines",
        "list_tasks",
        "submit_task",
        "get_task",
        "task_events",
        "cancel_task",
        "resume_task",
        "delete_task",
    }
    bad_headers = [
        {},
        {"authorization": "Basic dXNlcjpwYXNz"},
        {"authorization": "Bearer"},
        {"authorization": "Bearer tlk_0000000000000000_" + "A" * 43},
        {"authorization": f"Bearer {s.tokens['admin']}x"},
        {"authorization": f"Bearer {expired}"},
        {"authorization": f"Bearer {revoked}"},
    ]
    for op in guarded:
        path = _path(op.path, run_id)
        for headers in bad_headers:
            response = await _call(s, op.method, path, headers)
            assert response.status_code == 401, (op.id, headers, response.text)
            assert response.headers["content-type"] == PROBLEM
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert response.json()["error"] == "NotAuthenticated"
        assert op.scope is not None
        for weaker in SCOPES[: SCOPES.index(op.scope)]:
            response = await _call(s, op.method, path, s.auth(weaker))
            assert response.status_code == 403, (op.id, weaker, response.text)
            assert response.json()["error"] == "NotAuthorized"
            assert "insufficient_scope" in response.headers["www-authenticate"]
    for op in guarded:  # the delete goes last: it removes the run
        for scope in SCOPES[SCOPES.index(op.scope) :]:  # type: ignore[arg-type]
            if op.id == "delete_task" and scope != "admin":
                continue
            response = await _call(s, op.method, _path(op.path, run_id), s.auth(scope))
            assert response.status_code not in (401, 403), (op.id, scope, response.text)
    public = [op for op in OPERATIONS if op.scope is None]
    for op in public:
        assert (await s.client.get(op.path)).status_code == 200


async def test_submit_answers_202_and_the_run_reads_back(served: Served) -> None:
    """POST /api/tasks: 202 with run_id, status and url (also in Location); the run is
    readable at once and ends with its output, steps and usage."""
    s = served
    response = await s.client.post(
        "/api/tasks",
        json={"pipeline": hello_pipeline(steps=3), "inputs": {"who": "Ada"}},
        headers=s.auth("submit"),
    )
    assert response.status_code == 202
    body = response.json()
    assert set(body) == {"run_id", "status", "url", "events_url"}
    assert body["url"] == f"/api/tasks/{body['run_id']}"
    assert response.headers["location"] == body["url"]
    first = await s.client.get(body["url"], headers=s.auth("read"))
    assert first.status_code == 200
    detail = await s.finished(body["run_id"])
    assert detail["status"] == "succeeded"
    assert detail["output"] == {"last": "Step 2: Step 1: Say hello to Ada."}
    assert [step["step_id"] for step in detail["steps"]] == ["s0", "s1", "s2"]
    assert detail["usage"]["prompt_tokens"] > 0
    assert detail["total_tokens"] == (
        detail["usage"]["prompt_tokens"] + detail["usage"]["completion_tokens"]
    )
    assert detail["duration_s"] >= 0 and detail["inputs"] == {"who": "Ada"}


async def test_submit_by_name_from_the_pipeline_directories(tmp_path: Path) -> None:
    """A pipeline name is a file of the configured directories; GET /api/pipelines lists
    them; a name that is not there (or tries to leave the directory) is a 422 at
    $.pipeline."""
    (tmp_path / "greet.json").write_text(json.dumps(hello_pipeline(name="greet")))
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path.parent / "outside.json").write_text(json.dumps(hello_pipeline(name="outside")))
    settings = ServerSettings(pipeline_dirs=[tmp_path])
    async with served_app(settings=settings) as s:
        listed = (await s.client.get("/api/pipelines", headers=s.auth("read"))).json()
        assert [p["name"] for p in listed["pipelines"]] == ["greet"]
        assert listed["pipelines"][0]["inputs"]["who"]["default"] == "world"
        run = await s.submit("greet", inputs={"who": "Bo"})
        assert (await s.finished(run["run_id"]))["output"] == {"last": "Step 1: Say hello to Bo."}
        for name in ("nope", "../outside", "/etc/passwd", "broken"):
            response = await s.client.post(
                "/api/tasks", json={"pipeline": name}, headers=s.auth("submit")
            )
            assert response.status_code == 422, name
            assert response.json()["problems"][0]["path"] == "$.pipeline"


async def test_invalid_submission_is_422_with_every_problem_and_its_path(
    served: Served,
) -> None:
    """A bad pipeline, bad inputs and a bad body shape are all reported in one 422, each
    problem with its JSON path (the pipeline's as `taskloom validate` gives them)."""
    s = served
    pipeline = hello_pipeline()
    pipeline["steps"].append({"id": "bad"})
    response = await s.client.post(
        "/api/tasks",
        json={"pipeline": pipeline, "inputs": {"who": "x"}, "priority": "high", "extra": 1},
        headers=s.auth("submit"),
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["error"] == "PipelineInvalid" and body["status"] == 422
    paths = {p["path"] for p in body["problems"]}
    assert {"$.priority", "$.extra", "$.steps[2]"} <= paths
    response = await s.client.post(
        "/api/tasks",
        json={"pipeline": hello_pipeline(), "inputs": {"who": 3, "whom": "y"}},
        headers=s.auth("submit"),
    )
    assert response.status_code == 422
    assert {p["path"] for p in response.json()["problems"]} == {"inputs.who", "inputs.whom"}
    response = await s.client.post(
        "/api/tasks",
        json={"pipeline": hello_pipeline(), "priority": 10**7, "inputs": None},
        headers=s.auth("submit"),
    )
    assert response.status_code == 422
    assert {p["path"] for p in response.json()["problems"]} == {"$.priority", "inputs"}
    for raw in (b"[]", b'"text"', b"3", b"null"):
        response = await s.client.post(
            "/api/tasks",
            content=raw,
            headers={**s.auth("submit"), "content-type": "application/json"},
        )
        assert response.status_code == 422
        assert response.json()["problems"][0]["path"] == "$"
    assert await s.engine.runstore.list_runs() == []  # nothing was started


async def test_malformed_json_is_400_and_other_media_415(served: Served) -> None:
    """A body that is not JSON (or NaN, which JSON has not) is a 400 DecodeError; a body
    declared as another media type is a 415."""
    s = served
    headers = {**s.auth("submit"), "content-type": "application/json"}
    for raw in (b"{bad", b'{"pipeline": NaN}', b"\xff\xfe", b""):
        response = await s.client.post("/api/tasks", content=raw, headers=headers)
        assert response.status_code == 400, raw
        assert response.headers["content-type"] == PROBLEM
        assert response.json()["error"] == "DecodeError"
    response = await s.client.post(
        "/api/tasks",
        content=b"pipeline=x",
        headers={**s.auth("submit"), "content-type": "text/plain"},
    )
    assert response.status_code == 415


async def test_oversized_body_is_413_declared_or_streamed() -> None:
    """A body over max_body_bytes is refused with 413, whether Content-Length says so or
    the body is streamed in chunks without one; nothing is started."""
    async with served_app(settings=ServerSettings(max_body_bytes=2048)) as s:
        big = json.dumps({"pipeline": hello_pipeline(), "inputs": {"who": "x" * 4000}})
        response = await s.client.post(
            "/api/tasks",
            content=big,
            headers={**s.auth("submit"), "content-type": "application/json"},
        )
        assert response.status_code == 413
        assert response.json()["error"] == "ValueTooLarge"

        async def chunks() -> Any:
            for start in range(0, len(big), 500):
                yield big[start : start + 500].encode()

        response = await s.client.post(
            "/api/tasks",
            content=chunks(),
            headers={**s.auth("submit"), "content-type": "application/json"},
        )
        assert response.status_code == 413
        assert await s.engine.runstore.list_runs() == []


async def test_unknown_run_is_404_everywhere(served: Served) -> None:
    """GET, events, cancel, resume and DELETE of a run that does not exist: 404
    RunNotFound as problem+json; an unknown path is a 404 problem too."""
    s = served
    for method, path in [
        ("GET", "/api/tasks/nope"),
        ("GET", "/api/tasks/nope/events"),
        ("POST", "/api/tasks/nope/cancel"),
        ("POST", "/api/tasks/nope/resume"),
        ("DELETE", "/api/tasks/nope"),
    ]:
        response = await s.client.request(method, path, headers=s.auth("admin"))
        assert response.status_code == 404, (method, path)
        assert response.headers["content-type"] == PROBLEM
        assert response.json()["error"] == "RunNotFound"
        assert response.json()["type"] == "urn:taskloom:error:RunNotFound"
    response = await s.client.get("/api/nothing-here")
    assert response.status_code == 404 and response.headers["content-type"] == PROBLEM


async def test_secrets_are_masked_in_every_response() -> None:
    """A secret value the engine's redactor knows never appears in a run's detail, the
    listing or its events, even when a run's input and output carry it."""
    from taskloom.security import Redactor

    secret = "sk-live-0123456789abcdef"
    engine = make_engine(redactor=Redactor([secret]))
    async with served_app(engine) as s:
        run = await s.submit(inputs={"who": secret})
        detail = await s.finished(run["run_id"])
        texts = [json.dumps(detail)]
        texts.append((await s.client.get("/api/tasks", headers=s.auth("read"))).text)
        async with s.client.stream(
            "GET", f"/api/tasks/{run['run_id']}/events", headers=s.auth("read")
        ) as stream:
            texts.append((await stream.aread()).decode())
        assert "Say hello to" in texts[2] or "step.succeeded" in texts[2]
        for text in texts:
            assert secret not in text
        assert "***" in texts[0] or "[REDACTED]" in texts[0] or secret[:6] not in texts[0]


async def test_listing_filters_and_pages_with_a_cursor(served: Served) -> None:
    """GET /api/tasks: newest first, filters by status and pipeline, pages through every
    run exactly once with next_cursor; bad parameters are 400 problems."""
    s = served
    ids = []
    for index in range(7):
        run = await s.submit(hello_pipeline(name="even" if index % 2 == 0 else "odd"))
        ids.append(run["run_id"])
    for run_id in ids:
        await s.finished(run_id)
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = (await s.client.get("/api/tasks", params=params, headers=s.auth("read"))).json()
        seen.extend(task["run_id"] for task in page["tasks"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))
    odd = (
        await s.client.get("/api/tasks", params={"pipeline": "odd"}, headers=s.auth("read"))
    ).json()
    assert [t["run_id"] for t in odd["tasks"]] == [ids[5], ids[3], ids[1]]
    done = (
        await s.client.get(
            "/api/tasks", params={"status": "succeeded", "since": "0"}, headers=s.auth("read")
        )
    ).json()
    assert len(done["tasks"]) == 7
    none = (
        await s.client.get(
            "/api/tasks", params={"until": "1970-01-02T00:00:00"}, headers=s.auth("read")
        )
    ).json()
    assert none["tasks"] == []
    for params in (
        {"status": "done"},
        {"limit": "0"},
        {"limit": "x"},
        {"since": "yesterday"},
        {"cursor": "!!"},
    ):
        response = await s.client.get("/api/tasks", params=params, headers=s.auth("read"))
        assert response.status_code == 400, params
        assert response.headers["content-type"] == PROBLEM


async def test_same_idempotency_key_under_200_concurrent_submissions() -> None:
    """200 concurrent POSTs with one Idempotency-Key queue one run and all answer with
    its id; the same key with another body is a 409 SubmissionConflict."""
    async with served_app() as s:
        headers = {**s.auth("submit"), "idempotency-key": "order-42"}
        body = {"pipeline": hello_pipeline(), "inputs": {"who": "Ada"}}
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(
            base_url=str(s.client.base_url), limits=limits, timeout=60
        ) as client:
            responses = await asyncio.gather(
                *[client.post("/api/tasks", json=body, headers=headers) for _ in range(200)]
            )
        assert {r.status_code for r in responses} == {202}
        assert len({r.json()["run_id"] for r in responses}) == 1
        await s.finished(responses[0].json()["run_id"])
        assert len(await s.engine.runstore.list_runs()) == 1
        other = await s.client.post(
            "/api/tasks", json={**body, "inputs": {"who": "Bo"}}, headers=headers
        )
        assert other.status_code == 409 and other.json()["error"] == "SubmissionConflict"


async def test_cancel_and_resume_over_http() -> None:
    """Cancel a running run over HTTP (202, recorded cancelled, a second cancel is 409),
    then resume it (202): it ends succeeded with the right output."""
    engine = make_engine(latency_s=0.05, lease_ttl_s=0.6)
    async with served_app(engine, settings=ServerSettings(cancel_wait_s=10)) as s:
        run = await s.submit(hello_pipeline(steps=8))
        run_id = run["run_id"]

        async def one_step_done() -> bool:
            detail = await s.client.get(f"/api/tasks/{run_id}", headers=s.auth("read"))
            return len(detail.json()["steps"]) >= 1

        await wait_until(one_step_done)
        response = await s.client.post(f"/api/tasks/{run_id}/cancel", headers=s.auth("submit"))
        assert response.status_code == 202 and response.json()["status"] == "cancelled"
        detail = await s.finished(run_id)
        assert detail["status"] == "cancelled" and len(detail["steps"]) < 8
        again = await s.client.post(f"/api/tasks/{run_id}/cancel", headers=s.auth("submit"))
        assert again.status_code == 409
        response = await s.client.post(f"/api/tasks/{run_id}/resume", headers=s.auth("submit"))
        assert response.status_code == 202, response.text
        assert response.json()["status"] in ("running", "succeeded")
        detail = await s.finished(run_id)
        assert detail["status"] == "succeeded"
        assert detail["output"]["last"].startswith("Step 7: Step 6:")
        finished = await s.client.post(f"/api/tasks/{run_id}/resume", headers=s.auth("submit"))
        assert finished.status_code == 409


async def test_delete_removes_the_run(served: Served) -> None:
    """DELETE /api/tasks/{id} (admin) answers 204; the run is then 404; deleting a run
    that is still running is a 409."""
    s = served
    run = await s.submit()
    await s.finished(run["run_id"])
    response = await s.client.delete(f"/api/tasks/{run['run_id']}", headers=s.auth("admin"))
    assert response.status_code == 204
    gone = await s.client.get(f"/api/tasks/{run['run_id']}", headers=s.auth("read"))
    assert gone.status_code == 404


async def test_delete_of_a_running_run_is_409() -> None:
    """A run this server is executing cannot be deleted from under it."""
    async with served_app(make_engine(latency_s=0.2)) as s:
        run = await s.submit(hello_pipeline(steps=5))
        response = await s.client.delete(f"/api/tasks/{run['run_id']}", headers=s.auth("admin"))
        assert response.status_code == 409 and response.json()["error"] == "RunHeld"
        await s.client.post(f"/api/tasks/{run['run_id']}/cancel", headers=s.auth("submit"))


async def test_cors_is_off_unless_configured() -> None:
    """No CORS headers by default; with cors_origins, that origin (and only it) is allowed."""
    preflight = {"origin": "https://app.example", "access-control-request-method": "GET"}
    async with served_app() as s:
        response = await s.client.options("/api/tasks", headers=preflight)
        assert "access-control-allow-origin" not in response.headers
    settings = ServerSettings(cors_origins=["https://app.example"])
    async with served_app(settings=settings) as s:
        response = await s.client.options("/api/tasks", headers=preflight)
        assert response.headers["access-control-allow-origin"] == "https://app.example"
        other = await s.client.options(
            "/api/tasks", headers={**preflight, "origin": "https://evil.example"}
        )
        assert "access-control-allow-origin" not in other.headers


async def test_healthz_and_openapi_are_public(served: Served) -> None:
    """/healthz says ok with the version; /openapi.json is OpenAPI 3.1 listing every
    operation, each guarded one with the bearer scheme."""
    s = served
    health = (await s.client.get("/healthz")).json()
    assert health["status"] == "ok" and health["version"]
    doc = (await s.client.get("/openapi.json")).json()
    assert doc["openapi"].startswith("3.1")
    ops = {op["operationId"]: op for item in doc["paths"].values() for op in item.values()}
    assert set(ops) == {op.id for op in OPERATIONS}
    for op in OPERATIONS:
        assert ops[op.id]["security"] == ([{"bearer": []}] if op.scope else [])
    assert "TaskDetail" in doc["components"]["schemas"]


async def test_runs_started_elsewhere_in_the_engine_are_listed(served: Served) -> None:
    """The API reads the run store: a run the engine ran without the API shows up."""
    s = served
    result = await s.engine.run(hello_pipeline(name="direct"))
    await wait_until(lambda: True)
    listed = (await s.client.get("/api/tasks", headers=s.auth("read"))).json()
    assert result.run_id in [task["run_id"] for task in listed["tasks"]]


def test_every_reference_in_the_openapi_document_resolves() -> None:
    """Each $ref of /openapi.json names a schema in components (the document is whole),
    and each schema is valid JSON Schema 2020-12."""
    import jsonschema

    from taskloom.sdk.server import openapi_document

    doc = openapi_document(version="test")
    schemas = doc["components"]["schemas"]
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    assert refs
    for ref in refs:
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in schemas, ref
    for schema in schemas.values():
        jsonschema.Draft202012Validator.check_schema(schema)


async def test_create_app_from_a_config_file(tmp_path: Path) -> None:
    """create_app("taskloom.toml") builds the engine and reads [server]: a pipeline of its
    directories is submittable by name; a [server] key it does not know is a UsageError."""
    from server_support import serving, tokens_for

    from taskloom.contracts import UsageError
    from taskloom.sdk import Worker
    from taskloom.sdk.server import create_app

    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "greet.json").write_text(json.dumps(hello_pipeline(name="greet")))
    config = tmp_path / "taskloom.toml"
    config.write_text(
        '[storage]\nkind = "memory"\n\n[executors.scripted]\ntype = "scripted"\n\n'
        '[server]\npipelines = ["flows"]\nmax_body_bytes = 4096\n'
    )
    app = create_app(config)
    api = app.state.taskloom
    assert api.settings.max_body_bytes == 4096
    async with serving(app) as base:
        tokens = await tokens_for(api.tokens)
        async with (
            Worker(api.engine, poll_s=0.05, grace_s=0),
            httpx.AsyncClient(base_url=base, timeout=30) as client,
        ):
            headers = {"authorization": f"Bearer {tokens['submit']}"}
            response = await client.post(
                "/api/tasks", json={"pipeline": "greet", "inputs": {"who": "Cy"}}, headers=headers
            )
            assert response.status_code == 202, response.text

            async def done() -> bool:
                detail = await client.get(response.json()["url"], headers=headers)
                return bool(detail.json()["status"] == "succeeded")

            await wait_until(done)
    config.write_text('[server]\npipeline = ["flows"]\n')
    with pytest.raises(UsageError, match="unknown key"):
        create_app(config)


async def test_a_queued_run_is_not_resumed_beside_its_queue() -> None:
    """Resuming a run still waiting in the queue is a 409 (a worker will run it; resuming
    it here too would race that worker); cancelling it works and records it cancelled."""
    async with served_app(workers=0) as s:
        run = await s.submit()
        detail = await s.client.get(run["url"], headers=s.auth("read"))
        assert detail.json()["status"] == "queued"
        response = await s.client.post(f"{run['url']}/resume", headers=s.auth("submit"))
        assert response.status_code == 409 and "queued" in response.json()["detail"]
        response = await s.client.post(f"{run['url']}/cancel", headers=s.auth("submit"))
        assert response.status_code == 202 and response.json()["status"] == "cancelled"


async def test_a_text_only_redactor_masks_nested_values_too() -> None:
    """An engine redactor with only ``redact(text)`` still masks a secret nested deep in
    a run's inputs and output in what the API returns."""
    secret = "tok-9f8e7d6c5b4a"

    class TextRedactor:
        def redact(self, text: str) -> str:
            return text.replace(secret, "***")

    async with served_app(make_engine(redactor=TextRedactor())) as s:
        run = await s.submit(inputs={"who": f"x {secret} y"})
        detail = await s.finished(run["run_id"])
        assert secret not in json.dumps(detail)
        assert "***" in detail["inputs"]["who"]


async def test_a_wrong_method_is_a_405_problem_listing_the_allowed_ones(served: Served) -> None:
    """PUT on /api/tasks is a 405 problem whose Allow header names both GET and POST."""
    s = served
    response = await s.client.put("/api/tasks", headers=s.auth("admin"))
    assert response.status_code == 405
    assert response.headers["content-type"] == PROBLEM
    allowed = {m.strip() for m in response.headers["allow"].split(",")}
    assert {"GET", "POST"} <= allowed
    assert response.json()["error"] == "MethodNotAllowed"
    response = await s.client.patch("/api/tasks/x", headers=s.auth("admin"))
    assert {"GET", "DELETE"} <= {m.strip() for m in response.headers["allow"].split(",")}
