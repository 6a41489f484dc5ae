"""What durability costs a Python run: a chain of Python steps (each waits
for the one before, so each result is made durable before the next step is
dispatched) and a wide plan (independent steps, whose records are batched),
run with no store, the memory store and the SQLite store, with and without
one ``ctx.effect`` per step.

    python benches/python/durable_bench.py [STEPS] [REPS]

(with the release wheel installed, as ``benches/python/run.sh`` installs it).
Prints one line per configuration: the median over REPS runs of the wall time
per step, in microseconds.
"""

import asyncio
import os
import statistics
import sys
import tempfile
import time
from typing import Any, List, Optional

import coditect


def plan(shape: str, n: int) -> coditect.Plan:
    if shape == "wide":
        return coditect.Plan([coditect.Step(f"s{i}", "inc", input=coditect.Literal(0)) for i in range(n)])
    steps = [coditect.Step("s0", "inc", input=coditect.Literal(0))]
    steps += [coditect.Step(f"s{i}", "inc", input=coditect.Output(f"s{i - 1}")) for i in range(1, n)]
    return coditect.Plan(steps)


async def bench(shape: str, steps: int, reps: int, store_kind: str, effect: bool, tmp: str) -> float:
    rt = await coditect.Runtime.start()

    @rt.agent("inc", capabilities=["inc"])
    async def inc(x: int, ctx: coditect.Context) -> int:
        if effect:
            return int(await ctx.effect("inc", lambda key: x + 1))
        return x + 1

    store: Optional[Any] = None
    if store_kind == "memory":
        store = coditect.MemoryStore()
    elif store_kind == "sqlite":
        store = await coditect.SqliteStore.open(os.path.join(tmp, f"bench-{shape}-{effect}.db"))
    orch = coditect.Orchestrator(rt, planner=coditect.StaticPlanner(plan(shape, steps)), store=store)
    per_step: List[float] = []
    await orch.run("warm-up")
    for _ in range(reps):
        t = time.perf_counter()
        out = await orch.run("go")
        per_step.append((time.perf_counter() - t) / steps * 1e6)
        expected = steps if shape == "chain" else {f"s{i}": 1 for i in range(steps)}
        assert out.output == expected, out.output
    await rt.shutdown(0.5)
    return statistics.median(per_step)


async def main() -> None:
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    reps = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    with tempfile.TemporaryDirectory() as tmp:
        for shape in ("chain", "wide"):
            for effect in (False, True):
                for store in ("none", "memory", "sqlite"):
                    us = await bench(shape, steps, reps, store, effect, tmp)
                    what = "one ctx.effect per step" if effect else "no effect"
                    print(f"durable {shape:<5} store={store:<6} {what:<24} {steps} steps: {us:8.1f} us/step", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
