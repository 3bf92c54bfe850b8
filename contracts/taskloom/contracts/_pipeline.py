"""The pipeline format ``"taskloom": "pipeline/v1"`` as data types.

A pipeline file is JSON; ``taskloom.contracts.serde`` turns it into these types
(refusing unknown fields, naming the path of each problem) and the JSON Schema
in ``taskloom.contracts.schema`` is generated from them. Templates inside
strings (``{{inputs.doc}}``, ``{{steps.summary.output}}``, ``{{item}}``) only
substitute references: nothing in a pipeline can run code.

A step's kind is told by its fields: ``prompt``/``messages`` make an LLM call,
``uses`` a plugin step, ``parallel`` a group, ``map`` a fan-out over a list,
``input`` a value a person (or a program) provides while the run waits, and
``approval`` an approve/reject decision with a comment (an ``input`` of a fixed
shape; a rejection fails the run with its comment).

Order: a step without ``needs`` depends on the step before it in the list (steps
run in order by default); a step with ``needs`` depends on exactly those steps
(``"needs": []`` makes it a root that starts at once). ``needs`` is therefore
``None`` when absent, which is different from an empty list.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import attrs

from taskloom.contracts._llm import Message, ResponseFormat

_v = attrs.validators

PIPELINE_FORMAT = "pipeline/v1"
STEP_ID = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]{0,63}")
InputType = Literal["string", "number", "integer", "boolean", "object", "array"]
INPUT_TYPES: tuple[str, ...] = ("string", "number", "integer", "boolean", "object", "array")
OnError = Literal["fail", "continue"]
OnTruncated = Literal["fail", "continue"]
OnTimeout = Literal["fail", "default"]


def _float(value: object) -> object:
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _tuple(value: object) -> object:
    if isinstance(value, list):
        return tuple(value)
    return value


_opt_float = _v.optional(_v.instance_of(float))
_opt_pos_float = _v.optional([_v.instance_of(float), _v.gt(0.0)])
_opt_int = _v.optional(_v.instance_of(int))
_opt_str = _v.optional(_v.instance_of(str))
_opt_bool = _v.optional(_v.instance_of(bool))
_opt_on_error = _v.optional(_v.in_(("fail", "continue")))
_step_id = [_v.instance_of(str), _v.matches_re(STEP_ID)]
_needs = _v.optional(_v.deep_iterable(_v.instance_of(str), _v.instance_of(tuple)))


@attrs.frozen(kw_only=True)
class InputSpec:
    """One declared input: its JSON type, whether it is required, a default."""

    type: InputType = attrs.field(default="string", validator=_v.in_(INPUT_TYPES))
    required: bool = attrs.field(default=True, validator=_v.instance_of(bool))
    default: Any = None
    description: str = attrs.field(default="", validator=_v.instance_of(str))


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """Exponential backoff with jitter, on retryable errors only.

    Attempt ``n`` (from 1) that fails waits ``min(max_delay_s, initial_delay_s *
    multiplier**(n-1))`` scaled by a random factor in ``[1 - jitter, 1]``; a
    provider's ``retry_after`` wins when it is longer. ``max_attempts`` counts
    the first attempt. A provider that asks for a wait longer than
    ``max_retry_wait_s`` (a ``Retry-After: 86400``) fails the step at once with
    ``RateLimited`` naming the wait, instead of sleeping through it.
    """

    max_attempts: int = attrs.field(default=3, validator=[_v.instance_of(int), _v.ge(1)])
    initial_delay_s: float = attrs.field(
        default=0.5, converter=_float, validator=[_v.instance_of(float), _v.ge(0.0)]
    )
    max_delay_s: float = attrs.field(
        default=30.0, converter=_float, validator=[_v.instance_of(float), _v.ge(0.0)]
    )
    multiplier: float = attrs.field(
        default=2.0, converter=_float, validator=[_v.instance_of(float), _v.ge(1.0)]
    )
    jitter: float = attrs.field(
        default=0.2, converter=_float, validator=[_v.instance_of(float), _v.ge(0.0), _v.le(1.0)]
    )
    max_retry_wait_s: float = attrs.field(
        default=120.0, converter=_float, validator=[_v.instance_of(float), _v.ge(0.0)]
    )


@attrs.frozen(kw_only=True)
class Budget:
    """What one run may spend, counted over every attempt and every resumed process.

    A call that would start once ``max_calls`` calls have started, or once the tokens
    spent reached ``max_tokens``, is not started: the run fails with
    ``BudgetExceeded`` naming what was spent. Calls already in flight may finish past
    ``max_tokens`` (a call's tokens are known only when it ends).
    """

    max_tokens: int | None = attrs.field(
        default=None, validator=_v.optional([_v.instance_of(int), _v.ge(1)])
    )
    max_calls: int | None = attrs.field(
        default=None, validator=_v.optional([_v.instance_of(int), _v.ge(1)])
    )


@attrs.frozen(kw_only=True)
class StepDefaults:
    """Settings every step inherits unless it sets its own."""

    executor: str | None = attrs.field(default=None, validator=_opt_str)
    model: str | None = attrs.field(default=None, validator=_opt_str)
    temperature: float | None = attrs.field(default=None, converter=_float, validator=_opt_float)
    max_tokens: int | None = attrs.field(default=None, validator=_opt_int)
    timeout_s: float | None = attrs.field(default=None, converter=_float, validator=_opt_pos_float)
    deadline_s: float | None = attrs.field(default=None, converter=_float, validator=_opt_pos_float)
    retry: RetryPolicy | None = attrs.field(
        default=None, validator=_v.optional(_v.instance_of(RetryPolicy))
    )
    on_error: OnError | None = attrs.field(default=None, validator=_opt_on_error)
    cache: bool | None = attrs.field(default=None, validator=_opt_bool)
    cache_ttl_s: float | None = attrs.field(
        default=None, converter=_float, validator=_opt_pos_float
    )
    cache_nondeterministic: bool | None = attrs.field(default=None, validator=_opt_bool)


@attrs.frozen(kw_only=True)
class LLMStep:
    """One LLM call: a ``prompt`` (a user message) or a list of ``messages``."""

    id: str = attrs.field(validator=_step_id)
    prompt: str | None = attrs.field(default=None, validator=_opt_str)
    system: str | None = attrs.field(default=None, validator=_opt_str)
    messages: tuple[Message, ...] | None = attrs.field(
        default=None,
        converter=_tuple,
        validator=_v.optional(_v.deep_iterable(_v.instance_of(Message), _v.instance_of(tuple))),
    )
    executor: str | None = attrs.field(default=None, validator=_opt_str)
    model: str | None = attrs.field(default=None, validator=_opt_str)
    temperature: float | None = attrs.field(default=None, converter=_float, validator=_opt_float)
    top_p: float | None = attrs.field(default=None, converter=_float, validator=_opt_float)
    max_tokens: int | None = attrs.field(default=None, validator=_opt_int)
    stop: tuple[str, ...] = attrs.field(
        default=(), converter=_tuple, validator=_v.deep_iterable(_v.instance_of(str))
    )
    seed: int | None = attrs.field(default=None, validator=_opt_int)
    response_format: ResponseFormat | None = attrs.field(
        default=None, validator=_v.optional(_v.instance_of(ResponseFormat))
    )
    stream: bool = attrs.field(default=False, validator=_v.instance_of(bool))
    needs: tuple[str, ...] | None = attrs.field(default=None, converter=_tuple, validator=_needs)
    timeout_s: float | None = attrs.field(default=None, converter=_float, validator=_opt_pos_float)
    deadline_s: float | None = attrs.field(default=None, converter=_float, validator=_opt_pos_float)
    retry: RetryPolicy | None = attrs.field(
        default=None, validator=_v.optional(_v.instance_of(RetryPolicy))
    )
    on_error: OnError | None = attrs.field(default=None, validator=_opt_on_error)
    cache: bool | None = attrs.field(default=None, validator=_opt_bool)
    extract_json: bool = attrs.field(default=False, validator=_v.instance_of(bool))
    """JSON steps: accept a reply with prose around its one JSON value (else it must be
    JSON alone, a Markdown code fence allowed)."""
    on_truncated: OnTruncated = attrs.field(
        default="continue", validator=_v.in_(("fail", "continue"))
    )
    """Text steps: a reply cut off by ``max_tokens`` succeeds marked truncated
    (``continue``) or fails with ``ReplyTruncated`` (``fail``). A JSON step always fails."""


@attrs.frozen(kw_only=True)
class PluginStep:
    """A step function registered by a plugin: ``uses`` names it, ``with`` feeds it."""

    id: str = attrs.field(validator=_step_id)
    uses: str = attrs.field(validator=_v.instance_of(str))
    with_: dict[str, Any] = attrs.field(factory=dict, validator=_v.instance_of(dict))
    needs: tuple[str, ...] | None = attrs.field(default=None, converter=_tuple, validator=_needs)
    timeout_s: float | None = attrs.field(default=None, converter=_float, validator=_opt_pos_float)
    deadline_s: float | None = attrs.field(default=None, converter=_float, validator=_opt_pos_float)
    retry: RetryPolicy | None = attrs.field(
        default=None, validator=_v.optional(_v.instance_of(RetryPolicy))
    )
    on_error: OnError | None = attrs.field(default=None, validator=_opt_on_error)


@attrs.frozen(kw_only=True)
class ParallelStep:
    """A group of steps that run at the same time; its output maps ids to outputs."""

    id: str = attrs.field(validator=_step_id)
    parallel: tuple[Step, ...] = attrs.field(converter=_tuple, validator=_v.instance_of(tuple))
    needs: tuple[str, ...] | None = attrs.field(default=None, converter=_tuple, validator=_needs)
    on_error: OnError | None = attrs.field(default=None, validator=_opt_on_error)


@attrs.frozen(kw_only=True)
class MapStep:
    """Run ``step`` once per element of the list ``map`` refers to, ``concurrency`` at once.

    Inside ``step`` the element is ``{{item}}`` (or the name given by ``as``) and its
    position ``{{index}}``; the output is the list of the body's outputs, in order.
    """

    id: str = attrs.field(validator=_step_id)
    map: str = attrs.field(validator=_v.instance_of(str))
    as_: str = attrs.field(default="item", validator=[_v.instance_of(str), _v.matches_re(STEP_ID)])
    concurrency: int = attrs.field(default=8, validator=[_v.instance_of(int), _v.ge(1)])
    step: LLMStep | PluginStep = attrs.field(validator=_v.instance_of((LLMStep, PluginStep)))
    needs: tuple[str, ...] | None = attrs.field(default=None, converter=_tuple, validator=_needs)
    on_error: OnError | None = attrs.field(default=None, validator=_opt_on_error)


@attrs.frozen(kw_only=True)
class InputRequest:
    """What an ``input`` step asks for: a prompt shown to whoever provides the value, and
    the JSON Schema (Draft 2020-12) the value must match (any JSON value when absent)."""

    prompt: str = attrs.field(validator=_v.instance_of(str))
    schema: dict[str, Any] | None = attrs.field(
        default=None, validator=_v.optional(_v.instance_of(dict))
    )


@attrs.frozen(kw_only=True)
class ApprovalRequest:
    """What an ``approval`` step asks: its value is ``{"decision": "approve"|"reject",
    "comment": "..."}``."""

    prompt: str = attrs.field(validator=_v.instance_of(str))


_on_timeout = _v.in_(("fail", "default"))


@attrs.frozen(kw_only=True)
class InputStep:
    """Wait for a value provided from outside (``engine.provide``, ``taskloom input``).

    The run pauses durably (status ``waiting``, no process or lease held) until a value
    matching ``input.schema`` is provided; the value is the step's output. Past
    ``timeout_s`` (counted from when the step began to wait), the next touch of the run
    fails it (``on_timeout: fail``) or goes on with ``default`` (``on_timeout: default``).
    """

    id: str = attrs.field(validator=_step_id)
    input: InputRequest = attrs.field(validator=_v.instance_of(InputRequest))
    needs: tuple[str, ...] | None = attrs.field(default=None, converter=_tuple, validator=_needs)
    timeout_s: float | None = attrs.field(default=None, converter=_float, validator=_opt_pos_float)
    on_timeout: OnTimeout = attrs.field(default="fail", validator=_on_timeout)
    default: Any = None
    on_error: OnError | None = attrs.field(default=None, validator=_opt_on_error)


@attrs.frozen(kw_only=True)
class ApprovalStep:
    """Wait for an approve/reject decision; a rejection fails the run with its comment.

    Shorthand for an ``input`` step whose value is ``{"decision": "approve"|"reject",
    "comment": "..."}``; ``timeout_s``, ``on_timeout`` and ``default`` as there.
    """

    id: str = attrs.field(validator=_step_id)
    approval: ApprovalRequest = attrs.field(validator=_v.instance_of(ApprovalRequest))
    needs: tuple[str, ...] | None = attrs.field(default=None, converter=_tuple, validator=_needs)
    timeout_s: float | None = attrs.field(default=None, converter=_float, validator=_opt_pos_float)
    on_timeout: OnTimeout = attrs.field(default="fail", validator=_on_timeout)
    default: Any = None
    on_error: OnError | None = attrs.field(default=None, validator=_opt_on_error)


APPROVAL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "decision": {"enum": ["approve", "reject"]},
        "comment": {"type": "string"},
    },
    "required": ["decision"],
    "additionalProperties": False,
}
"""The JSON Schema of an ``approval`` step's value."""


Step = LLMStep | PluginStep | ParallelStep | MapStep | InputStep | ApprovalStep
"""Any step of a pipeline."""


@attrs.frozen(kw_only=True)
class Pipeline:
    """A whole pipeline: declared inputs, step defaults, the steps, the output template."""

    taskloom: Literal["pipeline/v1"] = attrs.field(
        default=PIPELINE_FORMAT, validator=_v.in_((PIPELINE_FORMAT,))
    )
    name: str = attrs.field(validator=_v.instance_of(str))
    description: str = attrs.field(default="", validator=_v.instance_of(str))
    inputs: dict[str, InputSpec] = attrs.field(factory=dict, validator=_v.instance_of(dict))
    defaults: StepDefaults = attrs.field(
        factory=StepDefaults, validator=_v.instance_of(StepDefaults)
    )
    steps: tuple[Step, ...] = attrs.field(converter=_tuple, validator=_v.instance_of(tuple))
    output: Any = None
    budget: Budget | None = attrs.field(default=None, validator=_v.optional(_v.instance_of(Budget)))
