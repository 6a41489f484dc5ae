"""The exceptions coditect raises, mirroring the Rust error kinds.

Every exception is a :class:`CoditectError`; its subclasses name what went
wrong. Each carries ``message`` and ``kind`` and, where they apply,
``run_id``, ``step``, ``agent``, ``finished_steps`` and ``transient``.
"""

from typing import Any, Dict, Optional

__all__ = [
    "CoditectError",
    "PlanInvalid",
    "BudgetExceeded",
    "NoSuchAgent",
    "CallCycle",
    "Timeout",
    "Cancelled",
    "HandlerError",
    "PolicyViolation",
    "BadInput",
    "ShuttingDown",
    "TransportError",
    "RegistrationError",
    "ClaudeError",
    "ToolArgumentError",
    "DurableError",
    "NoStore",
    "RunNotFound",
    "RunBusy",
    "RunFinished",
    "NoSuchRequest",
    "AlreadyAnswered",
    "InvalidAnswer",
    "JournalCorrupt",
    "StoreError",
]


class CoditectError(Exception):
    """Base class of every coditect error."""

    message: str
    kind: Optional[str]
    run_id: Optional[str]
    step: Optional[str]
    agent: Optional[str]
    transient: bool
    finished_steps: Optional[Dict[str, Any]]

    def __init__(self, message: str = "", **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.kind = details.pop("kind", None)
        self.run_id = details.pop("run_id", None)
        self.step = details.pop("step", None)
        self.agent = details.pop("agent", None)
        self.transient = bool(details.pop("transient", False))
        self.finished_steps = details.pop("finished_steps", None)
        for name, value in details.items():
            setattr(self, name, value)


class PlanInvalid(CoditectError):
    """The plan was refused before anything ran (a cycle, an unknown capability, …)."""


class BudgetExceeded(CoditectError):
    """A run's token, cost or step budget was spent (``budget``, ``used``, ``limit``)."""

    budget: Optional[str]
    used: Any
    limit: Any


class NoSuchAgent(CoditectError):
    """No registered agent handles that kind, id or capability."""


class CallCycle(CoditectError):
    """A request would have waited on an agent already waiting in its own call chain."""


class Timeout(CoditectError, TimeoutError):
    """A deadline passed: a request's, a step's or the whole run's."""


class Cancelled(CoditectError):
    """The work was cancelled (its caller gave up, or the run was cancelled)."""


class HandlerError(CoditectError):
    """An agent's handler failed; ``error_type`` names a Python handler's exception type.

    A handler may raise it itself: ``HandlerError("busy", transient=True)``
    fails the step with a transient failure, which the run's retry policy
    retries.
    """

    error_type: Optional[str]


class PolicyViolation(CoditectError):
    """A run policy refused the work (delegation depth, fan-out)."""


class BadInput(CoditectError):
    """A message was not what the agent takes."""


class ShuttingDown(CoditectError):
    """The runtime hosting the agent is shutting down."""


class TransportError(CoditectError):
    """The transport (in memory or NATS) could not carry a message or connect."""


class RegistrationError(CoditectError):
    """An agent kind could not be registered (bad or taken name, transport refused)."""


class ClaudeError(CoditectError):
    """The Claude API failed; ``status`` and ``request_id`` say which call and how."""

    status: Optional[int]
    request_id: Optional[str]
    error_type: Optional[str]
    retryable: bool


class ToolArgumentError(CoditectError, ValueError):
    """A model called a tool with arguments that do not fit its signature.

    Raised by a tool's argument check; the agent sends it back to the model as
    a tool error so the model can correct the call.
    """


class DurableError(CoditectError):
    """A durable-run operation failed: ``resume``, ``respond``, ``replay``,
    ``fork`` or ``submit`` of an orchestrator with a store, or opening a store.

    ``kind`` names the Rust ``DurableErrorKind`` (``"busy"``,
    ``"invalid_answer"``, …); ``run_id`` the run; ``store_kind`` the store's
    own error kind where the store failed.
    """

    store_kind: Optional[str]

    def __init__(self, message: str = "", **details: Any) -> None:
        details.setdefault("store_kind", None)
        super().__init__(message, **details)


class NoStore(DurableError):
    """The orchestrator has no store: durable runs need ``Orchestrator(..., store=...)``."""


class RunNotFound(DurableError, LookupError):
    """No such run in the store."""


class RunBusy(DurableError):
    """Another orchestrator holds the run's lease (it is being driven); the
    message names the holder and when its lease expires."""


class RunFinished(DurableError):
    """The run has already ended."""


class NoSuchRequest(DurableError, LookupError):
    """The run has no such question (or it timed out), or a fork names a step
    the run's plan does not have."""


class AlreadyAnswered(DurableError):
    """The question was answered already."""


class InvalidAnswer(DurableError, ValueError):
    """The answer does not satisfy the question's JSON Schema; nothing was
    recorded and the run stays paused."""


class JournalCorrupt(DurableError):
    """The run's journal holds something that is not a run event of this run."""


class StoreError(DurableError):
    """The store failed (``store_kind`` says how: ``"io"``, ``"conflict"``, …)."""
