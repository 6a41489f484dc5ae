//! The whole stack without network: coditect-agents' agent loop, planner and
//! patterns wired to `ClaudeModel`, against the local Claude stand-in server
//! speaking the exact wire format.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use coditect_agents::patterns::{
    Critic, EvaluatorOptimizer, Reviewed, Route, Sectioning, VoteOutcome, Voting,
};
use coditect_agents::tool::{Tool, ToolContext, ToolError};
use coditect_agents::{LlmAgent, LlmPlanner};
use coditect_claude::ClaudeModel;
use coditect_claude::testing::{Reply, StandIn, text_message, tool_use_message};
use coditect_orchestrator::orchestrator::{
    Orchestrator, Plan, StaticPlanner, Step, StepInput, TaskSpec,
};
use coditect_orchestrator::{Agent, InMemoryTransport, Runtime};
use serde_json::{Value, json};
use support::within;

fn claude(server: &StandIn) -> ClaudeModel {
    ClaudeModel::new(server.client(), "claude-sonnet-4-5")
}

async fn runtime() -> Runtime {
    Runtime::builder(InMemoryTransport::new())
        .build()
        .await
        .unwrap()
}

async fn register<A: Agent + Clone + Sync>(rt: &Runtime, kind: &str, capability: &str, agent: A) {
    within(
        rt.kind(kind)
            .capability(capability)
            .register(move |_| agent.clone()),
    )
    .await
    .unwrap();
}

fn one_step(rt: &Runtime, capability: &str) -> Orchestrator {
    Orchestrator::new(
        rt.clone(),
        StaticPlanner::new(Plan::new([Step::new("only", capability, StepInput::Goal)])),
    )
}

/// The JSON bodies the server received.
fn bodies(server: &StandIn) -> Vec<Value> {
    server
        .requests()
        .iter()
        .map(|r| r.json().unwrap())
        .collect()
}

/// Upper-cases a word.
struct Shout;

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct ShoutArgs {
    /// The word.
    word: String,
}

impl Tool for Shout {
    type Args = ShoutArgs;
    type Output = String;
    fn name(&self) -> String {
        "shout".into()
    }
    fn description(&self) -> String {
        "Upper-cases a word.".into()
    }
    async fn call(&self, a: ShoutArgs, _: ToolContext<'_>) -> Result<String, ToolError> {
        Ok(a.word.to_uppercase())
    }
}

#[tokio::test]
async fn an_llm_agent_streams_through_claude_with_a_tool_and_reports_usage() {
    let server = within(StandIn::start()).await;
    // The first call's arguments do not fit the tool; Claude is told and retries.
    server.push(Reply::stream(&tool_use_message(
        "toolu_1",
        "shout",
        json!({"wrod": "hi"}),
    )));
    server.push(Reply::stream(&tool_use_message(
        "toolu_2",
        "shout",
        json!({"word": "hi"}),
    )));
    server.push(Reply::stream(&text_message("He said HI.")));
    let rt = within(runtime()).await;
    register(
        &rt,
        "shouter",
        "shout",
        LlmAgent::builder(claude(&server)).tool(Shout).build(),
    )
    .await;

    let outcome = within(one_step(&rt, "shout").run(TaskSpec::new("shout hi")))
        .await
        .unwrap();
    assert_eq!(outcome.output, json!("He said HI."));
    // The stand-in's messages each use 21 input and 13 output tokens.
    assert_eq!(outcome.usage.input_tokens, 63);
    assert_eq!(outcome.usage.output_tokens, 39);

    let b = bodies(&server);
    assert_eq!(b.len(), 3);
    assert_eq!(b[0]["stream"], true);
    assert_eq!(b[0]["tools"][0]["name"], "shout");
    assert_eq!(
        b[0]["tools"][0]["input_schema"]["properties"]["word"]["type"],
        "string"
    );
    let bad = &b[1]["messages"][2]["content"][0];
    assert_eq!(bad["type"], "tool_result");
    assert_eq!(bad["tool_use_id"], "toolu_1");
    assert_eq!(bad["is_error"], true);
    let good = &b[2]["messages"][4]["content"][0];
    assert_eq!(
        (good["tool_use_id"].as_str(), good["content"].as_str()),
        (Some("toolu_2"), Some("HI"))
    );
}

#[tokio::test]
async fn the_llm_planner_plans_through_claude_and_repairs_an_invalid_plan() {
    let server = within(StandIn::start()).await;
    server.push(Reply::message(&tool_use_message(
        "toolu_p1",
        "submit_plan",
        json!({"steps": [{"id": "a", "target": {"capability": "juggle"}, "input": "goal"}]}),
    )));
    server.push(Reply::message(&tool_use_message(
        "toolu_p2",
        "submit_plan",
        json!({"steps": [{"id": "a", "target": {"capability": "shout"}, "input": "goal"}]}),
    )));
    server.push(Reply::stream(&text_message("done")));
    let rt = within(runtime()).await;
    register(
        &rt,
        "shouter",
        "shout",
        LlmAgent::builder(claude(&server)).build(),
    )
    .await;
    let planner = LlmPlanner::new(claude(&server));
    let outcome = within(Orchestrator::new(rt.clone(), planner).run(TaskSpec::new("shout")))
        .await
        .unwrap();
    assert_eq!(outcome.output, json!("done"));
    let b = bodies(&server);
    assert_eq!(
        b[0]["tool_choice"],
        json!({"type": "tool", "name": "submit_plan"})
    );
    let repair = &b[1]["messages"][2]["content"][0];
    assert_eq!(repair["tool_use_id"], "toolu_p1");
    assert!(
        repair["content"].as_str().unwrap().contains("\"juggle\""),
        "{repair}"
    );
}

#[tokio::test]
async fn the_router_picks_a_route_through_claude() {
    let server = within(StandIn::start()).await;
    server.push(Reply::message(&tool_use_message(
        "toolu_r",
        "choose_route",
        json!({"route": "tech", "reason": "a crash"}),
    )));
    server.push(Reply::stream(&text_message("Restart it.")));
    let rt = within(runtime()).await;
    register(
        &rt,
        "tech",
        "tech",
        LlmAgent::builder(claude(&server)).build(),
    )
    .await;
    register(
        &rt,
        "billing",
        "billing",
        LlmAgent::builder(claude(&server)).build(),
    )
    .await;
    let router = Route::new(claude(&server))
        .route("tech", "Technical problems.")
        .route("billing", "Invoices.");
    within(register(&rt, "router", "support", router)).await;
    let outcome = within(one_step(&rt, "support").run(TaskSpec::new("it crashed")))
        .await
        .unwrap();
    assert_eq!(outcome.output, json!("Restart it."));
    let b = bodies(&server);
    assert_eq!(b.len(), 2);
    assert!(
        b[0]["system"]
            .as_str()
            .unwrap()
            .contains("tech: Technical problems.")
    );
    assert_eq!(b[1]["messages"][0]["content"][0]["text"], "it crashed");
}

#[tokio::test]
async fn sectioning_and_voting_fan_out_to_claude_backed_agents() {
    // One server per section, since the sections call at the same time.
    let security = within(StandIn::start()).await;
    security.push(Reply::stream(&text_message("no issues")));
    let style = within(StandIn::start()).await;
    style.push(Reply::stream(&text_message("rename x")));
    let rt = within(runtime()).await;
    register(
        &rt,
        "sec",
        "security",
        LlmAgent::builder(claude(&security)).build(),
    )
    .await;
    register(
        &rt,
        "sty",
        "style",
        LlmAgent::builder(claude(&style)).build(),
    )
    .await;
    let sections = Sectioning::new()
        .section("security", "security", "Review for security.")
        .section("style", "style", "Review for style.");
    within(register(&rt, "review", "review", sections)).await;
    let outcome = within(one_step(&rt, "review").run(TaskSpec::new("let x = 1;")))
        .await
        .unwrap();
    assert_eq!(
        outcome.output,
        json!({"security": "no issues", "style": "rename x"})
    );
    let asked = bodies(&security)[0]["messages"][0]["content"][0]["text"].clone();
    assert_eq!(asked, "Review for security.\n\nlet x = 1;");

    // Three voters on one server: whatever order they are answered in, two agree.
    let judges = within(StandIn::start()).await;
    for answer in ["yes", "no", "yes"] {
        judges.push(Reply::stream(&text_message(answer)));
    }
    register(
        &rt,
        "judge",
        "judge",
        LlmAgent::builder(claude(&judges)).build(),
    )
    .await;
    within(register(
        &rt,
        "vote",
        "vote",
        Voting::new().voters("judge", 3),
    ))
    .await;
    let outcome = within(one_step(&rt, "vote").run(TaskSpec::new("vulnerable?")))
        .await
        .unwrap();
    let vote: VoteOutcome = serde_json::from_value(outcome.output).unwrap();
    assert_eq!(
        (vote.winner, vote.count, vote.cast),
        (Some(json!("yes")), 2, 3)
    );
    assert_eq!(judges.requests().len(), 3);
}

#[tokio::test]
async fn the_evaluator_optimizer_loops_through_claude() {
    let server = within(StandIn::start()).await;
    server.push(Reply::stream(&text_message("Draft one.")));
    server.push(Reply::message(&tool_use_message(
        "toolu_v1",
        "submit_verdict",
        json!({"passed": false, "score": 3, "feedback": "add a number"}),
    )));
    server.push(Reply::stream(&text_message("Draft two: 42.")));
    server.push(Reply::message(&tool_use_message(
        "toolu_v2",
        "submit_verdict",
        json!({"passed": true, "score": 9, "feedback": ""}),
    )));
    let rt = within(runtime()).await;
    register(
        &rt,
        "writer",
        "write",
        LlmAgent::builder(claude(&server)).build(),
    )
    .await;
    register(
        &rt,
        "critic",
        "review",
        Critic::new(claude(&server), "Has a number."),
    )
    .await;
    register(
        &rt,
        "editor",
        "edit",
        EvaluatorOptimizer::new("write", "review"),
    )
    .await;
    let outcome = within(one_step(&rt, "edit").run(TaskSpec::new("write")))
        .await
        .unwrap();
    let reviewed: Reviewed = serde_json::from_value(outcome.output).unwrap();
    assert!(reviewed.passed);
    assert_eq!(
        (reviewed.rounds, reviewed.draft),
        (2, json!("Draft two: 42."))
    );
    let b = bodies(&server);
    assert_eq!(b.len(), 4);
    let second_ask = b[2]["messages"][0]["content"][0]["text"].as_str().unwrap();
    assert!(
        second_ask.contains("Draft one.") && second_ask.contains("add a number"),
        "{second_ask}"
    );
    // Every call's usage reached the run: 4 calls × (21 in, 13 out).
    assert_eq!(outcome.usage.total_tokens(), 4 * 34);
}
