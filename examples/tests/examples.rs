//! The examples as a user runs them: offline runs succeed deterministically and
//! say they are scripted; an unreachable API fails with one clear line.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

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

fn offline(bin: &str) -> (String, String) {
    let mut cmd = Command::new(bin);
    cmd.env_remove("ANTHROPIC_API_KEY")
        .env_remove("ANTHROPIC_BASE_URL");
    let out = run(cmd);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{bin} failed: {stderr}\n{stdout}");
    assert!(
        stdout.starts_with("offline: no ANTHROPIC_API_KEY"),
        "{stdout}"
    );
    assert!(stdout.contains("ScriptedModel"), "{stdout}");
    (stdout, stderr)
}

#[test]
fn quickstart_runs_offline_with_a_plan_tools_a_delegation_and_a_streamed_answer() {
    let (out, _) = offline(env!("CARGO_BIN_EXE_quickstart"));
    assert!(
        out.contains(
            "[plan] research · risks · cost · recommendation (after cost, research, risks)"
        ),
        "{out}"
    );
    assert!(
        out.contains("researcher calls lookup {\"topic\":\"performance\"}"),
        "{out}"
    );
    assert!(out.contains("estimator calls estimate_cost"), "{out}");
    assert!(out.contains("analyst asks fact_check"), "{out}");
    assert!(out.contains("↳ delegated to fact_checker/"), "{out}");
    assert!(
        out.contains("── recommendation, streamed by synthesizer/"),
        "{out}"
    );
    // The answer carries the tool's arithmetic: 3 engineers × 10 weeks × $4,000.
    assert!(out.contains("about $120000"), "{out}");
    assert!(out.contains("5 steps and delegations"), "{out}");
}

#[test]
fn quickstart_ends_with_a_table_and_writes_the_pictures_asked_for() {
    let dir = std::env::temp_dir().join(format!("coditect-pictures-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (html, mmd) = (dir.join("run.html"), dir.join("run.mmd"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_quickstart"));
    cmd.env_remove("ANTHROPIC_API_KEY")
        .env_remove("ANTHROPIC_BASE_URL")
        .arg("--trace-html")
        .arg(&html)
        .arg("--mermaid")
        .arg(&mmd);
    let out = run(cmd);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    // Not a terminal: plain lines, then the summary table.
    assert!(
        stdout.contains("step             status   time ms    tokens  cache hits      cost"),
        "{stdout}"
    );
    for step in ["research", "risks", "cost", "recommendation"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(step) && l.contains(" ok ")),
            "{step}: {stdout}"
        );
    }
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.starts_with("<!DOCTYPE html>") && page.contains("recommendation"));
    let diagram = std::fs::read_to_string(&mmd).unwrap();
    assert!(diagram.starts_with("sequenceDiagram"), "{diagram}");
    assert!(diagram.contains("delegate to fact_checker"), "{diagram}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn quickstart_fails_in_one_line_when_the_api_is_unreachable() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_quickstart"));
    cmd.env("ANTHROPIC_API_KEY", "sk-test-not-a-key")
        .env("ANTHROPIC_BASE_URL", format!("http://127.0.0.1:{port}"))
        .env("RUST_BACKTRACE", "1");
    let out = run(cmd);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("quickstart: "), "{stderr}");
    assert!(
        stderr.contains("Connection refused") || stderr.contains("connect"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("sk-test-not-a-key"),
        "the key leaked: {stderr}"
    );
}

#[test]
fn research_team_finds_the_conflicts_in_the_shipped_documents() {
    let (out, _) = offline(env!("CARGO_BIN_EXE_research_team"));
    assert!(out.contains("summarize-incident-report · summarize-oncall-notes · summarize-vendor-statement · cross-check · report"), "{out}");
    assert!(
        out.contains("read_document {\"name\":\"oncall-notes.md\"}"),
        "{out}"
    );
    assert!(out.contains("- Start: 09:12 UTC (3 sources)"), "{out}");
    assert!(out.contains("- Duration: \"42 minutes\" (incident-report, vendor-statement) vs \"55 minutes\" (oncall-notes)"), "{out}");
    assert!(
        out.contains("The sources agree on 1 fact and conflict on 4"),
        "{out}"
    );
}

#[test]
fn review_loop_sends_drafts_back_until_one_passes() {
    let (out, _) = offline(env!("CARGO_BIN_EXE_review_loop"));
    assert!(
        out.contains("critic: draft 1: sent back (4/10): Please mention the price ($79)."),
        "{out}"
    );
    assert!(out.contains("critic: draft 2: sent back (7/10)"), "{out}");
    assert!(out.contains("critic: draft 3: passed (10/10)"), "{out}");
    assert!(out.contains("passed after 3 round(s):"), "{out}");
}

/// A worker process, killed by its PID when dropped (also when a test fails).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `nats_worker` named `name` and waits until it says it is hosting.
fn start_worker(url: &str, name: &str) -> Killed {
    let mut child = Command::new(env!("CARGO_BIN_EXE_nats_worker"))
        .args(["--nats", url, "--name", name])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start nats_worker");
    let stdout = child.stdout.take().unwrap();
    let child = Killed(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        for line in lines.by_ref() {
            let Ok(line) = line else { break };
            let hosting = line.contains("hosting shout and count");
            let _ = tx.send(line);
            if hosting {
                break;
            }
        }
        // Keep reading so the worker never blocks on a full pipe.
        for _ in lines {}
    });
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the worker did not start within a minute");
        if line.contains("hosting shout and count") {
            return child;
        }
    }
}

#[test]
fn nats_orchestrator_finds_three_workers_with_no_cards_of_its_own() {
    let server = coditect_orchestrator::testing::NatsServer::start().expect("start nats-server");
    let url = server.url();
    let workers: Vec<Killed> = (1..=3)
        .map(|i| start_worker(&url, &format!("w{i}")))
        .collect();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nats_orchestrator"));
    cmd.args(["--nats", &url, "--sentences", "9", "--wait", "30"]);
    let out = run(cmd);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}\n{stdout}");
    // Every worker's cards came from the bus, descriptions and all.
    for i in 1..=3 {
        assert!(
            stdout.contains(&format!(
                "discovered shout on w{i}: Upper-cases a sentence. (capabilities [\"shout\"], capacity 16)"
            )),
            "{stdout}"
        );
        assert!(
            stdout.contains(&format!(
                "discovered count on w{i}: Counts the words of a text."
            )),
            "{stdout}"
        );
    }
    assert!(stdout.contains("run finished: Succeeded"), "{stdout}");
    for i in 0..9 {
        // "SENTENCE NUMBER i GOES THROUGH THE BUS (by wN)": nine words.
        assert!(
            stdout.contains(&format!("done       count{i}: 9")),
            "{stdout}"
        );
        assert!(
            stdout.contains(&format!(
                "done       shout{i}: \"SENTENCE NUMBER {i} GOES THROUGH THE BUS (by w"
            )),
            "{stdout}"
        );
    }
    drop(workers);
}
