"""coditect from Python, on the workloads of the peer anchors
(autogen_core_bench.py, asyncio_baseline.py beside this file):

  fanout  : 1 caller, K=8 Python agents, N=100,000 requests round-robin,
            C=256 lanes in flight; each agent replies at once. Round trips/s.
  latency : 10,000 sequential request/reply round trips to Python agents
            (after 1,000 warm-up); p50 / p99 in microseconds.
  fanout-await : fanout, but each handler awaits once (asyncio.sleep(0))
            before replying, so every request suspends and lanes interleave.
  rust    : N=100,000 sequential round trips from Python to a Rust-hosted
            agent (coditect.Echo); round trips/s and p50.

The payload is the anchors' ~100-byte string. Handlers are `async def`.
Run: python coditect_bench.py fanout | latency | rust
"""

import asyncio
import statistics
import sys
import time

import coditect

K, N, C, SEQ, WARMUP = 8, 100_000, 256, 10_000, 1_000
PAYLOAD = '{"task":"summarize","doc_id":123456,"priority":3,"tags":["a","b","c"],"meta":{"lang":"en","v":1}}'


async def main(workload: str) -> None:
    rt = await coditect.Runtime.start()

    @rt.agent("worker")
    async def worker(task: tuple, ctx: coditect.Context) -> tuple:
        return (task[0], "ok")  # zero work

    @rt.agent("yielder")
    async def yielder(task: tuple, ctx: coditect.Context) -> tuple:
        await asyncio.sleep(0)
        return (task[0], "ok")

    rt.register("echo", coditect.Echo())
    workers = [coditect.AgentId("worker", str(i)) for i in range(K)]
    for w in workers:  # activate each id once
        await rt.request(w, (0, PAYLOAD))

    if workload in ("fanout", "fanout-await"):
        if workload == "fanout-await":
            workers = [coditect.AgentId("yielder", str(i)) for i in range(K)]
            for w in workers:
                await rt.request(w, (0, PAYLOAD))
        nxt = 0

        async def lane() -> None:
            nonlocal nxt
            while nxt < N:
                i = nxt
                nxt += 1
                await rt.request(workers[i % K], (i, PAYLOAD))

        t0 = time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(C)))
        dt = time.perf_counter() - t0
        print(f"coditect {workload}: N={N} K={K} C={C} time={dt:.3f}s throughput={N / dt:,.0f} rt/s")
    elif workload == "latency":
        s = []
        for i in range(WARMUP + SEQ):
            t0 = time.perf_counter_ns()
            await rt.request(workers[i % K], (i, PAYLOAD))
            if i >= WARMUP:
                s.append((time.perf_counter_ns() - t0) / 1000)
        q = statistics.quantiles(s, n=100)
        print(f"coditect latency: n={SEQ} p50={q[49]:.1f}us p99={q[98]:.1f}us mean={statistics.fmean(s):.1f}us")
    elif workload == "rust":
        echo = coditect.AgentId("echo", "0")
        for i in range(WARMUP):
            await rt.request(echo, PAYLOAD)
        s = []
        t_all = time.perf_counter()
        for i in range(N):
            t0 = time.perf_counter_ns()
            await rt.request(echo, PAYLOAD)
            s.append((time.perf_counter_ns() - t0) / 1000)
        dt = time.perf_counter() - t_all
        q = statistics.quantiles(s, n=100)
        print(f"coditect rust-agent: N={N} time={dt:.3f}s throughput={N / dt:,.0f} rt/s p50={q[49]:.1f}us p99={q[98]:.1f}us")
    else:
        raise SystemExit(f"unknown workload {workload!r}")
    await rt.shutdown()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "fanout"))
