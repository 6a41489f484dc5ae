"""Type stubs of the coditect package."""

from typing import Any

from ._errors import (
    AlreadyAnswered as AlreadyAnswered,
    BadInput as BadInput,
    BudgetExceeded as BudgetExceeded,
    CallCycle as CallCycle,
    Cancelled as Cancelled,
    ClaudeError as ClaudeError,
    CoditectError as CoditectError,
    DurableError as DurableError,
    HandlerError as HandlerError,
    InvalidAnswer as InvalidAnswer,
    JournalCorrupt as JournalCorrupt,
    NoStore as NoStore,
    NoSuchAgent as NoSuchAgent,
    NoSuchRequest as NoSuchRequest,
    PlanInvalid as PlanInvalid,
    PolicyViolation as PolicyViolation,
    RegistrationError as RegistrationError,
    RunBusy as RunBusy,
    RunFinished as RunFinished,
    RunNotFound as RunNotFound,
    ShuttingDown as ShuttingDown,
    StoreError as StoreError,
    Timeout as Timeout,
    ToolArgumentError as ToolArgumentError,
    TransportError as TransportError,
)
from ._tool import Tool as Tool, tool as tool
from ._native import (
    AgentId as AgentId,
    Claude as Claude,
    Context as Context,
    Echo as Echo,
    EventStream as EventStream,
    Input as Input,
    LlmAgent as LlmAgent,
    LlmPlanner as LlmPlanner,
    MemoryStore as MemoryStore,
    Orchestrator as Orchestrator,
    Outcome as Outcome,
    Plan as Plan,
    Policy as Policy,
    PostgresStore as PostgresStore,
    Relay as Relay,
    RunHandle as RunHandle,
    Runtime as Runtime,
    ScriptedModel as ScriptedModel,
    ScriptedReply as ScriptedReply,
    SqliteStore as SqliteStore,
    StaticPlanner as StaticPlanner,
    Step as Step,
    StoredRun as StoredRun,
    Usage as Usage,
)

__version__: str


def Goal() -> Input:
    """A step input: the run's goal, as a string."""
    ...


def TaskInput() -> Input:
    """A step input: the run's input (``orch.run(goal, input=...)``)."""
    ...


def Output(step: str) -> Input:
    """A step input: the output of step ``step`` (which becomes a dependency)."""
    ...


def Literal(value: Any) -> Input:
    """A step input: a literal value."""
    ...


__all__ = [
    "AgentId",
    "AlreadyAnswered",
    "BadInput",
    "BudgetExceeded",
    "CallCycle",
    "Cancelled",
    "Claude",
    "ClaudeError",
    "CoditectError",
    "DurableError",
    "Context",
    "Echo",
    "EventStream",
    "Goal",
    "HandlerError",
    "InvalidAnswer",
    "JournalCorrupt",
    "Input",
    "Literal",
    "LlmAgent",
    "LlmPlanner",
    "MemoryStore",
    "NoStore",
    "NoSuchAgent",
    "NoSuchRequest",
    "Orchestrator",
    "Outcome",
    "Output",
    "Plan",
    "PlanInvalid",
    "Policy",
    "PolicyViolation",
    "PostgresStore",
    "RegistrationError",
    "Relay",
    "RunBusy",
    "RunFinished",
    "RunHandle",
    "RunNotFound",
    "Runtime",
    "ScriptedModel",
    "ScriptedReply",
    "ShuttingDown",
    "SqliteStore",
    "StaticPlanner",
    "Step",
    "StoreError",
    "StoredRun",
    "TaskInput",
    "Timeout",
    "Tool",
    "ToolArgumentError",
    "TransportError",
    "Usage",
    "tool",
]
