//! The A2A edge against itself on loopback: coditect's A2A server (on the
//! official SDK's server) driven by coditect's A2A client and by raw HTTP.
//! The interop with the official Python SDK is in `a2a_interop.rs`.
#![cfg(feature = "a2a")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use coditect_agents::a2a::types::{
    GetTaskRequest, Message, Part, Role, SendMessageConfiguration, SendMessageRequest,
    SendMessageResponse, TaskPushNotificationConfig, TaskState,
};
use coditect_agents::a2a::{
    A2aErrorKind, A2aRemote, A2aServer, A2aServing, PushPolicy, UNAUTHENTICATED_CODE,
};
use coditect_orchestrator::orchestrator::{
    Orchestrator, Plan, RetryPolicy, RunErrorKind, RunEvent, RunPolicy, StaticPlanner, Step,
    StepInput, TaskSpec,
};
use coditect_orchestrator::{Agent, AgentContext, AgentError, Runtime, Usage};
use futures::StreamExt;
use serde_json::{Value, json};
use support::{progress, runtime, within};
use tokio::sync::mpsc;

const TOKEN: &str = "test-token-1";

/// Shouts what it is told.
struct Upper;
impl Agent for Upper {
    type Input = String;
    type Output = String;
    async fn handle(&mut self, s: String, _: &AgentContext) -> Result<String, AgentError> {
        Ok(s.to_uppercase())
    }
}

/// Reports progress and usage, and answers with the limits it was given.
struct Chatty;
impl Agent for Chatty {
    type Input = Value;
    type Output = Value;
    async fn handle(&mut self, input: Value, ctx: &AgentContext) -> Result<Value, AgentError> {
        ctx.emit(json!({"type": "text", "text": "thinking"}))
            .await
            .unwrap();
        ctx.emit(json!({"type": "decision", "summary": "done thinking"}))
            .await
            .unwrap();
        ctx.report_usage(Usage::new(100, 50, 0.25)).await.unwrap();
        Ok(json!({
            "input": input,
            "tokens_left": ctx.budget().tokens_left,
            "cost_left": ctx.budget().cost_left,
            "deadline_ms": ctx.deadline().map(|d| d.remaining().as_millis() as u64),
        }))
    }
}

/// Says when it starts and when it is cancelled; never finishes by itself.
#[derive(Clone)]
struct Sleeper(mpsc::UnboundedSender<&'static str>);
impl Agent for Sleeper {
    type Input = Value;
    type Output = Value;
    async fn handle(&mut self, _: Value, ctx: &AgentContext) -> Result<Value, AgentError> {
        let _ = self.0.send("started");
        if tokio::time::timeout(Duration::from_secs(30), ctx.cancelled())
            .await
            .is_ok()
        {
            let _ = self.0.send("cancelled");
        }
        Err(AgentError::new("stopped"))
    }
}

/// Always fails.
struct Broken;
impl Agent for Broken {
    type Input = Value;
    type Output = Value;
    async fn handle(&mut self, _: Value, _: &AgentContext) -> Result<Value, AgentError> {
        Err(AgentError::new("the gauge is broken"))
    }
}

async fn listener() -> tokio::net::TcpListener {
    within(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .await
        .unwrap()
}

/// Serves `kind` of `rt` with the test token.
async fn serve(rt: &Runtime, kind: &str) -> A2aServing {
    serve_with(rt, kind, PushPolicy::PublicOnly).await
}

async fn serve_with(rt: &Runtime, kind: &str, push: PushPolicy) -> A2aServing {
    let server = A2aServer::for_kind(rt, kind)
        .unwrap()
        .bearer_token(TOKEN)
        .push_notifications(push)
        .run_policy(RunPolicy {
            retry: RetryPolicy::none(),
            ..RunPolicy::default()
        })
        .build()
        .unwrap();
    within(server.serve(listener().await)).await.unwrap()
}

async fn team() -> Runtime {
    let rt = runtime().await;
    within(
        rt.kind("upper")
            .description("Shouts.")
            .capability("shout")
            .register(|_| Upper),
    )
    .await
    .unwrap();
    within(rt.kind("chatty").capability("chat").register(|_| Chatty))
        .await
        .unwrap();
    within(rt.kind("broken").capability("gauge").register(|_| Broken))
        .await
        .unwrap();
    rt
}

async fn connect(serving: &A2aServing) -> A2aRemote {
    within(
        A2aRemote::builder(serving.url())
            .bearer_token(TOKEN)
            .connect(),
    )
    .await
    .unwrap()
}

fn one_step(rt: &Runtime, capability: &str, input: StepInput) -> Orchestrator {
    Orchestrator::new(
        rt.clone(),
        StaticPlanner::new(Plan::new([Step::new("remote", capability, input)])),
    )
}

fn no_retry() -> RunPolicy {
    RunPolicy {
        retry: RetryPolicy::none(),
        ..RunPolicy::default()
    }
}

/// Posts a raw JSON-RPC body with the token and the protocol version.
async fn post(
    serving: &A2aServing,
    body: &str,
    token: Option<&str>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut req = reqwest::Client::new()
        .post(serving.url())
        .header("content-type", "application/json")
        .header("A2A-Version", "1.0")
        .body(body.to_owned());
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = within(req.send()).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = within(resp.json::<Value>()).await.unwrap();
    (status, body, headers)
}

fn user_message(text: &str) -> SendMessageRequest {
    SendMessageRequest {
        message: Message::new(Role::User, vec![Part::text(text)]),
        configuration: None,
        metadata: None,
        tenant: None,
    }
}

/// An SDK client for the served agent, with the token.
async fn sdk_client(serving: &A2aServing) -> a2a_client::A2AClient<Box<dyn a2a_client::Transport>> {
    let card: coditect_agents::a2a::types::AgentCard = within(async {
        reqwest::get(format!("{}.well-known/agent-card.json", serving.url()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    })
    .await;
    let auth: Arc<dyn a2a_client::middleware::CallInterceptor> =
        Arc::new(a2a_client::auth::AuthInterceptor::bearer(TOKEN));
    let transport: Box<dyn a2a_client::Transport> =
        Box::new(a2a_client::jsonrpc::JsonRpcTransport::new(
            reqwest::Client::new(),
            card.supported_interfaces[0].url.clone(),
        ));
    a2a_client::A2AClient::new(transport).with_interceptors(vec![auth])
}

#[tokio::test]
async fn the_card_is_public_and_declares_skills_schemas_and_the_bearer_scheme() {
    let rt = team().await;
    let serving = serve(&rt, "upper").await;
    let card: Value = within(async {
        reqwest::get(format!("{}.well-known/agent-card.json", serving.url()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    })
    .await;
    assert_eq!(card["name"], "upper");
    assert_eq!(card["description"], "Shouts.");
    assert_eq!(card["skills"][0]["id"], "shout");
    assert_eq!(card["skills"][0]["inputModes"], json!(["text/plain"]));
    assert_eq!(card["capabilities"]["streaming"], true);
    assert_eq!(card["capabilities"]["pushNotifications"], true);
    assert_eq!(
        card["capabilities"]["extensions"][0]["params"]["shout"]["input_schema"]["type"],
        "string"
    );
    assert_eq!(
        card["securitySchemes"]["bearer"]["httpAuthSecurityScheme"]["scheme"],
        "Bearer"
    );
    assert_eq!(
        card["securityRequirements"][0]["schemes"]["bearer"],
        json!({"list": []})
    );
    assert_eq!(card["supportedInterfaces"][0]["url"], serving.url());
    assert_eq!(card["supportedInterfaces"][0]["protocolBinding"], "JSONRPC");
    within(serving.shutdown()).await.unwrap();
}

#[tokio::test]
async fn calls_without_a_valid_bearer_token_are_refused_with_401() {
    let rt = team().await;
    let serving = serve(&rt, "upper").await;
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "SendMessage",
        "params": {"message": {"messageId": "m1", "role": "ROLE_USER", "parts": [{"text": "hi"}]}}})
    .to_string();
    for token in [None, Some("wrong-token"), Some("")] {
        let (status, body, headers) = post(&serving, &body, token).await;
        assert_eq!(status, 401, "token {token:?}");
        assert_eq!(body["error"]["code"], UNAUTHENTICATED_CODE);
        assert!(
            headers["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Bearer")
        );
    }
    let (status, body, _) = post(&serving, &body, Some(TOKEN)).await;
    assert_eq!(status, 200);
    assert!(body["result"]["task"]["id"].is_string(), "{body}");

    // coditect's client sees the refusal as such.
    let remote = within(
        A2aRemote::builder(serving.url())
            .bearer_token("wrong-token")
            .connect(),
    )
    .await
    .unwrap();
    let err = within(remote.call(json!("hi"))).await.unwrap_err();
    assert_eq!(err.kind(), A2aErrorKind::Unauthorized, "{err}");
    assert_eq!(err.code(), Some(UNAUTHENTICATED_CODE));
    within(serving.shutdown()).await.unwrap();
}

#[tokio::test]
async fn malformed_messages_are_answered_with_the_spec_errors() {
    let rt = team().await;
    let serving = serve(&rt, "upper").await;
    let cases = [
        ("{this is not json", -32700, Value::Null),
        (r#"{"jsonrpc": "2.0", "id": 7}"#, -32600, json!(7)),
        (r#"[1, 2, 3]"#, -32600, Value::Null),
        (
            r#"{"jsonrpc": "2.0", "id": "x", "method": "SendMessage", "params": {"message": {"parts": "not a list"}}}"#,
            -32602,
            json!("x"),
        ),
        (
            r#"{"jsonrpc": "2.0", "id": 8, "method": "SendMessage", "params": {"message": {"messageId": "m", "role": "ROLE_USER", "parts": [{"text": "hi"}], "metadata": {"coditect.deadline_ms": "soon"}}}}"#,
            -32602,
            json!(8),
        ),
        (
            r#"{"jsonrpc": "2.0", "id": 9, "method": "SendMessage", "params": {"message": {"messageId": "m", "role": "ROLE_USER", "parts": []}}}"#,
            -32602,
            json!(9),
        ),
        (
            r#"{"jsonrpc": "2.0", "id": 10, "method": "NoSuchMethod", "params": {}}"#,
            -32601,
            json!(10),
        ),
    ];
    for (body, code, id) in cases {
        let (status, answer, _) = post(&serving, body, Some(TOKEN)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(answer["jsonrpc"], "2.0", "{answer}");
        assert_eq!(answer["error"]["code"], code, "{body} → {answer}");
        assert_eq!(answer["id"], id, "{body} → {answer}");
    }
    // The server still works.
    let remote = connect(&serving).await;
    assert_eq!(
        within(remote.call(json!("still here"))).await.unwrap(),
        json!("STILL HERE")
    );
    within(serving.shutdown()).await.unwrap();
}

#[tokio::test]
async fn an_orchestrator_routes_a_step_to_a_remote_agent_by_capability() {
    let team = team().await;
    let serving = serve(&team, "upper").await;
    let rt = runtime().await;
    within(
        rt.kind("local_chat")
            .capability("chat")
            .register(|_| Chatty),
    )
    .await
    .unwrap();
    let remote = connect(&serving).await;
    assert_eq!(remote.capabilities(), ["shout"]);
    within(remote.register(&rt, "remote_upper")).await.unwrap();
    assert!(
        rt.cards()
            .iter()
            .any(|c| c.kind.as_str() == "remote_upper" && c.can("shout"))
    );

    let plan = Plan::new([
        Step::new("shouted", "shout", StepInput::Goal),
        Step::new("chatted", "chat", StepInput::output("shouted")),
    ]);
    let outcome = within(
        Orchestrator::new(rt.clone(), StaticPlanner::new(plan)).run(TaskSpec::new("hello a2a")),
    )
    .await
    .unwrap();
    assert_eq!(outcome.steps["shouted"], json!("HELLO A2A"));
    assert_eq!(outcome.output["input"], json!("HELLO A2A"));
    within(serving.shutdown()).await.unwrap();
}

#[tokio::test]
async fn progress_usage_budget_and_deadline_cross_the_boundary() {
    let team = team().await;
    let serving = serve(&team, "chatty").await;
    let rt = runtime().await;
    within(connect(&serving).await.register(&rt, "remote_chat"))
        .await
        .unwrap();
    let task = TaskSpec::new("ignored")
        .input(json!({"q": 1}))
        .policy(RunPolicy {
            max_tokens: Some(10_000),
            max_cost_usd: Some(5.0),
            deadline: Some(Duration::from_secs(40)),
            ..no_retry()
        });
    let mut handle = one_step(&rt, "chat", StepInput::TaskInput).start(task);
    let events = handle.events();
    let outcome = within(handle.outcome()).await.unwrap();
    let events: Vec<_> = within(events.collect::<Vec<_>>()).await;

    // The remote agent's progress arrives unchanged as the step's progress.
    let progress = progress(&events);
    assert!(
        progress.contains(&json!({"type": "text", "text": "thinking"})),
        "{progress:?}"
    );
    assert!(progress.contains(&json!({"type": "decision", "summary": "done thinking"})));
    // What the remote run spent counts in the caller's run.
    assert_eq!(outcome.usage, Usage::new(100, 50, 0.25));
    assert!(events.iter().any(|e| matches!(&e.event, RunEvent::UsageReported { usage, .. } if *usage == Usage::new(100, 50, 0.25))));
    // The remote agent ran within the caller's budget and deadline.
    assert_eq!(outcome.output["input"], json!({"q": 1}));
    assert_eq!(outcome.output["tokens_left"], json!(10_000));
    // (Data travels as a protobuf Struct: 5.0 and 5 are one number there.)
    assert_eq!(outcome.output["cost_left"].as_f64(), Some(5.0));
    let ms = outcome.output["deadline_ms"]
        .as_u64()
        .expect("the remote run had a deadline");
    assert!(ms > 0 && ms <= 40_000, "{ms}");
    within(serving.shutdown()).await.unwrap();
}

#[tokio::test]
async fn a_spent_budget_ends_the_run_across_the_boundary() {
    let team = team().await;
    let serving = serve(&team, "chatty").await;
    let rt = runtime().await;
    within(connect(&serving).await.register(&rt, "remote_chat"))
        .await
        .unwrap();
    // The remote agent spends 150 tokens; the run allows 120.
    let task = TaskSpec::new("spend").policy(RunPolicy {
        max_tokens: Some(120),
        ..no_retry()
    });
    let err = within(one_step(&rt, "chat", StepInput::Goal).run(task))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.kind,
            RunErrorKind::TokenBudget { .. } | RunErrorKind::StepFailed { .. }
        ),
        "{err:?}"
    );
    assert!(err.message.contains("token"), "{}", err.message);
    within(serving.shutdown()).await.unwrap();
}

#[tokio::test]
async fn cancelling_the_step_cancels_the_remote_task() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let team = runtime().await;
    let sleeper = Sleeper(tx);
    within(
        team.kind("sleeper")
            .capability("sleep")
            .register(move |_| sleeper.clone()),
    )
    .await
    .unwrap();
    let serving = serve(&team, "sleeper").await;
    let rt = runtime().await;
    within(connect(&serving).await.register(&rt, "remote_sleeper"))
        .await
        .unwrap();
    let handle =
        one_step(&rt, "sleep", StepInput::Goal).start(TaskSpec::new("zzz").policy(no_retry()));
    assert_eq!(within(rx.recv()).await, Some("started"));
    handle.cancel();
    // The remote agent learns of it: tasks/cancel reached the server.
    assert_eq!(within(rx.recv()).await, Some("cancelled"));
    let err = within(handle.outcome()).await.unwrap_err();
    assert!(matches!(err.kind, RunErrorKind::Cancelled), "{err:?}");
    within(serving.shutdown()).await.unwrap();
}

#[tokio::test]
async fn the_callers_deadline_bounds_the_remote_call() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let team = runtime().await;
    let sleeper = Sleeper(tx);
    within(
        team.kind("sleeper")
            .capability("sleep")
            .register(move |_| sleeper.clone()),
    )
    .await
    .unwrap();
    let serving = serve(&team, "sleeper").await;
    let rt = runtime().await;
    within(connect(&serving).await.register(&rt, "remote_sleeper"))
        .await
        .unwrap();
    let task = TaskSpec::new("zzz").policy(RunPolicy {
        step_timeout: Some(Duration::from_millis(400)),
        ..no_retry()
    });
    let err = within(one_step(&rt, "sleep", StepInput::Goal).run(task))
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind, RunErrorKind::StepFailed { .. }),
        "{err:?}"
    );
    assert_eq!(within(rx.recv()).await, Some("started"));
    // The remote work was stopped too, not left running.
    assert_eq!(within(rx.recv()).await, Some("cancelled"));
    within(serving.shutdown()).await.unwrap();
}

#[tokio::test]
async fn a_remote_failure_fails_the_step_with_its_message() {
    let team = team().await;
    let serving = serve(&team, "broken").await;
    let rt = runtime().await;
    within(connect(&serving).await.register(&rt, "remote_gauge"))
        .await
        .unwrap();
    let err = within(
        one_step(&rt, "gauge", StepInput::Goal).run(TaskSpec::new("read").policy(no_retry())),
    )
    .await
    .unwrap_err();
    assert!(
        err.message.contains("the gauge is broken"),
        "{}",
        err.message
    );
    within(serving.shutdown()).await.unwrap();
}

#[tokio::test]
async fn task_status_history_and_cancel_through_the_sdk_client() {
    let team = team().await;
    let serving = serve(&team, "upper").await;
    let client = sdk_client(&serving).await;
    let SendMessageResponse::Task(task) = within(client.send_message(&user_message("quiet")))
        .await
        .unwrap()
    else {
        panic!("expected a task");
    };
    assert_eq!(task.status.state, TaskState::Completed);
    let got = within(client.get_task(&GetTaskRequest {
        id: task.id.clone(),
        history_length: None,
        tenant: None,
    }))
    .await
    .unwrap();
    assert_eq!(got.status.state, TaskState::Completed);
    assert_eq!(
        got.status.message.as_ref().unwrap().parts[0].as_text(),
        Some("QUIET")
    );
    let history = got.history.unwrap();
    assert_eq!(history[0].role, Role::User);
    assert_eq!(history[0].parts[0].as_text(), Some("quiet"));
    let artifacts = got.artifacts.unwrap();
    assert_eq!(artifacts[0].parts[0].as_text(), Some("QUIET"));
    // A finished task cannot be cancelled: the spec's error.
    let err = within(
        client.cancel_task(&coditect_agents::a2a::types::CancelTaskRequest {
            id: task.id.clone(),
            metadata: None,
            tenant: None,
        }),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code, -32002);
    // An unknown task is not found.
    let err = within(client.get_task(&GetTaskRequest {
        id: "no-such-task".into(),
        history_length: None,
        tenant: None,
    }))
    .await
    .unwrap_err();
    assert_eq!(err.code, -32001);
    within(serving.shutdown()).await.unwrap();
}

#[tokio::test]
async fn push_notifications_reach_the_callers_webhook() {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Option<String>, Value)>();
    let hook = axum::Router::new().route(
        "/hook",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::Json<Value>| {
                let tx = tx.clone();
                async move {
                    let token = headers
                        .get("a2a-notification-token")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    let _ = tx.send((token, body.0));
                    "ok"
                }
            },
        ),
    );
    let hook_listener = listener().await;
    let hook_url = format!("http://{}/hook", hook_listener.local_addr().unwrap());
    let hook_server = tokio::spawn(async move { axum::serve(hook_listener, hook).await });

    let team = team().await;
    let serving = serve_with(&team, "upper", PushPolicy::AnyAddress).await;
    let client = sdk_client(&serving).await;
    let mut request = user_message("ping");
    request.configuration = Some(SendMessageConfiguration {
        accepted_output_modes: None,
        task_push_notification_config: Some(TaskPushNotificationConfig {
            url: hook_url,
            id: None,
            task_id: String::new(),
            token: Some("hook-token".into()),
            authentication: None,
            tenant: None,
        }),
        history_length: None,
        return_immediately: None,
    });
    within(client.send_message(&request)).await.unwrap();
    let mut states = Vec::new();
    while !states.iter().any(|s: &String| s == "TASK_STATE_COMPLETED") {
        let (token, body) = within(rx.recv()).await.unwrap();
        assert_eq!(token.as_deref(), Some("hook-token"));
        if let Some(state) = body["statusUpdate"]["status"]["state"].as_str() {
            states.push(state.to_owned());
        }
    }
    assert!(
        states.contains(&"TASK_STATE_WORKING".to_owned()),
        "{states:?}"
    );
    within(serving.shutdown()).await.unwrap();
    hook_server.abort();
}

#[tokio::test]
async fn a_whole_orchestrator_is_published_as_one_agent() {
    let team = team().await;
    let plan = Plan::new([
        Step::new("a", "shout", StepInput::Goal),
        Step::new("b", "chat", StepInput::output("a")),
    ]);
    let orchestrator = Orchestrator::new(team.clone(), StaticPlanner::new(plan));
    let server = A2aServer::for_orchestrator(orchestrator)
        .name("team")
        .bearer_token(TOKEN)
        .build()
        .unwrap();
    let serving = within(server.serve(listener().await)).await.unwrap();
    let remote = connect(&serving).await;
    assert_eq!(remote.card().name, "team");
    let mut caps = remote.capabilities();
    caps.sort();
    assert_eq!(caps, ["chat", "gauge", "shout"]);
    let out = within(remote.call(json!("plan me"))).await.unwrap();
    assert_eq!(out["input"], json!("PLAN ME"));
    within(serving.shutdown()).await.unwrap();
}

#[tokio::test]
async fn bad_configuration_is_a_typed_error() {
    let team = team().await;
    let err = A2aServer::for_kind(&team, "nobody").unwrap_err();
    assert_eq!(err.kind(), A2aErrorKind::UnknownKind);
    let err = A2aServer::for_kind(&team, "upper")
        .unwrap()
        .bearer_token(" ")
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), A2aErrorKind::Config);
    let err = within(A2aRemote::builder("ftp://127.0.0.1/").connect())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), A2aErrorKind::Config);
    // Nothing listens there: a connect error, at once.
    let port = listener().await.local_addr().unwrap().port();
    let err = within(A2aRemote::builder(format!("http://127.0.0.1:{port}/")).connect())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), A2aErrorKind::Connect);
    // Something that is not an A2A agent answers.
    let not_a2a = listener().await;
    let url = format!("http://{}/", not_a2a.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/.well-known/agent-card.json",
        axum::routing::get(|| async { "{\"hello\": 1}" }),
    );
    let srv = tokio::spawn(async move { axum::serve(not_a2a, app).await });
    let err = within(A2aRemote::builder(url).connect()).await.unwrap_err();
    assert_eq!(err.kind(), A2aErrorKind::Protocol);
    srv.abort();
}
