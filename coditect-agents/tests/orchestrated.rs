//! LlmAgents inside orchestrated runs: progress and usage reach the run's
//! events and budgets; delegation goes through the runtime, bounded by depth,
//! fan-out and the agent's allow-list.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use coditect_agents::{AgentProgress, LlmAgent, ScriptedModel, ScriptedReply};
use coditect_orchestrator::orchestrator::{RunErrorKind, RunPolicy, TaskSpec};
use coditect_orchestrator::{FailureKind, Runtime};
use futures::StreamExt;
use serde_json::json;
use support::{Add, one_step, progress, runtime, usage, within};

async fn register(rt: &Runtime, kind: &str, agent: LlmAgent) {
    within(rt.kind(kind).register(move |_| agent.clone()))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_streams_and_usage_is_counted_in_the_run() {
    for _ in 0..3 {
        progress_streams_and_usage_is_counted_once().await;
    }
}

async fn progress_streams_and_usage_is_counted_once() {
    let rt = within(runtime()).await;
    let model = ScriptedModel::new()
        .then(ScriptedReply::tool_call("add", json!({"a": 20, "b": 22})).usage(usage(100, 10)))
        .then(ScriptedReply::text("The answer is 42.").usage(usage(130, 7)));
    within(register(
        &rt,
        "math",
        LlmAgent::builder(model).tool(Add).build(),
    ))
    .await;

    let mut handle = one_step(&rt, "math").start(TaskSpec::new("20 + 22?"));
    let events = handle.events();
    let outcome = within(handle.outcome()).await.unwrap();
    let events: Vec<_> = within(events.collect::<Vec<_>>()).await;

    assert_eq!(outcome.output, json!("The answer is 42."));
    // The streamed text and the usage of the step come after its start and
    // before its result (the run's causal order).
    coditect_orchestrator::testing::check_causal_order(&events).unwrap();
    assert_eq!(outcome.usage.input_tokens, 230);
    assert_eq!(outcome.usage.output_tokens, 17);

    let progress: Vec<AgentProgress> = progress(&events)
        .iter()
        .filter_map(AgentProgress::from_value)
        .collect();
    let streamed: String = progress
        .iter()
        .filter_map(|p| match p {
            AgentProgress::Text { text } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(streamed, "The answer is 42.");
    // Streamed word by word, before the step finished.
    assert!(
        progress
            .iter()
            .filter(|p| matches!(p, AgentProgress::Text { .. }))
            .count()
            > 1
    );
    assert!(
        progress
            .iter()
            .any(|p| matches!(p, AgentProgress::ToolCall { name, .. } if name == "add"))
    );
    assert!(progress.iter().any(
        |p| matches!(p, AgentProgress::ToolResult { ok: true, summary, .. } if summary == "42")
    ));
}

#[tokio::test]
async fn a_token_budget_ends_a_run_whose_agent_keeps_spending() {
    let rt = within(runtime()).await;
    let model = ScriptedModel::new().when(
        |_| true,
        ScriptedReply::tool_call("add", json!({"a": 1, "b": 1})).usage(usage(10, 5)),
    );
    register(
        &rt,
        "spender",
        LlmAgent::builder(model.clone())
            .tool(Add)
            .max_iterations(50)
            .build(),
    )
    .await;
    let task = TaskSpec::new("spend").policy(RunPolicy {
        max_tokens: Some(25),
        ..RunPolicy::default()
    });
    let err = within(one_step(&rt, "spender").run(task))
        .await
        .unwrap_err();
    // Either the orchestrator saw the reported usage pass the budget, or the
    // agent saw its handed-down budget spent first: both are the budget.
    match &err.kind {
        RunErrorKind::TokenBudget { used, limit } => assert!(*used > 25 && *limit == 25),
        RunErrorKind::StepFailed { failure, .. } => {
            assert_eq!(failure.kind, FailureKind::Policy, "{err}");
            assert!(failure.message.contains("token budget"), "{err}");
        }
        other => panic!("not a budget stop: {other:?}"),
    }
    // 15 tokens a turn: the second turn crosses 25, and no third is made.
    assert_eq!(model.requests().len(), 2);
}

/// A lead that delegates to a helper that tries to delegate further.
async fn delegation_team(
    rt: &Runtime,
    allow_deep: bool,
) -> (ScriptedModel, ScriptedModel, ScriptedModel) {
    let lead = ScriptedModel::new()
        .when_once(
            |r| r.last_tool_results().is_empty(),
            ScriptedReply::tool_call(
                "delegate",
                json!({"capability": "helper", "task": "find the number"}),
            ),
        )
        .respond(
            |_| true,
            |r| ScriptedReply::text(format!("lead heard: {}", r.last_tool_results()[0].1)),
        );
    let helper = ScriptedModel::new()
        .when_once(
            |r| r.last_tool_results().is_empty(),
            ScriptedReply::tool_call(
                "delegate",
                json!({"capability": "deep", "task": "look deeper"}),
            ),
        )
        .respond(
            |_| true,
            |r| {
                let (_, text, is_error) = r.last_tool_results()[0];
                ScriptedReply::text(if is_error {
                    format!("helper could not delegate: {text}")
                } else {
                    format!("helper got {text}")
                })
            },
        );
    let deep = ScriptedModel::new().when(|_| true, ScriptedReply::text("7"));
    register(
        rt,
        "lead",
        LlmAgent::builder(lead.clone())
            .delegate_to("helper", "Helps.")
            .build(),
    )
    .await;
    let helper_agent = if allow_deep {
        LlmAgent::builder(helper.clone()).delegate_to("deep", "Knows.")
    } else {
        LlmAgent::builder(helper.clone()).delegate_to("other", "Not deep.")
    };
    within(register(rt, "helper", helper_agent.build())).await;
    within(register(
        rt,
        "deep",
        LlmAgent::builder(deep.clone()).build(),
    ))
    .await;
    (lead, helper, deep)
}

#[tokio::test]
async fn delegation_goes_through_the_runtime_and_is_depth_bounded() {
    // Depth 2 allowed: lead (0) -> helper (1) -> deep (2).
    let rt = within(runtime()).await;
    let (_, _, deep) = within(delegation_team(&rt, true)).await;
    let task = TaskSpec::new("go").policy(RunPolicy {
        max_depth: 2,
        ..RunPolicy::default()
    });
    let outcome = within(one_step(&rt, "lead").run(task)).await.unwrap();
    assert_eq!(outcome.output, json!("lead heard: helper got 7"));
    assert_eq!(deep.requests().len(), 1);
    // The trace shows who asked whom, and the delegations count as units of work.
    let agents = outcome.trace[0].agents();
    assert_eq!(agents.len(), 3, "{agents:?}");
    assert!(
        agents[0].starts_with("lead/")
            && agents[1].starts_with("helper/")
            && agents[2].starts_with("deep/")
    );
    assert_eq!(outcome.state.units, 3);

    // Depth 1: the helper's own delegation is refused by policy, and the
    // refusal reaches the helper's model as a tool error.
    let rt = within(runtime()).await;
    let (_, helper, deep) = within(delegation_team(&rt, true)).await;
    let task = TaskSpec::new("go").policy(RunPolicy {
        max_depth: 1,
        ..RunPolicy::default()
    });
    let outcome = within(one_step(&rt, "lead").run(task)).await.unwrap();
    assert!(deep.requests().is_empty());
    let requests = helper.requests();
    let refusal = requests[1].last_tool_results();
    assert!(refusal[0].2);
    assert!(
        refusal[0].1.contains("max delegation depth 1"),
        "{}",
        refusal[0].1
    );
    assert!(
        outcome
            .output
            .as_str()
            .unwrap()
            .contains("helper could not delegate")
    );
}

#[tokio::test]
async fn an_agent_can_only_delegate_to_the_capabilities_it_was_allowed() {
    let rt = within(runtime()).await;
    let (_, helper, deep) = within(delegation_team(&rt, false)).await;
    let outcome = within(one_step(&rt, "lead").run(TaskSpec::new("go")))
        .await
        .unwrap();
    assert!(
        deep.requests().is_empty(),
        "deep was reached around the allow-list"
    );
    let requests = helper.requests();
    let refusal = requests[1].last_tool_results();
    assert!(refusal[0].2);
    assert!(
        refusal[0].1.contains("may not delegate to \"deep\""),
        "{}",
        refusal[0].1
    );
    assert_eq!(outcome.state.units, 2);
}

#[tokio::test]
async fn delegations_in_one_turn_are_bounded_by_the_fan_out_limit() {
    let rt = within(runtime()).await;
    let boss = ScriptedModel::new()
        .then(ScriptedReply::tool_calls((0..3).map(|i| {
            (
                "delegate",
                json!({"capability": "worker", "task": format!("part {i}")}),
            )
        })))
        .then(ScriptedReply::text("done"));
    let worker = ScriptedModel::new().when(|_| true, ScriptedReply::text("ok"));
    register(
        &rt,
        "boss",
        LlmAgent::builder(boss.clone())
            .delegate_to("worker", "Works.")
            .build(),
    )
    .await;
    within(register(
        &rt,
        "worker",
        LlmAgent::builder(worker.clone()).build(),
    ))
    .await;
    let task = TaskSpec::new("go").policy(RunPolicy {
        max_fanout: 2,
        ..RunPolicy::default()
    });
    within(one_step(&rt, "boss").run(task)).await.unwrap();
    assert_eq!(worker.requests().len(), 2);
    let requests = boss.requests();
    let results = requests[1].last_tool_results();
    assert_eq!(results.iter().filter(|r| !r.2).count(), 2);
    assert!(
        results[2].2 && results[2].1.contains("too many delegations"),
        "{:?}",
        results[2]
    );
}

/// Waits forever; tells the test when its call is dropped.
struct Hang(std::sync::Mutex<Option<tokio::sync::oneshot::Sender<()>>>);

struct SignalOnDrop(Option<tokio::sync::oneshot::Sender<()>>);

impl Drop for SignalOnDrop {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

impl coditect_agents::Tool for Hang {
    type Args = serde_json::Map<String, serde_json::Value>;
    type Output = String;
    fn name(&self) -> String {
        "hang".into()
    }
    fn description(&self) -> String {
        "Never returns.".into()
    }
    async fn call(
        &self,
        _: Self::Args,
        _: coditect_agents::ToolContext<'_>,
    ) -> Result<String, coditect_agents::ToolError> {
        let _guard = SignalOnDrop(self.0.lock().unwrap().take());
        std::future::pending().await
    }
}

#[tokio::test]
async fn cancelling_a_run_abandons_the_agents_tool_calls() {
    let rt = within(runtime()).await;
    let (tx, dropped) = tokio::sync::oneshot::channel();
    let model = ScriptedModel::new().then(ScriptedReply::tool_call("hang", json!({})));
    register(
        &rt,
        "waiter",
        LlmAgent::builder(model)
            .tool(Hang(std::sync::Mutex::new(Some(tx))))
            .build(),
    )
    .await;
    let mut handle = one_step(&rt, "waiter").start(TaskSpec::new("wait"));
    let mut events = handle.events();
    // Cancel once the tool call is under way.
    within(async {
        while let Some(e) = events.next().await {
            if let coditect_orchestrator::orchestrator::RunEvent::StepProgress { data, .. } =
                &e.event
                && matches!(
                    AgentProgress::from_value(data),
                    Some(AgentProgress::ToolCall { .. })
                )
            {
                break;
            }
        }
    })
    .await;
    handle.cancel();
    let err = within(handle.outcome()).await.unwrap_err();
    assert!(matches!(err.kind, RunErrorKind::Cancelled), "{err}");
    within(dropped).await.unwrap();
}

#[tokio::test]
async fn priced_usage_counts_against_the_cost_budget() {
    let rt = within(runtime()).await;
    let model = ScriptedModel::new().when(
        |_| true,
        ScriptedReply::tool_call("add", json!({"a": 1, "b": 1})).usage(usage(1_000, 100)),
    );
    // $1 per thousand input tokens, $10 per thousand output tokens: $2 a turn.
    let pricing: coditect_agents::Pricing =
        std::sync::Arc::new(|model: &str, u: &coditect_agents::model::Usage| {
            assert_eq!(model, coditect_agents::SCRIPTED_MODEL_NAME);
            u.input_tokens as f64 / 1000.0 + u.output_tokens as f64 / 100.0
        });
    register(
        &rt,
        "spender",
        LlmAgent::builder(model.clone())
            .tool(Add)
            .pricing(pricing)
            .max_iterations(50)
            .build(),
    )
    .await;
    let task = TaskSpec::new("spend").policy(RunPolicy {
        max_cost_usd: Some(5.0),
        ..RunPolicy::default()
    });
    let err = within(one_step(&rt, "spender").run(task))
        .await
        .unwrap_err();
    match &err.kind {
        RunErrorKind::CostBudget { used, limit } => assert!(*used > 5.0 && *limit == 5.0),
        RunErrorKind::StepFailed { failure, .. } => {
            assert_eq!(failure.kind, FailureKind::Policy, "{err}");
            assert!(failure.message.contains("cost budget"), "{err}");
        }
        other => panic!("not a budget stop: {other:?}"),
    }
    // $2 a turn: the third turn crosses $5, and no fourth is made.
    assert_eq!(model.requests().len(), 3);
    // The priced usage reached the run's own accounting (at least the first two
    // turns; the third's report may race the step's failure).
    let cost = err.state.usage.cost_usd;
    assert!((4.0 - 1e-9..=6.0 + 1e-9).contains(&cost), "{cost}");
}
