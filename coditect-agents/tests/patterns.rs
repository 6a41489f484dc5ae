//! The patterns as agents in runs: router, sectioning, voting,
//! evaluator-optimizer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use coditect_agents::patterns::{
    Critic, EvaluatorOptimizer, Reviewed, Route, Sectioning, VoteOutcome, Voting,
};
use coditect_agents::{AgentProgress, LlmAgent, ScriptedModel, ScriptedReply};
use coditect_orchestrator::Runtime;
use coditect_orchestrator::orchestrator::TaskSpec;
use futures::StreamExt;
use serde_json::json;
use support::{one_step, progress, runtime, within};

async fn specialist(rt: &Runtime, cap: &str, model: ScriptedModel) {
    let agent = LlmAgent::builder(model).build();
    within(
        rt.kind(cap)
            .capability(cap)
            .register(move |_| agent.clone()),
    )
    .await
    .unwrap();
}

fn echo(prefix: &'static str) -> ScriptedModel {
    ScriptedModel::new().respond(
        |_| true,
        move |r| ScriptedReply::text(format!("{prefix}: {}", r.last_user_text())),
    )
}

#[tokio::test]
async fn the_router_sends_the_input_to_the_one_route_the_model_picks() {
    let rt = within(runtime()).await;
    let billing = echo("billing");
    let tech = echo("tech");
    within(specialist(&rt, "billing", billing.clone())).await;
    within(specialist(&rt, "tech", tech.clone())).await;
    let chooser = ScriptedModel::new()
        // A route it does not have is sent back for repair.
        .then(ScriptedReply::tool_call(
            "choose_route",
            json!({"route": "sales", "reason": "money"}),
        ))
        .then(ScriptedReply::tool_call(
            "choose_route",
            json!({"route": "billing", "reason": "an invoice"}),
        ));
    let router = Route::new(chooser.clone())
        .route("billing", "Invoices and payments.")
        .route("tech", "Technical problems.");
    within(
        rt.kind("router")
            .capability("support")
            .register(move |_| router.clone()),
    )
    .await
    .unwrap();

    let mut handle = one_step(&rt, "support").start(TaskSpec::new("I was charged twice"));
    let events = handle.events();
    let outcome = within(handle.outcome()).await.unwrap();
    assert_eq!(outcome.output, json!("billing: I was charged twice"));
    assert!(tech.requests().is_empty());
    let repair = chooser.requests()[1].last_tool_results()[0].1.to_owned();
    assert!(repair.contains("\"sales\" is not a route"), "{repair}");
    let events: Vec<_> = within(events.collect::<Vec<_>>()).await;
    assert!(progress(&events).iter().any(|d| matches!(
        AgentProgress::from_value(d),
        Some(AgentProgress::Decision { summary }) if summary.starts_with("routed to billing")
    )));
    // The router's own model call counts in the run.
    assert!(outcome.usage.total_tokens() > 0);
}

#[tokio::test]
async fn sectioning_runs_the_sections_at_once_and_aggregates() {
    let rt = within(runtime()).await;
    within(specialist(&rt, "security", echo("sec"))).await;
    within(specialist(&rt, "style", echo("style"))).await;
    let merge = ScriptedModel::new().respond(
        |_| true,
        |r| ScriptedReply::text(format!("merged {}", r.last_user_text().len())),
    );
    within(specialist(&rt, "merge", merge.clone())).await;
    let review = Sectioning::new()
        .section("security", "security", "Check security.")
        .section("style", "style", "Check style.");
    let reviewed = review.clone().aggregate("merge");
    within(rt.kind("review").register(move |_| review.clone()))
        .await
        .unwrap();
    within(rt.kind("review_merged").register(move |_| reviewed.clone()))
        .await
        .unwrap();

    let outcome = within(one_step(&rt, "review").run(TaskSpec::new("fn main() {}")))
        .await
        .unwrap();
    assert_eq!(
        outcome.output,
        json!({
            "security": "sec: Check security.\n\nfn main() {}",
            "style": "style: Check style.\n\nfn main() {}"
        })
    );
    assert_eq!(outcome.trace[0].children.len(), 2);

    let outcome = within(one_step(&rt, "review_merged").run(TaskSpec::new("fn main() {}")))
        .await
        .unwrap();
    assert!(outcome.output.as_str().unwrap().starts_with("merged "));
    let merged_input = merge.requests()[0].last_user_text();
    assert!(merged_input.contains("\"security\"") && merged_input.contains("\"style\""));
}

#[tokio::test]
async fn voting_takes_the_majority_of_independent_voters() {
    let rt = within(runtime()).await;
    // Three voters share one script; whatever order they ask in, two say yes.
    let judge = ScriptedModel::new()
        .then(ScriptedReply::text("Yes"))
        .then(ScriptedReply::text("no"))
        .then(ScriptedReply::text("yes "));
    within(specialist(&rt, "judge", judge.clone())).await;
    let vote = Voting::new().voters("judge", 3);
    within(rt.kind("vote").register(move |_| vote.clone()))
        .await
        .unwrap();
    let outcome = within(one_step(&rt, "vote").run(TaskSpec::new("Is this vulnerable?")))
        .await
        .unwrap();
    let vote: VoteOutcome = serde_json::from_value(outcome.output).unwrap();
    assert_eq!((vote.count, vote.cast), (2, 3));
    assert_eq!(
        vote.winner.unwrap().as_str().unwrap().trim().to_lowercase(),
        "yes"
    );
    assert_eq!(judge.requests().len(), 3);
}

#[tokio::test]
async fn the_evaluator_sends_drafts_back_until_one_passes() {
    let rt = within(runtime()).await;
    let writer = ScriptedModel::new()
        .then(ScriptedReply::text("Rust is fast."))
        .then(ScriptedReply::text("Rust is fast and memory-safe."));
    within(specialist(&rt, "write", writer.clone())).await;
    let judge = ScriptedModel::new()
        // Passed by the model but under the pass score: still sent back.
        .then(ScriptedReply::tool_call(
            "submit_verdict",
            json!({"passed": true, "score": 4, "feedback": "mention memory safety"}),
        ))
        .then(ScriptedReply::tool_call(
            "submit_verdict",
            json!({"passed": true, "score": 9, "feedback": ""}),
        ));
    let critic = Critic::new(judge.clone(), "Accurate and complete.").pass_score(8);
    within(
        rt.kind("critic")
            .capability("review")
            .register(move |_| critic.clone()),
    )
    .await
    .unwrap();
    let looped = EvaluatorOptimizer::new("write", "review").max_rounds(3);
    within(
        rt.kind("editor")
            .capability("edit")
            .register(move |_| looped.clone()),
    )
    .await
    .unwrap();

    let outcome = within(one_step(&rt, "edit").run(TaskSpec::new("One line on Rust.")))
        .await
        .unwrap();
    let reviewed: Reviewed = serde_json::from_value(outcome.output).unwrap();
    assert!(reviewed.passed);
    assert_eq!(reviewed.rounds, 2);
    assert!(!reviewed.verdicts[0].passed, "under the pass score");
    assert_eq!(reviewed.draft, json!("Rust is fast and memory-safe."));
    let second = writer.requests()[1].last_user_text();
    assert!(
        second.contains("Rust is fast.") && second.contains("mention memory safety"),
        "{second}"
    );
    let judged = judge.requests()[0].last_user_text();
    assert!(
        judged.contains("One line on Rust.") && judged.contains("Rust is fast."),
        "{judged}"
    );
}

#[tokio::test]
async fn the_evaluator_stops_at_its_round_limit() {
    let rt = within(runtime()).await;
    specialist(
        &rt,
        "write",
        ScriptedModel::new().when(|_| true, ScriptedReply::text("meh")),
    )
    .await;
    let judge = ScriptedModel::new().when(
        |_| true,
        ScriptedReply::tool_call(
            "submit_verdict",
            json!({"passed": false, "score": 2, "feedback": "no"}),
        ),
    );
    let critic = Critic::new(judge.clone(), "Be great.");
    within(
        rt.kind("critic")
            .capability("review")
            .register(move |_| critic.clone()),
    )
    .await
    .unwrap();
    let looped = EvaluatorOptimizer::new("write", "review").max_rounds(2);
    within(
        rt.kind("editor")
            .capability("edit")
            .register(move |_| looped.clone()),
    )
    .await
    .unwrap();
    let outcome = within(one_step(&rt, "edit").run(TaskSpec::new("x")))
        .await
        .unwrap();
    let reviewed: Reviewed = serde_json::from_value(outcome.output).unwrap();
    assert!(!reviewed.passed);
    assert_eq!((reviewed.rounds, reviewed.verdicts.len()), (2, 2));
    assert_eq!(judge.requests().len(), 2);
}
