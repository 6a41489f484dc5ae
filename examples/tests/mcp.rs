//! The MCP examples against each other, offline: `mcp_tools` lists and calls
//! the tools of `mcp_server` (the quickstart's team) over stdio, and over
//! HTTP with and without the right bearer token.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const TOOLS: &str = env!("CARGO_BIN_EXE_mcp_tools");
const SERVER: &str = env!("CARGO_BIN_EXE_mcp_server");

/// Runs a command to the end, failing the test if it takes over a minute.
fn run(args: &[&str]) -> Output {
    let mut cmd = Command::new(TOOLS);
    cmd.args(args).env_remove("ANTHROPIC_API_KEY");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(cmd.output());
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("mcp_tools did not finish within a minute")
        .expect("mcp_tools could not be started")
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "mcp_tools failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn mcp_tools_lists_and_calls_the_team_served_over_stdio() {
    let listed = stdout(&run(&["--stdio", SERVER]));
    let names: Vec<&str> = listed
        .lines()
        .map(|l| l.split('\t').next().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "research",
            "risk_analysis",
            "fact_check",
            "cost_estimate",
            "synthesize",
            "run_task"
        ],
        "{listed}"
    );
    assert!(listed.contains("run_task\tRuns a whole task"), "{listed}");

    let checked = stdout(&run(&[
        "--stdio",
        SERVER,
        "--call",
        "fact_check",
        "--args",
        r#"{"input": "Rust takes months to learn"}"#,
    ]));
    assert!(checked.starts_with("True."), "{checked}");

    let answer = stdout(&run(&[
        "--stdio",
        SERVER,
        "--call",
        "run_task",
        "--args",
        r#"{"goal": "Should we adopt Rust for log ingestion?"}"#,
    ]));
    assert!(answer.contains("Recommendation: adopt Rust"), "{answer}");
    assert!(answer.contains("about $120000"), "{answer}");
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn mcp_tools_reaches_the_team_over_http_only_with_the_token() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = Command::new(SERVER)
        .args(["--http", &addr, "--token", "s3cret"])
        .env_remove("ANTHROPIC_API_KEY")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let _server = Server(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.starts_with("serving MCP at") {
                let _ = tx.send(line);
            }
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the server did not start");
    let url = format!("http://{addr}/mcp");
    assert!(line.contains(&url), "{line}");

    let listed = stdout(&run(&["--http", &url, "--token", "s3cret"]));
    assert!(listed.contains("cost_estimate\t"), "{listed}");
    let cost = stdout(&run(&[
        "--http",
        &url,
        "--token",
        "s3cret",
        "--call",
        "cost_estimate",
        "--args",
        r#"{"input": "three engineers, ten weeks"}"#,
    ]));
    assert!(cost.contains("about $120000"), "{cost}");

    for bad in [
        vec!["--http", url.as_str(), "--token", "wrong"],
        vec!["--http", url.as_str()],
    ] {
        let out = run(&bad);
        assert!(!out.status.success(), "{bad:?} was let in");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.starts_with("mcp_tools: mcp server server:"), "{err}");
    }
}
