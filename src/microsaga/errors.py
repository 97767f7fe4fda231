"""The one exception tree of microsaga.

Every error raised by the library is a :class:`MicrosagaError`. Each class has a
stable ``code`` (used by the CLI, the HTTP API and ``Retry.non_retryable``), says
whether retrying the operation can help (``retryable``) and uses its docstring as
the default message::

    MicrosagaError
    ├── DefinitionError            definition             a workflow is not valid
    │   ├── StepNotExistsError     step_not_exists
    │   ├── CycleError             cycle
    │   └── DuplicateStepError     duplicate_step
    ├── ConfigurationError         configuration          a setting is wrong
    ├── PayloadTooLargeError       payload_too_large      a body over max_payload
    ├── CodecError                 codec                  a stored body cannot be decoded
    ├── MissingClientError         missing_client
    ├── WorkflowNotFoundError      workflow_not_found
    ├── ExecutionNotFoundError     execution_not_found
    ├── ExecutionConflictError     execution_conflict     an id taken by another workflow
    ├── ExecutionFailedError       execution_failed
    ├── InvalidTransitionError     invalid_transition
    ├── StepError                  step_failed            raised by step code
    │   ├── StepTimeoutError       step_timeout
    │   └── RecoveryLimitError     max_recovery_attempts_exceeded   workers died running it
    ├── StoreError                 store_unavailable      (retryable)
    │   ├── SchemaVersionError     schema_version
    │   └── LeaseLostError         lease_lost
    └── TransportError             transport_unavailable  (retryable)
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "CodecError",
    "ConfigurationError",
    "CycleError",
    "DefinitionError",
    "DuplicateStepError",
    "ExecutionConflictError",
    "ExecutionFailedError",
    "ExecutionNotFoundError",
    "InvalidTransitionError",
    "LeaseLostError",
    "MicrosagaError",
    "MissingClientError",
    "PayloadTooLargeError",
    "RecoveryLimitError",
    "SchemaVersionError",
    "StepError",
    "StepNotExistsError",
    "StepTimeoutError",
    "StoreError",
    "TransportError",
    "WorkflowNotFoundError",
    "error_code",
    "is_retryable",
    "one_line",
]


class MicrosagaError(Exception):
    """microsaga error."""

    code: str = "microsaga_error"
    retryable: bool = False
    retry_after: float | None = None  # seconds the failed party asked to wait (Retry-After)
    # a record of this error (a step's error) starts with the class name, as an
    # exception from outside microsaga does: the name says what happened
    named: bool = False

    def __init__(self, message: str | None = None, *, retryable: bool | None = None) -> None:
        if message is None:
            message = (type(self).__doc__ or type(self).__name__).strip().splitlines()[0]
        super().__init__(message)
        if retryable is not None:
            self.retryable = retryable

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class DefinitionError(MicrosagaError):
    """The workflow definition is not valid."""

    code = "definition"

    def __init__(self, message: str | None = None, *, path: str | None = None) -> None:
        self.path = path
        if message is not None and path:
            message = f"{path}: {message}"
        super().__init__(message)


class StepNotExistsError(DefinitionError):
    """step not exists"""

    code = "step_not_exists"

    def __init__(
        self, step_id: str | None = None, *, path: str | None = None, detail: str | None = None
    ) -> None:
        # the message always starts "step not exists: <id>" (upstream's); the context
        # (who requires it, the definition field) follows in parentheses
        self.step_id = step_id
        message = "step not exists" if step_id is None else f"step not exists: {step_id}"
        context = [c for c in (detail, f"at {path}" if path else None) if c]
        if context:
            message += f" ({', '.join(context)})"
        super().__init__(message)
        self.path = path


class CycleError(DefinitionError):
    """The steps' requirements form a cycle."""

    code = "cycle"

    def __init__(self, steps: Iterable[str] = (), *, between: str = "steps") -> None:
        self.steps = list(steps)  # the steps (or workflows: sub-workflows) of the cycle
        super().__init__(
            f"cycle between {between}: " + " -> ".join(self.steps) if self.steps else None
        )


class DuplicateStepError(DefinitionError):
    """Two steps of a workflow have the same id."""

    code = "duplicate_step"

    def __init__(self, step_id: str | None = None, *, path: str | None = None) -> None:
        self.step_id = step_id
        super().__init__(None if step_id is None else f"duplicate step id: {step_id}", path=path)


class ConfigurationError(MicrosagaError):
    """A setting is wrong."""

    code = "configuration"

    def __init__(self, setting: str | None = None, message: str | None = None) -> None:
        self.setting = setting
        self.reason = message  # what is wrong with it, without the setting's name
        if message is not None and setting:
            message = f"{setting}: {message}"
        super().__init__(message)


class PayloadTooLargeError(MicrosagaError):
    """The body is larger than the flow's max_payload."""

    code = "payload_too_large"


class CodecError(MicrosagaError):
    """A stored body or header cannot be encoded or decoded with the flow's codec.

    ``code`` says why: ``codec`` in general, ``codec_key_unknown`` for a body
    encrypted with a key the codec does not have, ``codec_tampered`` for a body that
    fails its authentication.
    """

    code = "codec"

    def __init__(self, message: str | None = None, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class MissingClientError(MicrosagaError):
    """client not set"""

    code = "missing_client"


class WorkflowNotFoundError(MicrosagaError):
    """No workflow is saved under that id."""

    code = "workflow_not_found"

    def __init__(self, workflow_id: str | None = None) -> None:
        self.workflow_id = workflow_id
        super().__init__(None if workflow_id is None else f"workflow not found: {workflow_id}")


class ExecutionNotFoundError(MicrosagaError):
    """No execution has that id."""

    code = "execution_not_found"

    def __init__(self, execution_id: str | None = None) -> None:
        self.execution_id = execution_id
        if execution_id is None:
            message = None
        elif (
            isinstance(execution_id, str)
            and execution_id
            and execution_id.isprintable()
            and execution_id.strip() == execution_id
        ):
            message = f"execution not found: {execution_id}"
        else:  # empty, with spaces or control characters, or no string: show it quoted
            message = f"execution not found: {execution_id!r}"
        super().__init__(message)


class ExecutionConflictError(MicrosagaError):
    """An execution with that id exists, of another workflow or definition."""

    code = "execution_conflict"


class ExecutionFailedError(MicrosagaError):
    """The execution failed."""

    code = "execution_failed"

    def __init__(
        self,
        execution_id: str | None = None,
        step_id: str | None = None,
        error: str | None = None,
        *,
        compensated: bool = True,
    ) -> None:
        self.execution_id = execution_id
        self.step_id = step_id
        self.error = error or "failed"
        self.compensated = compensated
        message = None
        if execution_id is not None:
            where = f" at step {step_id}" if step_id else ""
            rolled = "compensated" if compensated else "compensation failed"
            message = f"execution {execution_id} failed{where}: {self.error} ({rolled})"
        super().__init__(message)


class InvalidTransitionError(MicrosagaError):
    """The execution cannot make that transition from its current status."""

    code = "invalid_transition"


class StepError(MicrosagaError):
    """The step failed.

    Raise it from step code to fail with a code of your own; pass ``retryable=False``
    to stop retries at once.
    """

    code = "step_failed"
    retryable = True

    def __init__(
        self, message: str | None = None, *, code: str | None = None, retryable: bool | None = None
    ) -> None:
        super().__init__(message, retryable=retryable)
        if code is not None:
            self.code = code


class StepTimeoutError(StepError):
    """The step attempt timed out."""

    code = "step_timeout"
    named = True


class RecoveryLimitError(StepError):
    """The step was given up: the workers running it kept dying.

    Recorded as the failure of the steps that were running when the execution was taken
    over more than ``max_recovery_attempts`` times in a row, without anything committed
    in between; the execution then rolls back as after any step failure.
    """

    code = "max_recovery_attempts_exceeded"
    retryable = False
    named = True


class StoreError(MicrosagaError):
    """The store is not available."""

    code = "store_unavailable"
    retryable = True


class SchemaVersionError(StoreError):
    """The store's schema is newer than this version of microsaga."""

    code = "schema_version"
    retryable = False


class LeaseLostError(StoreError):
    """Another worker took over the execution: this worker may no longer write it."""

    code = "lease_lost"
    retryable = False


class TransportError(MicrosagaError):
    """The service or broker could not be reached."""

    code = "transport_unavailable"
    retryable = True

    def __init__(
        self,
        message: str | None = None,
        *,
        code: str | None = None,
        retryable: bool | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, retryable=retryable)
        if code is not None:
            self.code = code
        self.retry_after = retry_after


def error_code(exc: BaseException) -> str:
    """The stable code of an exception: its ``code`` or its class name."""
    code = getattr(exc, "code", None)
    return code if isinstance(code, str) else type(exc).__name__


def is_retryable(exc: BaseException) -> bool:
    """Whether another attempt may succeed; unknown exceptions are retryable."""
    return bool(getattr(exc, "retryable", True))


def one_line(exc: BaseException) -> str:
    """A one-line description of an exception, for records and the CLI: its message,
    after its class name unless it is a :class:`MicrosagaError` that says it all."""
    text = str(exc).strip() or type(exc).__name__
    text = " ".join(text.split())
    if not isinstance(exc, MicrosagaError) or exc.named:
        text = f"{type(exc).__name__}: {text}"
    return text[:2000]
