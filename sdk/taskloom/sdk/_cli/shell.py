"""``taskloom shell``: the interactive dev shell.

The same commands as the CLI (without the ``taskloom`` prefix), completion of
commands, pipeline files, run ids and executor ids, persistent history in the
user's data directory, live progress of runs, and errors that never end the
shell: each is printed as one line (with the traceback under ``--debug``).
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import signal
import sys
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any

from prompt_toolkit import PromptSession
from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.history import FileHistory

from taskloom.contracts import TaskloomError
from taskloom.sdk._cli.context import CliContext, Output

EXIT_WORDS = {"exit", "quit", ":q"}
# options after which the next word is a run id, an executor id or a file
RUN_ID_COMMANDS = {"resume", "show", "events", "cancel", "delete"}
FILE_COMMANDS = {"run", "validate", "sign", "verify"}


class ShellCompleter(Completer):
    """Completes command words from the parser, then files, run ids or executor ids."""

    def __init__(self, parser: argparse.ArgumentParser, ctx: CliContext) -> None:
        self._tree = _command_tree(parser)
        self._ctx = ctx
        self.run_ids: list[str] = []

    def executor_ids(self) -> list[str]:
        """The configured executors and the built-in ``scripted`` one (``run`` adds it)."""
        return sorted({*self._ctx.config.executors, "scripted"})

    def get_completions(
        self, document: Document, complete_event: CompleteEvent
    ) -> Iterable[Completion]:
        text = document.text_before_cursor
        words = text.split()
        current = "" if text.endswith(" ") or not words else words[-1]
        done = words if text.endswith(" ") else words[:-1]
        for candidate in self._candidates(done, current):
            if candidate.startswith(current):
                yield Completion(candidate, start_position=-len(current))

    def _candidates(self, done: list[str], current: str) -> list[str]:
        node: dict[str, Any] = self._tree
        for word in done:
            child = node.get(word)
            if not isinstance(child, dict):
                break
            node = child
        else:
            if node:
                return sorted([*node, *(EXIT_WORDS if not done else [])])
        if done and done[-1] in ("--executor", "-e"):
            return self.executor_ids()
        command = done[0] if done else ""
        if command in RUN_ID_COMMANDS:
            return self.run_ids
        if command in FILE_COMMANDS or current.startswith((".", "/", "~")) or "/" in current:
            return _paths(current)
        return []


def _command_tree(parser: argparse.ArgumentParser) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                tree[name] = _command_tree(sub)
    return tree


def _paths(prefix: str) -> list[str]:
    base = Path(prefix).expanduser()
    directory = base if prefix.endswith("/") else base.parent
    try:
        entries = sorted(directory.iterdir()) if str(directory) else sorted(Path(".").iterdir())
    except OSError:
        return []
    out = []
    for entry in entries:
        shown = (
            str(entry) if str(directory) not in ("", ".") or prefix.startswith("./") else entry.name
        )
        if entry.is_dir():
            out.append(shown + "/")
        elif entry.suffix in (".json", ".toml"):
            out.append(shown)
    return out


async def _refresh_run_ids(ctx: CliContext, completer: ShellCompleter) -> None:
    """Run ids for completion; a store that cannot answer leaves none (never ends the shell)."""
    from taskloom.sdk._runs.store import RunStore

    try:
        store = RunStore(await ctx.storage())
        try:
            completer.run_ids = [r.run_id for r in await store.list_runs(limit=200)]
        finally:
            await store.aclose()
    except (TaskloomError, OSError):
        completer.run_ids = []  # completion is a convenience; the next command reports the error


async def _interruptible(command: Coroutine[Any, Any, int]) -> int | None:
    """Run one command; Ctrl-C cancels it (None) instead of ending the shell.

    At the prompt prompt_toolkit reads Ctrl-C as a key; while a command runs the
    terminal sends SIGINT, which asyncio.run would turn into the end of the
    whole shell. For the command's duration SIGINT cancels just its task.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(command)
    previous = signal.getsignal(signal.SIGINT)
    try:
        loop.add_signal_handler(signal.SIGINT, task.cancel)
    except (NotImplementedError, RuntimeError, ValueError):  # no signals here: plain await
        return await task
    try:
        return await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if not task.cancelled() or (current is not None and current.cancelling()):
            raise  # the shell itself is being cancelled
        return None
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


async def shell(args: argparse.Namespace, ctx: CliContext) -> int:
    from taskloom.sdk._cli.main import (
        EXIT_USAGE,
        CliUsageError,
        Parser,
        build_parser,
        dispatch,
        report_error,
    )

    parser: Parser = build_parser()
    completer = ShellCompleter(parser, ctx)
    ctx.config.history_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    session: PromptSession[str] = PromptSession(
        history=FileHistory(str(ctx.config.history_path)),
        completer=completer,
        complete_while_typing=False,
    )
    ctx.out.note("taskloom shell: type a command (help lists them), Tab completes, exit quits")
    await _refresh_run_ids(ctx, completer)
    while True:
        try:
            line = await session.prompt_async("taskloom> ")
        except KeyboardInterrupt:
            continue
        except EOFError:
            break
        line = line.strip()
        if not line:
            continue
        if line in EXIT_WORDS:
            break
        try:
            words = shlex.split(line)
        except ValueError as exc:  # unbalanced quotes
            ctx.out.note(f"taskloom: error: {exc}")
            continue
        if words and words[0] == "taskloom":
            words = words[1:]
        if words and words[0] in ("help", "?"):
            words = [*words[1:], "--help"]  # help COMMAND [ACTION]: that command's help
        if words and words[0] == "shell":
            ctx.out.note("already in the shell")
            continue
        try:
            parsed = parser.parse_args(words)
            if getattr(parsed, "config", None) not in (None, args.config):
                raise CliUsageError(
                    "--config is fixed for a shell session: start another with "
                    f"'taskloom --config {parsed.config} shell'"
                )
            previous = ctx.out
            ctx.out = Output(json_mode=parsed.json, redactor=previous.redactor)
            try:
                code = await _interruptible(dispatch(parsed, ctx))
            finally:
                ctx.out = previous
            if code is None:
                ctx.out.note("interrupted")
            elif code:
                ctx.out.note(f"(exit {code})")
        except KeyboardInterrupt:
            ctx.out.note("interrupted")
        except Exception as exc:
            from taskloom.sdk._cli.main import _ParserExit

            if isinstance(exc, _ParserExit):
                continue
            code = report_error(exc, debug=ctx.debug or "--debug" in line, out=ctx.out)
            if code not in (1, EXIT_USAGE):
                ctx.out.note(f"(exit {code})")
        sys.stdout.flush()
        await _refresh_run_ids(ctx, completer)
    return 0


def register(add: Callable[..., Any]) -> None:
    add("shell", "the interactive dev shell (completion, history, live progress)", shell)
