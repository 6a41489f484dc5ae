//! The `coditect` tool on a fleet over NATS, as an operator uses it: a run
//! stored in the JetStream store pauses for approval on a worker, its
//! orchestrator dies, `coditect follow` watches the run live and
//! `coditect respond` answers it from another process, which drives the run
//! on with the workers on the bus.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Stdio;
use std::time::Duration;

use coditect_orchestrator::orchestrator::{
    Orchestrator, Plan, RunEvent, StaticPlanner, Step, StepInput, TaskSpec,
};
use coditect_orchestrator::store::{JetStreamStore, RunStatus, Store, StoreOptions};
use coditect_orchestrator::testing::NatsServer;
use coditect_orchestrator::transport::NatsOptions;
use coditect_orchestrator::{Agent, AgentContext, AgentError, RunId, Runtime};
use common::{T, coditect};
use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use tokio::time::timeout;

struct Work;
impl Agent for Work {
    type Input = serde_json::Value;
    type Output = String;
    async fn handle(
        &mut self,
        v: serde_json::Value,
        _: &AgentContext,
    ) -> Result<String, AgentError> {
        Ok(format!("built {v}"))
    }
}

#[derive(Debug, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
struct Approval {
    approved: bool,
}

struct Asker;
impl Agent for Asker {
    type Input = serde_json::Value;
    type Output = String;
    async fn handle(
        &mut self,
        _: serde_json::Value,
        ctx: &AgentContext,
    ) -> Result<String, AgentError> {
        let a: Approval = ctx.ask("ship", "Ship the release?").await?;
        Ok(format!("approved={}", a.approved))
    }
}

/// A process: a runtime of its own, killed by shutting it down in the
/// background (every task of its orchestrator and lease renewal stops).
struct Process(tokio::runtime::Runtime);

impl Process {
    fn new() -> Self {
        Self(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap(),
        )
    }
}

/// The next line of `lines` that contains `what`.
async fn line_with(lines: &mut mpsc::UnboundedReceiver<String>, what: &str) -> String {
    timeout(T, async {
        while let Some(l) = lines.recv().await {
            if l.contains(what) {
                return l;
            }
        }
        panic!("`coditect follow` ended before printing {what:?}")
    })
    .await
    .unwrap_or_else(|_| panic!("`coditect follow` never printed {what:?}"))
}

#[test]
fn an_operator_follows_a_live_run_over_nats_and_answers_it_after_its_orchestrator_died() {
    let server = NatsServer::start().expect("start nats-server");
    let url = server.url();
    let store_url = url.clone();

    // The workers live through the whole test, in a process of their own.
    let workers = Process::new();
    workers.0.block_on(async {
        let rt = Runtime::builder(NatsOptions::new(&url).connect().await.unwrap())
            .build()
            .await
            .unwrap();
        rt.kind("work")
            .capability("work")
            .register(|_| Work)
            .await
            .unwrap();
        rt.kind("ask")
            .capability("ask")
            .register(|_| Asker)
            .await
            .unwrap();
        std::mem::forget(rt);
    });

    // The first orchestrator runs the plan until the run asks.
    let p1 = Process::new();
    let (run, request): (RunId, String) = p1.0.block_on(async {
        let rt = Runtime::builder(NatsOptions::new(&url).connect().await.unwrap())
            .build()
            .await
            .unwrap();
        let store = JetStreamStore::open(
            async_nats::connect(&url).await.unwrap(),
            StoreOptions::default(),
        )
        .await
        .unwrap();
        let plan = Plan::new([
            Step::new("build", "work", StepInput::Goal),
            Step::new("approve", "ask", StepInput::output("build")),
        ]);
        let orch = Orchestrator::new(rt, StaticPlanner::new(plan))
            .store(std::sync::Arc::new(store))
            .lease_holder("first")
            .lease_ttl(Duration::from_secs(2));
        let mut handle = orch.submit(TaskSpec::new("release 1.0")).await.unwrap();
        let run = handle.id();
        let mut events = handle.events();
        let request = timeout(T, async {
            loop {
                let e = events.next().await.unwrap();
                if let RunEvent::InputRequested { request, .. } = e.event {
                    return request.as_str().to_owned();
                }
            }
        })
        .await
        .expect("the run asks");
        std::mem::forget(handle);
        std::mem::forget(orch);
        (run, request)
    });
    let run_s = run.to_string();

    // `follow`, with polling set to an hour: only events the server pushes
    // reach it within the test's time.
    let mut follower = tokio_process(&[
        "--store",
        &store_url,
        "follow",
        &run_s,
        "--every-ms",
        "3600000",
    ]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut child = follower.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, mut lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut out = BufReader::new(stdout).lines();
            while let Ok(Some(l)) = out.next_line().await {
                let _ = tx.send(l);
            }
        });
        let first = line_with(&mut lines, "run_started").await;
        assert!(first.contains("run_started"), "{first}");
        line_with(&mut lines, "input_requested").await;

        // The orchestrator dies while the run waits.
        p1.0.shutdown_background();

        // A wrong answer is refused, and the run stays paused.
        let (ok, _, err) = coditect(&[
            "--store",
            &store_url,
            "respond",
            &run_s,
            &request,
            r#"{"approved": "yes"}"#,
            "--nats",
            &url,
        ])
        .await;
        assert!(!ok);
        assert!(err.contains("approved"), "{err}");
        let (ok, _, err) = coditect(&[
            "--store",
            &store_url,
            "respond",
            &run_s,
            "no-such-request",
            r#"{"approved": true}"#,
            "--nats",
            &url,
        ])
        .await;
        assert!(!ok);
        assert!(err.contains("asked no question no-such-request"), "{err}");
        let store = JetStreamStore::open(
            async_nats::connect(&url).await.unwrap(),
            StoreOptions::default(),
        )
        .await
        .unwrap();
        assert_eq!(store.run(run).await.unwrap().status, RunStatus::Paused);

        // The right one, once the dead orchestrator's lease (2 s) is out:
        // until then the run is busy (bounded: 100 tries, 200 ms apart).
        let mut answered = None;
        for _ in 0..100 {
            let (ok, out, err) = coditect(&[
                "--store",
                &store_url,
                "respond",
                &run_s,
                &request,
                r#"{"approved": true}"#,
                "--nats",
                &url,
            ])
            .await;
            if ok {
                answered = Some(out);
                break;
            }
            assert!(err.contains("is busy"), "{err}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let out = answered.expect("the dead orchestrator's lease never expired");
        assert!(out.contains(&format!("run {run_s} finished")), "{out}");
        assert!(out.contains("approved=true"), "{out}");

        // The follower saw the rest as it happened, and stopped at the end.
        line_with(&mut lines, "input_provided").await;
        line_with(&mut lines, "step_succeeded approve").await;
        line_with(&mut lines, "run_finished").await;
        let status = timeout(T, child.wait()).await.unwrap().unwrap();
        assert!(status.success());
        assert_eq!(store.run(run).await.unwrap().status, RunStatus::Finished);
    });
    workers.0.shutdown_background();
    drop(server);
}

fn tokio_process(args: &[&str]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_coditect"));
    c.args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    c
}
