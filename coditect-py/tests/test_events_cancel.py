"""Streaming a run's events, and cancelling from Python."""

import asyncio

import coditect
from conftest import within


async def test_events_stream_in_order(rt: coditect.Runtime) -> None:
    @rt.agent("upper", capabilities=["shout"])
    async def upper(task: str, ctx: coditect.Context) -> str:
        ctx.emit({"working_on": task})
        await asyncio.sleep(0)
        ctx.emit({"almost": True})
        return task.upper()

    plan = coditect.Plan(
        [
            coditect.Step("a", "shout", input=coditect.Goal()),
            coditect.Step("b", "shout", input=coditect.Output("a")),
        ]
    )
    handle = coditect.Orchestrator(rt, planner=coditect.StaticPlanner(plan)).start("go")

    async def collect() -> list:
        return [e async for e in handle.events()]

    events = await within(collect())
    outcome = await within(handle.outcome())
    assert outcome.output == "GO" and outcome.run_id == handle.run_id
    assert [e["seq"] for e in events] == list(range(len(events)))
    types = [e["type"] for e in events]
    assert types[0] == "run_started" and types[1] == "plan_made" and types[-1] == "run_finished"
    assert events[-1]["status"] == "succeeded" and events[-1]["output"] == "GO"
    for step in ("a", "b"):
        mine = [e for e in events if e.get("step") == step]
        kinds = [e["type"] for e in mine]
        assert kinds[0] == "step_dispatched" and kinds[1] == "step_started", kinds
        assert kinds.count("step_succeeded") == 1, kinds
        assert kinds.index("step_started") < kinds.index("step_succeeded"), kinds
        # Every progress event arrives, in the order emitted, after the step's
        # start and before its result (the core's causal order).
        done = kinds.index("step_succeeded")
        assert all(k != "step_progress" for k in kinds[done:]), kinds
        progress = [e["data"] for e in mine if e["type"] == "step_progress"]
        assert progress == [{"working_on": "go" if step == "a" else "GO"}, {"almost": True}], kinds
    # b starts only after a succeeded.
    assert types.index("step_succeeded") < [i for i, e in enumerate(events) if e["type"] == "step_dispatched" and e["step"] == "b"][0]


async def test_cancelling_the_awaiting_task_cancels_the_run_and_its_handlers(rt: coditect.Runtime) -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    @rt.agent("sleeper", capabilities=["sleep"])
    async def sleeper(task: str, ctx: coditect.Context) -> str:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "woke"

    plan = coditect.Plan([coditect.Step("s", "sleep", input=coditect.Goal())])
    orch = coditect.Orchestrator(rt, planner=coditect.StaticPlanner(plan))
    task = asyncio.ensure_future(orch.run("nap"))
    await within(started.wait())
    task.cancel()
    await within(cancelled.wait())
    try:
        await within(task)
        raise AssertionError("the run should have been cancelled")
    except asyncio.CancelledError:
        pass
    # The runtime keeps running.
    @rt.agent("after")
    async def after(task: str) -> str:
        return "still here"

    assert await within(rt.request("after", "?")) == "still here"


async def test_cancelling_a_direct_request_reaches_the_handler(rt: coditect.Runtime) -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    @rt.agent("sleeper")
    async def sleeper(task: str, ctx: coditect.Context) -> str:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "woke"

    # Activate the id first, so the request below takes the direct path.
    sleeper_id = coditect.AgentId("sleeper", "1")
    warm = asyncio.ensure_future(rt.request(sleeper_id, "warm"))
    await within(started.wait())
    warm.cancel()
    await within(cancelled.wait())
    started.clear()
    cancelled.clear()
    task = asyncio.ensure_future(rt.request(sleeper_id, "nap"))
    await within(started.wait())
    task.cancel()
    await within(cancelled.wait())


async def test_handle_cancel_ends_the_run_as_cancelled(rt: coditect.Runtime) -> None:
    started = asyncio.Event()
    saw_cancel = asyncio.Event()

    @rt.agent("waiter", capabilities=["wait"])
    async def waiter(task: str, ctx: coditect.Context) -> str:
        started.set()
        try:
            await ctx.wait_cancelled()
        except asyncio.CancelledError:
            # A cancelled run cancels its Python handlers the asyncio way.
            assert ctx.cancelled
            saw_cancel.set()
            raise
        return "stopped"

    plan = coditect.Plan([coditect.Step("w", "wait", input=coditect.Goal())])
    handle = coditect.Orchestrator(rt, planner=coditect.StaticPlanner(plan)).start("wait")
    await within(started.wait())
    handle.cancel()
    await within(saw_cancel.wait())
    try:
        await within(handle.outcome())
        raise AssertionError("expected Cancelled")
    except coditect.Cancelled as e:
        assert e.run_id == handle.run_id and e.kind == "cancelled"
