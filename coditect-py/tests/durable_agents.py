"""The agents and plans of the durable-run tests, and a child process that
runs them on a SQLite store (``python durable_agents.py MODE DB EFFECTS ...``).

Modes (each prints ``run <id>`` once the run is in the store):

``DB`` is a SQLite file, or a PostgreSQL connection string (``host=…``).

- ``start pipeline|approval DB EFFECTS BLOCK``: submits a run; the step
  named ``BLOCK`` prints ``waiting <step>`` after its effect and then waits
  until it is killed. An approval run prints ``asked <request id>`` when its
  question is asked.
- ``resume DB EFFECTS RUN_ID``: resumes the run and prints
  ``finished <output>`` at its end.

Every effect body that runs appends one line ``<step> <effect key>`` to the
file ``EFFECTS``, so the tests count effects from outside the processes.
"""

import asyncio
import dataclasses
import os
import sys
from typing import Optional

import coditect

# One stable lease holder name: a restarted process takes its runs' leases
# back at once instead of waiting for the killed one's to expire.
HOLDER = "py-durable-child"


@dataclasses.dataclass
class Approval:
    """The answer to the approval question."""

    approved: bool
    note: str = ""


def plan(kind: str) -> coditect.Plan:
    """The pipeline (a → b → c) or the approval plan (a → ok)."""
    if kind == "pipeline":
        return coditect.Plan(
            [
                coditect.Step("a", "work", input=coditect.Goal()),
                coditect.Step("b", "work", input=coditect.Output("a")),
                coditect.Step("c", "work", input=coditect.Output("b")),
            ]
        )
    return coditect.Plan(
        [
            coditect.Step("a", "work", input=coditect.Goal()),
            coditect.Step("ok", "approve", input=coditect.Output("a")),
        ]
    )


def register(rt: coditect.Runtime, effects: str, block: Optional[str] = None) -> None:
    """Registers ``work`` (one effect per step, then blocks on ``block``) and
    ``approve`` (asks for an :class:`Approval`)."""

    @rt.agent("work", capabilities=["work"])
    async def work(task: str, ctx: coditect.Context) -> str:
        step = ctx.step

        async def append(key: str) -> int:
            with open(effects, "a") as f:
                f.write(f"{step} {key}\n")
                f.flush()
                os.fsync(f.fileno())
            return ctx.attempt

        made_in = await ctx.effect("append", append)
        if step == block:
            print(f"waiting {step}", flush=True)
            await ctx.wait_cancelled()
        return f"{task}>{step}@{made_in}"

    @rt.agent("approve", capabilities=["approve"])
    async def approve(task: str, ctx: coditect.Context) -> str:
        answer = await ctx.ask("ship", f"Ship {task}?", schema=Approval)
        assert isinstance(answer, Approval), type(answer)
        return f"{task} approved={answer.approved} note={answer.note}"


async def open_store(spec: str) -> "coditect.SqliteStore | coditect.PostgresStore":
    """The store named by ``spec``: a PostgreSQL connection string
    (``host=…`` or a ``postgresql://`` URL), else a SQLite file."""
    if spec.startswith(("host=", "postgres://", "postgresql://")):
        return await coditect.PostgresStore.connect(spec)
    return await coditect.SqliteStore.open(spec)


def effect_lines(effects: str) -> list:
    """The effect lines written so far, as ``(step, key)`` pairs."""
    try:
        with open(effects) as f:
            return [tuple(line.split(" ", 1)) for line in f.read().splitlines() if line]
    except FileNotFoundError:
        return []


async def main(argv: list) -> int:
    mode, kind_or_db = argv[0], argv[1]
    rt = await coditect.Runtime.start()
    if mode == "start":
        kind, db, effects, block = kind_or_db, argv[2], argv[3], argv[4]
        store = await open_store(db)
        register(rt, effects, block)
        orch = coditect.Orchestrator(
            rt, planner=coditect.StaticPlanner(plan(kind)), store=store, lease_holder=HOLDER
        )
        handle = await orch.submit("go")
        print(f"run {handle.run_id}", flush=True)
        async for e in handle.events():
            # Every event on stderr: what a failing test shows of the run.
            print(f"event {e['seq']} {e['type']} {e.get('step', '')}", file=sys.stderr, flush=True)
            if e["type"] == "input_requested":
                # The live event can come before the journal append that
                # holds it; another process reads the store, so say "asked"
                # once the store shows the question.
                while not (await orch.replay(handle.run_id)).open_questions:
                    await asyncio.sleep(0.005)
                print(f"asked {e['request']}", flush=True)
        await handle.outcome()
        return 0
    db, effects, run_id = kind_or_db, argv[2], argv[3]
    store = await open_store(db)
    register(rt, effects)
    orch = coditect.Orchestrator(
        rt, planner=coditect.StaticPlanner(plan("pipeline")), store=store, lease_holder=HOLDER
    )
    handle = await orch.resume(run_id)
    print(f"run {handle.run_id}", flush=True)
    outcome = await handle.outcome()
    print(f"finished {outcome.output}", flush=True)
    await rt.shutdown(0.5)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
