"""coditect: multi-agent orchestration for Python on a Rust core.

Agents are ``async def`` handlers (or classes) registered on a
:class:`Runtime`; they run on your asyncio event loop and talk to each other
through their :class:`Context`. An :class:`Orchestrator` plans a task (a
:class:`StaticPlanner` or an :class:`LlmPlanner`), runs every ready step in
parallel under a :class:`Policy`, and returns an :class:`Outcome`. Models are
:class:`Claude` or, for tests and offline runs, :class:`ScriptedModel`;
Python functions become tools with :func:`tool`. Errors are
:class:`CoditectError` subclasses.

Given a store (:class:`MemoryStore`, :class:`SqliteStore`,
:class:`PostgresStore`), an orchestrator's runs are durable: they survive the
process and are resumed (``orch.resume``), asked questions
(``ctx.ask``) answered from anywhere (``orch.respond``), read back
(``orch.replay``) and forked (``orch.fork``); ``ctx.effect`` runs a side
effect once per run.

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
    AlreadyAnswered,
    BadInput,
    BudgetExceeded,
    CallCycle,
    Cancelled,
    ClaudeError,
    CoditectError,
    DurableError,
    HandlerError,
    InvalidAnswer,
    JournalCorrupt,
    NoStore,
    NoSuchAgent,
    NoSuchRequest,
    PlanInvalid,
    PolicyViolation,
    RegistrationError,
    RunBusy,
    RunFinished,
    RunNotFound,
    ShuttingDown,
    StoreError,
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
    MemoryStore,
    Orchestrator,
    Outcome,
    Plan,
    Policy,
    PostgresStore,
    Relay,
    RunHandle,
    Runtime,
    ScriptedModel,
    ScriptedReply,
    SqliteStore,
    StaticPlanner,
    Step,
    StoredRun,
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
