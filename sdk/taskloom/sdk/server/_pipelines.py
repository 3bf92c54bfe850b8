"""Pipelines by name: the ``*.json`` files of the configured pipeline directories.

``POST /api/tasks`` may name a pipeline instead of sending it; the name is a file's
stem in one of the directories (the first directory that has it wins). Names are
plain (letters, digits, ``_``, ``-``, ``.``; no separators, no leading dot), so a
name can never reach a file outside the directories. A name is never handed to the
engine as text: the engine reads a string as a path or as JSON, so the catalog reads
the file and passes the parsed document.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from taskloom.contracts import PipelineInvalid, Problem

_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")
MAX_PIPELINE_FILE_BYTES = 4 * 1024 * 1024


class PipelineCatalog:
    """The named pipelines of a list of directories."""

    def __init__(self, dirs: Sequence[Path]) -> None:
        self.dirs = tuple(Path(d) for d in dirs)

    def names(self) -> list[str]:
        """Every pipeline name, sorted (a name in two directories counts once)."""
        found: set[str] = set()
        for directory in self.dirs:
            if not directory.is_dir():
                continue
            for path in directory.glob("*.json"):
                if path.is_file() and _NAME.fullmatch(path.stem):
                    found.add(path.stem)
        return sorted(found)

    def path_of(self, name: str) -> Path | None:
        """The file of pipeline ``name``, or None."""
        if _NAME.fullmatch(name) is None:
            return None
        for directory in self.dirs:
            path = directory / f"{name}.json"
            if path.is_file():
                return path
        return None

    def load(self, name: str, *, at: str = "$.pipeline") -> dict[str, Any]:
        """The parsed pipeline named ``name``; ``PipelineInvalid`` (path ``at``) if there is
        no such pipeline or its file is not a JSON object."""
        path = self.path_of(name)
        if path is None:
            known = self.names()
            hint = (
                f"known pipelines: {', '.join(known[:20])}"
                if known
                else "no pipeline directory is configured ([server] pipelines in taskloom.toml); "
                "send the pipeline itself as a JSON object"
            )
            raise PipelineInvalid(
                [Problem(path=at, message=f"no pipeline named {name!r}", hint=hint)]
            )
        try:
            size = path.stat().st_size
            if size > MAX_PIPELINE_FILE_BYTES:
                raise PipelineInvalid(
                    [
                        Problem(
                            path=at,
                            message=f"pipeline file of {name!r} is {size} bytes",
                            hint=f"the limit is {MAX_PIPELINE_FILE_BYTES} bytes",
                        )
                    ]
                )
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise PipelineInvalid(
                [
                    Problem(
                        path=at,
                        message=f"pipeline {name!r} cannot be read: {exc}",
                        hint="fix the file in the pipeline directory",
                    )
                ]
            ) from None
        if not isinstance(data, dict):
            raise PipelineInvalid(
                [
                    Problem(
                        path=at,
                        message=f"pipeline {name!r} is not a JSON object",
                        hint="a pipeline file holds one pipeline/v1 document",
                    )
                ]
            )
        return data
