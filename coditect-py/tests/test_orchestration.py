"""Python agents in plans, and Python and Rust agents delegating to each other."""

import asyncio
from dataclasses import dataclass

import coditect
from conftest import within


async def test_python_agents_in_a_multi_step_plan(rt: coditect.Runtime) -> None:
    @rt.agent("upper", capabilities=["shout"], description="Upper-cases text.")
    async def upper(task: str, ctx: coditect.Context) -> str:
        assert ctx.run_id is not None and ctx.step in ("a", "b", "c")
        return task.upper()

    @rt.agent("joiner", capabilities=["join"])
    class Joiner:
        """A class agent: one instance per agent id, state kept between messages."""

        def __init__(self) -> None:
            self.seen = 0

        async def handle(self, task: dict, ctx: coditect.Context) -> str:
            self.seen += 1
            return f"{task['left']}+{task['right']}#{self.seen}"

    plan = coditect.Plan(
        [
            coditect.Step("a", "shout", input=coditect.Goal()),
            coditect.Step("b", "shout", input=coditect.Literal("second")),
            coditect.Step("c", "join", input={"left": coditect.Output("a"), "right": coditect.Output("b")}),
        ]
    )
    orch = coditect.Orchestrator(rt, planner=coditect.StaticPlanner(plan))
    outcome = await within(orch.run("hello"))
    assert outcome.output == "HELLO+SECOND#1"
    assert outcome.steps == {"a": "HELLO", "b": "SECOND", "c": "HELLO+SECOND#1"}
    assert [n["step"] for n in outcome.trace] == ["a", "b", "c"]
    assert outcome.usage.total_tokens == 0
    # One instance per agent id keeps its state between messages.
    assert await within(rt.request("joiner/k", {"left": 1, "right": 2})) == "1+2#1"
    assert await within(rt.request("joiner/k", {"left": 3, "right": 4})) == "3+4#2"
    assert await within(rt.request("joiner/other", {"left": 5, "right": 6})) == "5+6#1"


async def test_values_cross_as_python_values(rt: coditect.Runtime) -> None:
    @dataclass
    class Ask:
        q: str
        n: int

    @rt.agent("echo_py")
    async def echo_py(task):  # one parameter: no context wanted
        return task

    value = {"s": "x", "i": 3, "f": 1.5, "b": True, "none": None, "l": [1, "two"], "d": {"k": [None]}}
    assert await within(rt.request("echo_py/1", value)) == value
    rt.register("rust_echo", coditect.Echo())
    assert await within(rt.request("rust_echo", value)) == value
    # Dataclasses go in as their fields.
    assert await within(rt.request("rust_echo", Ask("why", 2))) == {"q": "why", "n": 2}


async def test_python_delegates_to_rust_and_rust_back_to_python(rt: coditect.Runtime) -> None:
    calls = []

    @rt.agent("front", capabilities=["front"])
    async def front(task: str, ctx: coditect.Context) -> str:
        calls.append(("front", ctx.depth))
        back = await ctx.delegate("relay", task + "!")
        return f"front({back})"

    @rt.agent("back", capabilities=["back"])
    async def back(task: str, ctx: coditect.Context) -> str:
        calls.append(("back", ctx.depth))
        return task.upper()

    # A Rust agent in the middle: it delegates to the Python agent "back".
    rt.register("relay", coditect.Relay("back"), capabilities=["relay"])

    plan = coditect.Plan([coditect.Step("s", "front", input=coditect.Goal())])
    outcome = await within(coditect.Orchestrator(rt, planner=coditect.StaticPlanner(plan)).run("hi"))
    assert outcome.output == "front(HI!)"
    assert calls == [("front", 0), ("back", 2)]
    agents = outcome.trace[0]
    assert "relay" in str(agents) and "back" in str(agents)
    # And outside any run, called directly from Python.
    assert await within(rt.request("front", "yo")) == "front(YO!)"


async def test_llm_agent_delegates_to_a_python_agent(rt: coditect.Runtime) -> None:
    @rt.agent("fact", capabilities=["fact_check"])
    async def fact(task: str, ctx: coditect.Context) -> str:
        return f"checked: {task}"

    model = coditect.ScriptedModel(
        [
            coditect.ScriptedReply.tool_call("delegate", {"capability": "fact_check", "task": "sky is blue"}),
            "done: sky is blue",
        ]
    )
    writer = coditect.LlmAgent(model, delegate_to=[("fact_check", "Checks a claim.")], capabilities=["write"])
    rt.register("writer", writer)
    plan = coditect.Plan([coditect.Step("w", "write", input=coditect.Goal())])
    outcome = await within(coditect.Orchestrator(rt, planner=coditect.StaticPlanner(plan)).run("write"))
    assert outcome.output == "done: sky is blue"
    results = model.requests()[1]["tool_results"]
    assert results[0]["content"] == "checked: sky is blue" and not results[0]["is_error"]


async def test_delegate_all_runs_subtasks_in_parallel(rt: coditect.Runtime) -> None:
    both_running = asyncio.Event()
    running = 0

    @rt.agent("slow", capabilities=["slow"])
    async def slow(task: int, ctx: coditect.Context) -> int:
        nonlocal running
        running += 1
        if running == 2:
            both_running.set()
        await within(both_running.wait())
        return task * 10

    @rt.agent("fan", capabilities=["fan"])
    async def fan(task: list, ctx: coditect.Context) -> list:
        return await ctx.delegate_all([("slow", t) for t in task])

    plan = coditect.Plan([coditect.Step("f", "fan", input=coditect.TaskInput())])
    outcome = await within(coditect.Orchestrator(rt, planner=coditect.StaticPlanner(plan)).run("fan out", input=[1, 2]))
    assert outcome.output == [10, 20]


async def test_llm_planner_plans_over_python_agents(rt: coditect.Runtime) -> None:
    @rt.agent("upper", capabilities=["shout"], description="Upper-cases text.")
    async def upper(task: str, ctx: coditect.Context) -> str:
        return task.upper()

    planner = coditect.LlmPlanner(
        coditect.ScriptedModel(
            [
                coditect.ScriptedReply.tool_call(
                    "submit_plan",
                    {"steps": [{"id": "one", "target": {"capability": "shout"}, "input": "goal"}]},
                )
            ]
        )
    )
    outcome = await within(coditect.Orchestrator(rt, planner=planner).run("plan me"))
    assert outcome.output == "PLAN ME"


async def test_runtime_as_async_context_manager() -> None:
    async with await within(coditect.Runtime.start()) as rt:
        rt.register("echo", coditect.Echo())
        assert await within(rt.request("echo", [1, 2])) == [1, 2]
    with __import__("pytest").raises(coditect.CoditectError):
        await within(rt.request("echo", 1))
