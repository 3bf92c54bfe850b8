"""The ASGI app: routes from ``_openapi.OPERATIONS``, handlers, errors, the viewer page.

``create_app`` takes an ``Engine`` (the caller keeps owning it) or the path of a
``taskloom.toml`` (the app builds the engine and closes it on shutdown). The app can
be mounted in any Starlette or FastAPI application: everything it needs is opened on
first use (a mounted app's lifespan does not run), and ``app.state.taskloom.aclose()``
releases it.
"""

from __future__ import annotations

import contextlib
import json
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from taskloom.contracts import (
    EVENT_TYPES,
    Event,
    PipelineInvalid,
    Problem,
    RunCancelledEvent,
    RunFailed,
    RunSucceeded,
    TaskloomError,
    UsageError,
    serde,
)
from taskloom.sdk._engine.engine import Engine
from taskloom.sdk._pipeline.compact import pipeline_digest
from taskloom.sdk._runs.history import DamagedRun
from taskloom.sdk._runs.records import (
    FINISHED_STATUSES,
    RUN_STATUSES,
    RunRecord,
    index_key,
    index_time,
)
from taskloom.sdk.server import _models as m
from taskloom.sdk.server._auth import authorize
from taskloom.sdk.server._feed import READ_PAGE, EventHub
from taskloom.sdk.server._openapi import OPERATIONS, Operation, openapi_document
from taskloom.sdk.server._pipelines import PipelineCatalog
from taskloom.sdk.server._problems import PROBLEM_JSON, ApiError, from_taskloom, problem
from taskloom.sdk.server._requests import (
    decode_cursor,
    encode_cursor,
    event_after,
    int_param,
    read_json,
    shape_problems,
    time_param,
)
from taskloom.sdk.server._runs import RunControl
from taskloom.sdk.server._settings import ServerSettings
from taskloom.sdk.server._tokens import TokenStore

UI_DIR = Path(__file__).parent / "_ui"
OUTCOMES = (RunSucceeded, RunFailed, RunCancelledEvent)
_EVENT_TAG = {cls: tag for tag, cls in EVENT_TYPES.items()}
MAX_IDEMPOTENCY_KEY = 200
DEFAULT_PAGE = 50
MAX_PAGE = 500
_UI_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}

Handler = Callable[[Request], Awaitable[Response]]


def _version() -> str:
    from taskloom.sdk import __version__

    return __version__


class TaskloomApi:
    """What the handlers share: the engine, tokens, run control, event hub, pipelines."""

    def __init__(
        self,
        engine: Engine,
        *,
        owns_engine: bool,
        settings: ServerSettings,
        tokens: TokenStore | None,
    ) -> None:
        self.engine = engine
        self.owns_engine = owns_engine
        self.settings = settings
        self._tokens = tokens
        self.control = RunControl(engine, cancel_wait_s=settings.cancel_wait_s)
        self.catalog = PipelineCatalog(settings.pipeline_dirs)
        self._hub: EventHub | None = None
        self._openapi: dict[str, Any] | None = None
        self._closed = False

    # --- lifecycle ---------------------------------------------------------------

    async def ready(self) -> None:
        """Open the engine and what hangs off it (idempotent, on first use)."""
        if self._closed:
            raise UsageError("this taskloom API app is closed")
        await self.engine.open()
        if self._tokens is None and self.engine.storage is not None:
            self._tokens = TokenStore(self.engine.storage)

    @property
    def tokens(self) -> TokenStore | None:
        """The token store requests are checked against (None: no token is valid)."""
        return self._tokens

    @property
    def hub(self) -> EventHub:
        if self._hub is None:
            self._hub = EventHub(
                self.engine.bus,
                self.control.runstore,
                self._sse,
                poll_interval_s=self.settings.poll_interval_s,
            )
        return self._hub

    async def aclose(self) -> None:
        """Stop the event feeds; close the engine if the app built it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._hub is not None:
            await self._hub.aclose()
        await self.control.aclose()
        if self.owns_engine:
            await self.engine.aclose()

    # --- helpers -----------------------------------------------------------------

    def mask(self, data: Any) -> Any:
        """``data`` with every secret value the engine knows masked (its redactor's and
        those it resolved itself), in every string however deep."""
        masked = self.engine.mask(data)
        redactor = self.engine.redactor
        if redactor is not None and not callable(getattr(redactor, "redact_data", None)):
            masked = _walk(masked, self.engine.redact)  # a text-only redactor
        return masked

    def json(self, model: object, status: int = 200, **headers: str) -> Response:
        body = self.mask(serde.converter.unstructure(model))
        return Response(
            _dumps(body), status_code=status, media_type="application/json", headers=headers
        )

    def openapi(self) -> dict[str, Any]:
        if self._openapi is None:
            self._openapi = openapi_document(version=_version())
        return self._openapi

    # --- handlers ------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        storage = self.engine.storage
        if storage is not None:
            await storage.get("api_tokens", "healthz")
        return self.json(m.Health(status="ok", version=_version()))

    async def openapi_json(self, request: Request) -> Response:
        return JSONResponse(self.openapi())

    async def list_pipelines(self, request: Request) -> Response:
        found = []
        for name in self.catalog.names():
            try:
                data = self.catalog.load(name)
                pipeline = self.engine.validate(data)
            except TaskloomError:
                continue  # an invalid file is reported when someone submits it
            found.append(
                m.PipelineInfo(
                    name=name,
                    description=pipeline.description,
                    digest=pipeline_digest(pipeline),
                    inputs=dict(pipeline.inputs),
                )
            )
        return self.json(m.PipelineList(pipelines=found))

    async def submit_task(self, request: Request) -> Response:
        key = request.headers.get("idempotency-key")
        if key is not None and not (0 < len(key) <= MAX_IDEMPOTENCY_KEY):
            raise ApiError(
                400,
                "UsageError",
                f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} characters",
            )
        submit = self._submission(await read_json(request, self.settings.max_body_bytes))
        pipeline = (
            self.catalog.load(submit.pipeline)
            if isinstance(submit.pipeline, str)
            else submit.pipeline
        )
        done = await self.control.submit(
            pipeline,
            submit.inputs,
            idempotency_key=key,
            queue=submit.queue,
            priority=submit.priority,
        )
        url = _task_url(request, done.run_id)
        return self.json(
            m.TaskSubmitted(
                run_id=done.run_id,
                status=done.status,
                url=url,
                events_url=f"{url}/events",
            ),
            202,
            location=url,
        )

    async def list_tasks(self, request: Request) -> Response:
        query = request.query_params
        status = query.get("status")
        if status is not None and status not in RUN_STATUSES:
            raise UsageError(f"status must be one of {', '.join(RUN_STATUSES)}, got {status!r}")
        limit = int_param(query.get("limit"), "limit", DEFAULT_PAGE, 1, MAX_PAGE)
        since = time_param(query.get("since"), "since")
        until = time_param(query.get("until"), "until")
        after_key: str | None = None
        cursor = query.get("cursor")
        if cursor is not None:
            after_key, cursor_time = decode_cursor(cursor)
            until = cursor_time if until is None else min(until, cursor_time)
        store = self.control.runstore
        extra = 8
        while True:
            asked = limit + 1 + (extra if after_key is not None else 0)
            entries = await store.list_entries(
                status=status,  # type: ignore[arg-type]
                pipeline=query.get("pipeline"),
                since=since,
                until=until,
                limit=asked,
            )
            page = [e for e in entries if after_key is None or _key_of(e) > after_key]
            if len(page) > limit or len(entries) < asked:
                break
            extra *= 4
        more = len(page) > limit
        page = page[:limit]
        next_cursor = None
        if more and page:
            last = _key_of(page[-1])
            next_cursor = encode_cursor(last, index_time(last))
        return self.json(
            m.TaskList(
                tasks=[_summary(request, e) for e in page if isinstance(e, RunRecord)],
                damaged=[
                    m.DamagedTask(
                        run_id=e.run_id, error=str(e.error), url=_task_url(request, e.run_id)
                    )
                    for e in page
                    if isinstance(e, DamagedRun)
                ],
                next_cursor=next_cursor,
            )
        )

    async def get_task(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        store = self.control.runstore
        record = await store.load_run(run_id)
        finished = await store.finished_steps(run_id)
        steps = sorted(
            finished.values(),
            key=lambda s: (s.started_at, s.step_id, -1 if s.item is None else s.item),
        )
        url = _task_url(request, run_id)
        return self.json(
            m.TaskDetail(
                run_id=record.run_id,
                pipeline=record.pipeline_name,
                pipeline_digest=record.pipeline_digest,
                status=record.status,
                inputs=record.inputs,
                output=record.output,
                error=record.error,
                usage=record.usage,
                total_tokens=record.usage.total_tokens,
                usage_by_executor=dict(record.usage_by_executor),
                steps=[
                    m.StepView(
                        step_id=s.step_id,
                        item=s.item,
                        status=s.status,
                        output=s.output,
                        error=s.error,
                        usage=s.usage,
                        executor=s.executor,
                        attempts=s.attempts,
                        started_at=s.started_at,
                        finished_at=s.finished_at,
                        duration_s=max(0.0, s.finished_at - s.started_at),
                        cached=s.cached,
                    )
                    for s in steps
                ],
                steps_done=record.steps_done,
                created_at=record.created_at,
                started_at=record.started_at,
                finished_at=record.finished_at,
                duration_s=_duration(record),
                url=url,
                events_url=f"{url}/events",
                waiting=sorted(record.waiting) if record.status == "waiting" else [],
            )
        )

    async def task_events(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        await self.control.runstore.load_run(run_id)  # 404 before the stream starts
        after = event_after(request)
        return EventSourceResponse(
            self._stream(run_id, after),
            ping=self.settings.sse_ping_s,
            headers={"cache-control": "no-store", "x-accel-buffering": "no"},
        )

    async def _stream(self, run_id: str, after: int) -> AsyncIterator[bytes]:
        store = self.control.runstore
        async with self.hub.listen(run_id) as listener:
            # the record first: if it says the run ended, its outcome event was stored
            # in the same commit, so the history read next holds it
            record = await store.load_run(run_id)
            while True:
                page = await store.events(run_id, after=after, limit=READ_PAGE)
                for number, event in page:
                    yield self._sse(number, event)
                    after = number
                if len(page) < READ_PAGE:
                    break
            if record.status in FINISHED_STATUSES:
                return
            listener.follow(after)
            async for seen, event, encoded in listener.items():
                if seen is None:
                    yield encoded
                    continue
                if seen <= after:
                    continue  # already sent from the history
                yield encoded
                after = seen
                if isinstance(event, OUTCOMES):
                    return

    def _sse(self, number: int | None, event: Event) -> bytes:
        """One event as the bytes of a Server-Sent Event (its number as id, if stored)."""
        data = self.mask(serde.converter.unstructure(event, Event))
        return ServerSentEvent(
            data=_dumps(data).decode("utf-8"),
            event=_EVENT_TAG.get(type(event), "event"),
            id=None if number is None else str(number),
        ).encode()

    async def cancel_task(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        record, stopped = await self.control.cancel(run_id)
        detail = (
            f"run {run_id} is cancelled; POST .../resume continues it"
            if stopped
            else f"cancel of run {run_id} requested; its holder stops at its next lease renewal"
        )
        return self.json(m.TaskAction(run_id=run_id, status=record.status, detail=detail), 202)

    async def resume_task(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        record = await self.control.resume(run_id)
        return self.json(
            m.TaskAction(run_id=run_id, status=record.status, detail=f"run {run_id} resumed"),
            202,
        )

    async def provide_input(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        step_id = request.path_params["step_id"]
        body = await read_json(request, self.settings.max_body_bytes)
        if not isinstance(body, dict) or set(body) != {"value"}:
            raise PipelineInvalid(
                [
                    Problem(
                        path="$",
                        message='the body must be {"value": <the JSON value>}',
                        hint='an approval takes {"value": {"decision": "approve"}}',
                    )
                ]
            )
        by = getattr(request.state, "token_name", None)
        record = await self.control.provide(run_id, step_id, body["value"], by=by)
        detail = (
            f"run {run_id} waits at {', '.join(sorted(record.waiting))}"
            if record.status == "waiting"
            else f"the value of step {step_id!r} is recorded; run {run_id} is {record.status}"
        )
        return self.json(m.TaskAction(run_id=run_id, status=record.status, detail=detail), 202)

    async def delete_task(self, request: Request) -> Response:
        await self.control.delete(request.path_params["run_id"])
        return Response(status_code=204)

    # --- request bodies -------------------------------------------------------------

    def _submission(self, body: Any) -> m.SubmitRequest:
        """The submission in ``body``; PipelineInvalid listing every problem at once:
        the body's shape, and the pipeline's and inputs' own problems as
        ``taskloom validate`` reports them."""
        problems = shape_problems(body)
        if not problems:
            return m.SubmitRequest(**body)
        if isinstance(body, dict):
            raw, inputs = body.get("pipeline"), body.get("inputs")
            try:
                pipeline = self.catalog.load(raw) if isinstance(raw, str) else raw
                if isinstance(pipeline, dict):
                    self.engine.validate(pipeline, inputs if isinstance(inputs, dict) else None)
            except PipelineInvalid as exc:
                problems.extend(p for p in exc.problems if p not in problems)
        raise PipelineInvalid(problems)


def _dumps(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def _walk(data: Any, redact: Callable[[str], str]) -> Any:
    if isinstance(data, str):
        return redact(data)
    if isinstance(data, dict):
        return {redact(str(k)): _walk(v, redact) for k, v in data.items()}
    if isinstance(data, list):
        return [_walk(v, redact) for v in data]
    return data


_URL_MARK = "0runid0"
"""Stands for the run id in the cached task URL template (a valid, unlikely run id)."""
_task_paths: dict[int, tuple[weakref.ref[object], dict[str, tuple[str, str]]]] = {}


def _task_url(request: Request, run_id: str) -> str:
    """The path of run ``run_id`` (``url_for("get_task")``), from a template kept per
    router and root path: ``url_for`` resolves every route each time."""
    router = request.scope.get("router")
    if router is None or not run_id or any(c in run_id for c in "/%?#"):
        return str(request.url_for("get_task", run_id=run_id).path)
    seen = _task_paths.get(id(router))
    if seen is None or seen[0]() is not router:  # (an id is reused once its router is gone)
        if len(_task_paths) >= 64:
            _task_paths.clear()
        seen = _task_paths[id(router)] = (weakref.ref(router), {})
    templates = seen[1]
    root = str(request.scope.get("root_path", ""))
    template = templates.get(root)
    if template is None:
        path = str(request.url_for("get_task", run_id=_URL_MARK).path)
        head, mark, tail = path.partition(_URL_MARK)
        if not mark or _URL_MARK in tail:
            return str(request.url_for("get_task", run_id=run_id).path)
        if len(templates) >= 64:
            templates.clear()
        template = templates[root] = (head, tail)
    return f"{template[0]}{run_id}{template[1]}"


def _duration(record: RunRecord) -> float | None:
    if record.started_at is None or record.finished_at is None:
        return None
    return max(0.0, record.finished_at - record.started_at)


def _key_of(entry: RunRecord | DamagedRun) -> str:
    """Where ``entry`` stands in the run index (newest first)."""
    if isinstance(entry, DamagedRun):
        assert entry.index_key is not None  # listings always set it
        return entry.index_key
    return index_key(entry.run_id, entry.created_at)


def _summary(request: Request, record: RunRecord) -> m.TaskSummary:
    return m.TaskSummary(
        run_id=record.run_id,
        pipeline=record.pipeline_name,
        status=record.status,
        created_at=record.created_at,
        started_at=record.started_at,
        finished_at=record.finished_at,
        duration_s=_duration(record),
        usage=record.usage,
        total_tokens=record.usage.total_tokens,
        error=record.error,
        url=_task_url(request, record.run_id),
    )


def _guarded(api: TaskloomApi, op: Operation, handler: Handler) -> Handler:
    """``handler`` behind its operation's scope, with errors turned into problem details.

    (A plain function: Starlette treats any other callable as a raw ASGI app.)
    """

    async def endpoint(request: Request) -> Response:
        try:
            await api.ready()
            if op.scope is not None:
                token = await authorize(request, api.tokens, op.scope)
                request.state.token_name = token.name  # who provides an input's value
            return await handler(request)
        except ApiError as exc:
            body = problem(exc.status, exc.error, api.engine.redact(exc.detail), **exc.extra)
            return _problem_response(exc.status, body, exc.headers)
        except TaskloomError as exc:
            status, body = from_taskloom(exc, api.engine.redact)
            return _problem_response(status, body)

    return endpoint


def _by_method(handlers: Mapping[str, Handler]) -> Handler:
    """One endpoint for a path that dispatches on the method (HEAD is served as GET)."""

    async def endpoint(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await handlers[method](request)

    return endpoint


def _problem_response(
    status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> Response:
    return Response(
        _dumps(dict(body)), status_code=status, media_type=PROBLEM_JSON, headers=dict(headers or {})
    )


class _UiFiles:
    """The viewer's static files with a strict content security policy."""

    def __init__(self) -> None:
        self._files = StaticFiles(directory=UI_DIR, html=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.extend((k.encode(), v.encode()) for k, v in _UI_HEADERS.items())
                message = {**message, "headers": headers}
            await send(message)

        await self._files(scope, receive, send_with_headers)


def create_app(
    source: Engine | str | Path,
    *,
    settings: ServerSettings | None = None,
    tokens: TokenStore | None = None,
) -> Starlette:
    """The taskloom HTTP API as a Starlette app (see the module docstring).

    ``source`` is an ``Engine`` or the path of a ``taskloom.toml`` (its ``[server]``
    table gives the settings unless ``settings`` is passed). ``tokens`` defaults to a
    ``TokenStore`` over the engine's storage.
    """
    if isinstance(source, Engine):
        engine, owns = source, False
    elif isinstance(source, str | Path):
        from taskloom.sdk._config.toml import read_config

        path = Path(source)
        if settings is None:
            table = read_config(path).server
            settings = ServerSettings.from_table(table, base=path.parent, source=path)
        engine, owns = Engine.from_config(path), True
    else:
        raise UsageError(
            f"create_app takes an Engine or the path of a taskloom.toml, not "
            f"{type(source).__name__}"
        )
    api = TaskloomApi(
        engine, owns_engine=owns, settings=settings or ServerSettings(), tokens=tokens
    )
    routes: list[BaseRoute] = []
    by_path: dict[str, dict[str, Handler]] = {}
    names: dict[str, str] = {}
    for op in OPERATIONS:
        handler: Handler = getattr(api, "openapi_json" if op.id == "openapi" else op.id)
        by_path.setdefault(op.path, {})[op.method] = _guarded(api, op, handler)
        names.setdefault(op.path, op.id)  # the route is named after its first operation
    for route_path, methods in by_path.items():
        # one route per path, so a 405 lists every method the path has
        endpoint = _by_method(methods)
        routes.append(Route(route_path, endpoint, methods=list(methods), name=names[route_path]))
    routes.append(Mount("/ui", app=_UiFiles(), name="ui"))
    middleware: list[Middleware] = []
    if api.settings.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(api.settings.cors_origins),
                allow_methods=["GET", "POST", "DELETE"],
                allow_headers=["authorization", "content-type", "idempotency-key", "last-event-id"],
                expose_headers=["location"],
            )
        )

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await api.ready()
        try:
            yield
        finally:
            await api.aclose()

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        error = {404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status_code, "UsageError")
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404:
            detail = f"no such endpoint: {request.method} {request.url.path} (see /openapi.json)"
        elif exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow", "")
            detail = f"{request.method} is not allowed on {request.url.path}; allowed: {allowed}"
        return _problem_response(
            exc.status_code, problem(exc.status_code, error, detail), exc.headers
        )

    async def internal_error(request: Request, exc: Exception) -> Response:
        detail = api.engine.redact(f"internal error: {type(exc).__name__}: {exc}".splitlines()[0])
        return _problem_response(500, problem(500, "InternalError", detail))

    app = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error, Exception: internal_error},
    )
    app.state.taskloom = api
    return app


__all__ = ["TaskloomApi", "create_app"]
