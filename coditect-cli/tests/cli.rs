//! The `coditect` tool run as a user runs it, on a run stored in SQLite.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use coditect_orchestrator::orchestrator::{
    Orchestrator, Plan, StaticPlanner, Step, StepInput, TaskSpec,
};
use coditect_orchestrator::store::{SqliteStore, StoreOptions};
use coditect_orchestrator::{Agent, AgentContext, AgentError, InMemoryTransport, Runtime, Usage};
use common::{T, coditect};
use tokio::time::timeout;

struct Lead;
impl Agent for Lead {
    type Input = String;
    type Output = String;
    async fn handle(&mut self, s: String, ctx: &AgentContext) -> Result<String, AgentError> {
        ctx.report_model_usage(Some("m-big"), Usage::new(1_000, 100, 0.5))
            .await
            .ok();
        let r: String = ctx.delegate("helper", s).await?;
        Ok(format!("lead({r})"))
    }
}

struct Helper;
impl Agent for Helper {
    type Input = String;
    type Output = String;
    async fn handle(&mut self, s: String, ctx: &AgentContext) -> Result<String, AgentError> {
        ctx.report_model_usage(Some("m-small"), Usage::new(200, 20, 0.25))
            .await
            .ok();
        Ok(format!("helped({s})"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_lists_shows_renders_and_follows_a_stored_run() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    {
        let store = Arc::new(
            SqliteStore::open(&db, StoreOptions::default())
                .await
                .unwrap(),
        );
        let rt = Runtime::builder(InMemoryTransport::new())
            .build()
            .await
            .unwrap();
        rt.kind("lead")
            .capability("lead")
            .register(|_| Lead)
            .await
            .unwrap();
        rt.register("helper", |_| Helper).await.unwrap();
        let plan = Plan::new([Step::new("a", "lead", StepInput::Goal)]);
        let orch = Orchestrator::new(rt.clone(), StaticPlanner::new(plan)).store(store);
        let out = timeout(T, orch.run(TaskSpec::new("write the notes")))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            out.output,
            serde_json::json!("lead(helped(write the notes))")
        );
        rt.shutdown(Duration::from_secs(1)).await;
    }
    let store = format!("sqlite:{}", db.display());

    let (ok, list, err) = coditect(&["--store", &store, "runs"]).await;
    assert!(ok, "{err}");
    let line = list
        .lines()
        .find(|l| l.contains("write the notes"))
        .expect("the run is listed");
    assert!(line.contains("finished"), "{line}");
    let run = line.split_whitespace().next().unwrap().to_owned();

    let (ok, shown, err) = coditect(&["--store", &store, "show", &run]).await;
    assert!(ok, "{err}");
    assert!(
        shown.contains("total: 1200 in / 120 out, $0.7500"),
        "{shown}"
    );
    let step = shown
        .lines()
        .find(|l| l.trim_start().starts_with("step a"))
        .expect("{shown}");
    assert!(
        step.contains("[ok]") && step.contains("$0.7500") && step.contains("own $0.5000"),
        "{step}"
    );
    let sub = shown
        .lines()
        .find(|l| l.trim_start().starts_with("delegated"))
        .expect("{shown}");
    assert!(sub.contains("helper/") && sub.contains("$0.2500"), "{sub}");
    assert!(
        shown.contains("m-big: 1000 in / 100 out, $0.5000"),
        "{shown}"
    );
    assert!(
        shown.contains("m-small: 200 in / 20 out, $0.2500"),
        "{shown}"
    );

    let html = dir.path().join("run.html");
    let mmd = dir.path().join("run.mmd");
    let (ok, _, err) = coditect(&[
        "--store",
        &store,
        "render",
        &run,
        "--html",
        html.to_str().unwrap(),
        "--mermaid",
        mmd.to_str().unwrap(),
    ])
    .await;
    assert!(ok, "{err}");
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.starts_with("<!DOCTYPE html>") && page.contains(&run));
    let diagram = std::fs::read_to_string(&mmd).unwrap();
    assert!(diagram.starts_with("sequenceDiagram"), "{diagram}");
    assert!(diagram.contains("delegate to helper"), "{diagram}");

    let (ok, followed, err) = coditect(&["--store", &store, "follow", &run]).await;
    assert!(ok, "{err}");
    assert!(
        followed.lines().next().unwrap().contains("run_started"),
        "{followed}"
    );
    assert!(
        followed.lines().last().unwrap().contains("run_finished"),
        "{followed}"
    );

    // Bad input: a typed complaint, not a panic.
    let (ok, _, err) = coditect(&["--store", &store, "show", "not-a-run"]).await;
    assert!(!ok);
    assert!(
        err.starts_with("coditect: \"not-a-run\" is not a run id"),
        "{err}"
    );
    let (ok, _, err) = coditect(&["--store", "mysql://x", "runs"]).await;
    assert!(!ok);
    assert!(err.contains("unknown store"), "{err}");
}
