"""The one error hierarchy of taskloom.

Every error a caller can see is a ``TaskloomError``; backend exceptions
(``sqlite3``, ``httpx``, ``keyring``, ``cryptography``...) are translated at the
adapter boundary with ``raise ... from exc``. Messages say what was wrong and
what to do; context lives in keyword-only attributes.

    TaskloomError
    ├── UsageError                  the API was misused (use after close, bad argument)
    ├── InternalError               taskloom itself failed (a bug); the run stays resumable
    ├── DecodeError                 data did not match a type (names the field path)
    │   └── RecordDamaged           a stored run record does not decode (a damaged store)
    ├── StorageError
    │   ├── ConflictError           a version check failed; nothing changed
    │   ├── InvalidKey              a key, namespace or stream name is not allowed
    │   ├── ValueTooLarge           a value is over the documented limit
    │   ├── StorageUnavailable      the store cannot be reached or written now
    │   │   ├── StorageFull         the disk (or quota) under the store is full
    │   │   ├── StorageReadOnly     the store accepts reads only (a standby, a read-only mount)
    │   │   └── StoragePermissionDenied  the store refused this user (login, grants, file mode)
    │   └── StorageCorrupted        the location holds something that is not ours
    ├── ExecutorError
    │   ├── RetryableError          worth another attempt
    │   │   ├── RateLimited         the provider asked us to slow down
    │   │   ├── ExecutorTimeout     the call took too long
    │   │   ├── ProviderUnavailable the provider failed or could not be reached
    │   │   └── MalformedResponse   the reply was not what the protocol promises
    │   └── PermanentError          retrying cannot help
    │       ├── InvalidRequest      the provider refused the request itself
    │       ├── AuthenticationFailed
    │       ├── QuotaExceeded       the account is out of quota or credit (429 insufficient_quota)
    │       ├── RetryForbidden      the provider said not to retry (x-should-retry: false)
    │       ├── Refused             the model declined to answer (carries its refusal text)
    │       └── ReplyTruncated      the reply was cut off (max_tokens) where a whole one is needed
    ├── SecretError
    │   ├── SecretNotFound
    │   ├── InvalidSecretName
    │   ├── ReadOnlySecretStore
    │   ├── SecretStoreUnavailable  no usable store; fail closed
    │   └── SecretDecryptionFailed  wrong passphrase or damaged file
    ├── SecurityError               a signature, manifest or trust check failed
    ├── PipelineError
    │   ├── PipelineInvalid         validation found problems (all of them listed)
    │   ├── UnknownExecutor
    │   ├── StepFailed
    │   ├── RunCancelled
    │   ├── RunNotFound
    │   ├── RunHeld                 another process holds the run's lease
    │   │   └── LeaseLost           this process lost the lease of a run it was running
    │   ├── PipelineChanged         resume with a pipeline that differs from the run's
    │   ├── BudgetExceeded          a call would have started beyond the run's budget
    │   ├── InputRejected           a provided value does not match the input step's schema
    │   ├── NotWaiting              the step is not waiting for a value (not now, or never)
    │   │   ├── NotAnInputStep      the step is not an input or approval step
    │   │   └── AlreadyProvided     the step already has its value
    │   ├── InputTimedOut           an input step waited past its timeout_s
    │   └── ApprovalRejected        an approval step was rejected
    ├── QueueError
    │   ├── UnknownQueue            a submission or worker named a queue nobody defined
    │   └── SubmissionConflict      an idempotency key or run id is taken by another run
    └── PluginError
        ├── CapabilityDenied        a plugin asked for what its manifest did not declare
        └── PluginIncompatible      a plugin needs a newer taskloom than the one running
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs


class TaskloomError(Exception):
    """Base of every error taskloom raises on purpose."""


class UsageError(TaskloomError):
    """The API was used wrongly: use after close, an argument out of range."""


class InternalError(TaskloomError):
    """taskloom's own code failed (a bug, not the step's): the run is marked failed,
    the traceback is logged, and the run can be resumed once the cause is fixed."""


class DecodeError(TaskloomError):
    """Data did not match the expected type; ``path`` names where."""

    def __init__(self, message: str, *, path: str = "$") -> None:
        super().__init__(message)
        self.path = path


class RecordDamaged(DecodeError):
    """A record read back from the store does not decode: the store was damaged, or the
    record was written by a newer taskloom. Not the caller's input: an HTTP API answers
    it with 500. The message names the record and what to do (delete it, restore it)."""


# --- storage ---------------------------------------------------------------


class StorageError(TaskloomError):
    """A storage adapter could not do what was asked."""


class ConflictError(StorageError):
    """A version check failed; nothing was changed."""

    def __init__(
        self,
        message: str,
        *,
        namespace: str | None = None,
        key: str | None = None,
        expected: int | None = None,
        actual: int | None = None,
    ) -> None:
        super().__init__(message)
        self.namespace = namespace
        self.key = key
        self.expected = expected
        self.actual = actual


class InvalidKey(StorageError):
    """A key, namespace or stream name is empty, too long or not valid text."""


class ValueTooLarge(StorageError):
    """A value is over the adapter's documented size limit."""

    def __init__(self, message: str, *, size: int | None = None, limit: int | None = None) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit


class StorageUnavailable(StorageError):
    """The store cannot be reached or written now (busy, read-only, disk full)."""


class StorageFull(StorageUnavailable):
    """The disk or quota under the store is full; data written before is intact."""


class StorageReadOnly(StorageUnavailable):
    """The store accepts reads only now (a hot standby, a read-only mount or setting)."""


class StoragePermissionDenied(StorageUnavailable):
    """The store refused this user: a login, a grant or a file permission is missing."""


class StorageCorrupted(StorageError):
    """The location holds data that is damaged or was not written by taskloom."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


# --- executors -------------------------------------------------------------


class ExecutorError(TaskloomError):
    """An LLM executor failed; ``retryable`` says whether another attempt may help."""

    retryable: bool = False

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RetryableError(ExecutorError):
    """A failure that another attempt may cure; ``retry_after`` is how long the provider
    asked us to wait first (seconds), if it said."""

    retryable = True

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


class RateLimited(RetryableError):
    """The provider asked us to slow down; ``retry_after`` is in seconds, if given."""

    def __init__(
        self, message: str, *, retry_after: float | None = None, status: int | None = 429
    ) -> None:
        super().__init__(message, status=status, retry_after=retry_after)


class ExecutorTimeout(RetryableError):
    """The call did not finish within its timeout."""


class ProviderUnavailable(RetryableError):
    """The provider failed (5xx), reset the connection or could not be reached."""


class MalformedResponse(RetryableError):
    """The reply was not what the protocol promises (bad JSON, a cut-off stream)."""


class PermanentError(ExecutorError):
    """A failure no retry can cure; the step fails at once."""


class InvalidRequest(PermanentError):
    """The provider refused the request itself (bad field, context too long...)."""

    def __init__(
        self, message: str, *, status: int | None = None, context_length_exceeded: bool = False
    ) -> None:
        super().__init__(message, status=status)
        self.context_length_exceeded = context_length_exceeded


class AuthenticationFailed(PermanentError):
    """The credentials were refused (401, 403): check the API key's secret."""


class QuotaExceeded(PermanentError):
    """The account has no quota or credit left (429 ``insufficient_quota``): waiting
    does not help, adding credit or raising the quota does."""


class RetryForbidden(PermanentError):
    """The provider marked this failure as not worth retrying (``x-should-retry: false``)."""


class Refused(PermanentError):
    """The model declined to answer; ``refusal`` holds what it said instead."""

    def __init__(self, message: str, *, refusal: str = "", status: int | None = None) -> None:
        super().__init__(message, status=status)
        self.refusal = refusal


class ReplyTruncated(PermanentError):
    """The reply was cut off (``finish_reason`` ``length``: ``max_tokens`` or the context
    window) where the step needs a whole one; raise ``max_tokens`` or shorten the task."""

    def __init__(self, message: str, *, finish_reason: str = "length") -> None:
        super().__init__(message)
        self.finish_reason = finish_reason


# --- secrets ---------------------------------------------------------------


class SecretError(TaskloomError):
    """A secret store could not do what was asked."""


class SecretNotFound(SecretError):
    """No secret of that name; set it with ``taskloom secrets set NAME``."""

    def __init__(self, message: str, *, name: str | None = None) -> None:
        super().__init__(message)
        self.name = name


class InvalidSecretName(SecretError):
    """A secret name is empty, too long or uses characters outside [A-Za-z0-9_.-]."""


class ReadOnlySecretStore(SecretError):
    """The store cannot be written (the environment store, for example)."""


class SecretStoreUnavailable(SecretError):
    """No usable secret store: taskloom fails closed rather than fall back to plaintext."""


class SecretDecryptionFailed(SecretError):
    """The secret file could not be decrypted: wrong passphrase or a damaged file."""


# --- security --------------------------------------------------------------


class SecurityError(TaskloomError):
    """A signature, manifest, trust or integrity check failed; nothing was loaded."""


# --- pipelines and runs ------------------------------------------------------


@attrs.frozen(kw_only=True)
class Problem:
    """One thing wrong with a pipeline: where (a JSON path), what, and a hint."""

    path: str = attrs.field(validator=attrs.validators.instance_of(str))
    message: str = attrs.field(validator=attrs.validators.instance_of(str))
    hint: str = attrs.field(default="", validator=attrs.validators.instance_of(str))

    def __str__(self) -> str:
        text = f"{self.path}: {self.message}"
        return f"{text} ({self.hint})" if self.hint else text


class PipelineError(TaskloomError):
    """A pipeline or a run of it could not proceed."""


class PipelineInvalid(PipelineError):
    """Validation found problems; every one of them is in ``problems``."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"pipeline is invalid ({len(self.problems)} problem(s)):\n{lines}")


class UnknownExecutor(PipelineError):
    """No executor is registered under that id; ``known`` lists the ids that are."""

    def __init__(self, executor_id: str, known: Sequence[str]) -> None:
        self.executor_id = executor_id
        self.known = tuple(sorted(known))
        listed = ", ".join(self.known) or "none registered"
        super().__init__(
            f"unknown executor {executor_id!r}; known executors: {listed}. "
            "Register it in the ExecutorRegistry or taskloom.toml"
        )


class StepFailed(PipelineError):
    """A step failed and its ``on_error`` policy stopped the run."""

    def __init__(self, message: str, *, step_id: str, cause_type: str = "") -> None:
        super().__init__(message)
        self.step_id = step_id
        self.cause_type = cause_type


class RunCancelled(PipelineError):
    """The run was cancelled; what finished is kept and it can be resumed."""


class RunNotFound(PipelineError):
    """No run with that id in this store."""


class RunHeld(PipelineError):
    """Another process holds this run's lease; try again after it expires."""

    def __init__(self, message: str, *, holder: str = "", expires_at: float = 0.0) -> None:
        super().__init__(message)
        self.holder = holder
        self.expires_at = expires_at


class LeaseLost(RunHeld):
    """This process lost the lease of a run it was running: another process has it now.

    Raised by the run's next write (every write carries a version check on the lease
    in the same commit, so none of a stale holder's writes land) and before its next
    executor call. The run is not failed: its new holder goes on with it.
    """


class PipelineChanged(PipelineError):
    """The pipeline differs from the one the run began with; resume is refused."""


class BudgetExceeded(PipelineError):
    """A call would have started beyond the run's budget; it was not started."""

    def __init__(
        self,
        message: str,
        *,
        spent_tokens: int,
        spent_calls: int,
        max_tokens: int | None,
        max_calls: int | None,
    ) -> None:
        super().__init__(message)
        self.spent_tokens = spent_tokens
        self.spent_calls = spent_calls
        self.max_tokens = max_tokens
        self.max_calls = max_calls


class InputRejected(PipelineError):
    """A value provided to an input step does not match its schema; nothing was recorded.

    ``path`` is the JSON path of the first violation (``$`` is the value itself,
    ``$.items[2]`` inside it); ``problems`` lists every violation as ``path: message``.
    """

    def __init__(
        self, message: str, *, run_id: str, step_id: str, path: str, problems: Sequence[str]
    ) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.step_id = step_id
        self.path = path
        self.problems = tuple(problems)


class NotWaiting(PipelineError):
    """The step is not waiting for a value: the run is not waiting there (now)."""

    def __init__(self, message: str, *, run_id: str, step_id: str, status: str = "") -> None:
        super().__init__(message)
        self.run_id = run_id
        self.step_id = step_id
        self.status = status


class NotAnInputStep(NotWaiting):
    """The step is not an ``input`` or ``approval`` step (or the pipeline has no such step)."""


class AlreadyProvided(NotWaiting):
    """The step already has its value (provided before, or its timeout's default)."""


class InputTimedOut(PipelineError):
    """An input step waited past its ``timeout_s``; with ``on_timeout: fail`` the run
    fails with it, and a value provided after the timeout is refused with it."""

    def __init__(self, message: str, *, run_id: str, step_id: str, timeout_s: float) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.step_id = step_id
        self.timeout_s = timeout_s


class ApprovalRejected(PipelineError):
    """An approval step's decision was ``reject``: the run fails with its comment."""

    def __init__(self, message: str, *, step_id: str, comment: str) -> None:
        super().__init__(message)
        self.step_id = step_id
        self.comment = comment


# --- the run queue -------------------------------------------------------------


class QueueError(TaskloomError):
    """A submission to the run queue, or a worker's use of it, was refused."""


class UnknownQueue(QueueError):
    """No queue of that name is defined in this store; ``known`` lists those that are."""

    def __init__(self, queue: str, known: Sequence[str]) -> None:
        self.queue = queue
        self.known = tuple(sorted(known))
        listed = ", ".join(self.known)
        super().__init__(
            f"unknown queue {queue!r}; defined queues: {listed}. Define it first with "
            "engine.define_queue(name, ...) or `taskloom queue --define NAME`"
        )


class SubmissionConflict(QueueError):
    """The idempotency key or run id of a submission belongs to a different run.

    A submission that repeats an earlier one (same key or id, same pipeline and
    inputs) returns the earlier run; this is raised only when they differ.
    """

    def __init__(self, message: str, *, run_id: str) -> None:
        super().__init__(message)
        self.run_id = run_id


# --- plugins ---------------------------------------------------------------


class PluginError(TaskloomError):
    """A plugin could not be loaded, set up or torn down."""


class CapabilityDenied(PluginError):
    """A plugin asked for something its manifest did not declare."""


class PluginIncompatible(PluginError):
    """A plugin's manifest asks for a newer taskloom (``min_sdk_version``) than the one running."""

    def __init__(self, message: str, *, plugin: str, required: str, running: str) -> None:
        super().__init__(message)
        self.plugin = plugin
        self.required = required
        self.running = running
