"""The ``taskloom`` command line.

Every command has ``--help`` and ``--json``. Exit codes: 0 success, 1 a failed
run or a failed check, 2 a usage error (bad arguments, bad config, bad input
file). Errors are one line on stderr; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import traceback
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from taskloom.contracts import (
    DecodeError,
    PipelineInvalid,
    TaskloomError,
    UsageError,
)
from taskloom.sdk import __version__
from taskloom.sdk._cli_config import load_config
from taskloom.sdk._cli_context import CliContext, Output

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


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("--config", metavar="PATH", help="use this taskloom.toml")


def build_parser() -> Parser:
    """The whole command tree (the shell uses the same one)."""
    from taskloom.sdk import _cli_runs, _cli_secrets, _cli_security, _cli_shell

    parser = Parser(
        prog="taskloom",
        description="Run LLM task pipelines safely and durably.",
    )
    parser.add_argument("--version", action="version", version=f"taskloom {__version__}")
    _common(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    def add(name: str, help_text: str, handler: Handler) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=help_text, description=help_text)
        _common(command)
        command.set_defaults(handler=handler)
        return command

    def group(name: str, help_text: str) -> Any:
        command = sub.add_parser(name, help=help_text, description=help_text)
        _common(command)
        return command.add_subparsers(dest="action", metavar="ACTION", parser_class=Parser)

    def add_to(grp: Any, name: str, help_text: str, handler: Handler) -> argparse.ArgumentParser:
        command: argparse.ArgumentParser = grp.add_parser(
            name, help=help_text, description=help_text
        )
        _common(command)
        command.set_defaults(handler=handler)
        return command

    _cli_runs.register(add)
    _cli_security.register(add, group, add_to)
    _cli_secrets.register(group, add_to)
    _cli_shell.register(add)

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
    command = [sys.executable, "-m", "benchmarks"]
    if args.quick:
        command.append("--quick")
    if args.output:
        command += ["--output", str(Path(args.output).resolve())]
    process = await asyncio.create_subprocess_exec(*command, cwd=root)
    return await process.wait()


async def _config_show(args: argparse.Namespace, ctx: CliContext) -> int:
    data = ctx.config.as_dict()
    ctx.out.data(data)
    return EXIT_OK


def one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, PipelineInvalid):
        return text  # its lines are the list of problems: keep them all
    return text.splitlines()[0]


async def dispatch(args: argparse.Namespace, ctx: CliContext) -> int:
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        raise CliUsageError("taskloom: give a command (taskloom --help lists them)")
    return await handler(args, ctx)


async def run_command(args: argparse.Namespace, out: Output) -> int:
    config = load_config(getattr(args, "config", None))
    ctx = CliContext(config, out, debug=args.debug)
    try:
        return await dispatch(args, ctx)
    finally:
        await ctx.aclose()


def report_error(exc: BaseException, *, debug: bool, json_mode: bool) -> int:
    """Print an error as one line (plus traceback with --debug); return the exit code."""
    usage = isinstance(exc, UsageError | DecodeError | PipelineInvalid | FileNotFoundError)
    code = EXIT_USAGE if usage else EXIT_FAILED
    if debug:
        traceback.print_exception(exc)
    message = one_line(exc)
    if json_mode:
        import json

        sys.stdout.write(
            json.dumps({"error": {"type": type(exc).__name__, "message": message}}) + "\n"
        )
    prefix = "" if message.startswith("taskloom") else "taskloom: error: "
    sys.stderr.write(f"{prefix}{message}\n")
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``taskloom`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    json_mode = "--json" in argv
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if getattr(args, "handler", None) is None:
            parser.print_help()
            return EXIT_OK if not argv else EXIT_USAGE
        return asyncio.run(run_command(args, Output(json_mode=args.json)))
    except _ParserExit as exc:
        return exc.status
    except KeyboardInterrupt:
        sys.stderr.write("taskloom: interrupted\n")
        return 130
    except (TaskloomError, OSError) as exc:
        return report_error(exc, debug=debug, json_mode=json_mode)
    except Exception as exc:  # a bug: say so in one line, the traceback with --debug
        if debug:
            traceback.print_exception(exc)
        sys.stderr.write(
            f"taskloom: internal error: {type(exc).__name__}: {one_line(exc)} "
            "(run again with --debug for the traceback)\n"
        )
        return EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
