"""``ExecutorConformance``: the test suite every ``LLMExecutor`` must pass.

Subclass it and supply two factories::

    class TestMyExecutor(ExecutorConformance):
        unsupported_failures = frozenset({"authentication"})

        def open_executor(self):
            return MyExecutor.connect(...)            # answers normally

        def open_failing_executor(self, failure):
            return MyExecutor.connect(...fault...)   # fails with that kind of failure

``failure`` is one of ``FAILURE_KINDS``; list in ``unsupported_failures`` the kinds
your backend cannot be made to produce and those tests are skipped with a reason.
Set ``deterministic = False`` if the same request may get different replies; the
checks that compare replies are then skipped. Each test is named after the
invariant of ``LLMExecutor``'s docstring it checks (``test_ex3_...`` checks EX3).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, ClassVar, cast

import pytest

from taskloom.contracts import (
    FINISH_REASONS,
    AuthenticationFailed,
    CompletionChunk,
    CompletionRequest,
    CompletionResult,
    ExecutorError,
    ExecutorTimeout,
    InvalidRequest,
    LLMExecutor,
    Message,
    ProviderUnavailable,
    RateLimited,
    Usage,
    UsageError,
)
from taskloom.contracts.testing._naming import current_test, naming_invariant
from taskloom.contracts.testing._recording import Recording, Trail

__all__ = ["ExecutorConformance"]

FAILURE_KINDS: dict[str, type[ExecutorError]] = {
    "rate_limited": RateLimited,
    "timeout": ExecutorTimeout,
    "unavailable": ProviderUnavailable,
    "invalid_request": InvalidRequest,
    "authentication": AuthenticationFailed,
}
"""Each kind of failure ``open_failing_executor`` is asked for, and the error it must raise."""

_RETRYABLE = {"rate_limited", "timeout", "unavailable"}

Body = Callable[[LLMExecutor], Awaitable[None]]


MAX_CHUNKS = 100_000
"""More chunks than any reply in the suite has: a stream that goes on is broken."""


async def _collect(executor: LLMExecutor, request: CompletionRequest) -> list[CompletionChunk]:
    """Every chunk of a stream; fails (instead of looping forever) past ``MAX_CHUNKS``."""
    chunks: list[CompletionChunk] = []
    async for chunk in executor.stream(request):
        chunks.append(chunk)
        assert len(chunks) <= MAX_CHUNKS, (
            f"stream yielded more than {MAX_CHUNKS} chunks for a short reply: it never ends"
        )
    return chunks


def _check_result(result: object, what: str) -> CompletionResult:
    assert isinstance(result, CompletionResult), f"{what} returned {result!r}"
    assert isinstance(result.text, str), f"{what}: text is {type(result.text).__name__}"
    assert result.finish_reason in FINISH_REASONS, f"{what}: finish reason {result.finish_reason}"
    assert isinstance(result.usage, Usage), f"{what}: usage is {result.usage!r}"
    assert result.usage.prompt_tokens >= 0 and result.usage.completion_tokens >= 0
    assert result.latency_s >= 0.0, f"{what}: latency {result.latency_s}"
    return result


def _check_chunks(chunks: Sequence[object], what: str) -> list[CompletionChunk]:
    assert chunks, f"{what} yielded no chunk at all"
    typed: list[CompletionChunk] = []
    for position, chunk in enumerate(chunks):
        assert isinstance(chunk, CompletionChunk), f"{what} yielded {chunk!r}"
        assert chunk.index == position, (
            f"{what}: chunk #{position} has index {chunk.index}; indexes must run 0, 1, 2 ..."
        )
        assert isinstance(chunk.delta, str), f"{what}: delta {chunk.delta!r}"
        last = position == len(chunks) - 1
        if not last:
            assert chunk.finish_reason is None, (
                f"{what}: chunk #{position} of {len(chunks)} has a finish reason"
            )
            assert chunk.usage is None, f"{what}: chunk #{position} of {len(chunks)} has usage"
        typed.append(chunk)
    final = typed[-1]
    assert final.finish_reason is None or final.finish_reason in FINISH_REASONS
    if final.usage is not None:
        assert final.usage.prompt_tokens >= 0 and final.usage.completion_tokens >= 0
    return typed


class ExecutorConformance:
    """Subclass, implement the two factories, and pytest checks every invariant EX1-EX6."""

    unsupported_failures: ClassVar[frozenset[str]] = frozenset()
    deterministic: ClassVar[bool] = True
    concurrency: ClassVar[int] = 8
    timeout_s: ClassVar[float] = 60.0
    """Upper bound for one test's calls, so that a hanging backend fails instead of blocking."""

    def open_executor(self) -> AbstractAsyncContextManager[LLMExecutor]:
        """An async context manager yielding an executor that answers normally."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement open_executor() to run the executor "
            "conformance suite"
        )

    def open_failing_executor(self, failure: str) -> AbstractAsyncContextManager[LLMExecutor]:
        """An async context manager yielding an executor whose every call fails with ``failure``.

        ``failure`` is a key of ``FAILURE_KINDS``; kinds listed in
        ``unsupported_failures`` are never asked for.
        """
        raise NotImplementedError(
            f"{type(self).__name__} must implement open_failing_executor(failure) to run the "
            "executor conformance suite"
        )

    def make_request(self, text: str) -> CompletionRequest:
        """The request the suite sends for ``text``; override to set a model and the like."""
        # ``messages`` is typed loosely: attrs' ``converter=tuple`` hides the element type.
        messages: Any = (
            Message(role="system", content="Repeat the user's message exactly."),
            Message(role="user", content=text),
        )
        return CompletionRequest(
            messages=messages,
            temperature=0.0,
            seed=7,
            max_tokens=64,
        )

    # helpers -------------------------------------------------------------------------

    def _run(
        self, body: Body, opener: Callable[[], AbstractAsyncContextManager[LLMExecutor]]
    ) -> None:
        trail = Trail()

        async def main() -> None:
            async with opener() as executor:
                await body(cast(LLMExecutor, Recording(executor, trail)))

        async def bounded() -> None:
            await asyncio.wait_for(main(), self.timeout_s)

        with naming_invariant(LLMExecutor, current_test(), trail):
            asyncio.run(bounded())

    def _check_failure(self, failure: str) -> None:
        if failure in self.unsupported_failures:
            pytest.skip(f"the executor declares it cannot be made to produce {failure!r}")
        expected = FAILURE_KINDS[failure]
        request = self.make_request("this call must fail")

        def check(exc: BaseException, how: str) -> None:
            assert isinstance(exc, expected), (
                f"{how} with failure {failure!r} raised {type(exc).__name__}: {exc}; "
                f"expected {expected.__name__}"
            )
            assert exc.retryable is (failure in _RETRYABLE), (
                f"{type(exc).__name__}.retryable is {exc.retryable}"
            )
            if isinstance(exc, RateLimited):
                assert exc.retry_after is None or exc.retry_after >= 0, exc.retry_after

        async def body(executor: LLMExecutor) -> None:
            try:
                result = await executor.complete(request)
            except Exception as exc:
                check(exc, "complete")
            else:
                pytest.fail(f"complete with failure {failure!r} returned {result!r}")
            try:
                await _collect(executor, request)
            except Exception as exc:
                check(exc, "stream")
            else:
                pytest.fail(f"stream with failure {failure!r} finished without an error")

        self._run(body, lambda: self.open_failing_executor(failure))

    # EX1 -----------------------------------------------------------------------------

    def test_ex1_complete_returns_a_valid_result(self) -> None:
        """``complete`` returns a CompletionResult with a known finish reason, usage and latency."""

        async def body(executor: LLMExecutor) -> None:
            for text in ("hello", "Say something short.", "ünïcødé ✓"):
                _check_result(
                    await executor.complete(self.make_request(text)), f"complete {text!r}"
                )

        self._run(body, self.open_executor)

    # EX2 -----------------------------------------------------------------------------

    def test_ex2_stream_chunks_are_numbered_and_finish_last(self) -> None:
        """Chunks are indexed 0, 1, 2 ...; only the last may carry finish reason and usage."""

        async def body(executor: LLMExecutor) -> None:
            for text in ("hello", "a longer message that should come back in several pieces"):
                _check_chunks(await _collect(executor, self.make_request(text)), f"stream {text!r}")

        self._run(body, self.open_executor)

    def test_ex2_streamed_text_is_the_reply(self) -> None:
        """The deltas joined equal the text ``complete`` returns for the same request."""
        if not self.deterministic:
            pytest.skip("the executor declares deterministic = False")

        async def body(executor: LLMExecutor) -> None:
            request = self.make_request("a message long enough to be streamed in several chunks")
            whole = _check_result(await executor.complete(request), "complete")
            chunks = _check_chunks(await _collect(executor, request), "stream")
            assert "".join(c.delta for c in chunks) == whole.text

        self._run(body, self.open_executor)

    def test_ex2_non_ascii_text_streams_intact(self) -> None:
        """Accents, CJK, emoji and combining marks stream as the same text ``complete`` gives."""
        if not self.deterministic:
            pytest.skip("the executor declares deterministic = False")

        async def body(executor: LLMExecutor) -> None:
            text = "Grüße, 日本語のテキスト, emoji 🎉👩\u200d💻 and e\u0301 — ünïcødé ✓"
            request = self.make_request(text)
            whole = _check_result(await executor.complete(request), "complete")
            assert "\ufffd" not in whole.text, f"complete mangled the text: {whole.text!r}"
            chunks = _check_chunks(await _collect(executor, request), "stream")
            joined = "".join(c.delta for c in chunks)
            assert joined == whole.text, (
                f"stream of a non-ASCII reply joined to {joined!r}; complete returned "
                f"{whole.text!r}"
            )

        self._run(body, self.open_executor)

    # EX3 -----------------------------------------------------------------------------

    def test_ex3_rate_limit_is_rate_limited(self) -> None:
        """A rate limit raises RateLimited (retryable, retry_after None or >= 0)."""
        self._check_failure("rate_limited")

    def test_ex3_timeout_is_executor_timeout(self) -> None:
        """A call that takes too long raises ExecutorTimeout (retryable)."""
        self._check_failure("timeout")

    def test_ex3_outage_is_provider_unavailable(self) -> None:
        """An outage raises ProviderUnavailable (retryable)."""
        self._check_failure("unavailable")

    def test_ex3_refused_request_is_invalid_request(self) -> None:
        """A refused request raises InvalidRequest (not retryable)."""
        self._check_failure("invalid_request")

    def test_ex3_refused_credentials_are_authentication_failed(self) -> None:
        """Refused credentials raise AuthenticationFailed (not retryable)."""
        self._check_failure("authentication")

    # EX4 -----------------------------------------------------------------------------

    def test_ex4_concurrent_calls_do_not_mix(self) -> None:
        """Concurrent ``complete`` and ``stream`` calls all succeed, each with its own reply."""

        async def body(executor: LLMExecutor) -> None:
            requests = [self.make_request(f"message number {n}") for n in range(self.concurrency)]
            alone = [await executor.complete(r) for r in requests] if self.deterministic else []
            together = await asyncio.gather(*(executor.complete(r) for r in requests))
            streamed = await asyncio.gather(*(_collect(executor, r) for r in requests))
            for n, result in enumerate(together):
                _check_result(result, f"concurrent complete #{n}")
            texts = [
                "".join(c.delta for c in _check_chunks(chunks, "stream")) for chunks in streamed
            ]
            if self.deterministic:
                assert [r.text for r in together] == [r.text for r in alone]
                assert texts == [r.text for r in alone]

        self._run(body, self.open_executor)

    # EX5 -----------------------------------------------------------------------------

    def test_ex5_closing_a_stream_early_releases_it(self) -> None:
        """A stream closed after its first chunk is released and the executor keeps working."""

        async def body(executor: LLMExecutor) -> None:
            request = self.make_request("a message long enough to be streamed in several chunks")
            for _ in range(3):
                iterator: Any = executor.stream(request)
                first = await anext(iterator)
                assert isinstance(first, CompletionChunk) and first.index == 0
                assert hasattr(iterator, "aclose"), "the stream's iterator has no aclose()"
                await iterator.aclose()
            _check_result(await executor.complete(request), "complete after early closes")
            _check_chunks(await _collect(executor, request), "stream after early closes")

        self._run(body, self.open_executor)

    # EX6 -----------------------------------------------------------------------------

    def test_ex6_calls_raise_after_aclose(self) -> None:
        """After ``aclose()`` complete and stream raise UsageError; closing again is fine."""

        async def body(executor: LLMExecutor) -> None:
            request = self.make_request("hello")
            await executor.complete(request)
            await executor.aclose()
            with pytest.raises(UsageError):
                await executor.complete(request)
            with pytest.raises(UsageError):
                await _collect(executor, request)
            await executor.aclose()
            await executor.aclose()

        self._run(body, self.open_executor)
