"""The ``taskloom`` command line and the interactive shell.

``main`` parses arguments and dispatches; ``context`` opens the configured engine;
``drive`` runs and resumes with progress (``progress``) and Ctrl-C handling; ``runs``
and ``history`` list and show runs and events; ``security`` and ``secrets`` manage keys,
trust, plugins and secrets; ``shell`` is the dev shell. The top of the sdk: it may
import everything, and nothing imports it.
"""
