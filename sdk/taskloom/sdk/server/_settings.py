"""How the API server behaves: pipeline directories, body cap, CORS, event polling.

``ServerSettings`` is built in code or read from the ``[server]`` table of
``taskloom.toml``::

    [server]
    pipelines = ["pipelines"]      # directories of NAME.json pipelines, submittable by name
    max_body_bytes = 1048576       # larger request bodies get 413
    cors_origins = []              # browser origins allowed to call the API (none: CORS off)
    poll_interval_s = 0.5          # how often a watched run's new events are looked for
                                   # when this process does not run it
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from taskloom.contracts import UsageError

_v = attrs.validators
SERVER_KEYS = frozenset({"pipelines", "max_body_bytes", "cors_origins", "poll_interval_s"})


def _paths(value: object) -> tuple[Path, ...]:
    if isinstance(value, str | Path):
        return (Path(value),)
    if isinstance(value, list | tuple):
        return tuple(Path(v) for v in value)
    raise TypeError(f"pipeline_dirs must be a list of paths, got {value!r}")


def _positive(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise UsageError(f"{attribute.name} must be a positive number, got {value!r}")


@attrs.frozen(kw_only=True)
class ServerSettings:
    """Settings of ``create_app`` (see the module docstring for each)."""

    pipeline_dirs: tuple[Path, ...] = attrs.field(default=(), converter=_paths)
    max_body_bytes: int = attrs.field(default=1024 * 1024, validator=_positive)
    cors_origins: tuple[str, ...] = attrs.field(
        default=(),
        converter=tuple,
        validator=_v.deep_iterable(_v.instance_of(str), _v.instance_of(tuple)),
    )
    poll_interval_s: float = attrs.field(default=0.5, validator=_positive)
    sse_ping_s: float = attrs.field(default=15.0, validator=_positive)
    """Seconds between keep-alive comments on an idle event stream."""
    cancel_wait_s: float = attrs.field(default=15.0, validator=_positive)
    """How long ``POST .../cancel`` waits for the run's holder to stop it before it
    answers (the cancel goes on either way)."""

    @classmethod
    def from_table(cls, table: Mapping[str, Any], *, base: Path, source: object) -> ServerSettings:
        """Settings from a ``[server]`` table; relative paths are relative to ``base``."""
        if not isinstance(table, Mapping):
            raise UsageError(f"{source}: [server] must be a table")
        unknown = sorted(set(table) - SERVER_KEYS)
        if unknown:
            raise UsageError(
                f"{source}: unknown key(s) {', '.join(unknown)} in [server]; known: "
                f"{', '.join(sorted(SERVER_KEYS))}"
            )
        dirs = table.get("pipelines", [])
        if isinstance(dirs, str):
            dirs = [dirs]
        if not isinstance(dirs, list) or not all(isinstance(d, str) and d for d in dirs):
            raise UsageError(f"{source}: server.pipelines must be a list of directory paths")
        origins = table.get("cors_origins", [])
        if not isinstance(origins, list) or not all(isinstance(o, str) for o in origins):
            raise UsageError(f"{source}: server.cors_origins must be a list of origins")
        max_body = table.get("max_body_bytes", 1024 * 1024)
        if isinstance(max_body, bool) or not isinstance(max_body, int) or max_body < 1:
            raise UsageError(f"{source}: server.max_body_bytes must be a positive integer")
        poll = table.get("poll_interval_s", 0.5)
        if isinstance(poll, bool) or not isinstance(poll, int | float) or poll <= 0:
            raise UsageError(f"{source}: server.poll_interval_s must be a positive number")
        paths = []
        for d in dirs:
            path = Path(d).expanduser()
            paths.append(path if path.is_absolute() else base / path)
        return cls(
            pipeline_dirs=tuple(paths),
            max_body_bytes=max_body,
            cors_origins=tuple(origins),
            poll_interval_s=float(poll),
        )
