"""The ``taskloom`` command line.

Every command has ``--help`` and ``--json``. Exit codes: 0 success, 1 a failed
run or a failed check, 2 a usage error (bad arguments, bad config, bad input
file, an unknown run id). Errors are one line on stderr; ``--debug`` adds the
traceback. With ``--json`` stdout carries exactly one JSON document: the
command's result, or ``{"error": {"type", "message"}}`` (``events --follow``
is the one stream: one document per line). ``--json``, ``--debug`` and
``--config`` work before or after the command name.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import traceback
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from taskloom.contracts import (
    InputRejected,
    InvalidSecretName,
    NotWaiting,
    PipelineChanged,
    PipelineInvalid,
    RunNotFound,
    SecretNotFound,
    SubmissionConflict,
    TaskloomError,
    UnknownQueue,
    UsageError,
)
from taskloom.sdk import __version__
from taskloom.sdk._cli.context import CliContext, Output, clean
from taskloom.sdk._config.toml import load_config

Handler = Callable[[argparse.Namespace, CliContext], Awaitable[int]]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class CliUsageError(UsageError):
    """The command line itself was wrong."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises instead of exiting, so the shell survives bad input."""

    def error(self, message: str) -> NoReturn:
        raise CliUsageError(f"{self.prog}: {message}")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            sys.stderr.write(message)
        raise _ParserExit(status)


class _ParserExit(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


USAGE_ERRORS = (
    UsageError,
    PipelineInvalid,
    PipelineChanged,
    RunNotFound,
    SecretNotFound,
    InvalidSecretName,
    UnknownQueue,
    SubmissionConflict,
    InputRejected,
    NotWaiting,
)
"""Errors that mean the command line named something wrong: exit code 2."""


def _common(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    """The options every command takes; below the top, unset ones leave the top's value."""
    unset: Any = {} if top else {"default": argparse.SUPPRESS}
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON", **unset)
    parser.add_argument(
        "--debug", action="store_true", help="show full tracebacks on errors", **unset
    )
    parser.add_argument("--config", metavar="PATH", help="use this taskloom.toml", **unset)


def _missing_action(command: argparse.ArgumentParser, actions: Any) -> Handler:
    async def handler(args: argparse.Namespace, ctx: CliContext) -> int:
        raise CliUsageError(
            f"{command.prog}: choose an action: {', '.join(actions.choices)} "
            f"('{command.prog} --help' explains them)"
        )

    return handler


def build_parser() -> Parser:
    """The whole command tree (the shell uses the same one)."""
    from taskloom.sdk._cli import maintenance as _cli_maintenance
    from taskloom.sdk._cli import queue as _cli_queue
    from taskloom.sdk._cli import runs as _cli_runs
    from taskloom.sdk._cli import secrets as _cli_secrets
    from taskloom.sdk._cli import security as _cli_security
    from taskloom.sdk._cli import server as _cli_server
    from taskloom.sdk._cli import shell as _cli_shell

    parser = Parser(
        prog="taskloom",
        description="Run LLM task pipelines safely and durably.",
    )
    parser.add_argument("--version", action="version", version=f"taskloom {__version__}")
    _common(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    def add(name: str, help_text: str, handler: Handler) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=help_text, description=help_text)
        _common(command)
        command.set_defaults(handler=handler)
        return command

    def group(name: str, help_text: str) -> Any:
        command = sub.add_parser(name, help=help_text, description=help_text)
        _common(command)
        actions = command.add_subparsers(dest="action", metavar="ACTION", parser_class=Parser)
        command.set_defaults(handler=_missing_action(command, actions))
        return actions

    def add_to(grp: Any, name: str, help_text: str, handler: Handler) -> argparse.ArgumentParser:
        command: argparse.ArgumentParser = grp.add_parser(
            name, help=help_text, description=help_text
        )
        _common(command)
        command.set_defaults(handler=handler)
        return command

    _cli_runs.register(add)
    _cli_maintenance.register(add)
    _cli_queue.register(add)
    _cli_security.register(add, group, add_to)
    _cli_secrets.register(group, add_to)
    _cli_shell.register(add)
    _cli_server.register(add, group, add_to)

    bench = add("bench", "run the benchmark suite (from a taskloom checkout)", _bench)
    bench.add_argument("--quick", action="store_true", help="the short mode (under 2 minutes)")
    bench.add_argument("--output", metavar="DIR", help="where to write results (JSON, chart)")

    config_cmd = group("config", "show the configuration in effect")
    add_to(
        config_cmd, "show", "show the resolved configuration and where it came from", _config_show
    )
    return parser


def _checkout_root() -> Path | None:
    """The taskloom checkout this CLI runs from, or one containing the working directory."""
    for start in (Path.cwd(), Path(__file__).resolve()):
        for parent in (start, *start.parents):
            if (parent / "benchmarks" / "__main__.py").is_file() and (
                parent / "pyproject.toml"
            ).is_file():
                return parent
    return None


async def _bench(args: argparse.Namespace, ctx: CliContext) -> int:
    root = _checkout_root()
    if root is None:
        raise CliUsageError(
            "taskloom bench runs from a taskloom checkout (the benchmarks are not installed "
            "with the package): clone the repository and run it there"
        )
    output = Path(args.output).resolve() if args.output else root / "benchmarks" / "results"
    command = [sys.executable, "-m", "benchmarks", "--output", str(output)]
    if args.quick:
        command.append("--quick")
    # --json: the suite's table goes to stderr; stdout gets one document, its results.json
    if ctx.out.json_mode:
        process = await asyncio.create_subprocess_exec(
            *command, cwd=root, stdout=asyncio.subprocess.PIPE
        )
        assert process.stdout is not None
        async for line in process.stdout:
            sys.stderr.write(line.decode("utf-8", "replace"))
    else:
        process = await asyncio.create_subprocess_exec(*command, cwd=root)
    code = await process.wait()
    if ctx.out.json_mode:
        import json

        results = output / "results.json"
        try:
            data = json.loads(results.read_text(encoding="utf-8")) if code == 0 else None
        except (OSError, ValueError):
            data = None
        ctx.out.data({"exit_code": code, "results_path": str(results), "results": data})
    return code


async def _config_show(args: argparse.Namespace, ctx: CliContext) -> int:
    data = ctx.config.as_dict()
    ctx.out.data(data)
    return EXIT_OK


def one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, PipelineInvalid):
        problems = list(dict.fromkeys(str(problem) for problem in exc.problems))
        if len(problems) == 1:
            return f"pipeline is invalid: {problems[0]}"
        # several problems: keep them all, one per line
        lines = "\n".join(f"  - {problem}" for problem in problems)
        return f"pipeline is invalid ({len(problems)} problems):\n{lines}"
    return text.splitlines()[0]


async def dispatch(args: argparse.Namespace, ctx: CliContext) -> int:
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        raise CliUsageError("taskloom: give a command (taskloom --help lists them)")
    return await handler(args, ctx)


class _Terminated(Exception):
    """SIGTERM stopped the command (after it cancelled its run like Ctrl-C does)."""


@contextlib.contextmanager
def _sigterm_cancels_this_task() -> Iterator[list[bool]]:
    """While inside, SIGTERM cancels the current task as Ctrl-C does ``asyncio.run``'s:
    a run in progress is recorded cancelled, its lease released and the resume command
    printed. Yields a list that holds True once SIGTERM came."""
    came: list[bool] = []
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()

    def on_sigterm() -> None:
        came.append(True)
        if task is not None:
            task.cancel()

    try:
        loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, Windows
        yield came
        return
    try:
        yield came
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


async def run_command(args: argparse.Namespace, out: Output) -> int:
    config = load_config(getattr(args, "config", None))
    ctx = CliContext(config, out, debug=args.debug)
    # With --json, stdout belongs to the one document (Output holds the real stream):
    # anything else printing there -- a plugin's print(), a library -- goes to stderr.
    quiet = contextlib.redirect_stdout(sys.stderr) if out.json_mode else contextlib.nullcontext()
    with _sigterm_cancels_this_task() as terminated:
        try:
            with quiet:
                return await dispatch(args, ctx)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if terminated and task is not None and task.uncancel() == 0:
                raise _Terminated from None
            raise
        finally:
            await ctx.aclose()


def report_error(exc: BaseException, *, debug: bool, out: Output | None = None) -> int:
    """Print an error as one line (plus traceback with --debug); return the exit code.

    Secret values the command read are masked. In JSON mode the error is the
    command's one document on stdout, unless the command already printed its own.
    """
    usage = isinstance(exc, (*USAGE_ERRORS, FileNotFoundError))
    internal = not isinstance(exc, TaskloomError | OSError)
    code = EXIT_USAGE if usage else EXIT_FAILED
    masked = out.redact if out is not None else str

    def redact(text: str) -> str:  # masked, and inert on a terminal (a path with escapes)
        return clean(masked(text))

    if debug:
        sys.stderr.write(redact("".join(traceback.format_exception(exc))))
    message = redact(one_line(exc))
    if internal:
        message = f"taskloom: internal error: {type(exc).__name__}: {message}" + (
            "" if debug else " (run again with --debug for the traceback)"
        )
    if out is not None and out.json_mode and not out.documents:
        out.data({"error": {"type": type(exc).__name__, "message": message}})
    prefix = "" if message.startswith("taskloom") else "taskloom: error: "
    sys.stderr.write(f"{prefix}{message}\n")
    return code


class _CleanFormatter(logging.Formatter):
    """Log lines shown with --debug: terminal escapes in them (a plugin directory's name)
    are printed as escapes, never acted on."""

    def format(self, record: logging.LogRecord) -> str:
        return clean(super().format(record))


@contextlib.contextmanager
def _library_logs(debug: bool) -> Iterator[None]:
    """The CLI reports what went wrong itself; library log lines would say it twice.

    With ``--debug`` taskloom's log lines are shown on stderr, with their logger names.
    Both settings are undone on exit (``main`` may run inside another program).
    """
    logger = logging.getLogger("taskloom")
    if debug:
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_CleanFormatter("%(name)s: %(levelname)s: %(message)s"))
        level = logging.INFO
    else:
        handler, level = logging.NullHandler(), logging.CRITICAL
    previous_level, previous_propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)
        logger.propagate = previous_propagate


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``taskloom`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    out = Output(json_mode="--json" in argv)
    debug = "--debug" in argv
    with _library_logs(debug):
        return _main(argv, out, debug)


def _main(argv: list[str], out: Output, debug: bool) -> int:
    try:
        parser = build_parser()
        if not argv:
            parser.print_help()
            return EXIT_OK
        args = parser.parse_args(argv)
        out.json_mode, debug = args.json, args.debug
        if getattr(args, "handler", None) is None:
            raise CliUsageError("taskloom: give a command ('taskloom --help' lists them)")
        return asyncio.run(run_command(args, out))
    except _ParserExit as exc:
        return exc.status
    except KeyboardInterrupt:
        if out.json_mode and not out.documents:
            out.data({"error": {"type": "Interrupted", "message": "interrupted (Ctrl-C)"}})
        sys.stderr.write("taskloom: interrupted\n")
        return 130
    except _Terminated:
        if out.json_mode and not out.documents:
            out.data({"error": {"type": "Terminated", "message": "terminated (SIGTERM)"}})
        sys.stderr.write("taskloom: terminated (SIGTERM)\n")
        return 128 + signal.SIGTERM
    except Exception as exc:
        return report_error(exc, debug=debug, out=out)


if __name__ == "__main__":
    raise SystemExit(main())
