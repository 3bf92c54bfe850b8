"""Loading and validating pipelines: every problem at once, before anything runs.

Two passes. The *structural* pass walks the raw JSON against the attrs types of
``taskloom.contracts._pipeline`` and reports every unknown field (the converter
alone stops at the first), then structures each piece (defaults, each input,
each step) separately so that one bad step does not hide the problems of the
next. The *semantic* pass checks what types cannot: duplicate ids, ``needs``
naming unknown steps, cycles, references to steps that are not certain to have
finished (see ``taskloom.sdk._pipeline.graph``), bad templates, unknown executors and plugin steps,
and the inputs given. Each problem carries a JSON path and a hint.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import attrs

from taskloom.contracts import (
    ApprovalRequest,
    ApprovalStep,
    Budget,
    DecodeError,
    InputRequest,
    InputSpec,
    InputStep,
    LLMStep,
    MapStep,
    ParallelStep,
    Pipeline,
    PipelineInvalid,
    PluginStep,
    Problem,
    Step,
    StepDefaults,
    serde,
)
from taskloom.contracts._pipeline import PIPELINE_FORMAT
from taskloom.sdk._pipeline.checks import (
    check_semantics,
    inputs_object,
    resolve_inputs,
    unfit_json,
)

_RENAMES = {"with_": "with", "as_": "as"}
_STEP_KINDS: tuple[tuple[str, type[Any]], ...] = (
    ("parallel", ParallelStep),
    ("map", MapStep),
    ("uses", PluginStep),
    ("prompt", LLMStep),
    ("messages", LLMStep),
    ("input", InputStep),
    ("approval", ApprovalStep),
)


def json_fields(cls: type[Any]) -> tuple[str, ...]:
    """The JSON field names of an attrs class (``with_`` is ``with``, ``as_`` is ``as``)."""
    return tuple(_RENAMES.get(f.name, f.name) for f in attrs.fields(cls))


def key_path(path: str, key: str) -> str:
    """``$.a`` + ``b`` -> ``$.a.b``; keys that are not identifiers use ``['...']``."""
    return f"{path}.{key}" if key.isidentifier() else f"{path}[{key!r}]"


def step_kind(data: Mapping[str, Any]) -> type[Any] | None:
    """The step class the fields of ``data`` select, as the converter decides it."""
    for key, cls in _STEP_KINDS:
        if key in data:
            return cls
    return None


class _Structural:
    """Collects unknown-field problems and strips those fields for structuring."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def unknown(self, data: Mapping[str, Any], cls: type[Any], path: str) -> dict[str, Any]:
        known = json_fields(cls)
        clean: dict[str, Any] = {}
        for key, value in data.items():
            if key in known:
                clean[key] = value
                continue
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known fields: {', '.join(known)}"
            self.problems.append(
                Problem(path=key_path(path, str(key)), message=f"unknown field {key!r}", hint=hint)
            )
        return clean

    def step(self, data: Any, path: str) -> Any:
        if not isinstance(data, Mapping):
            return data
        cls = step_kind(data)
        if cls is None:
            return data
        clean = self.unknown(data, cls, path)
        if cls is ParallelStep and isinstance(clean.get("parallel"), list):
            clean["parallel"] = [
                self.step(inner, f"{path}.parallel[{i}]")
                for i, inner in enumerate(clean["parallel"])
            ]
        if cls is MapStep and "step" in clean:
            body = clean["step"]
            if isinstance(body, Mapping) and step_kind(body) in (InputStep, ApprovalStep):
                self.problems.append(
                    Problem(
                        path=f"{path}.step",
                        message="a map's step cannot be an input or approval step (the run "
                        "waits at one step, not at one per item)",
                        hint="ask once before the map, or give the map a list as input",
                    )
                )
            clean["step"] = self.step(body, f"{path}.step")
        if cls is LLMStep:
            self._llm_parts(clean, path)
        if cls is InputStep and isinstance(clean.get("input"), Mapping):
            clean["input"] = self.unknown(clean["input"], InputRequest, f"{path}.input")
        if cls is ApprovalStep and isinstance(clean.get("approval"), Mapping):
            clean["approval"] = self.unknown(clean["approval"], ApprovalRequest, f"{path}.approval")
        return clean

    def _llm_parts(self, clean: dict[str, Any], path: str) -> None:
        from taskloom.contracts import Message, ResponseFormat, RetryPolicy

        if isinstance(clean.get("messages"), list):
            clean["messages"] = [
                self.unknown(m, Message, f"{path}.messages[{i}]") if isinstance(m, Mapping) else m
                for i, m in enumerate(clean["messages"])
            ]
        if isinstance(clean.get("response_format"), Mapping):
            clean["response_format"] = self.unknown(
                clean["response_format"], ResponseFormat, f"{path}.response_format"
            )
        if isinstance(clean.get("retry"), Mapping):
            clean["retry"] = self.unknown(clean["retry"], RetryPolicy, f"{path}.retry")


def _decode_problem(exc: DecodeError, prefix: str) -> Problem:
    path = prefix + exc.path[1:] if exc.path.startswith("$") else prefix
    message = str(exc)
    if message.startswith(exc.path + ": "):
        message = message[len(exc.path) + 2 :]
    message = message.replace("unknown error (", "invalid value (")
    return Problem(path=path, message=message, hint="fix the value's type or spelling")


def _structure(data: Any, cls: Any, path: str, problems: list[Problem]) -> Any:
    try:
        return serde.structure(data, cls)
    except DecodeError as exc:
        problems.append(_decode_problem(exc, path))
        return None


def _structure_pipeline(data: Any) -> tuple[Pipeline | None, list[Problem], list[Any]]:
    """Structure ``data`` piece by piece; return the pipeline (if whole), problems, steps."""
    problems: list[Problem] = []
    if not isinstance(data, Mapping):
        return None, [Problem(path="$", message="a pipeline must be a JSON object")], []
    passes = _Structural()
    clean = passes.unknown(data, Pipeline, "$")
    if clean.get("taskloom") != PIPELINE_FORMAT:
        problems.append(
            Problem(
                path="$.taskloom",
                message=f"missing or unsupported format {clean.get('taskloom')!r}",
                hint=f'start the file with "taskloom": "{PIPELINE_FORMAT}"',
            )
        )
    for key in ("name", "steps"):
        if key not in clean:
            problems.append(Problem(path=f"$.{key}", message=f"missing required field {key!r}"))
    name = clean.get("name", "")
    if not isinstance(name, str):
        problems.append(Problem(path="$.name", message="the name must be text"))
    description = clean.get("description", "")
    if not isinstance(description, str):
        problems.append(Problem(path="$.description", message="the description must be text"))
    defaults = StepDefaults()
    if "defaults" in clean:
        raw_defaults = clean["defaults"]
        if isinstance(raw_defaults, Mapping):
            raw_defaults = passes.unknown(raw_defaults, StepDefaults, "$.defaults")
        defaults = _structure(raw_defaults, StepDefaults, "$.defaults", problems) or defaults
    budget: Budget | None = None
    if clean.get("budget") is not None:
        raw_budget = clean["budget"]
        if isinstance(raw_budget, Mapping):
            raw_budget = passes.unknown(raw_budget, Budget, "$.budget")
        budget = _structure(raw_budget, Budget, "$.budget", problems)
    inputs: dict[str, InputSpec] = {}
    raw_inputs = clean.get("inputs", {})
    if not isinstance(raw_inputs, Mapping):
        problems.append(Problem(path="$.inputs", message="inputs must be an object"))
    else:
        for input_name, spec in raw_inputs.items():
            ipath = f"$.inputs[{input_name!r}]"
            if isinstance(spec, Mapping):
                spec = passes.unknown(spec, InputSpec, ipath)
            built = _structure(spec, InputSpec, ipath, problems)
            if built is not None:
                inputs[input_name] = built
    steps: list[Any] = []
    raw_steps = clean.get("steps", [])
    if not isinstance(raw_steps, list):
        problems.append(Problem(path="$.steps", message="steps must be a list"))
        raw_steps = []
    for index, raw in enumerate(raw_steps):
        spath = f"$.steps[{index}]"
        if isinstance(raw, Mapping) and step_kind(raw) is None:
            problems.append(
                Problem(
                    path=spath,
                    message="cannot tell what kind of step this is",
                    hint="give it 'prompt' or 'messages' (LLM call), 'uses' (plugin step), "
                    "'parallel' (group), 'map' (fan-out), 'input' (a value provided while "
                    "the run waits) or 'approval' (approve or reject)",
                )
            )
            steps.append(raw)
            continue
        built = _structure(passes.step(raw, spath), Step, spath, problems)
        steps.append(built if built is not None else raw)
    problems = passes.problems + problems
    if problems:
        return None, problems, steps
    pipeline = Pipeline(
        name=name,
        description=description,
        inputs=inputs,
        defaults=defaults,
        steps=tuple(steps),
        output=clean.get("output"),
        budget=budget,
    )
    return pipeline, [], steps


def _read_source(source: str | Path | Mapping[str, Any] | Pipeline) -> Any:
    """A Pipeline as is; a path or JSON text parsed; a mapping as is.

    Anything else (a list, a number, None: what ``json.loads`` of a pipeline file
    may give) is returned as is, for the structural pass to refuse with a path.
    """
    if isinstance(source, Pipeline | Mapping):
        return source
    if not isinstance(source, str | Path):
        return source
    if isinstance(source, str) and source.lstrip().startswith(("{", "[")):
        return _parse_json(source, "the pipeline text")
    try:
        path = Path(source)
        text = path.read_text(encoding="utf-8")
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path, or not UTF-8
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise PipelineInvalid(
            [Problem(path="$", message=f"cannot read {source}: {reason}", hint="check the path")]
        ) from None
    return _parse_json(text, str(path))


def _invalid_json(where: str, reason: str) -> PipelineInvalid:
    return PipelineInvalid(
        [Problem(path="$", message=f"{where} is not valid JSON: {reason}", hint="fix the JSON")]
    )


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _parse_json(text: str, where: str) -> Any:
    """Parse strict JSON: NaN and Infinity, too deep nesting and too long integers are refused."""
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise _invalid_json(where, f"{exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    except RecursionError:
        raise _invalid_json(where, "it is nested too deeply") from None
    except ValueError as exc:  # NaN/Infinity, or an integer of more than 4,300 digits
        raise _invalid_json(where, str(exc).split(";")[0]) from None


def _refuse_unfit(data: Any) -> None:
    """Refuse a pipeline document JSON cannot hold, before any pass walks it.

    Too deep nesting would exhaust the stack of the passes that follow; NaN,
    huge integers and lone surrogates would fail later, when the run stores it.
    """
    found = unfit_json(data)
    if found:
        raise PipelineInvalid(
            [Problem(path=where, message=reason, hint=hint) for where, reason, hint in found]
        )


def _usable_specs(raw_inputs: Any) -> dict[str, InputSpec]:
    """The input specs of a broken pipeline that structure on their own."""
    usable: dict[str, InputSpec] = {}
    if not isinstance(raw_inputs, Mapping):
        return usable
    for name, spec in raw_inputs.items():
        if not isinstance(name, str) or not isinstance(spec, Mapping):
            continue
        try:
            usable[name] = serde.structure(dict(spec), InputSpec)
        except DecodeError:
            continue
    return usable


def load_pipeline(source: str | Path | Mapping[str, Any] | Pipeline) -> Pipeline:
    """Read a pipeline from a file path, JSON text, a dict or a Pipeline; check its structure.

    Raises PipelineInvalid listing every structural problem. The checks that
    need the executors and plugin steps are done by :func:`validate_pipeline`.
    """
    data = _read_source(source)
    if isinstance(data, Pipeline):
        return data
    _refuse_unfit(data)
    pipeline, problems, _steps = _structure_pipeline(data)
    if pipeline is None:
        raise PipelineInvalid(problems)
    return pipeline


def validate_pipeline(
    pipeline_data: str | Path | Mapping[str, Any] | Pipeline,
    *,
    registry: Any,
    plugin_steps: Collection[str] = (),
    inputs: Mapping[str, Any] | None = None,
) -> Pipeline:
    """Check a pipeline completely (and ``inputs``, if given); return it structured.

    ``registry`` is an ``ExecutorRegistry`` (its ``ids()`` and ``default_id`` are
    used); ``plugin_steps`` the names plugin steps may ``use``. Raises
    PipelineInvalid with every problem found, each with its JSON path and a hint.
    """
    data = _read_source(pipeline_data)
    pipeline: Pipeline | None
    problems: list[Problem]
    if isinstance(data, Pipeline):
        pipeline, problems, steps = data, [], list(data.steps)
    else:
        _refuse_unfit(data)
        pipeline, problems, steps = _structure_pipeline(data)
    given: Mapping[str, Any] | None = None if inputs is None else inputs_object(inputs)
    if pipeline is not None:
        declared: Mapping[str, InputSpec] = pipeline.inputs
        defaults, output = pipeline.defaults, pipeline.output
    else:
        raw_inputs = data.get("inputs") if isinstance(data, Mapping) else None
        declared = {k: InputSpec() for k in raw_inputs} if isinstance(raw_inputs, Mapping) else {}
        defaults = StepDefaults()
        output = data.get("output") if isinstance(data, Mapping) else None
        if given is not None:
            # Check the inputs against the specs that did structure, so that their
            # problems are reported beside the pipeline's (an input whose spec is
            # broken is not checked: that problem is reported already).
            usable = _usable_specs(raw_inputs)
            declared_names = set(declared)
            problems += resolve_inputs(
                usable,
                {k: v for k, v in given.items() if k in usable or k not in declared_names},
            )[1]
            given = None
    problems += check_semantics(
        steps,
        declared_inputs=declared,
        defaults=defaults,
        output=output,
        executor_ids=list(registry.ids()),
        default_executor=registry.default_id,
        plugin_steps=plugin_steps,
    )
    if given is not None and pipeline is not None:
        problems += resolve_inputs(pipeline.inputs, given)[1]
    if problems or pipeline is None:
        raise PipelineInvalid(problems)
    return pipeline
