//! coditect's metrics as Prometheus sees them: the exposition passes
//! `promtool check metrics`, a real Prometheus server (Debian's package,
//! started here on loopback) scrapes it and answers a PromQL query with the
//! run's token count, and every query of the Grafana dashboard names a
//! metric that exists.
#![cfg(feature = "prometheus")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use coditect_orchestrator::observe::metrics::{ModelCall, model_call};
use coditect_orchestrator::orchestrator::{
    Orchestrator, Plan, StaticPlanner, Step, StepInput, TaskSpec,
};
use coditect_orchestrator::{
    Agent, AgentContext, AgentError, InMemoryTransport, Runtime, TenantId, Usage,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

const T: Duration = Duration::from_secs(60);

/// Spends 1,234 input and 56 output tokens of `m-prom`.
struct Spender;
impl Agent for Spender {
    type Input = String;
    type Output = String;
    async fn handle(&mut self, s: String, ctx: &AgentContext) -> Result<String, AgentError> {
        ctx.report_model_usage(Some("m-prom"), Usage::new(1_234, 56, 0.25))
            .await
            .ok();
        model_call(
            &ModelCall {
                provider: "anthropic",
                model: "m-prom",
                input_tokens: 1_234,
                output_tokens: 56,
                error: None,
            },
            Duration::from_millis(120),
        );
        Ok(s)
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET http://127.0.0.1:{port}{path}`: the body.
async fn get(port: u16, path: &str) -> std::io::Result<String> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    // Chunked bodies (Prometheus' API) are read as they are: JSON within.
    Ok(body.to_owned())
}

/// Metric names of an exposition (`# TYPE` lines).
fn exposed(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// The metric names a PromQL expression uses: identifiers followed by a
/// selector or range (`name{`, `name[`), and those ending in a known suffix.
fn used_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes: Vec<char> = expr.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_alphabetic() || bytes[i] == '_' {
            let start = i;
            while i < bytes.len()
                && (bytes[i].is_ascii_alphanumeric() || bytes[i] == '_' || bytes[i] == ':')
            {
                i += 1;
            }
            let word: String = bytes[start..i].iter().collect();
            if word == "by" || word == "without" {
                // A grouping: label names, not metrics.
                while i < bytes.len() && bytes[i] != ')' {
                    i += 1;
                }
            } else if word.starts_with("coditect_") || word.starts_with("gen_ai_") {
                out.push(word);
            }
        } else if bytes[i] == '{' {
            // A selector: label names and values.
            while i < bytes.len() && bytes[i] != '}' {
                i += 1;
            }
        } else if bytes[i] == '"' {
            // Skip label values.
            i += 1;
            while i < bytes.len() && bytes[i] != '"' {
                i += 1;
            }
            i += 1;
        } else {
            i += 1;
        }
    }
    out
}

/// A child process stopped (by its PID) when dropped.
struct Server(tokio::process::Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.start_kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_runs_token_count_and_the_dashboard_charts_real_metrics() {
    let port = free_port();
    coditect_orchestrator::observe::prometheus::serve(([127, 0, 0, 1], port).into()).unwrap();

    let tenant = TenantId::new("prom").unwrap();
    let rt = Runtime::builder(InMemoryTransport::new())
        .tenant(tenant.clone())
        .build()
        .await
        .unwrap();
    rt.kind("spender")
        .capability("spend")
        .register(|_| Spender)
        .await
        .unwrap();
    let plan = Plan::new([
        Step::new("a", "spend", StepInput::Goal),
        Step::new("b", "spend", StepInput::output("a")),
    ]);
    let out = timeout(
        T,
        Orchestrator::new(rt.clone(), StaticPlanner::new(plan))
            .run(TaskSpec::new("x").tenant(tenant)),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(out.usage.input_tokens, 2_468);

    // The exposition, linted by promtool.
    let text = timeout(T, get(port, "/metrics")).await.unwrap().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut lint = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("promtool (scripts/test-observe.sh install)");
    lint.stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .await
        .unwrap();
    let lint = timeout(T, lint.wait_with_output()).await.unwrap().unwrap();
    assert!(
        lint.status.success(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );
    let names = exposed(&text);
    for n in [
        "coditect_tokens_total",
        "coditect_steps_dispatched_total",
        "gen_ai_client_token_usage",
        "gen_ai_client_operation_duration_seconds",
        "gen_ai_invoke_agent_duration_seconds",
    ] {
        assert!(names.contains(n), "{n} in {names:?}");
    }

    // A real Prometheus scrapes it; PromQL gives back the run's tokens.
    let prom_port = free_port();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: coditect\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
        ),
    )
    .unwrap();
    let _prometheus = Server(
        tokio::process::Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("prometheus (scripts/test-observe.sh install)"),
    );
    let query = "/api/v1/query?query=sum(coditect_tokens_total%7Btenant%3D%22prom%22%2Cmodel%3D%22m-prom%22%7D)";
    // Polls until the first scrape is in (each try is a real query).
    let answer = timeout(T, async {
        loop {
            if let Ok(body) = get(prom_port, query).await
                && body.contains("\"value\"")
            {
                return body;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("prometheus scraped the exporter");
    // input 2 × 1,234 plus output 2 × 56.
    assert!(answer.contains("\"2580\""), "{answer}");

    // The dashboard: valid JSON, and every query names a metric exposed here.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards/coditect-grafana.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 8, "the dashboard charts the metrics");
    let mut checked = 0;
    for p in panels {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap();
            let used = used_in(expr);
            assert!(
                !used.is_empty(),
                "panel {} uses no metric: {expr}",
                p["title"]
            );
            for name in used {
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .unwrap_or(&name);
                let known = names.contains(&name) || names.contains(base) || known_elsewhere(base);
                assert!(
                    known,
                    "panel {}: {name} is not a metric coditect exports",
                    p["title"]
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 8);
    rt.shutdown(Duration::from_secs(1)).await;
}

/// Metrics this run does not produce (NATS, dead letters, failures) but
/// coditect does: checked against the names coditect declares.
fn known_elsewhere(name: &str) -> bool {
    coditect_orchestrator::observe::metrics::ALL
        .iter()
        .any(|m| {
            let base = m.replace('.', "_");
            name == base || name == format!("{base}_total") || name == format!("{base}_seconds")
        })
}
