"""The run viewer at /ui, driven in Debian's headless Chromium through Playwright.

Never downloads a browser: it uses /usr/bin/chromium (``apt-get install chromium``,
which ``.ci/run`` does) through ``executable_path``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from server_support import served_app

from taskloom.adapters.memory import MemoryStorage
from taskloom.contracts import CompletionChunk, CompletionRequest, CompletionResult, Usage
from taskloom.sdk import Engine, ExecutorRegistry

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
]

if not CHROMIUM.exists() and os.environ.get("TASKLOOM_REQUIRE_CHROMIUM"):
    raise RuntimeError("TASKLOOM_REQUIRE_CHROMIUM is set but /usr/bin/chromium is missing")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium is not installed (apt-get install chromium)"
)


class GatedExecutor:
    """Replies at once, except to prompts starting with 'wait', which wait for the gate."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()

    async def complete(self, request: CompletionRequest) -> CompletionResult:
        prompt = request.messages[-1].content
        if prompt.startswith("wait"):
            await self.gate.wait()
        return CompletionResult(
            text=f"reply to {prompt}", usage=Usage(prompt_tokens=5, completion_tokens=3)
        )

    async def stream(self, request: CompletionRequest) -> AsyncIterator[CompletionChunk]:
        result = await self.complete(request)
        yield CompletionChunk(delta=result.text, finish_reason="stop", usage=result.usage)

    async def aclose(self) -> None:
        """Nothing to release."""


async def test_viewer_lists_runs_opens_one_and_shows_new_events_live(tmp_path: Path) -> None:
    """With a read token the page lists the runs, opens one (steps, output, timings),
    and shows an event within a second of it being stored; no request leaves the
    server, no script error; a screenshot is written."""
    from playwright.async_api import async_playwright

    executor = GatedExecutor()
    registry = ExecutorRegistry()
    registry.register("gated", executor)
    engine = Engine(storage=MemoryStorage(), registry=registry)
    done_pipeline = {
        "taskloom": "pipeline/v1",
        "name": "quick",
        "steps": [{"id": "only", "prompt": "hello"}],
        "output": {"answer": "{{steps.only.output}}"},
    }
    gated_pipeline = {
        "taskloom": "pipeline/v1",
        "name": "gated",
        "steps": [{"id": "first", "prompt": "go"}, {"id": "held", "prompt": "wait here"}],
    }
    async with served_app(engine) as s:
        finished = await s.submit(done_pipeline)
        await s.finished(finished["run_id"])
        running = await s.submit(gated_pipeline)
        run_id = running["run_id"]
        store = engine.runstore
        assert store is not None

        async def stored_types() -> list[str]:
            return [type(e).__name__ for _n, e in await store.events(run_id)]

        while (
            "StepStarted" not in await stored_types()
            or (await stored_types()).count("StepStarted") < 2
        ):
            await asyncio.sleep(0.02)

        base = str(s.client.base_url).rstrip("/")
        requests: list[str] = []
        errors: list[str] = []
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
            try:
                page = await browser.new_page(viewport={"width": 1400, "height": 900})
                page.on("request", lambda request: requests.append(request.url))
                page.on("pageerror", lambda error: errors.append(str(error)))
                await page.goto(f"{base}/ui/#token={s.tokens['read']}")
                for run in (finished["run_id"], run_id):
                    await page.wait_for_selector(f'#runs tr[data-run-id="{run}"]', timeout=10_000)
                assert "#token" not in page.url  # the token left the address bar
                await page.click(f'#runs tr[data-run-id="{finished["run_id"]}"]')
                await page.wait_for_selector('#steps tr[data-step-id="only"]', timeout=10_000)
                assert "reply to hello" in (await page.inner_text("#run-output"))
                assert "succeeded" in await page.inner_text("#run-status")
                await page.wait_for_selector(
                    '#events li[data-type="run.succeeded"]', timeout=10_000
                )

                await page.click(f'#runs tr[data-run-id="{run_id}"]')
                await page.wait_for_selector('#events li[data-type="run.started"]', timeout=10_000)
                started = page.locator('#events li[data-type="step.started"]')
                await started.nth(1).wait_for(timeout=10_000)
                assert await page.locator('#events li[data-type="step.succeeded"]').count() == 1
                executor.gate.set()  # the held step finishes: new events are stored now
                while (await stored_types()).count("StepSucceeded") < 2:
                    await asyncio.sleep(0.005)
                succeeded = page.locator('#events li[data-type="step.succeeded"]')
                await succeeded.nth(1).wait_for(timeout=1_000)  # within a second of being stored
                # the page itself refreshes the run: its step table shows the finished step
                await page.wait_for_selector('#steps tr[data-step-id="held"]', timeout=10_000)
                await page.locator("#run-status", has_text="succeeded").wait_for(timeout=10_000)
                await page.wait_for_selector(
                    '#events li[data-type="run.succeeded"]', timeout=10_000
                )
                shot = tmp_path / "viewer.png"
                await page.screenshot(path=str(shot), full_page=True)
            finally:
                await browser.close()
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        keep = os.environ.get("TASKLOOM_ARTIFACTS")
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, Path(keep) / "viewer.png")
        assert errors == []
        assert requests and all(url.startswith(base) for url in requests), requests


async def test_a_run_opened_just_after_another_refreshes_itself_to_its_end() -> None:
    """Opened while a refresh of the run shown before was still pending, a run's own
    refreshes (its finished step, its outcome, its stream's end) load that run, not the
    one before: the step table and status show how it ended. The page's clock is paused
    so the pending refresh is certain, not a matter of timing."""
    from playwright.async_api import async_playwright

    executor = GatedExecutor()
    registry = ExecutorRegistry()
    registry.register("gated", executor)
    engine = Engine(storage=MemoryStorage(), registry=registry)
    quick = {
        "taskloom": "pipeline/v1",
        "name": "quick",
        "steps": [{"id": "only", "prompt": "hello"}],
    }
    gated = {
        "taskloom": "pipeline/v1",
        "name": "gated",
        "steps": [{"id": "first", "prompt": "go"}, {"id": "held", "prompt": "wait here"}],
    }
    async with served_app(engine) as s:
        done = (await s.submit(quick))["run_id"]
        await s.finished(done)
        run_id = (await s.submit(gated))["run_id"]
        store = engine.runstore
        assert store is not None
        while [type(e).__name__ for _n, e in await store.events(run_id)].count("StepStarted") < 2:
            await asyncio.sleep(0.02)
        base = str(s.client.base_url).rstrip("/")
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
            try:
                page = await browser.new_page()
                await page.clock.install()
                await page.goto(f"{base}/ui/#token={s.tokens['read']}")
                await page.wait_for_selector(f'#runs tr[data-run-id="{run_id}"]', timeout=10_000)
                await page.clock.pause_at(int(time.time() * 1000) + 60_000)  # no timer fires
                await page.click(f'#runs tr[data-run-id="{done}"]')
                await page.wait_for_selector('#steps tr[data-step-id="only"]', timeout=10_000)
                # its stream ended: a refresh of the finished run is pending now
                await page.locator("#live", has_text="ended").wait_for(timeout=10_000)
                await page.click(f'#runs tr[data-run-id="{run_id}"]')
                held_started = page.locator('#events li[data-type="step.started"]').nth(1)
                await held_started.wait_for(timeout=10_000)
                executor.gate.set()
                ended = page.locator('#events li[data-type="run.succeeded"]')
                await ended.wait_for(timeout=10_000)
                await page.locator("#live", has_text="ended").wait_for(timeout=10_000)
                assert await page.locator('#steps tr[data-step-id="held"]').count() == 0
                await page.clock.run_for(1_000)  # the pending refresh fires
                await page.wait_for_selector('#steps tr[data-step-id="held"]', timeout=10_000)
                await page.locator("#run-status", has_text="succeeded").wait_for(timeout=10_000)
                assert await page.inner_text("#run-id") == run_id
            finally:
                await browser.close()


async def test_viewer_without_a_token_shows_no_runs(tmp_path: Path) -> None:
    """Opened without a token the page asks for one and lists nothing; a wrong token
    shows the API's refusal."""
    from playwright.async_api import async_playwright

    async with served_app() as s:
        await s.finished((await s.submit())["run_id"])
        base = str(s.client.base_url).rstrip("/")
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
            try:
                page = await browser.new_page()
                await page.goto(f"{base}/ui/")
                await page.locator("#status-line", has_text="token").wait_for(timeout=10_000)
                assert await page.locator("#runs tbody tr").count() == 0
                await page.fill("#token", "tlk_0000000000000000_" + "A" * 43)
                await page.click("#token-form button")
                await page.locator("#status-line.error").wait_for(timeout=10_000)
                assert await page.locator("#runs tbody tr").count() == 0
            finally:
                await browser.close()
