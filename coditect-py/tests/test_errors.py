"""Every exception kind, and a failing Python handler."""

import asyncio
import http.server
import json
import threading
from typing import Iterator

import pytest

import coditect
from conftest import free_port, within


def one_step(capability: str) -> coditect.StaticPlanner:
    return coditect.StaticPlanner(coditect.Plan([coditect.Step("s", capability, input=coditect.Goal())]))


async def test_an_exception_in_a_handler_is_a_typed_failure_and_the_runtime_goes_on(rt: coditect.Runtime) -> None:
    @rt.agent("bad", capabilities=["bad"])
    async def bad(task: str, ctx: coditect.Context) -> str:
        raise ValueError(f"cannot handle {task!r}")

    @rt.agent("good", capabilities=["good"])
    async def good(task: str, ctx: coditect.Context) -> str:
        return "fine"

    orch = coditect.Orchestrator(rt, planner=one_step("bad"), policy=coditect.Policy(max_attempts=1, max_replans=0))
    with pytest.raises(coditect.HandlerError) as e:
        await within(orch.run("x"))
    assert e.value.error_type == "ValueError"
    assert "cannot handle 'x'" in e.value.message
    assert e.value.step == "s" and e.value.agent.startswith("bad/")
    assert e.value.run_id
    with pytest.raises(coditect.HandlerError) as direct:
        await within(rt.request("bad", "y"))
    assert direct.value.error_type == "ValueError"
    assert await within(rt.request("good", "?")) == "fine"
    assert await within(coditect.Orchestrator(rt, planner=one_step("good")).run("x")) is not None


async def test_plan_invalid(rt: coditect.Runtime) -> None:
    with pytest.raises(coditect.PlanInvalid) as e:
        await within(coditect.Orchestrator(rt, planner=one_step("nobody_offers_this")).run("x"))
    assert "nobody_offers_this" in str(e.value)
    assert isinstance(e.value, coditect.CoditectError)


async def test_budget_exceeded(rt: coditect.Runtime) -> None:
    model = coditect.ScriptedModel([coditect.ScriptedReply.text("spent").usage(500, 500)])
    rt.register("spender", coditect.LlmAgent(model, capabilities=["spend"]))
    orch = coditect.Orchestrator(rt, planner=one_step("spend"), policy=coditect.Policy(max_tokens=100))
    with pytest.raises(coditect.BudgetExceeded) as e:
        await within(orch.run("x"))
    assert e.value.budget == "tokens" and e.value.limit == 100 and e.value.used >= 1000


async def test_no_such_agent(rt: coditect.Runtime) -> None:
    with pytest.raises(coditect.NoSuchAgent):
        await within(rt.request("ghost", "boo"))

    @rt.agent("asker")
    async def asker(task: str, ctx: coditect.Context) -> str:
        return await ctx.delegate("no_such_capability", task)

    with pytest.raises(coditect.NoSuchAgent):
        await within(rt.request("asker", "x"))


async def test_call_cycle(rt: coditect.Runtime) -> None:
    @rt.agent("ping")
    async def ping(task: str, ctx: coditect.Context) -> str:
        return await ctx.request("pong/1", task)

    @rt.agent("pong")
    async def pong(task: str, ctx: coditect.Context) -> str:
        return await ctx.request("ping/1", task)

    with pytest.raises(coditect.CallCycle):
        await within(rt.request("ping/1", "loop"))


async def test_timeout(rt: coditect.Runtime) -> None:
    @rt.agent("slow", capabilities=["slow"])
    async def slow(task: str, ctx: coditect.Context) -> str:
        await asyncio.sleep(3600)
        return "late"

    with pytest.raises(coditect.Timeout):
        await within(rt.request("slow", "x", timeout_s=0.05))
    orch = coditect.Orchestrator(rt, planner=one_step("slow"), policy=coditect.Policy(deadline_s=0.05))
    with pytest.raises(coditect.Timeout) as e:
        await within(orch.run("x"))
    assert isinstance(e.value, TimeoutError) and e.value.kind == "deadline"


async def test_cancelled(rt: coditect.Runtime) -> None:
    started = asyncio.Event()

    @rt.agent("slow", capabilities=["slow"])
    async def slow(task: str, ctx: coditect.Context) -> str:
        started.set()
        await asyncio.sleep(3600)
        return "late"

    handle = coditect.Orchestrator(rt, planner=one_step("slow")).start("x")
    await within(started.wait())
    handle.cancel()
    with pytest.raises(coditect.Cancelled):
        await within(handle.outcome())


async def test_policy_violation(rt: coditect.Runtime) -> None:
    @rt.agent("deep", capabilities=["deep"])
    async def deep(task: str, ctx: coditect.Context) -> str:
        return await ctx.delegate("deep", task)

    orch = coditect.Orchestrator(rt, planner=one_step("deep"), policy=coditect.Policy(max_depth=2, max_attempts=1, max_replans=0))
    with pytest.raises(coditect.PolicyViolation) as e:
        await within(orch.run("x"))
    assert "depth" in e.value.message


async def test_registration_error(rt: coditect.Runtime) -> None:
    @rt.agent("once")
    async def once(task: str) -> str:
        return task

    with pytest.raises(coditect.RegistrationError):

        @rt.agent("once")
        async def twice(task: str) -> str:
            return task

    with pytest.raises(coditect.RegistrationError):
        rt.agent("not a valid kind!")(once)


async def test_transport_error_when_nats_is_unreachable() -> None:
    with pytest.raises(coditect.TransportError):
        await within(coditect.Runtime.start(nats=f"nats://127.0.0.1:{free_port()}"), 30)


class _ApiError(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        length = int(self.headers.get("content-length", "0"))
        self.rfile.read(length)
        body = json.dumps({"type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens: too big"}}).encode()
        self.send_response(400)
        self.send_header("content-type", "application/json")
        self.send_header("request-id", "req_test_123")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def claude_stand_in() -> Iterator[str]:
    """A local HTTP server answering every request with a 400 API error."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ApiError)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join(5)


async def test_claude_error_has_status_and_request_id(claude_stand_in: str) -> None:
    claude = coditect.Claude("claude-sonnet-4-5", api_key="test-key", base_url=claude_stand_in, max_retries=0)
    assert claude.model == "claude-sonnet-4-5"
    with pytest.raises(coditect.ClaudeError) as e:
        await within(claude.complete("hi", max_tokens=10**9))
    assert e.value.status == 400 and e.value.request_id == "req_test_123"
    assert e.value.error_type == "invalid_request_error" and not e.value.retryable
    assert "too big" in e.value.message


def test_every_kind_is_a_coditect_error() -> None:
    for name in ["PlanInvalid", "BudgetExceeded", "NoSuchAgent", "CallCycle", "Timeout", "Cancelled",
                 "HandlerError", "PolicyViolation", "BadInput", "ShuttingDown", "TransportError",
                 "RegistrationError", "ClaudeError", "ToolArgumentError"]:
        assert issubclass(getattr(coditect, name), coditect.CoditectError), name
