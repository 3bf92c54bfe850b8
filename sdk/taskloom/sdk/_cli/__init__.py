"""The ``taskloom`` command line and the interactive shell.

``main`` parses arguments and dispatches; ``context`` opens the configured engine;
``drive`` runs and resumes with progress (``progress``) and Ctrl-C handling; ``runs``
and ``history`` list and show runs and events; ``security`` and ``secrets`` manage keys,
trust, plugins and secrets; ``shell`` is the dev shell. The top of the sdk: it may
import everything, and nothing imports it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main"]

CLI_EXTRA_HINT = (
    "taskloom: the command line needs the 'cli' extra ({missing} not installed): "
    "pip install 'taskloom[cli]'\n"
)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``taskloom`` console script.

    The SDK an application embeds does not pull in the CLI's libraries (rich,
    prompt_toolkit); without them the command says in one line how to get them.
    """
    missing = []
    for name in ("rich", "prompt_toolkit"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        sys.stderr.write(CLI_EXTRA_HINT.format(missing=", ".join(missing)))
        return 2
    from taskloom.sdk._cli.main import main as run_cli

    return run_cli(argv)
