"""Durable runs from Python: real child processes on a SQLite store killed
with SIGKILL and resumed, effects run once, questions answered from another
process, replay equal to the live stream, forks, and the DurableError family."""

import asyncio
import dataclasses
import os
import selectors
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

import coditect
import durable_agents
from conftest import TIMEOUT_S, within

CHILD = str(Path(durable_agents.__file__).resolve())


class Child:
    """A child Python process running ``durable_agents.py``, read line by line
    under a timeout, killed by its PID."""

    def __init__(self, *args: str, script: str = CHILD) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, script, *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self.lines: List[str] = []
        self._pending = b""

    def expect(self, prefix: str, timeout: float = TIMEOUT_S) -> str:
        """The rest of the next stdout line starting with ``prefix``.

        Reads the pipe's descriptor directly: a buffered reader could hold a
        second line the selector no longer sees as readable."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        sel = selectors.DefaultSelector()
        sel.register(fd, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        try:
            while True:
                while b"\n" in self._pending:
                    raw, self._pending = self._pending.split(b"\n", 1)
                    line = raw.decode(errors="replace")
                    self.lines.append(line)
                    if line.startswith(prefix):
                        return line[len(prefix):].strip()
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    self.kill()
                    pytest.fail(f"no {prefix!r} line from the child in {timeout}s: {self.lines} {self.stderr()}")
                chunk = os.read(fd, 65536)
                if not chunk:
                    self.proc.wait(5)
                    pytest.fail(f"the child ended before {prefix!r} ({self.proc.returncode}): {self.lines} {self.stderr()}")
                self._pending += chunk
        finally:
            sel.close()

    def stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read().decode(errors="replace")[-3000:]

    def kill(self) -> None:
        """SIGKILL, by PID; waits until it is gone."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def wait_ok(self) -> None:
        """Waits for a clean exit."""
        code = self.proc.wait(TIMEOUT_S)
        assert code == 0, f"child exited {code}: {self.lines} {self.stderr()}"


def steps_of(effects: str) -> Counter:
    """How many times each step's effect body ran."""
    return Counter(step for step, _ in durable_agents.effect_lines(effects))


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_killed_run_resumes_in_another_process_with_each_effect_once(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    effects = str(tmp_path / "effects")
    db = str(tmp_path / "runs.db") if backend == "sqlite" else request.getfixturevalue("postgres_dsn")
    first = Child("start", "pipeline", db, effects, "b")
    try:
        run_id = first.expect("run ")
        # b's effect is recorded before ctx.effect returns, so once b says it
        # waits, its effect is in the journal.
        assert first.expect("waiting ") == "b"
    finally:
        first.kill()
    assert first.proc.returncode == -signal.SIGKILL
    assert steps_of(effects) == {"a": 1, "b": 1}

    second = Child("resume", db, effects, run_id)
    try:
        assert second.expect("run ") == run_id
        output = second.expect("finished ")
        second.wait_ok()
    finally:
        second.kill()
    # b ran again (attempt 2) but its effect came from the journal: the value
    # it returned is the one its first attempt recorded.
    assert output == "go>a@1>b@1>c@1"
    assert steps_of(effects) == {"a": 1, "b": 1, "c": 1}
    keys = [key for _, key in durable_agents.effect_lines(effects)]
    assert all(k.startswith(f"{run_id}/") for k in keys), keys
    assert len(set(keys)) == 3


def _approval_orchestrator(rt: coditect.Runtime, store: Any, effects: str, holder: str) -> coditect.Orchestrator:
    durable_agents.register(rt, effects)
    return coditect.Orchestrator(
        rt, planner=coditect.StaticPlanner(durable_agents.plan("approval")),
        store=store, lease_holder=holder,
    )


async def test_a_paused_run_is_answered_from_another_process(tmp_path: Path) -> None:
    db, effects = str(tmp_path / "runs.db"), str(tmp_path / "effects")
    child = Child("start", "approval", db, effects, "-")
    try:
        run_id = child.expect("run ")
        request = child.expect("asked ")
        store = await within(coditect.SqliteStore.open(db))
        # While the child drives the run, another holder may not take it.
        rt = await within(coditect.Runtime.start())
        other = _approval_orchestrator(rt, store, effects, "someone-else")
        with pytest.raises(coditect.RunBusy) as busy:
            await within(other.respond(run_id, request, {"approved": True}))
        assert busy.value.kind == "busy" and busy.value.run_id == run_id
        assert isinstance(busy.value, coditect.DurableError)
        await within(rt.shutdown(0.5))
    finally:
        child.kill()

    rt = await within(coditect.Runtime.start())
    try:
        orch = _approval_orchestrator(rt, store, effects, durable_agents.HOLDER)
        paused = await within(orch.replay(run_id))
        assert paused.status == "paused"
        [question] = paused.open_questions
        assert question["request"] == request and question["step"] == "ok"
        assert question["schema"]["properties"]["approved"]["type"] == "boolean"

        # A wrong answer is refused, and the run stays paused.
        with pytest.raises(coditect.InvalidAnswer) as bad:
            await within(orch.respond(run_id, request, {"approved": "yes"}))
        assert "approved" in str(bad.value) and bad.value.kind == "invalid_answer"
        assert isinstance(bad.value, ValueError)
        still = await within(orch.replay(run_id))
        assert still.status == "paused" and len(still.events) == len(paused.events)
        with pytest.raises(coditect.NoSuchRequest):
            await within(orch.respond(run_id, request + "x", {"approved": True}))

        handle = await within(orch.respond(run_id, request, {"approved": True, "note": "go"}))
        assert isinstance(handle, coditect.RunHandle), "nobody drove the run: it is resumed here"
        outcome = await within(handle.outcome())
        assert outcome.output == "go>a@1 approved=True note=go"
        with pytest.raises((coditect.AlreadyAnswered, coditect.RunFinished)):
            await within(orch.respond(run_id, request, {"approved": False}))
        done = await within(orch.replay(run_id))
        assert done.status == "succeeded"
        types = [e["type"] for e in done.events]
        assert types.count("input_requested") == 1 and "input_provided" in types
        assert "run_resumed" in types
    finally:
        await within(rt.shutdown(0.5))
    assert steps_of(effects) == {"a": 1}


def _pipeline(rt: coditect.Runtime, store: Any, effects: str, block: Optional[str] = None) -> coditect.Orchestrator:
    durable_agents.register(rt, effects, block)
    return coditect.Orchestrator(rt, planner=coditect.StaticPlanner(durable_agents.plan("pipeline")), store=store)


async def test_replay_equals_the_live_events(rt: coditect.Runtime, tmp_path: Path) -> None:
    effects = str(tmp_path / "effects")
    store = await within(coditect.SqliteStore.open(str(tmp_path / "runs.db")))
    orch = _pipeline(rt, store, effects)
    assert orch.durable
    handle = orch.start("go")

    async def collect() -> List[Dict[str, Any]]:
        return [e async for e in handle.events()]

    live = await within(collect())
    outcome = await within(handle.outcome())
    stored = await within(orch.replay(handle.run_id))
    assert stored.events == live
    assert stored.run_id == handle.run_id and stored.status == "succeeded"
    assert stored.state["output"] == outcome.output == "go>a@1>b@1>c@1"
    recorded = [e for e in live if e["type"] == "effect_recorded"]
    assert [e["step"] for e in recorded] == ["a", "b", "c"]
    assert recorded[0]["key"].startswith(handle.run_id + "/a/work/append#0")
    assert recorded[0]["value"] == 1
    assert [e["seq"] for e in live] == list(range(len(live)))


async def test_a_question_is_answered_in_process_and_the_handle_is_none(rt: coditect.Runtime, tmp_path: Path) -> None:
    effects = str(tmp_path / "effects")
    orch = _approval_orchestrator(rt, coditect.MemoryStore(), effects, "here")
    handle = orch.start("go")
    events = handle.events()

    async def asked() -> Dict[str, Any]:
        async for e in events:
            if e["type"] == "input_requested":
                return e
        raise AssertionError("no question")

    q = await within(asked())
    assert q["prompt"] == "Ship go>a@1?" and q["agent"].startswith("approve/")
    with pytest.raises(coditect.InvalidAnswer):
        await within(orch.respond(handle.run_id, q["request"], {"note": "no approved"}))
    # The driver answered that after journaling the question (the live event
    # itself may run ahead of the journal).
    assert (await within(orch.replay(handle.run_id))).status == "paused"
    assert await within(orch.respond(handle.run_id, q["request"], {"approved": False})) is None
    outcome = await within(handle.outcome())
    assert outcome.output == "go>a@1 approved=False note="


async def test_effects_and_idempotency_keys(rt: coditect.Runtime) -> None:
    calls: List[str] = []
    seen: Dict[str, Any] = {}

    class Flaky(Exception):
        pass

    @rt.agent("fx", capabilities=["fx"])
    async def fx(task: str, ctx: coditect.Context) -> Any:
        seen["key"] = ctx.idempotency_key

        def plain(key: str) -> Dict[str, Any]:
            calls.append(key)
            return {"key": key, "n": len(calls)}

        first = await ctx.effect("plain", plain)
        if ctx.attempt == 1:
            async def fails(key: str) -> int:
                calls.append("fails")
                raise Flaky("try again")

            with pytest.raises(Flaky):
                await ctx.effect("fails", fails)
            raise coditect.HandlerError("again", transient=True)
        return first

    plan = coditect.Plan([coditect.Step("s", "fx", input=coditect.Goal())])
    orch = coditect.Orchestrator(
        rt, planner=coditect.StaticPlanner(plan), store=coditect.MemoryStore(),
        policy=coditect.Policy(max_attempts=2),
    )
    outcome = await within(orch.run("go"))
    # The second attempt got the first attempt's recorded result.
    assert outcome.output["n"] == 1
    assert calls == [outcome.output["key"], "fails"]
    assert outcome.output["key"] == f"{outcome.run_id}/s/fx/plain#0"
    assert seen["key"] == f"{outcome.run_id}/s"

    # Outside a durable run an effect simply runs, and asking is refused.
    @rt.agent("plainfx")
    async def plainfx(task: str, ctx: coditect.Context) -> Any:
        a = await ctx.effect("x", lambda key: 1)
        b = await ctx.effect("x", lambda key: 2)
        return [a, b, ctx.idempotency_key]

    a, b, key = await within(rt.request("plainfx", "hi"))
    assert (a, b) == (1, 2) and key

    @rt.agent("asker")
    async def asker(task: str, ctx: coditect.Context) -> Any:
        return await ctx.ask("q", "anything?")

    with pytest.raises(coditect.HandlerError, match="outside a durable run"):
        await within(rt.request("asker", "hi"))


async def test_fork_reruns_only_the_changed_step_and_after(rt: coditect.Runtime, tmp_path: Path) -> None:
    effects = str(tmp_path / "effects")
    orch = _pipeline(rt, coditect.MemoryStore(), effects)
    first = await within(orch.run("go"))
    stored = await within(orch.replay(first.run_id))
    at = next(i for i, e in enumerate(stored.events) if e["type"] == "step_succeeded" and e["step"] == "a") + 1
    forked = await within(orch.fork(first.run_id, at=at, step="b", input=coditect.Literal("other")))
    out = await within(forked.outcome())
    assert out.run_id != first.run_id
    assert out.steps["a"] == first.steps["a"]
    # b's new input is a literal, so a has no dependent left: both ends.
    assert out.output == {"a": "go>a@1", "c": "other>b@1>c@1"}
    assert steps_of(effects) == {"a": 1, "b": 2, "c": 2}
    with pytest.raises(coditect.NoSuchRequest):
        await within(orch.fork(first.run_id, at=at, step="zz", input="x"))
    with pytest.raises(TypeError):
        orch.fork(first.run_id, at=at, step="b")


async def test_durable_errors(rt: coditect.Runtime) -> None:
    plan = coditect.Plan([coditect.Step("a", "shout", input=coditect.Goal())])

    @rt.agent("upper", capabilities=["shout"])
    async def upper(task: str) -> str:
        return task.upper()

    plain = coditect.Orchestrator(rt, planner=coditect.StaticPlanner(plan))
    assert not plain.durable
    with pytest.raises(coditect.NoStore):
        await within(plain.submit("go"))
    with pytest.raises(coditect.NoStore):
        await within(plain.replay(str(uuid.uuid4())))
    orch = coditect.Orchestrator(rt, planner=coditect.StaticPlanner(plan), store=coditect.MemoryStore())
    with pytest.raises(coditect.RunNotFound) as nf:
        await within(orch.resume(str(uuid.uuid4())))
    assert isinstance(nf.value, coditect.DurableError) and isinstance(nf.value, coditect.CoditectError)
    with pytest.raises(ValueError):
        orch.resume("not-a-run-id")
    handle = await within(orch.submit("go"))
    assert (await within(handle.outcome())).output == "GO"
    with pytest.raises(coditect.RunFinished):
        await within(orch.resume(handle.run_id))
    with pytest.raises(coditect.StoreError):
        coditect.SqliteStore("/proc/no/such/dir/runs.db")
    with pytest.raises(TypeError):
        coditect.Orchestrator(rt, planner=coditect.StaticPlanner(plan), store=object())  # type: ignore[arg-type]


async def test_an_unanswered_question_times_out_under_the_policy(rt: coditect.Runtime) -> None:
    @rt.agent("waiter", capabilities=["wait"])
    async def waiter(task: str, ctx: coditect.Context) -> Any:
        try:
            return await ctx.ask("q", "anyone?", schema={"type": "string"})
        except coditect.HandlerError as e:
            return {"timed_out": e.transient, "message": e.message}

    plan = coditect.Plan([coditect.Step("s", "wait", input=coditect.Goal())])
    orch = coditect.Orchestrator(
        rt, planner=coditect.StaticPlanner(plan), store=coditect.MemoryStore(),
        policy=coditect.Policy(input_timeout_s=0.05, max_attempts=1),
    )
    outcome = await within(orch.run("go"))
    assert outcome.output["timed_out"] is True, outcome.output
    stored = await within(orch.replay(outcome.run_id))
    types = [e["type"] for e in stored.events]
    assert types.index("input_requested") < types.index("input_timed_out")
    [q] = stored.state["questions"]
    assert q["timed_out"] is True and q["answer"] is None
    with pytest.raises((coditect.NoSuchRequest, coditect.RunFinished)):
        await within(orch.respond(outcome.run_id, q["request"], "late"))


async def test_ask_with_a_pydantic_model_answers_with_the_model(rt: coditect.Runtime) -> None:
    import pydantic  # the test environment has it (the package never needs it)
    from typing import Literal

    class Choice(pydantic.BaseModel):
        option: Literal["a", "b"]
        reason: str

    @rt.agent("chooser", capabilities=["choose"])
    async def chooser(task: str, ctx: coditect.Context) -> str:
        choice = await ctx.ask("pick", "a or b?", schema=Choice)
        return f"{type(choice).__name__}:{choice.option}:{choice.reason}"

    plan = coditect.Plan([coditect.Step("s", "choose", input=coditect.Goal())])
    orch = coditect.Orchestrator(rt, planner=coditect.StaticPlanner(plan), store=coditect.MemoryStore())
    handle = orch.start("go")

    async def asked() -> Dict[str, Any]:
        async for e in handle.events():
            if e["type"] == "input_requested":
                return e
        raise AssertionError("no question")

    q = await within(asked())
    assert q["schema"]["properties"]["option"]["enum"] == ["a", "b"]
    with pytest.raises(coditect.InvalidAnswer):
        await within(orch.respond(handle.run_id, q["request"], {"option": "c", "reason": "?"}))
    assert await within(orch.respond(handle.run_id, q["request"], {"option": "b", "reason": "shorter"})) is None
    assert (await within(handle.outcome())).output == "Choice:b:shorter"


def test_the_durable_approval_example_survives_a_kill_and_is_answered_from_another_process(tmp_path: Path) -> None:
    example = str(Path(__file__).resolve().parents[1] / "examples" / "durable_approval.py")
    db = str(tmp_path / "runs.db")
    first = Child("--db", db, script=example)
    try:
        run_id = first.expect("run ")
        request = first.expect("asked ").split(":", 1)[0]
    finally:
        first.kill()
    refused = Child("--db", db, "--respond", run_id, request, "maybe", script=example)
    assert "the run stays paused" in refused.expect("refused: ")
    assert refused.proc.wait(TIMEOUT_S) == 2
    answered = Child("--db", db, "--respond", run_id, request, "yes", "looks", "good", script=example)
    try:
        assert answered.expect("finished: ") == 'shipped "release notes v2" (note: looks good)'
        answered.wait_ok()
    finally:
        answered.kill()
    with open(db + ".effects") as f:
        assert len(f.read().splitlines()) == 1


async def test_a_cancelled_durable_run_is_finished_in_the_store(rt: coditect.Runtime, tmp_path: Path) -> None:
    effects = str(tmp_path / "effects")
    orch = _pipeline(rt, coditect.MemoryStore(), effects, block="b")
    handle = await within(orch.submit("go"))

    async def blocked() -> None:
        async for e in handle.events():
            if e["type"] == "effect_recorded" and e["step"] == "b":
                return
        raise AssertionError("b never made its effect")

    await within(blocked())
    handle.cancel()
    with pytest.raises(coditect.Cancelled):
        await within(handle.outcome())
    stored = await within(orch.replay(handle.run_id))
    assert stored.status == "cancelled"
    assert stored.events[-1]["type"] == "run_finished"
    with pytest.raises(coditect.RunFinished):
        await within(orch.resume(handle.run_id))
    assert steps_of(effects) == {"a": 1, "b": 1}
