//! Two coditect processes speaking A2A on loopback: `a2a_server` publishes
//! the quickstart's specialists, `a2a_client` runs a plan using one of them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const TOKEN: &str = "loopback-token";

/// The `a2a_server` process, killed (by its pid) when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server() -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_a2a_server"))
        .args(["--addr", "127.0.0.1:0", "--token", TOKEN])
        .env_remove("ANTHROPIC_API_KEY")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("listening on ") {
                let _ = tx.send(url.to_owned());
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("a2a_server did not start listening");
    Server { child, url }
}

/// Runs a command to the end, failing the test if it takes over a minute.
fn run(mut cmd: Command) -> Output {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(cmd.output());
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the example did not finish within a minute")
        .expect("the example could not be started")
}

fn client(url: &str, token: &str) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_a2a_client"));
    cmd.args(["--url", url, "--token", token]);
    run(cmd)
}

/// One raw HTTP/1.1 POST to `url`'s host and path; the whole answer.
fn post(url: &str, body: &str, token: &str) -> String {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut stream = TcpStream::connect(host).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "POST /{path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nA2A-Version: 1.0\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

#[test]
fn a2a_client_runs_a_plan_on_a_specialist_served_by_a2a_server() {
    let server = start_server();
    let out = client(&format!("{}researcher", server.url), TOKEN);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("remote agent \"researcher\""), "{stdout}");
    assert!(stdout.contains("skills research"), "{stdout}");
    // The remote agent's tool calls and streamed text arrived as progress.
    assert!(
        stdout.contains("(remote) calls lookup {\"topic\":\"performance\"}"),
        "{stdout}"
    );
    assert!(
        stdout.contains("(remote) Evidence from the fact sheet"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "── report ──\nEvidence from the fact sheet:\n- In the team's 2025 benchmark"
        ),
        "{stdout}"
    );
    // The remote run's usage was counted in the client's run.
    assert!(!stdout.contains("\n0 tokens in"), "{stdout}");
}

#[test]
fn a2a_client_uses_the_whole_team_published_as_one_agent() {
    let server = start_server();
    let out = client(&server.url, TOKEN);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("\"coditect-quickstart-team\""), "{stdout}");
    assert!(stdout.contains("calls estimate_cost"), "{stdout}");
    assert!(
        stdout.contains("── report ──\nRecommendation: adopt Rust"),
        "{stdout}"
    );
}

#[test]
fn a_bad_token_and_a_malformed_message_are_refused_by_the_server_process() {
    let server = start_server();
    let out = client(&format!("{}analyst", server.url), "not-the-token");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("a2a_client: "), "{stderr}");
    assert!(stderr.contains("unauthenticated"), "{stderr}");

    let url = format!("{}analyst", server.url);
    let answer = post(&url, "{\"jsonrpc\": \"2.0\", \"id\": 1, \"method\"", TOKEN);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"code\":-32700"), "{answer}");
    let answer = post(
        &url,
        r#"{"jsonrpc": "2.0", "id": 2, "method": "SendMessage", "params": {"message": 42}}"#,
        TOKEN,
    );
    assert!(answer.contains("\"code\":-32602"), "{answer}");
    let answer = post(&url, r#"{"jsonrpc": "2.0", "id": 3}"#, "not-the-token");
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    // Still serving after all that.
    let out = client(&format!("{}fact_checker", server.url), TOKEN);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
