"""durable_approval: a run that survives its process and waits for a person.

    python coditect-py/examples/durable_approval.py --db /tmp/runs.db
    # run 0193…
    # asked 0193…/review/approver/ship#0: Ship "release notes v2"? …
    #   <- kill it (Ctrl-C, kill -9) whenever you like, then from any process:
    python coditect-py/examples/durable_approval.py --db /tmp/runs.db \
        --respond RUN_ID REQUEST_ID yes "looks good"
    # finished: shipped "release notes v2" (note: looks good)

A two-step plan on the SQLite store at ``--db``: ``draft`` writes a draft
through an exactly-once effect (``ctx.effect``: it appends one line to
``DB.effects`` and its result is journaled, so a resumed run never appends
twice), then ``review`` asks for approval (``ctx.ask`` with a dataclass
schema) and the run pauses. ``--respond`` answers from another process: a
wrong answer is refused (the run stays paused); a right one resumes the run
there and prints its result. ``--resume RUN_ID`` continues a run whose
process died before the question. No network, no API key.
"""

import argparse
import asyncio
import dataclasses
import os
import sys
from typing import Optional

import coditect

HOLDER = "durable_approval"


@dataclasses.dataclass
class Approval:
    """A reviewer's answer."""

    approved: bool
    note: str = ""


def team(rt: coditect.Runtime, effects: str) -> None:
    """Registers the drafter and the approver."""

    @rt.agent("drafter", capabilities=["draft"], description="Writes a draft, once.")
    async def drafter(task: str, ctx: coditect.Context) -> str:
        async def write(key: str) -> str:
            # The key is the same on every attempt: an idempotency key for
            # whatever outside system the effect talks to.
            with open(effects, "a") as f:
                f.write(f"{key} {task}\n")
                f.flush()
                os.fsync(f.fileno())
            return f'"{task}"'

        return await ctx.effect("write", write)

    @rt.agent("approver", capabilities=["approve"], description="Asks a person.")
    async def approver(draft: str, ctx: coditect.Context) -> str:
        answer = await ctx.ask("ship", f"Ship {draft}? Answer yes/no and a note.", schema=Approval)
        verb = "shipped" if answer.approved else "held back"
        return f"{verb} {draft} (note: {answer.note or '-'})"


async def main(args: argparse.Namespace) -> int:
    rt = await coditect.Runtime.start()
    store = await coditect.SqliteStore.open(args.db)
    team(rt, args.db + ".effects")
    plan = coditect.Plan(
        [
            coditect.Step("draft", "draft", input=coditect.Goal()),
            coditect.Step("review", "approve", input=coditect.Output("draft")),
        ]
    )
    orch = coditect.Orchestrator(
        rt, planner=coditect.StaticPlanner(plan), store=store, lease_holder=HOLDER
    )
    handle: Optional[coditect.RunHandle]
    if args.respond:
        if len(args.respond) < 3:
            print("--respond takes RUN_ID REQUEST_ID yes|no [NOTE...]", file=sys.stderr)
            return 2
        run_id, request_id, yes_no, *note = args.respond
        answer = {"approved": yes_no == "yes", "note": " ".join(note)}
        if yes_no not in ("yes", "no"):
            answer = {"approved": yes_no}  # not a boolean: refused
        try:
            handle = await orch.respond(run_id, request_id, answer)
        except coditect.InvalidAnswer as e:
            print(f"refused: {e}; the run stays {(await orch.replay(run_id)).status}")
            return 2
        if handle is None:  # delivered to a run driven here: not in this CLI
            return 0
    elif args.resume:
        try:
            handle = await orch.resume(args.resume)
        except coditect.RunFinished:
            print(f"finished: {(await orch.replay(args.resume)).state['output']}")
            return 0
    else:
        handle = await orch.submit(args.goal)
    print(f"run {handle.run_id}", flush=True)
    async for event in handle.events():
        if event["type"] == "input_requested":
            # The live event may come before its journal append; a person
            # answering from another process reads the store.
            while not (await orch.replay(handle.run_id)).open_questions:
                await asyncio.sleep(0.005)
            print(f"asked {event['request']}: {event['prompt']}", flush=True)
    outcome = await handle.outcome()
    print(f"finished: {outcome.output}", flush=True)
    await rt.shutdown(0.5)
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", required=True, help="the SQLite file (created if missing)")
    p.add_argument("--goal", default="release notes v2", help="what to draft, for a new run")
    p.add_argument("--resume", metavar="RUN_ID", help="continue that run")
    p.add_argument("--respond", nargs="+", metavar="ARG", help="RUN_ID REQUEST_ID yes|no [NOTE...]")
    sys.exit(asyncio.run(main(p.parse_args())))
