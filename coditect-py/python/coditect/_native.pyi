"""Type stubs of coditect's native module (the Rust binding)."""

from typing import (
    Any,
    AsyncIterator,
    Awaitable,
    Callable,
    Dict,
    Generator,
    Iterable,
    List,
    Optional,
    Sequence,
    Tuple,
    Type,
    TypeVar,
    Union,
    overload,
)

from ._tool import Tool

_T = TypeVar("_T")
_A = TypeVar("_A")
_H = TypeVar("_H")

class Pending(Awaitable[_T]):
    """A Rust future awaitable from Python (await it once)."""

    def __await__(self) -> Generator[Any, None, _T]: ...

class AgentId:
    """An agent's address: a kind and a key."""

    def __init__(self, kind: str, key: str) -> None: ...
    @property
    def kind(self) -> str: ...
    @property
    def key(self) -> str: ...

_To = Union[AgentId, str]

class AgentDecorator:
    """Registers the handler or class it decorates and returns it unchanged."""

    def __call__(self, target: _H) -> _H: ...

class Runtime:
    """A coditect runtime: hosts agents (Python and Rust) on a transport."""

    @staticmethod
    def start(
        *,
        nats: Optional[str] = None,
        tenant: Optional[str] = None,
        max_concurrency: Optional[int] = None,
        default_timeout_s: Optional[float] = None,
    ) -> Pending["Runtime"]: ...
    def agent(
        self,
        kind: str,
        *,
        capabilities: Optional[Sequence[str]] = None,
        description: str = "",
        name: Optional[str] = None,
    ) -> AgentDecorator: ...
    def register(
        self,
        kind: str,
        agent: Union["LlmAgent", "Echo", "Relay"],
        *,
        capabilities: Optional[Sequence[str]] = None,
        description: Optional[str] = None,
    ) -> None: ...
    def request(self, to: _To, message: Any = None, *, timeout_s: Optional[float] = None) -> Pending[Any]: ...
    def send(self, to: _To, message: Any) -> Pending[None]: ...
    def cards(self) -> List[Dict[str, Any]]: ...
    @property
    def tenant(self) -> str: ...
    def pending_requests(self) -> int: ...
    def shutdown(self, grace_s: float = 1.0) -> Pending[bool]: ...
    def __aenter__(self) -> Pending["Runtime"]: ...
    def __aexit__(self, *exc: object) -> Pending[bool]: ...

class Context:
    """What a Python agent sees of the system while it handles one message."""

    def delegate(self, capability: str, task: Any) -> Pending[Any]: ...
    def delegate_all(
        self, subtasks: Iterable[Tuple[str, Any]], *, return_exceptions: bool = False
    ) -> Pending[List[Any]]: ...
    def request(self, to: _To, message: Any) -> Pending[Any]: ...
    def emit(self, data: Any) -> None: ...
    def effect(self, name: str, func: Callable[[str], Union[Awaitable[Any], Any]]) -> Pending[Any]:
        """Runs a side effect at most once per run; ``func(key)`` returns a JSON-able value."""
        ...
    @overload
    def ask(self, name: str, prompt: str, *, schema: Type[_A]) -> Pending[_A]:
        """Asks for input from outside the run; the answer comes back as the type."""
        ...
    @overload
    def ask(self, name: str, prompt: str, *, schema: Optional[Dict[str, Any]] = None) -> Pending[Any]:
        """Asks for input from outside the run, checked against a JSON Schema."""
        ...
    @property
    def idempotency_key(self) -> str: ...
    def wait_cancelled(self) -> Pending[None]: ...
    @property
    def run_id(self) -> Optional[str]: ...
    @property
    def step(self) -> Optional[str]: ...
    @property
    def agent_id(self) -> str: ...
    @property
    def tenant(self) -> str: ...
    @property
    def depth(self) -> int: ...
    @property
    def attempt(self) -> int: ...
    @property
    def deadline(self) -> Optional[float]: ...
    @property
    def cancelled(self) -> bool: ...

class Input:
    """How a step's input is built."""

    @staticmethod
    def goal() -> "Input": ...
    @staticmethod
    def task_input() -> "Input": ...
    @staticmethod
    def output(step: str) -> "Input": ...
    @staticmethod
    def literal(value: Any) -> "Input": ...

class Step:
    """One step of a plan."""

    def __init__(
        self,
        id: str,
        capability: Optional[str] = None,
        input: Any = None,
        *,
        agent: Optional[str] = None,
        after: Optional[Sequence[str]] = None,
        description: str = "",
    ) -> None: ...
    @property
    def id(self) -> str: ...

class Plan:
    """A plan: a DAG of steps."""

    def __init__(self, steps: Sequence[Step], *, output: Optional[str] = None) -> None: ...
    def to_dict(self) -> Dict[str, Any]: ...

class StaticPlanner:
    """A planner that always answers the plan it was given."""

    def __init__(self, plan: Plan) -> None: ...

class LlmPlanner:
    """A planner that asks a model for a validated plan."""

    def __init__(
        self,
        model: Union["ScriptedModel", "Claude"],
        *,
        instructions: Optional[str] = None,
        max_tokens: Optional[int] = None,
        max_repairs: Optional[int] = None,
    ) -> None: ...

class Policy:
    """The limits of a run."""

    def __init__(
        self,
        *,
        max_tokens: Optional[int] = None,
        max_cost_usd: Optional[float] = None,
        max_depth: Optional[int] = None,
        deadline_s: Optional[float] = None,
        max_fanout: Optional[int] = None,
        max_steps: Optional[int] = None,
        step_timeout_s: Optional[float] = None,
        max_attempts: Optional[int] = None,
        max_replans: Optional[int] = None,
        input_timeout_s: Optional[float] = None,
    ) -> None: ...

class Usage:
    """Tokens and money a run spent."""

    input_tokens: int
    output_tokens: int
    cost_usd: float
    @property
    def total_tokens(self) -> int: ...

class Outcome:
    """A finished run."""

    run_id: str
    output: Any
    steps: Dict[str, Any]
    trace: List[Dict[str, Any]]
    usage: Usage
    duration_s: float

class EventStream(AsyncIterator[Dict[str, Any]]):
    """The events of a run, for ``async for``."""

    def __aiter__(self) -> "EventStream": ...
    def __anext__(self) -> Pending[Dict[str, Any]]: ...

class RunHandle:
    """A run in progress."""

    @property
    def run_id(self) -> str: ...
    def events(self) -> EventStream: ...
    def cancel(self) -> None: ...
    def outcome(self) -> Pending[Outcome]: ...

class MemoryStore:
    """Runs in memory: they outlive their orchestrator, not the process."""

    def __init__(self) -> None: ...

class SqliteStore:
    """Runs in a SQLite file: they survive the process."""

    def __init__(self, path: str) -> None: ...
    @staticmethod
    def open(path: str) -> Pending["SqliteStore"]:
        """Opens (or creates) the store at ``path``; await it."""
        ...
    @property
    def path(self) -> str: ...

class PostgresStore:
    """Runs in PostgreSQL: shared by every machine that connects to it."""

    @staticmethod
    def connect(dsn: str) -> Pending["PostgresStore"]:
        """Connects (a libpq string or a postgresql:// URL); await it."""
        ...

_Store = Union[MemoryStore, SqliteStore, PostgresStore]

class StoredRun:
    """A stored run read back: its events in order and their fold."""

    run_id: str
    events: List[Dict[str, Any]]
    state: Dict[str, Any]
    status: str
    open_questions: List[Dict[str, Any]]

class Orchestrator:
    """Runs tasks over the agents of a runtime."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        planner: Union[StaticPlanner, LlmPlanner],
        policy: Optional[Policy] = None,
        cards: Optional[Sequence[Dict[str, Any]]] = None,
        store: Optional[_Store] = None,
        lease_holder: Optional[str] = None,
        lease_ttl_s: Optional[float] = None,
    ) -> None: ...
    def run(self, goal: str, *, input: Any = None, policy: Optional[Policy] = None) -> Pending[Outcome]: ...
    def start(self, goal: str, *, input: Any = None, policy: Optional[Policy] = None) -> RunHandle: ...
    def submit(self, goal: str, *, input: Any = None, policy: Optional[Policy] = None) -> Pending[RunHandle]:
        """Starts a durable run; returns once its start is journaled."""
        ...
    def resume(self, run_id: str) -> Pending[RunHandle]:
        """Continues a stored run that no orchestrator drives."""
        ...
    def respond(self, run_id: str, request_id: str, value: Any) -> Pending[Optional[RunHandle]]:
        """Answers a run's question: None if delivered live, else the resumed run's handle."""
        ...
    def replay(self, run_id: str) -> Pending[StoredRun]:
        """Reads a stored run back."""
        ...
    def fork(
        self, run_id: str, *, at: int, step: Optional[str] = None, input: Any = None
    ) -> Pending[RunHandle]:
        """Starts a new run from a stored one's first ``at`` events."""
        ...
    @property
    def durable(self) -> bool: ...
    def cards(self) -> List[Dict[str, Any]]: ...

class ScriptedReply:
    """One scripted model turn."""

    @staticmethod
    def text(text: str) -> "ScriptedReply": ...
    @staticmethod
    def tool_call(name: str, input: Any) -> "ScriptedReply": ...
    @staticmethod
    def tool_calls(calls: Sequence[Tuple[str, Any]]) -> "ScriptedReply": ...
    @staticmethod
    def error(message: str, *, retryable: bool = False) -> "ScriptedReply": ...
    def usage(self, input_tokens: int, output_tokens: int) -> "ScriptedReply": ...

class ScriptedModel:
    """A deterministic model answering from a script."""

    def __init__(self, replies: Optional[Iterable[Union[str, ScriptedReply]]] = None) -> None: ...
    def push(self, reply: Union[str, ScriptedReply]) -> None: ...
    def turns_left(self) -> int: ...
    def requests(self) -> List[Dict[str, Any]]: ...

class Claude:
    """A Claude model through the Anthropic Messages API."""

    def __init__(
        self,
        model: str = "claude-sonnet-4-5",
        *,
        api_key: Optional[str] = None,
        base_url: Optional[str] = None,
        max_retries: Optional[int] = None,
    ) -> None: ...
    @property
    def model(self) -> str: ...
    def complete(self, prompt: str, *, system: Optional[str] = None, max_tokens: int = 1024) -> Pending[str]: ...

class LlmAgent:
    """An agent that thinks with a model and acts with tools (a Rust agent)."""

    def __init__(
        self,
        model: Union[ScriptedModel, Claude],
        *,
        system: Optional[str] = None,
        tools: Optional[Sequence[Tool]] = None,
        capabilities: Optional[Sequence[str]] = None,
        description: str = "",
        delegate_to: Optional[Sequence[Tuple[str, str]]] = None,
        max_iterations: Optional[int] = None,
        max_tokens: Optional[int] = None,
        streaming: Optional[bool] = None,
    ) -> None: ...
    def tool_names(self) -> List[str]: ...

class Echo:
    """A Rust agent that answers with its input."""

    def __init__(self, *, capabilities: Optional[Sequence[str]] = None) -> None: ...

class Relay:
    """A Rust agent that hands its input to an agent offering a capability."""

    def __init__(self, capability: str, *, capabilities: Optional[Sequence[str]] = None) -> None: ...
