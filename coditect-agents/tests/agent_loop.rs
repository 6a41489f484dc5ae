//! The LlmAgent loop on its own: tool argument errors fed back, timeouts,
//! concurrency of one turn's calls, the allow-list, the iteration guard, and
//! how model failures become agent errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use coditect_agents::model::{ModelError, ModelErrorKind, StopReason};
use coditect_agents::tool::{Tool, ToolContext, ToolError};
use coditect_agents::{LlmAgent, ScriptedModel, ScriptedReply, Toolbox};
use coditect_orchestrator::AgentErrorKind;
use serde_json::json;
use support::{Add, within};
use tokio::sync::Barrier;

#[tokio::test]
async fn invalid_tool_arguments_go_back_to_the_model_which_corrects_itself() {
    let model = ScriptedModel::new()
        .then(ScriptedReply::tool_call("add", json!({"a": "two", "b": 2})))
        .then(ScriptedReply::tool_call("add", json!({"a": 2, "b": 2})))
        .then(ScriptedReply::text("2 + 2 = 4"));
    let agent = LlmAgent::builder(model.clone()).tool(Add).build();
    let answer = within(agent.run(json!("What is 2 + 2?"), None))
        .await
        .unwrap();
    assert_eq!(answer.text, "2 + 2 = 4");
    assert_eq!(answer.iterations, 3);

    let requests = model.requests();
    assert_eq!(requests.len(), 3);
    // The model saw the tool's schema, derived from its argument type.
    assert_eq!(requests[0].tools.len(), 1);
    assert_eq!(
        requests[0].tools[0].input_schema["properties"]["a"]["type"],
        "integer"
    );
    // The bad call came back as a tool error, naming the problem.
    let first = requests[1].last_tool_results();
    assert_eq!(first.len(), 1);
    assert!(first[0].2, "marked as an error");
    assert!(
        first[0].1.contains("invalid arguments for tool add"),
        "{}",
        first[0].1
    );
    // The corrected call ran.
    assert_eq!(requests[2].last_tool_results()[0].1, "4");
    assert!(!requests[2].last_tool_results()[0].2);
}

/// Never finishes on its own.
struct Stall;

impl Tool for Stall {
    type Args = serde_json::Map<String, serde_json::Value>;
    type Output = String;
    fn name(&self) -> String {
        "stall".into()
    }
    fn description(&self) -> String {
        "Waits for a very long time.".into()
    }
    async fn call(&self, _: Self::Args, _: ToolContext<'_>) -> Result<String, ToolError> {
        tokio::time::sleep(Duration::from_secs(24 * 3600)).await;
        Ok("done".into())
    }
}

#[tokio::test(start_paused = true)]
async fn a_tool_past_its_timeout_is_stopped_and_the_model_is_told() {
    let model = ScriptedModel::new()
        .then(ScriptedReply::tool_calls([
            ("stall", json!({})),
            ("add", json!({"a": 1, "b": 1})),
        ]))
        .then(ScriptedReply::text("the slow tool timed out; 1 + 1 = 2"));
    let agent = LlmAgent::builder(model.clone())
        .toolbox(
            Toolbox::new()
                .with(Stall)
                .with(Add)
                .timeout(Duration::from_secs(2)),
        )
        .build();
    let answer = within(agent.run(json!("go"), None)).await.unwrap();
    assert_eq!(answer.iterations, 2);
    let requests = model.requests();
    let results = requests[1].last_tool_results();
    assert_eq!(results.len(), 2);
    assert!(
        results[0].2 && results[0].1.contains("did not finish within 2s"),
        "{:?}",
        results[0]
    );
    // The other call of the same turn was not held back by the slow one.
    assert_eq!((results[1].1, results[1].2), ("2", false));
}

/// Returns only when `n` calls are inside it at once.
struct Meet(Arc<Barrier>);

impl Tool for Meet {
    type Args = serde_json::Map<String, serde_json::Value>;
    type Output = &'static str;
    fn name(&self) -> String {
        "meet".into()
    }
    fn description(&self) -> String {
        "Meets the other calls.".into()
    }
    async fn call(&self, _: Self::Args, _: ToolContext<'_>) -> Result<&'static str, ToolError> {
        self.0.wait().await;
        Ok("met")
    }
}

#[tokio::test(start_paused = true)]
async fn the_calls_of_one_turn_run_concurrently() {
    let model = ScriptedModel::new()
        .then(ScriptedReply::tool_calls([
            ("meet", json!({})),
            ("meet", json!({})),
            ("meet", json!({})),
        ]))
        .then(ScriptedReply::text("all met"));
    // Run one after another, the first call would wait for the others forever
    // and time out; together they all meet.
    let agent = LlmAgent::builder(model.clone())
        .toolbox(
            Toolbox::new()
                .with(Meet(Arc::new(Barrier::new(3))))
                .timeout(Duration::from_secs(5)),
        )
        .build();
    within(agent.run(json!("go"), None)).await.unwrap();
    let requests = model.requests();
    let results = requests[1].last_tool_results();
    assert_eq!(results.len(), 3);
    assert!(results.iter().all(|r| r.1 == "met" && !r.2), "{results:?}");
}

#[tokio::test]
async fn a_tool_the_agent_was_not_given_is_refused() {
    let model = ScriptedModel::new()
        .then(ScriptedReply::tool_call("delete_everything", json!({})))
        .then(ScriptedReply::text("I cannot do that."));
    let agent = LlmAgent::builder(model.clone()).tool(Add).build();
    within(agent.run(json!("clean up"), None)).await.unwrap();
    let requests = model.requests();
    let names: Vec<&str> = requests[0].tools.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["add"]);
    let r = requests[1].last_tool_results();
    assert!(r[0].2);
    assert!(
        r[0].1.contains("no tool \"delete_everything\"") && r[0].1.contains("add"),
        "{}",
        r[0].1
    );
}

#[tokio::test]
async fn the_iteration_guard_stops_a_model_that_never_finishes() {
    let model = ScriptedModel::new().when(
        |_| true,
        ScriptedReply::tool_call("add", json!({"a": 1, "b": 1})),
    );
    let agent = LlmAgent::builder(model.clone())
        .tool(Add)
        .max_iterations(3)
        .build();
    let err = within(agent.run(json!("loop"), None)).await.unwrap_err();
    assert_eq!(err.kind(), AgentErrorKind::Policy);
    assert!(err.message().contains("3 model turns"), "{err}");
    assert_eq!(model.requests().len(), 3);
}

#[tokio::test]
async fn model_failures_become_transient_or_permanent_agent_errors() {
    let model = ScriptedModel::new()
        .then(ScriptedReply::error(ModelError::new(
            ModelErrorKind::Unavailable,
            "overloaded",
            true,
        )))
        .then(ScriptedReply::error(ModelError::new(
            ModelErrorKind::Authentication,
            "bad key",
            false,
        )))
        .then(ScriptedReply::text("no").stop_reason(StopReason::Refusal));
    let agent = LlmAgent::builder(model).streaming(false).build();
    let e = within(agent.run(json!("q"), None)).await.unwrap_err();
    assert_eq!(e.kind(), AgentErrorKind::Transient);
    assert!(e.message().contains("overloaded"));
    let e = within(agent.run(json!("q"), None)).await.unwrap_err();
    assert_eq!(e.kind(), AgentErrorKind::Permanent);
    let e = within(agent.run(json!("q"), None)).await.unwrap_err();
    assert!(e.message().contains("refused"), "{e}");
}

#[tokio::test]
async fn structured_inputs_reach_the_model_as_json_and_strings_as_text() {
    let model = ScriptedModel::new()
        .then(ScriptedReply::text("a"))
        .then(ScriptedReply::text("b"));
    let agent = LlmAgent::builder(model.clone()).system("Be brief.").build();
    within(agent.run(json!("plain words"), None)).await.unwrap();
    within(agent.run(json!({"topic": "rust"}), None))
        .await
        .unwrap();
    let r = model.requests();
    assert_eq!(r[0].system.as_deref(), Some("Be brief."));
    assert_eq!(r[0].last_user_text(), "plain words");
    assert!(r[1].last_user_text().contains("\"topic\": \"rust\""));
}

/// Counts its calls; adds two numbers.
struct CountingAdd(Arc<std::sync::atomic::AtomicUsize>);

impl Tool for CountingAdd {
    type Args = support::AddArgs;
    type Output = i64;
    fn name(&self) -> String {
        "add".into()
    }
    fn description(&self) -> String {
        "Adds two numbers.".into()
    }
    async fn call(&self, a: support::AddArgs, _: ToolContext<'_>) -> Result<i64, ToolError> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(a.a + a.b)
    }
}

/// A process: a tokio runtime of its own, killed by shutting it down.
fn process() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

async fn durable_agent(
    store: Arc<dyn coditect_orchestrator::store::Store>,
    model: ScriptedModel,
    calls: Arc<std::sync::atomic::AtomicUsize>,
) -> coditect_orchestrator::Orchestrator {
    let rt = support::runtime().await;
    let agent = LlmAgent::builder(model)
        .toolbox(
            Toolbox::new()
                .with(CountingAdd(calls))
                .require_approval("add"),
        )
        .build();
    rt.kind("adder")
        .capability("math")
        .register(move |_| agent.clone())
        .await
        .unwrap();
    support::one_step(&rt, "math")
        .store(store)
        .lease_holder("agent-test")
}

#[test]
fn a_resumed_agent_does_not_pay_again_for_its_turns_and_a_tool_waits_for_approval() {
    use coditect_orchestrator::orchestrator::{Responded, RunEvent};
    use coditect_orchestrator::store::MemoryStore;
    use futures::StreamExt;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let store: Arc<dyn coditect_orchestrator::store::Store> = Arc::new(MemoryStore::new());
    let calls = Arc::new(AtomicUsize::new(0));
    // Process 1: the model asks for the tool, which needs approval; the run
    // pauses, and the process dies.
    let m1 = ScriptedModel::new()
        .then(
            ScriptedReply::tool_call("add", json!({"a": 2, "b": 3}).clone())
                .usage(support::usage(100, 10)),
        )
        .then(ScriptedReply::text("never reached"));
    let p1 = process();
    let (run, request) = p1.block_on(async {
        let orch = durable_agent(store.clone(), m1.clone(), calls.clone()).await;
        let mut handle = orch
            .submit(coditect_orchestrator::TaskSpec::new("2 + 3?"))
            .await
            .unwrap();
        let run = handle.id();
        let mut events = handle.events();
        let request = within(async {
            loop {
                let e = events.next().await.unwrap();
                if let RunEvent::InputRequested {
                    request,
                    schema,
                    prompt,
                    ..
                } = e.event
                {
                    assert!(prompt.contains("add"), "{prompt}");
                    assert_eq!(schema["properties"]["approved"]["type"], "boolean");
                    return request;
                }
            }
        })
        .await;
        std::mem::forget(handle);
        (run, request)
    });
    p1.shutdown_background();
    assert_eq!(m1.requests().len(), 1);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "the tool waits for approval"
    );

    // Process 2: approved; the first turn comes from the journal (the new
    // model is asked only for the second), the tool runs once.
    let m2 = ScriptedModel::new().then(ScriptedReply::text("5").usage(support::usage(120, 5)));
    let p2 = process();
    let (outcome, stored) = p2.block_on(async {
        let orch = durable_agent(store.clone(), m2.clone(), calls.clone()).await;
        let approve = json!({"approved": true});
        let Responded::Resumed(handle) = orch.respond(run, &request, approve).await.unwrap() else {
            panic!("the run must be resumed here");
        };
        let outcome = within(handle.outcome()).await.unwrap();
        (outcome, orch.replay(run).await.unwrap())
    });
    p2.shutdown_background();
    assert_eq!(outcome.output, "5");
    assert_eq!(m2.requests().len(), 1, "turn 1 was not paid for again");
    // The second model request carries the recorded first turn and the result.
    assert_eq!(m2.requests()[0].last_tool_results()[0].1, "5");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // Usage: each turn once (100+10 from process 1, 120+5 from process 2).
    assert_eq!(
        stored.state.usage.input_tokens, 220,
        "{:?}",
        stored.state.usage
    );
    assert_eq!(stored.state.usage.output_tokens, 15);

    // A rejection goes back to the model as the call's error.
    let m3 = ScriptedModel::new()
        .then(ScriptedReply::tool_call("add", json!({"a": 1, "b": 1})))
        .then(ScriptedReply::text("ok, I will not add"));
    let p3 = process();
    p3.block_on(async {
        let orch = durable_agent(store.clone(), m3.clone(), calls.clone()).await;
        let mut handle = orch
            .submit(coditect_orchestrator::TaskSpec::new("1 + 1?"))
            .await
            .unwrap();
        let run = handle.id();
        let mut events = handle.events();
        let request = within(async {
            loop {
                if let RunEvent::InputRequested { request, .. } = events.next().await.unwrap().event
                {
                    return request;
                }
            }
        })
        .await;
        let no = json!({"approved": false, "reason": "not today"});
        assert!(matches!(
            orch.respond(run, &request, no).await.unwrap(),
            Responded::Delivered
        ));
        assert_eq!(
            within(handle.outcome()).await.unwrap().output,
            "ok, I will not add"
        );
        let requests = m3.requests();
        let back = &requests[1].last_tool_results()[0];
        assert!(back.2 && back.1.contains("not today"), "{back:?}");
    });
    p3.shutdown_background();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "a rejected call never runs"
    );
}

/// Adds two numbers and counts how often its description (so its
/// definition, schema included) is asked for.
struct Described(Arc<std::sync::atomic::AtomicUsize>);

impl Tool for Described {
    type Args = support::AddArgs;
    type Output = i64;
    fn name(&self) -> String {
        "add".into()
    }
    fn description(&self) -> String {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        "Adds two numbers.".into()
    }
    async fn call(&self, a: support::AddArgs, _: ToolContext<'_>) -> Result<i64, ToolError> {
        Ok(a.a + a.b)
    }
}

/// A tool's definition (its schema generated from its argument type) is
/// read once, when it joins the toolbox, not on every model turn; every
/// turn still offers it.
#[tokio::test]
async fn a_tools_definition_is_built_once_and_offered_every_turn() {
    let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let model = ScriptedModel::new()
        .then(ScriptedReply::tool_call("add", json!({"a": 1, "b": 2})))
        .then(ScriptedReply::tool_call("add", json!({"a": 3, "b": 4})))
        .then(ScriptedReply::text("3 and 7"));
    let agent = LlmAgent::builder(model.clone())
        .toolbox(Toolbox::new().with(Described(asked.clone())))
        .build();
    let answer = within(agent.run(json!("go"), None)).await.unwrap();
    assert_eq!(answer.iterations, 3);
    let requests = model.requests();
    assert_eq!(requests.len(), 3);
    for r in &requests {
        assert_eq!(r.tools.len(), 1);
        assert_eq!(r.tools[0].description, "Adds two numbers.");
        assert!(r.tools[0].input_schema["properties"]["a"].is_object());
    }
    assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 1);
}
