//! The LlmPlanner inside the orchestrator: plans over the registered cards,
//! the repair loop, giving up clearly, and re-planning after a failed step.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use coditect_agents::{LlmAgent, LlmPlanner, ScriptedModel, ScriptedReply};
use coditect_orchestrator::orchestrator::{
    Orchestrator, PlanError, RetryPolicy, RunErrorKind, RunPolicy, TaskSpec,
};
use coditect_orchestrator::{Agent, AgentContext, AgentError, Runtime};
use serde_json::{Value, json};
use support::{runtime, within};

async fn team(rt: &Runtime) {
    for (kind, cap, reply) in [
        ("researcher", "research", "facts"),
        ("writer", "write", "an essay"),
    ] {
        let agent = LlmAgent::builder(ScriptedModel::new().respond(
            |_| true,
            move |r| ScriptedReply::text(format!("{reply} from [{}]", r.last_user_text())),
        ))
        .build();
        within(
            rt.kind(kind)
                .description(format!("Does {cap}."))
                .capability(cap)
                .register(move |_| agent.clone()),
        )
        .await
        .unwrap();
    }
}

fn submit(plan: Value) -> ScriptedReply {
    ScriptedReply::tool_call("submit_plan", plan)
}

fn good_plan() -> Value {
    json!({"steps": [
        {"id": "research", "target": {"capability": "research"}, "input": "goal"},
        {"id": "write", "target": {"capability": "write"}, "input": {"output": "research"}}
    ], "output": "write"})
}

#[tokio::test]
async fn the_planner_sees_the_cards_and_its_plan_runs() {
    let rt = within(runtime()).await;
    within(team(&rt)).await;
    let model = ScriptedModel::new().then(submit(good_plan()));
    let outcome = within(
        Orchestrator::new(rt.clone(), LlmPlanner::new(model.clone()))
            .run(TaskSpec::new("an essay on rust")),
    )
    .await
    .unwrap();
    assert_eq!(
        outcome.output,
        json!("an essay from [facts from [an essay on rust]]")
    );
    let request = &model.requests()[0];
    let prompt = request.last_user_text();
    assert!(
        prompt.contains("\"research\"") && prompt.contains("Does write."),
        "{prompt}"
    );
    assert!(prompt.contains("an essay on rust"));
    // Structured output: the plan's schema is the tool's input schema.
    assert_eq!(request.tools[0].name, "submit_plan");
    assert!(request.tools[0].input_schema["properties"]["steps"].is_object());
}

#[tokio::test]
async fn invalid_plans_go_back_with_the_validation_error_until_one_is_valid() {
    let rt = within(runtime()).await;
    within(team(&rt)).await;
    let model = ScriptedModel::new()
        .then(ScriptedReply::text("Sure! First research, then write."))
        .then(submit(json!({"steps": [
            {"id": "a", "target": {"capability": "dance"}, "input": "goal"}
        ]})))
        .then(submit(json!({"steps": [
            {"id": "a", "target": {"capability": "research"}, "input": {"output": "b"}},
            {"id": "b", "target": {"capability": "write"}, "input": {"output": "a"}}
        ]})))
        .then(submit(
            json!({"steps": [{"id": "a", "target": "research"}]}),
        ))
        .then(submit(good_plan()));
    let planner = LlmPlanner::new(model.clone()).max_repairs(4);
    let outcome = within(Orchestrator::new(rt.clone(), planner).run(TaskSpec::new("x")))
        .await
        .unwrap();
    assert!(outcome.output.as_str().unwrap().starts_with("an essay"));

    let r = model.requests();
    assert_eq!(r.len(), 5);
    assert!(
        r[1].last_user_text().contains("not JSON"),
        "{}",
        r[1].last_user_text()
    );
    let unknown = r[2].last_tool_results();
    assert!(
        unknown[0].2 && unknown[0].1.contains("\"dance\""),
        "{:?}",
        unknown
    );
    let cycle = r[3].last_tool_results();
    assert!(cycle[0].1.contains("cycle"), "{:?}", cycle);
    let shape = r[4].last_tool_results();
    assert!(
        shape[0].1.contains("does not fit the schema"),
        "{:?}",
        shape
    );
}

#[tokio::test]
async fn the_planner_gives_up_clearly_after_its_repairs() {
    let rt = within(runtime()).await;
    within(team(&rt)).await;
    let model = ScriptedModel::new().when(
        |_| true,
        submit(json!({"steps": [{"id": "a", "target": {"capability": "fly"}, "input": "goal"}]})),
    );
    let planner = LlmPlanner::new(model.clone()).max_repairs(2);
    let err = within(Orchestrator::new(rt.clone(), planner).run(TaskSpec::new("x")))
        .await
        .unwrap_err();
    match &err.kind {
        RunErrorKind::InvalidPlan(PlanError::Planner { message }) => {
            assert!(message.contains("3 attempts"), "{message}");
            assert!(message.contains("\"fly\""), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(model.requests().len(), 3);
}

/// Always fails, for good.
struct Broken;

impl Agent for Broken {
    type Input = Value;
    type Output = String;
    async fn handle(&mut self, _: Value, _: &AgentContext) -> Result<String, AgentError> {
        Err(AgentError::permanent("the archive is offline"))
    }
}

#[tokio::test]
async fn a_failed_step_is_replanned_through_the_same_planner() {
    let rt = within(runtime()).await;
    within(team(&rt)).await;
    within(
        rt.kind("archive")
            .description("Looks things up in the archive.")
            .capability("lookup")
            .register(|_| Broken),
    )
    .await
    .unwrap();
    let model = ScriptedModel::new()
        .then(submit(json!({"steps": [
            {"id": "lookup", "target": {"capability": "lookup"}, "input": "goal"},
            {"id": "write", "target": {"capability": "write"}, "input": {"output": "lookup"}}
        ]})))
        .then(submit(good_plan()));
    let task = TaskSpec::new("x").policy(RunPolicy {
        retry: RetryPolicy::none(),
        max_replans: 1,
        ..RunPolicy::default()
    });
    let outcome = within(Orchestrator::new(rt.clone(), LlmPlanner::new(model.clone())).run(task))
        .await
        .unwrap();
    assert_eq!(outcome.state.plans.len(), 2);
    assert!(outcome.output.as_str().unwrap().starts_with("an essay"));
    let replan = model.requests()[1].last_user_text();
    assert!(replan.contains("Step lookup failed for good"), "{replan}");
    assert!(replan.contains("the archive is offline"), "{replan}");
}
