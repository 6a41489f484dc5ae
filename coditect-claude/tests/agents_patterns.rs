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
        b[0]["system"][0]["text"]
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

/// The prompt's parts in the order the API caches them (tools, system,
/// messages' blocks), each with its size in bytes (a stand-in for tokens)
/// and whether it carries a breakpoint.
fn cache_parts(body: &Value) -> Vec<(usize, bool)> {
    let mut parts = Vec::new();
    let mut push = |v: &Value| parts.push((v.to_string().len(), v.get("cache_control").is_some()));
    for t in body["tools"].as_array().into_iter().flatten() {
        push(t);
    }
    for s in body["system"].as_array().into_iter().flatten() {
        push(s);
    }
    for m in body["messages"].as_array().into_iter().flatten() {
        for b in m["content"].as_array().into_iter().flatten() {
            push(b);
        }
    }
    parts
}

#[tokio::test]
async fn an_agent_loop_marks_its_stable_prefix_and_conversation_for_the_prompt_cache() {
    let server = within(StandIn::start()).await;
    for i in 0..9 {
        server.push(Reply::stream(&tool_use_message(
            &format!("toolu_{i}"),
            "shout",
            json!({"word": format!("w{i}")}),
        )));
    }
    server.push(Reply::stream(&text_message("done")));
    // A system prompt of the size agents really carry.
    let system = "You are a careful assistant who shouts words on request. ".repeat(60);
    let agent = LlmAgent::builder(claude(&server))
        .system(system.clone())
        .tool(Shout)
        .max_iterations(12)
        .build();
    let answer = within(agent.run(json!("shout nine words"), None))
        .await
        .unwrap();
    assert_eq!(answer.text, "done");

    let b = bodies(&server);
    assert_eq!(b.len(), 10, "a 10-turn loop");
    for body in &b {
        // The stable prefix: the last tool definition and the system prompt.
        assert_eq!(body["tools"][0]["cache_control"]["type"], "ephemeral");
        assert_eq!(body["system"][0]["text"], system.as_str());
        assert_eq!(body["system"][0]["cache_control"]["type"], "ephemeral");
        let parts = cache_parts(body);
        assert!(
            parts.last().unwrap().1,
            "the conversation's last block is a breakpoint"
        );
        assert!(
            parts.iter().filter(|p| p.1).count() <= 4,
            "the API allows four"
        );
    }
    // From the second turn on, what the turn before wrote to the cache (its
    // prompt up to its last breakpoint) is this turn's prefix: read, not
    // paid again. At least 90% of every turn's input is such a prefix.
    let (mut eligible, mut cached) = (0usize, 0usize);
    for pair in b.windows(2) {
        let before = cache_parts(&pair[0]);
        let now = cache_parts(&pair[1]);
        let written = before.iter().rposition(|p| p.1).map_or(0, |i| i + 1);
        let total: usize = now.iter().map(|p| p.0).sum();
        let hit: usize = now[..written].iter().map(|p| p.0).sum();
        eligible += total;
        cached += hit;
    }
    let share = cached as f64 / eligible as f64;
    assert!(
        share >= 0.9,
        "only {:.1}% of the input was cacheable",
        share * 100.0
    );

    // With breakpoints off, none are sent.
    let server = within(StandIn::start()).await;
    server.push(Reply::stream(&text_message("plain")));
    let agent =
        LlmAgent::builder(claude(&server).with_prompt_cache(coditect_claude::PromptCache::Off))
            .system("s")
            .tool(Shout)
            .build();
    within(agent.run(json!("x"), None)).await.unwrap();
    let body = &bodies(&server)[0];
    assert!(!body.to_string().contains("cache_control"), "{body}");
}

/// A test subscriber: every span's name, parent and fields.
mod capture {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing_subscriber::layer::{Context, Layer};
    use tracing_subscriber::registry::LookupSpan;

    #[derive(Clone, Debug, Default)]
    pub(crate) struct Span {
        pub(crate) id: u64,
        pub(crate) name: String,
        pub(crate) parent: Option<u64>,
        pub(crate) fields: BTreeMap<String, String>,
    }

    #[derive(Clone, Default)]
    pub(crate) struct Capture(pub(crate) Arc<Mutex<Vec<Span>>>);

    struct Fields<'a>(&'a mut BTreeMap<String, String>);
    impl Visit for Fields<'_> {
        fn record_debug(&mut self, f: &Field, v: &dyn std::fmt::Debug) {
            self.0.insert(f.name().to_owned(), format!("{v:?}"));
        }
        fn record_str(&mut self, f: &Field, v: &str) {
            self.0.insert(f.name().to_owned(), v.to_owned());
        }
    }

    impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
        fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
            let mut span = Span {
                id: id.into_u64(),
                name: attrs.metadata().name().to_owned(),
                parent: ctx
                    .span(id)
                    .and_then(|s| s.parent())
                    .map(|p| p.id().into_u64()),
                ..Span::default()
            };
            attrs.record(&mut Fields(&mut span.fields));
            self.0.lock().unwrap().push(span);
        }
        fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
            let mut all = self.0.lock().unwrap();
            if let Some(s) = all.iter_mut().rev().find(|s| s.id == id.into_u64()) {
                values.record(&mut Fields(&mut s.fields));
            }
        }
    }
}

/// The binary's one subscriber (global: a thread's own default would race
/// with the callsite-interest cache of tests running at the same time).
fn captured() -> &'static capture::Capture {
    use tracing_subscriber::layer::SubscriberExt;
    static CAPTURE: std::sync::OnceLock<capture::Capture> = std::sync::OnceLock::new();
    CAPTURE.get_or_init(|| {
        let capture = capture::Capture::default();
        tracing::subscriber::set_global_default(
            tracing_subscriber::registry().with(capture.clone()),
        )
        .unwrap();
        capture
    })
}

#[tokio::test]
async fn model_and_tool_calls_are_chat_and_execute_tool_spans_content_only_on_request() {
    let capture = captured();
    for content in [
        coditect_orchestrator::observe::Content::Omit,
        coditect_orchestrator::observe::Content::Record,
    ] {
        coditect_orchestrator::observe::set_content(content);
        let server = within(StandIn::start()).await;
        server.push(Reply::stream(&tool_use_message(
            "toolu_7",
            "shout",
            json!({"word": "hi"}),
        )));
        server.push(Reply::stream(&text_message("HI it is")));
        let rt = within(runtime()).await;
        register(
            &rt,
            "shouter",
            "shout",
            LlmAgent::builder(claude(&server)).tool(Shout).build(),
        )
        .await;
        let outcome = within(one_step(&rt, "shout").run(TaskSpec::new("secret prompt")))
            .await
            .unwrap();
        let run = outcome.run.to_string();
        let all = capture.0.lock().unwrap().clone();
        let agent = all
            .iter()
            .find(|s| s.name == "invoke_agent" && s.fields.get("coditect.run.id") == Some(&run))
            .expect("an invoke_agent span");
        // This run's spans: the agent's and those under it.
        let spans: Vec<&capture::Span> = all
            .iter()
            .filter(|s| s.id == agent.id || s.parent == Some(agent.id))
            .collect();
        assert_eq!(agent.fields["otel.name"], "invoke_agent shouter");
        let chats: Vec<_> = spans.iter().filter(|s| s.name == "chat").collect();
        assert_eq!(
            chats.len(),
            2,
            "{:?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
        for c in &chats {
            let f = &c.fields;
            assert_eq!(f["otel.name"], "chat claude-sonnet-4-5");
            assert_eq!(f["gen_ai.operation.name"], "chat");
            assert_eq!(f["gen_ai.provider.name"], "anthropic");
            assert_eq!(f["gen_ai.request.model"], "claude-sonnet-4-5");
            assert_eq!(f["gen_ai.response.id"], "msg_standin");
            assert!(f.contains_key("gen_ai.response.model"));
            assert_eq!(f["gen_ai.usage.input_tokens"], "21");
            assert_eq!(f["gen_ai.usage.output_tokens"], "13");
            assert_eq!(f["gen_ai.usage.cache_read.input_tokens"], "0");
            assert!(f.contains_key("gen_ai.agent.id"));
            assert_eq!(f["coditect.run.id"], run);
            let recorded = f.contains_key("gen_ai.input.messages");
            assert_eq!(
                recorded,
                content == coditect_orchestrator::observe::Content::Record,
                "content is recorded only on request"
            );
        }
        assert_eq!(
            chats[0].fields["gen_ai.response.finish_reasons"],
            "[\"tool_use\"]"
        );
        assert_eq!(
            chats[1].fields["gen_ai.response.finish_reasons"],
            "[\"end_turn\"]"
        );
        let tool = spans
            .iter()
            .find(|s| s.name == "execute_tool")
            .expect("an execute_tool span");
        assert_eq!(tool.fields["otel.name"], "execute_tool shout");
        assert_eq!(tool.fields["gen_ai.tool.name"], "shout");
        assert_eq!(tool.fields["gen_ai.tool.call.id"], "toolu_7");
        let text = format!("{spans:?}");
        assert_eq!(
            text.contains("secret prompt"),
            content == coditect_orchestrator::observe::Content::Record
        );
    }
    coditect_orchestrator::observe::set_content(coditect_orchestrator::observe::Content::Omit);
}
