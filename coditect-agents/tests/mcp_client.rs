//! The MCP client against real servers: the reference server
//! `@modelcontextprotocol/server-everything` (npm) over stdio and over
//! streamable HTTP, and coditect's own misbehaving rmcp test server
//! (`mcp-test-server`): crashes, garbage, cancellation, timeouts, grants.
#![cfg(feature = "mcp")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/mcp_peers.rs"]
mod peers;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coditect_agents::mcp::{McpClient, McpContent, McpErrorKind, McpProgress, McpServer};
use coditect_agents::{AgentProgress, LlmAgent, ScriptedModel, ScriptedReply};
use coditect_orchestrator::orchestrator::{
    Orchestrator, Plan, RunEvent, StaticPlanner, Step, StepInput, TaskSpec,
};
use coditect_orchestrator::{InMemoryTransport, Runtime};
use futures::StreamExt;
use serde_json::{Value, json};

async fn within<T>(secs: u64, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .expect("timed out")
}

fn test_server(name: &str) -> McpServer {
    McpServer::stdio(name, env!("CARGO_BIN_EXE_mcp-test-server")).arg("tools")
}

async fn everything_stdio() -> Option<McpClient> {
    let script = peers::everything()?;
    let client = McpServer::stdio("everything", "node")
        .arg(script.to_string_lossy())
        .arg("stdio")
        .call_timeout(Duration::from_secs(20))
        .connect()
        .await
        .unwrap();
    Some(client)
}

/// server-everything in its streamable HTTP mode on a free port; the guard
/// stops it.
async fn everything_http() -> Option<(McpClient, peers::Peer)> {
    let script = peers::everything()?;
    let port = peers::free_port();
    let mut child = Command::new("node")
        .arg(&script)
        .arg("streamableHttp")
        .env("PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let peer = peers::Peer(child);
    // It says so on stderr once it listens.
    let ready = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stderr).lines();
        let ready = lines
            .by_ref()
            .map_while(Result::ok)
            .any(|l| l.contains("listening on port"));
        // Keep draining so the server never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        ready
    });
    assert!(
        within(30, ready).await.unwrap(),
        "server-everything did not start"
    );
    let client = McpServer::http("everything-http", format!("http://127.0.0.1:{port}/mcp"))
        .call_timeout(Duration::from_secs(20))
        .connect()
        .await
        .unwrap();
    Some((client, peer))
}

/// What both transports of server-everything must do.
async fn exercise(c: &McpClient) {
    // Listing: the tools and their schemas.
    for name in [
        "echo",
        "get-sum",
        "get-structured-content",
        "trigger-long-running-operation",
        "get-tiny-image",
    ] {
        let t = c.tool(name).unwrap_or_else(|| panic!("no tool {name}"));
        assert_eq!(t.input_schema["type"], "object", "{name}");
        assert!(!t.description.is_empty(), "{name}");
    }
    assert!(
        c.tool("get-structured-content")
            .unwrap()
            .output_schema
            .is_some()
    );

    // With arguments.
    let echo = c
        .call("echo", json!({"message": "hello mcp"}))
        .await
        .unwrap();
    assert!(!echo.is_error);
    assert!(echo.text().contains("hello mcp"), "{}", echo.text());
    let sum = c.call("get-sum", json!({"a": 2, "b": 3})).await.unwrap();
    assert!(sum.text().contains('5'), "{}", sum.text());

    // Without arguments: an image and text.
    let img = c.call("get-tiny-image", Value::Null).await.unwrap();
    assert!(
        img.content
            .iter()
            .any(|b| matches!(b, McpContent::Image { mime_type, .. } if mime_type == "image/png"))
    );
    assert!(img.text().contains("[image: image/png,"), "{}", img.text());

    // Structured output: the model reads the structured value.
    let weather = c
        .call("get-structured-content", json!({"location": "Chicago"}))
        .await
        .unwrap();
    assert_eq!(weather.structured.as_ref().unwrap()["temperature"], 36);
    let read: Value = serde_json::from_str(&weather.text()).unwrap();
    assert_eq!(read["conditions"], "Light rain / drizzle");

    // An error result: the server ran the call and reports it failed.
    let bad = c.call("echo", json!({})).await.unwrap();
    assert!(bad.is_error, "{bad:?}");
    assert!(!bad.text().is_empty());

    // Progress, in order, all before the result.
    let seen: Arc<Mutex<Vec<McpProgress>>> = Arc::default();
    let sink = seen.clone();
    let done = c
        .call_with_progress(
            "trigger-long-running-operation",
            json!({"duration": 0.3, "steps": 3}),
            move |p| {
                sink.lock().unwrap().push(p);
                std::future::ready(())
            },
        )
        .await
        .unwrap();
    assert!(done.text().contains("completed"), "{}", done.text());
    let seen = seen.lock().unwrap().clone();
    let values: Vec<f64> = seen.iter().map(|p| p.progress).collect();
    assert_eq!(values, [1.0, 2.0, 3.0]);
    assert!(seen.iter().all(|p| p.total == Some(3.0)));

    // Cancellation: give up after the first progress report; the call ends
    // at once and the session keeps working.
    let (first_tx, first_rx) = tokio::sync::oneshot::channel::<()>();
    let mut first_tx = Some(first_tx);
    let long = c.call_with_progress(
        "trigger-long-running-operation",
        json!({"duration": 60, "steps": 60}),
        move |_| {
            if let Some(tx) = first_tx.take() {
                let _ = tx.send(());
            }
            std::future::ready(())
        },
    );
    tokio::select! {
        r = long => panic!("the long call finished: {r:?}"),
        _ = first_rx => {}
    }
    let after = within(10, c.call("echo", json!({"message": "still here"})))
        .await
        .unwrap();
    assert!(after.text().contains("still here"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_everything_over_stdio() {
    let Some(c) = within(60, everything_stdio()).await else {
        return;
    };
    within(60, exercise(&c)).await;
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_everything_over_streamable_http() {
    let Some((c, _peer)) = within(60, everything_http()).await else {
        return;
    };
    within(60, exercise(&c)).await;
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_dies_mid_call_fails_the_call_at_once_and_is_restarted() {
    let c = within(20, test_server("crashy").connect()).await.unwrap();
    let pid = within(10, c.call("pid", Value::Null)).await.unwrap().text();
    // The call timeout is long: the error must come from the death, not the clock.
    let e = within(10, c.call("crash", Value::Null)).await.unwrap_err();
    assert_eq!(e.kind(), McpErrorKind::ServerDied, "{e}");
    assert_eq!(e.server(), "crashy");
    assert!(e.message().contains("exited"), "{e}");
    assert!(
        e.message().contains("crashing on purpose"),
        "the stderr is quoted: {e}"
    );
    // The next call starts it again: a new process.
    let again = within(20, c.call("pid", Value::Null)).await.unwrap().text();
    assert_ne!(pid, again);
    assert_eq!(c.restarts(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_are_bounded_then_the_server_is_reported_unavailable() {
    let c = within(20, test_server("fragile").max_restarts(1).connect())
        .await
        .unwrap();
    let first = within(10, c.call("crash", Value::Null)).await.unwrap_err();
    assert_eq!(first.kind(), McpErrorKind::ServerDied);
    let second = within(20, c.call("crash", Value::Null)).await.unwrap_err();
    assert_eq!(second.kind(), McpErrorKind::ServerDied);
    let third = within(10, c.call("pid", Value::Null)).await.unwrap_err();
    assert_eq!(third.kind(), McpErrorKind::Unavailable, "{third}");
    assert!(third.to_string().contains("fragile"), "{third}");
    assert_eq!(c.restarts(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_answers_garbage_gives_a_typed_error_naming_it() {
    let c = within(20, test_server("babbler").connect()).await.unwrap();
    let e = within(10, c.call("garbage", Value::Null))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), McpErrorKind::OffProtocol, "{e}");
    assert_eq!(e.server(), "babbler");
    assert!(e.to_string().starts_with("mcp server babbler:"), "{e}");
    assert!(e.message().contains("<html>this is not json-rpc"), "{e}");
    // The session was closed; the next call gets a fresh one.
    let ok = within(20, c.call("echo", json!({"text": "sane again"})))
        .await
        .unwrap();
    assert_eq!(ok.text(), "sane again");
}

/// Calls `cancellations` until the server has seen `n` (each try is a round
/// trip; bounded).
async fn server_saw_cancellations(c: &McpClient, n: u64) {
    for _ in 0..200 {
        let seen: u64 = c
            .call("cancellations", Value::Null)
            .await
            .unwrap()
            .text()
            .parse()
            .unwrap();
        if seen >= n {
            assert_eq!(seen, n);
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("the server never saw the cancellation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_call_is_cancelled_on_the_server() {
    let c = within(20, test_server("slowpoke").connect()).await.unwrap();
    let (first_tx, first_rx) = tokio::sync::oneshot::channel::<()>();
    let mut first_tx = Some(first_tx);
    let slow = c.call_with_progress("slow", json!({"steps": 100000, "ms": 5}), move |_| {
        if let Some(tx) = first_tx.take() {
            let _ = tx.send(());
        }
        std::future::ready(())
    });
    within(10, async {
        tokio::select! {
            r = slow => panic!("finished: {r:?}"),
            _ = first_rx => {}
        }
    })
    .await;
    within(20, server_saw_cancellations(&c, 1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_past_its_timeout_fails_and_is_cancelled_on_the_server() {
    let c = within(
        20,
        test_server("laggard")
            .call_timeout(Duration::from_millis(300))
            .connect(),
    )
    .await
    .unwrap();
    let e = within(10, c.call("slow", json!({"steps": 100000, "ms": 5})))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), McpErrorKind::Timeout, "{e}");
    within(20, server_saw_cancellations(&c, 1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_is_offered_only_its_granted_tools_and_a_call_to_another_is_refused() {
    let c = within(20, test_server("granted").connect()).await.unwrap();
    let pid = within(10, c.call("pid", Value::Null)).await.unwrap().text();
    let model = ScriptedModel::new()
        .then(ScriptedReply::tool_calls([
            ("echo", json!({"text": "hi"})),
            ("crash", json!({})),
        ]))
        .then(ScriptedReply::text("done"));
    let agent = LlmAgent::builder(model.clone())
        .tools(c.toolset().allow(["echo", "image"]).build().unwrap())
        .build();
    let answer = within(20, agent.run(json!("go"), None)).await.unwrap();
    assert_eq!(answer.text, "done");
    let requests = model.requests();
    let offered: Vec<&str> = requests[0].tools.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(offered, ["echo", "image"]);
    // The schema is the server's.
    assert_eq!(
        requests[0].tools[0].input_schema["required"],
        json!(["text"])
    );
    let results = requests[1].last_tool_results();
    assert_eq!(results[0], (results[0].0, "hi", false));
    assert!(results[1].2, "the ungranted call is an error for the model");
    assert!(
        results[1].1.contains("no tool \"crash\""),
        "{}",
        results[1].1
    );
    // And it never reached the server: still the same process.
    let still = within(10, c.call("pid", Value::Null)).await.unwrap().text();
    assert_eq!(pid, still);

    // Granting a name the server lacks is an error, not a silent no-op.
    let Err(e) = c.toolset().allow(["ehco"]).build() else {
        panic!("a missing tool was granted")
    };
    assert_eq!(e.kind(), McpErrorKind::NotAllowed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_map_onto_tool_results_for_the_model() {
    let c = within(20, test_server("mapper").connect()).await.unwrap();
    let model = ScriptedModel::new()
        .then(ScriptedReply::tool_calls([
            ("t_image", json!({})),
            ("t_fail", json!({})),
        ]))
        .then(ScriptedReply::text("ok"));
    let agent = LlmAgent::builder(model.clone())
        .tools(c.toolset().allow_all().prefix("t_").build().unwrap())
        .build();
    within(20, agent.run(json!("go"), None)).await.unwrap();
    let requests = model.requests();
    assert!(requests[0].tools.iter().all(|t| t.name.starts_with("t_")));
    let results = requests[1].last_tool_results();
    assert_eq!(results[0].1, "a red dot\n[image: image/png, 70 bytes]");
    assert!(!results[0].2);
    assert_eq!(results[1].1, "this tool always fails");
    assert!(results[1].2, "a tool-level error is an error result");
}

/// A one-step run whose agent calls the `slow` tool.
async fn orchestrated(c: &McpClient, steps: u64) -> (Orchestrator, Runtime) {
    let model = ScriptedModel::new()
        .then(ScriptedReply::tool_call(
            "slow",
            json!({"steps": steps, "ms": 5}),
        ))
        .then(ScriptedReply::text("finished"));
    let agent = LlmAgent::builder(model)
        .tools(c.toolset().allow(["slow"]).build().unwrap())
        .build();
    let runtime = Runtime::builder(InMemoryTransport::new())
        .build()
        .await
        .unwrap();
    runtime
        .kind("worker")
        .capability("work")
        .register(move |_| agent.clone())
        .await
        .unwrap();
    let planner = StaticPlanner::new(Plan::new([Step::new("s", "work", StepInput::Goal)]));
    (Orchestrator::new(runtime.clone(), planner), runtime)
}

fn tool_progress(e: &RunEvent) -> Option<f64> {
    match e {
        RunEvent::StepProgress { data, .. } => match AgentProgress::from_value(data) {
            Some(AgentProgress::ToolProgress { name, progress, .. }) => {
                assert_eq!(name, "slow");
                Some(progress)
            }
            _ => None,
        },
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_progress_reaches_the_run_as_progress_events_before_the_step_result() {
    let c = within(20, test_server("reporter").connect()).await.unwrap();
    let (orchestrator, _rt) = orchestrated(&c, 3).await;
    let mut handle = orchestrator.start(TaskSpec::new("work"));
    let events: Vec<RunEvent> = within(20, handle.events().map(|r| r.event).collect()).await;
    within(10, handle.outcome()).await.unwrap();
    let progress: Vec<f64> = events.iter().filter_map(tool_progress).collect();
    assert_eq!(progress, [1.0, 2.0, 3.0]);
    let last_progress = events
        .iter()
        .rposition(|e| tool_progress(e).is_some())
        .unwrap();
    let succeeded = events
        .iter()
        .position(|e| matches!(e, RunEvent::StepSucceeded { .. }))
        .unwrap();
    assert!(last_progress < succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_the_step_cancels_the_call_on_the_server() {
    let c = within(20, test_server("cancellable").connect())
        .await
        .unwrap();
    let (orchestrator, _rt) = orchestrated(&c, 100000).await;
    let mut handle = orchestrator.start(TaskSpec::new("work"));
    let mut events = handle.events();
    within(20, async {
        while let Some(r) = events.next().await {
            if tool_progress(&r.event).is_some() {
                return;
            }
        }
        panic!("no progress");
    })
    .await;
    handle.cancel();
    let outcome = within(20, handle.outcome()).await;
    assert!(outcome.is_err());
    within(20, server_saw_cancellations(&c, 1)).await;
}

/// coditect's MCP server over HTTP, reached with coditect's own client: the
/// right bearer token opens a session and runs a call; a wrong one and none
/// are refused at the handshake (no Python needed, unlike `mcp_server.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_server_takes_only_requests_with_its_bearer_token() {
    let token = "open-sesame";
    let mut child = Command::new(env!("CARGO_BIN_EXE_mcp-test-server"))
        .args(["orchestrator-http", token])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _server = peers::Peer(child);
    let url = within(
        30,
        tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).unwrap();
            line.trim().to_owned()
        }),
    )
    .await
    .unwrap();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");

    let good = within(
        20,
        McpServer::http("team", url.clone())
            .bearer_token(token)
            .connect(),
    )
    .await
    .unwrap();
    assert!(good.tool("shout").is_some());
    let out = within(20, good.call("shout", json!({"input": "hi"})))
        .await
        .unwrap();
    assert!(out.text().contains("HI"), "{out:?}");

    for bad in [Some("open-sesame!"), None] {
        let mut server =
            McpServer::http("team", url.clone()).connect_timeout(Duration::from_secs(10));
        if let Some(t) = bad {
            server = server.bearer_token(t);
        }
        let e = within(20, server.connect()).await.unwrap_err();
        assert_eq!(e.kind(), McpErrorKind::Connect, "{e}");
    }
}
