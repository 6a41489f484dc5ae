"""Medians of the figures run.sh collected, side by side, with the ratios."""

import re
import statistics
import sys
from collections import defaultdict

figures = defaultdict(list)
for line in open(sys.argv[1]):
    name = line.split(":")[0].strip()
    for key, value in re.findall(r"(\w+)=([\d,.]+)", line):
        try:
            figures[(name, key)].append(float(value.replace(",", "")))
        except ValueError:
            pass


def med(name: str, key: str) -> float:
    return statistics.median(figures[(name, key)]) if figures[(name, key)] else float("nan")


print()
print(f"{'workload':<34}{'coditect':>14}{'asyncio floor':>16}{'autogen-core':>16}")
fo = [med(n, "throughput") for n in ("coditect fanout", "asyncio fanout", "autogen-core fanout")]
print(f"{'fanout rt/s (8 agents, 256 lanes)':<34}{fo[0]:>14,.0f}{fo[1]:>16,.0f}{fo[2]:>16,.0f}")
for q in ("p50", "p99"):
    la = [med(n, q) for n in ("coditect latency", "asyncio latency", "autogen-core latency")]
    print(f"{'request/reply ' + q + ' us':<34}{la[0]:>14.1f}{la[1]:>16.1f}{la[2]:>16.1f}")
print(f"fanout: coditect / autogen-core = {fo[0] / fo[2]:.1f}x, coditect / asyncio floor = {fo[0] / fo[1]:.2f}x")
fa = med("coditect fanout-await", "throughput")
print(f"fanout with handlers that await once: {fa:,.0f} rt/s = {fa / fo[2]:.1f}x autogen-core")
print(
    f"Rust-hosted agent from Python: {med('coditect rust-agent', 'throughput'):,.0f} rt/s, "
    f"p50 {med('coditect rust-agent', 'p50'):.1f} us"
)
