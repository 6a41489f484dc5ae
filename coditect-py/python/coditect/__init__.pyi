"""Type stubs of the coditect package."""

from typing import Any

from ._errors import (
    BadInput as BadInput,
    BudgetExceeded as BudgetExceeded,
    CallCycle as CallCycle,
    Cancelled as Cancelled,
    ClaudeError as ClaudeError,
    CoditectError as CoditectError,
    HandlerError as HandlerError,
    NoSuchAgent as NoSuchAgent,
    PlanInvalid as PlanInvalid,
    PolicyViolation as PolicyViolation,
    RegistrationError as RegistrationError,
    ShuttingDown as ShuttingDown,
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
    Orchestrator as Orchestrator,
    Outcome as Outcome,
    Plan as Plan,
    Policy as Policy,
    Relay as Relay,
    RunHandle as RunHandle,
    Runtime as Runtime,
    ScriptedModel as ScriptedModel,
    ScriptedReply as ScriptedReply,
    StaticPlanner as StaticPlanner,
    Step as Step,
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
    "BadInput",
    "BudgetExceeded",
    "CallCycle",
    "Cancelled",
    "Claude",
    "ClaudeError",
    "CoditectError",
    "Context",
    "Echo",
    "EventStream",
    "Goal",
    "HandlerError",
    "Input",
    "Literal",
    "LlmAgent",
    "LlmPlanner",
    "NoSuchAgent",
    "Orchestrator",
    "Outcome",
    "Output",
    "Plan",
    "PlanInvalid",
    "Policy",
    "PolicyViolation",
    "RegistrationError",
    "Relay",
    "RunHandle",
    "Runtime",
    "ScriptedModel",
    "ScriptedReply",
    "ShuttingDown",
    "StaticPlanner",
    "Step",
    "TaskInput",
    "Timeout",
    "Tool",
    "ToolArgumentError",
    "TransportError",
    "Usage",
    "tool",
]
