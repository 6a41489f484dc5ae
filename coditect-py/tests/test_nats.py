"""A run over NATS with a real nats-server: a worker runtime and an
orchestrating runtime, both Python, meet only through the server."""

import coditect
from conftest import within


async def test_a_plan_runs_across_two_runtimes_over_nats(nats_url: str) -> None:
    worker = await within(coditect.Runtime.start(nats=nats_url, tenant="acme"), 30)
    front = await within(coditect.Runtime.start(nats=nats_url, tenant="acme"), 30)
    try:
        @worker.agent("upper", capabilities=["shout"], description="Upper-cases text.")
        async def upper(task: str, ctx: coditect.Context) -> str:
            ctx.emit({"on": ctx.agent_id})
            return task.upper()

        assert worker.tenant == "acme"
        # The orchestrating side has no agents of its own: it plans over the
        # worker's card and dispatches through the server.
        plan = coditect.Plan(
            [
                coditect.Step("a", agent="upper/one", input=coditect.Goal()),
                coditect.Step("b", agent="upper/two", input=coditect.Output("a")),
            ]
        )
        orch = coditect.Orchestrator(front, planner=coditect.StaticPlanner(plan), cards=worker.cards())
        handle = orch.start("over nats")

        async def collect() -> list:
            return [e async for e in handle.events()]

        events = await within(collect(), 30)
        outcome = await within(handle.outcome(), 30)
        assert outcome.steps == {"a": "OVER NATS", "b": "OVER NATS"}
        assert events[0]["type"] == "run_started" and events[-1]["type"] == "run_finished"
        assert [e["seq"] for e in events] == list(range(len(events)))
        # Progress over NATS travels apart from results, yet every step's
        # progress is recorded before its result (replies carry a tally).
        progress = [e["data"] for e in events if e["type"] == "step_progress"]
        assert progress == [{"on": "upper/one"}, {"on": "upper/two"}], progress
        for step in ("a", "b"):
            kinds = [e["type"] for e in events if e.get("step") == step]
            assert kinds.index("step_started") < kinds.index("step_progress") < kinds.index("step_succeeded"), kinds
        assert await within(front.request("upper/three", "direct"), 30) == "DIRECT"
    finally:
        await within(front.shutdown(0.5), 30)
        await within(worker.shutdown(0.5), 30)
