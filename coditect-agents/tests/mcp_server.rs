//! A coditect orchestrator served as an MCP server, driven by the official
//! Python `mcp` SDK as the client (tests/mcp_py/drive_server.py), over stdio
//! and over streamable HTTP with a bearer token: tools listed from the agent
//! cards, a capability called, `run_task` with progress, a cancelled call
//! that cancels the run on the server, a wrong or missing token refused.
#![cfg(feature = "mcp")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/mcp_peers.rs"]
mod peers;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

const SERVER: &str = env!("CARGO_BIN_EXE_mcp-test-server");

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mcp_py/drive_server.py")
}

/// Runs the Python client with `args` (bounded by a timeout) and returns
/// what it saw.
/// Runs the Python client; gives back what it saw and what it (and the
/// server it started, over stdio) wrote to stderr, for failure messages.
async fn drive(python: PathBuf, args: Vec<String>) -> (Value, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(python)
            .arg(script())
            .args(&args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the Python client did not finish")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the Python client failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    (seen, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// What both transports must show.
fn check(seen: &Value, stderr: &str) {
    assert_eq!(
        seen["tools"],
        serde_json::json!(["shout", "wait", "cancelled_waits", "run_task"])
    );
    // The capability's schema comes from its card: a string input, wrapped
    // in the object MCP requires; an object input as it is.
    assert_eq!(
        seen["schemas"]["shout"]["properties"]["input"]["type"],
        "string"
    );
    assert_eq!(
        seen["schemas"]["wait"]["properties"]["seconds"]["type"],
        "integer"
    );
    assert_eq!(seen["shout"], "HELLO");
    assert_eq!(seen["shout_error"], false);
    assert_eq!(seen["run_task"], "MAKE NOISE");
    assert_eq!(seen["run_task_structured"]["output"], "MAKE NOISE");
    let progress = seen["progress"].as_array().unwrap();
    let messages: Vec<&str> = progress
        .iter()
        .map(|p| p["message"].as_str().unwrap())
        .collect();
    assert_eq!(
        messages.first(),
        Some(&"plan: first, second"),
        "{messages:?}"
    );
    assert!(
        messages.contains(&"first done") && messages.contains(&"second done"),
        "{messages:?}"
    );
    let last = progress.last().unwrap();
    assert_eq!(last["progress"], 2.0);
    assert_eq!(last["total"], 2.0);
    // Cancelled by the client: the run stopped on the server, and the
    // session kept working.
    assert_eq!(seen["cancelled"], true);
    assert!(seen.get("wait_finished").is_none());
    assert_eq!(
        seen["server_cancelled"], 1,
        "the cancelled call did not reach the server's handler; the client's stderr:\n{stderr}"
    );
    assert_eq!(seen["after_cancel"], "AGAIN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_drives_the_server_over_stdio() {
    let Some(python) = peers::python() else {
        return;
    };
    let (seen, stderr) = drive(
        python,
        vec!["stdio".into(), SERVER.into(), "orchestrator".into()],
    )
    .await;
    check(&seen, &stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_drives_the_server_over_http_and_a_bad_token_is_refused() {
    let Some(python) = peers::python() else {
        return;
    };
    let token = "correct-horse-battery-staple";
    // The server runs until its stdin closes; the guard kills it regardless.
    let mut child = Command::new(SERVER)
        .args(["orchestrator-http", token])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _server = peers::Peer(child);
    let url = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).unwrap();
            line.trim().to_owned()
        }),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let (seen, stderr) = drive(python, vec!["http".into(), url, token.into()]).await;
    check(&seen, &stderr);
    assert_eq!(seen["bad_token_status"], 401);
    assert_eq!(seen["bad_token_refused"], true);
    assert_eq!(seen["no_token_status"], 401);
    assert_eq!(seen["no_token_refused"], true);
}
