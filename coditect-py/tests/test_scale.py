"""Thousands of concurrent runs, and many requests, without a leak."""

import asyncio
import gc

import coditect
from conftest import rss_mib, within

RUNS = 2_000
ROUNDS = 3


async def test_thousands_of_concurrent_runs_without_a_leak(rt: coditect.Runtime) -> None:
    @rt.agent("upper", capabilities=["shout"])
    async def upper(task: str, ctx: coditect.Context) -> str:
        ctx.emit({"len": len(task)})
        await asyncio.sleep(0)
        return task.upper()

    @rt.agent("join", capabilities=["join"])
    async def join(task: list, ctx: coditect.Context) -> str:
        return "+".join(task)

    plan = coditect.Plan(
        [
            coditect.Step("a", "shout", input=coditect.Goal()),
            coditect.Step("b", "shout", input=coditect.Literal("b")),
            coditect.Step("c", "join", input=[coditect.Output("a"), coditect.Output("b")]),
        ]
    )
    orch = coditect.Orchestrator(rt, planner=coditect.StaticPlanner(plan))

    async def round_of_runs() -> None:
        outcomes = await within(asyncio.gather(*(orch.run(f"run{i}") for i in range(RUNS))), 120)
        assert [o.output for o in outcomes] == [f"RUN{i}+B" for i in range(RUNS)]

    # Warm-up: allocator arenas, activations, caches. Each run in flight holds
    # its event buffer (the orchestrator's 4,096-event broadcast channel), so
    # the first rounds raise the allocator's high-water mark; a leak shows as
    # growth after that.
    await round_of_runs()
    await round_of_runs()
    gc.collect()
    before = rss_mib()
    for _ in range(ROUNDS):
        await round_of_runs()
    gc.collect()
    grown = rss_mib() - before
    print(f"RSS after warm-up {before:.1f} MiB, grew {grown:.1f} MiB over {ROUNDS * RUNS} more runs")
    # A leak of even 2 KiB per run would be 12 MiB here.
    assert grown < 12, f"RSS grew {grown:.1f} MiB over {ROUNDS * RUNS} runs"
    assert rt.pending_requests() == 0


async def test_many_direct_requests_without_a_leak(rt: coditect.Runtime) -> None:
    @rt.agent("worker")
    async def worker(task: dict) -> dict:
        return {"id": task["id"], "ok": True}

    rt.register("echo", coditect.Echo())
    ids = [coditect.AgentId("worker", str(k)) for k in range(8)]

    async def burst(n: int) -> None:
        async def lane(start: int) -> None:
            for i in range(start, n, 64):
                r = await rt.request(ids[i % 8], {"id": i, "payload": "x" * 64})
                assert r["id"] == i
                assert (await rt.request("echo", i)) == i

        await within(asyncio.gather(*(lane(s) for s in range(64))), 120)

    await burst(20_000)
    gc.collect()
    before = rss_mib()
    await burst(60_000)
    gc.collect()
    grown = rss_mib() - before
    print(f"RSS grew {grown:.1f} MiB over 120,000 more requests")
    assert grown < 12, f"RSS grew {grown:.1f} MiB"
