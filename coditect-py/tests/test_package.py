"""The package as a user gets it: fast import, docstrings, type stubs."""

import inspect
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import coditect


def test_import_takes_under_100_ms() -> None:
    code = "import time; t = time.perf_counter(); import coditect; print(time.perf_counter() - t)"
    runs = []
    for _ in range(3):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
        runs.append(float(out.stdout.strip()))
    assert min(runs) < 0.100, f"import coditect took {min(runs) * 1000:.1f} ms at best ({runs})"


def test_the_wheel_is_installed_not_the_source_tree() -> None:
    here = Path(__file__).resolve().parents[1]
    assert here not in Path(coditect.__file__).resolve().parents


def test_every_public_name_has_a_docstring() -> None:
    missing = []
    for name in coditect.__all__:
        obj = getattr(coditect, name)
        if not (obj.__doc__ or "").strip():
            missing.append(name)
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if attr.startswith("_") or not callable(member) and not isinstance(member, property):
                    continue
                doc = getattr(member, "__doc__", None)
                if not (doc or "").strip():
                    missing.append(f"{name}.{attr}")
    assert not missing, f"no docstring: {missing}"


def test_the_package_ships_py_typed_and_stubs() -> None:
    root = Path(coditect.__file__).parent
    assert (root / "py.typed").is_file()
    assert (root / "__init__.pyi").is_file() and (root / "_native.pyi").is_file()


def test_mypy_accepts_typed_code_and_rejects_wrong_code(tmp_path: Path) -> None:
    mypy = shutil.which("mypy", path=os.path.dirname(sys.executable)) or shutil.which("mypy")
    if mypy is None:
        pytest.fail("mypy is not installed in the test environment")
    good = tmp_path / "good.py"
    good.write_text(textwrap.dedent('''
        import asyncio
        import dataclasses
        from typing import List
        import coditect

        @coditect.tool
        def count(text: str) -> int:
            """Counts words.

            Args:
                text: The text.
            """
            return len(text.split())

        async def main() -> None:
            rt: coditect.Runtime = await coditect.Runtime.start()

            @rt.agent("upper", capabilities=["shout"])
            async def upper(task: str, ctx: coditect.Context) -> str:
                sub = await ctx.delegate("other", task)
                ctx.emit({"seen": sub})
                return task.upper()

            plan = coditect.Plan([coditect.Step("a", "shout", input=coditect.Goal()),
                                  coditect.Step("b", "shout", input=coditect.Output("a"))])
            orch = coditect.Orchestrator(rt, planner=coditect.StaticPlanner(plan),
                                         policy=coditect.Policy(max_tokens=10, deadline_s=1.0))
            outcome: coditect.Outcome = await orch.run("hi", input={"x": 1})
            tokens: int = outcome.usage.total_tokens
            handle = orch.start("again")
            async for event in handle.events():
                print(event["type"])
            handle.cancel()
            agent = coditect.LlmAgent(coditect.ScriptedModel(["ok"]), tools=[count], capabilities=["c"])
            rt.register("c", agent)
            try:
                await rt.request("c", "x")
            except coditect.ClaudeError as e:
                code: "int | None" = e.status
            names: List[str] = agent.tool_names()

            @dataclasses.dataclass
            class Approval:
                approved: bool

            @rt.agent("ship", capabilities=["ship"])
            async def ship(task: str, ctx: coditect.Context) -> str:
                async def send(key: str) -> str:
                    return key
                sent = await ctx.effect("send", send)
                answer: Approval = await ctx.ask("ok", "Ship?", schema=Approval)
                raw = await ctx.ask("why", "Why?", schema={"type": "string"})
                return f"{sent} {answer.approved} {raw} {ctx.idempotency_key}"

            store: coditect.SqliteStore = await coditect.SqliteStore.open("runs.db")
            durable = coditect.Orchestrator(rt, planner=coditect.StaticPlanner(plan),
                                            store=store, lease_holder="me", lease_ttl_s=5.0)
            h: coditect.RunHandle = await durable.submit("go")
            resumed: coditect.RunHandle = await durable.resume(h.run_id)
            maybe: "coditect.RunHandle | None" = await durable.respond(h.run_id, "req", {"approved": True})
            stored: coditect.StoredRun = await durable.replay(h.run_id)
            status: str = stored.status
            forked = await durable.fork(h.run_id, at=len(stored.events), step="b", input=coditect.Literal(1))
            try:
                await durable.resume(forked.run_id)
            except coditect.RunBusy as e:
                print(e.run_id, e.store_kind)
            await rt.shutdown()

        asyncio.run(main())
    '''))
    bad = tmp_path / "bad.py"
    bad.write_text(textwrap.dedent('''
        import coditect
        async def main() -> None:
            rt = await coditect.Runtime.start()
            outcome = await coditect.Orchestrator(rt, planner=coditect.StaticPlanner(coditect.Plan([]))).run(42)
            n: str = outcome.usage.total_tokens
            store = coditect.SqliteStore(1)
    '''))
    args = [mypy, "--strict", "--no-incremental", "--cache-dir", str(tmp_path / ".mypy")]
    ok = subprocess.run(args + [str(good)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    ko = subprocess.run(args + [str(bad)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert ko.returncode == 1, ko.stdout + ko.stderr
    assert 'Argument 1 to "run" of "Orchestrator" has incompatible type "int"' in ko.stdout
    assert "Incompatible types in assignment" in ko.stdout


def test_the_quickstart_runs_offline() -> None:
    example = Path(__file__).resolve().parents[1] / "examples" / "quickstart.py"
    env = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}
    out = subprocess.run([sys.executable, str(example)], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert "offline" in out.stdout and "Recommendation: adopt Rust" in out.stdout
    assert "tool call: lookup" in out.stdout and "delegated to fact_checker" in out.stdout
