"""The ``taskloom`` command line (placeholder until the CLI issue lands)."""

from __future__ import annotations

import sys

from taskloom.sdk import __version__


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``taskloom`` console script."""
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("--version", "-V"):
        print(f"taskloom {__version__}")
        return 0
    print("usage: taskloom [--version]")
    return 0 if not args or args[0] in ("-h", "--help") else 2
