"""microsaga: durable sagas for Python microservices.

A workflow is a DAG of steps (RPC calls, broker messages, local functions) run in
parallel as a dataflow, every transition stored before it is acted on, and rolled
back by compensating finished steps in reverse dependency order when a step fails
for good.
"""

from .definitions import load_definition
from .errors import (
    CodecError,
    ConfigurationError,
    CycleError,
    DefinitionError,
    DuplicateStepError,
    ExecutionConflictError,
    ExecutionFailedError,
    ExecutionNotFoundError,
    InvalidTransitionError,
    LeaseLostError,
    MicrosagaError,
    MissingClientError,
    PayloadTooLargeError,
    RecoveryLimitError,
    SchemaVersionError,
    StepError,
    StepNotExistsError,
    StepTimeoutError,
    StoreError,
    TransportError,
    WorkflowNotFoundError,
)
from .execution import Execution, StepRun
from .flow import Flow
from .hooks import CommitEvent, ExecutionEvent, Hook, StepEvent
from .message import Message, Metadata
from .saga import Saga
from .settings import FlowOptions
from .status import STATUS_STRING, STRING_STATUS, Phase, Status
from .step import Retry, Step, StepContext, StepOptions, register_step
from .steps import CallStep, FunctionStep, PublishStep
from .sync import SyncFlow
from .transports import Broker, Client
from .waits import MapStep, SleepStep, SubflowStep, WaitStep
from .workflow import Workflow

__version__ = "0.1.0"

__all__ = [
    "STATUS_STRING",
    "STRING_STATUS",
    "Broker",
    "CallStep",
    "Client",
    "CodecError",
    "CommitEvent",
    "ConfigurationError",
    "CycleError",
    "DefinitionError",
    "DuplicateStepError",
    "Execution",
    "ExecutionConflictError",
    "ExecutionEvent",
    "ExecutionFailedError",
    "ExecutionNotFoundError",
    "Flow",
    "FlowOptions",
    "FunctionStep",
    "Hook",
    "InvalidTransitionError",
    "LeaseLostError",
    "MapStep",
    "Message",
    "Metadata",
    "MicrosagaError",
    "MissingClientError",
    "PayloadTooLargeError",
    "Phase",
    "PublishStep",
    "RecoveryLimitError",
    "Retry",
    "Saga",
    "SchemaVersionError",
    "SleepStep",
    "Status",
    "Step",
    "StepContext",
    "StepError",
    "StepEvent",
    "StepNotExistsError",
    "StepOptions",
    "StepRun",
    "StepTimeoutError",
    "StoreError",
    "SubflowStep",
    "SyncFlow",
    "TransportError",
    "WaitStep",
    "Workflow",
    "WorkflowNotFoundError",
    "load_definition",
    "register_step",
]
