"""quickstart: a team of agents takes one task from plan to answer, live.

The Python twin of examples/quickstart.rs. An LLM planner decomposes the task
over the team's agent cards; three specialists work in parallel — the
researcher (a Rust LlmAgent) calls a Python tool, the risk analyst delegates a
claim to a fact checker written as a Python agent, the cost estimator calls a
Python calculator tool — and a synthesizer writes the recommendation.
Progress prints as it happens.

    pip install ./coditect-py
    python coditect-py/examples/quickstart.py

Environment:
- ANTHROPIC_API_KEY (optional): with a key the LLM agents think with Claude;
  without one everything runs offline on ScriptedModel (scripted answers, not
  generated ones) and says so.
- CLAUDE_MODEL (optional): the model, claude-sonnet-4-5 by default.

Exits 0 with the answer, or 1 with a one-line error on stderr.
"""

import asyncio
import os
import sys
from typing import Any, Dict

import coditect

GOAL = (
    "Should our team adopt Rust for the new log-ingestion service? "
    "Write a short recommendation covering evidence, risks and cost."
)

FACTS: Dict[str, str] = {
    "performance": "The Rust prototype ingests 2.7x more logs per core than the Java service, at a third of the memory.",
    "safety": "7 of the last 10 production incidents were memory or concurrency bugs that Rust rules out at compile time.",
    "adoption": "Two of the team's eight engineers have shipped Rust in production.",
    "learning": "Teams new to Rust report 3-6 months before they are fully productive.",
}


@coditect.tool
def lookup(topic: str) -> str:
    """Looks a topic up in the team's fact sheet.

    Args:
        topic: One of performance, safety, adoption, learning.
    """
    return FACTS.get(topic, f"nothing on {topic!r}; known topics: {', '.join(FACTS)}")


@coditect.tool
def estimate_cost(engineers: int, weeks: int, weekly_rate_usd: float = 4000.0) -> Dict[str, Any]:
    """Computes the cost of a project.

    Args:
        engineers: How many engineers work on it.
        weeks: For how many weeks.
        weekly_rate_usd: The cost of one engineer-week.
    """
    return {"engineers": engineers, "weeks": weeks, "total_usd": engineers * weeks * weekly_rate_usd}


def scripted_models() -> Dict[str, Any]:
    R = coditect.ScriptedReply
    plan = {
        "steps": [
            {"id": "research", "target": {"capability": "research"}, "input": "goal",
             "description": "Gather the evidence for and against."},
            {"id": "risks", "target": {"capability": "risk_analysis"}, "input": "goal",
             "description": "Name the risks, fact-checking the shaky claims."},
            {"id": "cost", "target": {"capability": "cost_estimate"}, "input": "goal",
             "description": "Estimate the cost of the rewrite."},
            {"id": "recommendation", "target": {"capability": "synthesize"},
             "input": {"object": {"question": "goal", "research": {"output": "research"},
                                  "risks": {"output": "risks"}, "cost": {"output": "cost"}}},
             "description": "Write the recommendation."},
        ],
        "output": "recommendation",
    }
    return {
        "planner": coditect.ScriptedModel([R.tool_call("submit_plan", plan)]),
        "researcher": coditect.ScriptedModel([
            R.tool_calls([("lookup", {"topic": t}) for t in ("performance", "safety", "adoption")]),
            "Evidence from the fact sheet:\n- " + "\n- ".join(FACTS[t] for t in ("performance", "safety", "adoption")),
        ]),
        "analyst": coditect.ScriptedModel([
            R.tool_call("delegate", {"capability": "fact_check",
                                     "task": "Claim: a team new to Rust needs months before it is fully productive."}),
            "Risks:\n1. Ramp-up time (fact-checked: true, 3-6 months).\n2. Hiring is slower for Rust roles.\n"
            "3. Two codebases during the migration.",
        ]),
        "estimator": coditect.ScriptedModel([
            R.tool_call("estimate_cost", {"engineers": 3, "weeks": 10}),
            "Cost: 3 engineers for 10 weeks is about $120,000.",
        ]),
        "synthesizer": coditect.ScriptedModel([
            "Recommendation: adopt Rust for the ingestion service, with a staged migration. The prototype is "
            "2.7x faster at a third of the memory and most past incidents were bugs Rust rules out; ramp-up "
            "takes months, so pair new Rust engineers with the two who have shipped it. About $120,000."
        ]),
    }


async def main() -> int:
    if os.environ.get("ANTHROPIC_API_KEY", "").strip():
        claude = coditect.Claude(os.environ.get("CLAUDE_MODEL", "claude-sonnet-4-5"))
        print(f"using Claude ({claude.model})")
        models: Dict[str, Any] = {k: claude for k in ("planner", "researcher", "analyst", "estimator", "synthesizer")}
    else:
        print("offline: no ANTHROPIC_API_KEY, so every LLM agent runs on ScriptedModel — "
              "the answers below are scripted, not generated by a model")
        models = scripted_models()

    rt = await coditect.Runtime.start()

    @rt.agent("fact_checker", capabilities=["fact_check"], description="Checks one claim against the fact sheet.")
    async def fact_checker(claim: str, ctx: coditect.Context) -> str:
        ctx.emit({"checking": claim})
        evidence = lookup("learning")
        return f"True. {evidence}"

    team = [
        ("researcher", "research", "Gathers evidence on a question with a fact-sheet lookup tool.",
         coditect.LlmAgent(models["researcher"], tools=[lookup],
                           system="You are a researcher. Use the lookup tool to gather evidence, then list the findings that matter.")),
        ("analyst", "risk_analysis", "Finds the risks of a proposal; has claims fact-checked.",
         coditect.LlmAgent(models["analyst"], delegate_to=[("fact_check", "Checks one claim against the team's fact sheet.")],
                           system="You are a risk analyst. Name the main risks. Delegate claims you are unsure of to a fact checker.")),
        ("estimator", "cost_estimate", "Estimates the cost of a project with a calculator tool.",
         coditect.LlmAgent(models["estimator"], tools=[estimate_cost],
                           system="You estimate project cost. Assume 3 engineers at $4,000 a week; use estimate_cost for the arithmetic.")),
        ("synthesizer", "synthesize", "Writes a final recommendation from research, risks and cost.",
         coditect.LlmAgent(models["synthesizer"],
                           system="Write the final recommendation from the research, risks and cost you are given, in under 200 words.")),
    ]
    for kind, capability, description, agent in team:
        rt.register(kind, agent, capabilities=[capability], description=description)

    orch = coditect.Orchestrator(
        rt,
        planner=coditect.LlmPlanner(models["planner"]),
        policy=coditect.Policy(max_depth=2, max_tokens=300_000, max_cost_usd=2.0, deadline_s=300),
    )
    print(f"task: {GOAL}\n")
    handle = orch.start(GOAL)
    async for event in handle.events():
        kind = event["type"]
        if kind == "plan_made":
            steps = ", ".join(f"{s['id']} ({s['target'].get('capability', s['target'])})" for s in event["plan"]["steps"])
            print(f"plan: {steps}")
        elif kind == "step_started":
            print(f"[{event['step']}] started on {event['agent']}")
        elif kind == "delegated":
            print(f"[{event['step']}] -> delegated to {event['agent']} (depth {event['depth']})")
        elif kind == "step_progress" and isinstance(event["data"], dict):
            d = event["data"]
            if d.get("type") == "tool_call" and d.get("name") != "delegate":
                print(f"[{event['step']}] tool call: {d['name']}({d.get('input')})")
            elif "checking" in d:
                print(f"[{event['step']}] fact checker checks: {d['checking']}")
        elif kind == "step_succeeded":
            print(f"[{event['step']}] done")
    outcome = await handle.outcome()
    await rt.shutdown()
    print(f"\n{outcome.output}\n")
    print(f"{len(outcome.steps)} steps, {outcome.usage.total_tokens} tokens, ${outcome.usage.cost_usd:.4f}, {outcome.duration_s:.2f}s")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except coditect.CoditectError as e:
        print(f"quickstart: {e}", file=sys.stderr)
        sys.exit(1)
