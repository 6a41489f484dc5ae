"""coditect: multi-agent orchestration for Python on a Rust core.

Agents are ``async def`` handlers (or classes) registered on a
:class:`Runtime`; they run on your asyncio event loop and talk to each other
through their :class:`Context`. An :class:`Orchestrator` plans a task (a
:class:`StaticPlanner` or an :class:`LlmPlanner`), runs every ready step in
parallel under a :class:`Policy`, and returns an :class:`Outcome`. Models are
:class:`Claude` or, for tests and offline runs, :class:`ScriptedModel`;
Python functions become tools with :func:`tool`. Errors are
:class:`CoditectError` subclasses.

Example::

    import asyncio, coditect

    async def main():
        rt = await coditect.Runtime.start()

        @rt.agent("upper", capabilities=["shout"])
        async def upper(task, ctx):
            return task.upper()

        plan = coditect.Plan([coditect.Step("a", "shout", input=coditect.Goal())])
        orch = coditect.Orchestrator(rt, planner=coditect.StaticPlanner(plan))
        print((await orch.run("hello")).output)
        await rt.shutdown()

    asyncio.run(main())
"""

from typing import Any

from ._errors import (
    BadInput,
    BudgetExceeded,
    CallCycle,
    Cancelled,
    ClaudeError,
    CoditectError,
    HandlerError,
    NoSuchAgent,
    PlanInvalid,
    PolicyViolation,
    RegistrationError,
    ShuttingDown,
    Timeout,
    ToolArgumentError,
    TransportError,
)
from ._native import (
    AgentId,
    Claude,
    Context,
    Echo,
    EventStream,
    Input,
    LlmAgent,
    LlmPlanner,
    Orchestrator,
    Outcome,
    Plan,
    Policy,
    Relay,
    RunHandle,
    Runtime,
    ScriptedModel,
    ScriptedReply,
    StaticPlanner,
    Step,
    Usage,
)

__version__ = "0.1.0"


def Goal() -> Input:
    """A step input: the run's goal, as a string."""
    return Input.goal()


def TaskInput() -> Input:
    """A step input: the run's input (``orch.run(goal, input=...)``)."""
    return Input.task_input()


def Output(step: str) -> Input:
    """A step input: the output of step ``step`` (which becomes a dependency)."""
    return Input.output(step)


def Literal(value: Any) -> Input:
    """A step input: a literal value."""
    return Input.literal(value)


def __getattr__(name: str) -> Any:
    # The tool decorator pulls in typing machinery; load it on first use so
    # that `import coditect` stays fast.
    if name in ("tool", "Tool"):
        from . import _tool

        return getattr(_tool, name)
    raise AttributeError(f"module 'coditect' has no attribute {name!r}")


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
