//! One trace across two processes: a run driven here whose step runs in a
//! child process over a real nats-server, and whose step delegates back to an
//! agent here. Both processes export their spans over OTLP to a receiver this
//! test starts (built on the `opentelemetry-proto` crate's generated
//! service); the spans arrive as one trace with the right parents.
#![cfg(all(feature = "otlp", feature = "nats", feature = "test-utils"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use coditect_orchestrator::observe::otlp;
use coditect_orchestrator::orchestrator::{
    Orchestrator, Plan, StaticPlanner, Step, StepInput, TaskSpec,
};
use coditect_orchestrator::testing::NatsServer;
use coditect_orchestrator::transport::nats::NatsOptions;
use coditect_orchestrator::{Agent, AgentCard, AgentContext, AgentError, AgentKind, Runtime};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use tokio::time::timeout;
use tracing_subscriber::layer::SubscriberExt;

const T: Duration = Duration::from_secs(60);

/// A span as received: its service, ids, name and string attributes.
#[derive(Clone, Debug)]
struct Got {
    service: String,
    trace: Vec<u8>,
    id: Vec<u8>,
    parent: Vec<u8>,
    name: String,
    attrs: Vec<(String, String)>,
}

impl Got {
    fn attr(&self, k: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Got>>>);

fn text(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut got = self.0.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                .map(|a| text(&a.value))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    got.push(Got {
                        service: service.clone(),
                        trace: s.trace_id,
                        id: s.span_id,
                        parent: s.parent_span_id,
                        name: s.name,
                        attrs: s
                            .attributes
                            .iter()
                            .map(|a| (a.key.clone(), text(&a.value)))
                            .collect(),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// In the child: delegates to `helper` (hosted by the parent process).
struct Worker;
impl Agent for Worker {
    type Input = String;
    type Output = String;
    async fn handle(&mut self, s: String, ctx: &AgentContext) -> Result<String, AgentError> {
        let helped: String = ctx.delegate("helper", s).await?;
        Ok(format!("worked({helped})"))
    }
}

/// In the parent.
struct Helper;
impl Agent for Helper {
    type Input = String;
    type Output = String;
    async fn handle(&mut self, s: String, _: &AgentContext) -> Result<String, AgentError> {
        Ok(format!("helped({s})"))
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The child process: hosts `worker` on NATS, exports to OTLP, and flushes
/// and exits when its standard input closes. A no-op unless started by the
/// test below.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the body of a child process; the tests that spawn it run it"]
async fn child_process_hosting_the_worker() {
    let (Ok(nats), Ok(otlp_url)) = (std::env::var("CHILD_NATS"), std::env::var("CHILD_OTLP"))
    else {
        return;
    };
    let provider = otlp::tracer_provider(&otlp_url, "agents").unwrap();
    let subscriber = tracing_subscriber::registry().with(
        coditect_orchestrator::observe::otel::layer(provider.tracer("child")),
    );
    tracing::subscriber::set_global_default(subscriber).unwrap();
    let transport = NatsOptions::new(nats).connect().await.unwrap();
    let rt = Runtime::builder(transport).build().await.unwrap();
    rt.register("worker", |_| Worker).await.unwrap();
    println!("CHILD READY");
    // Until the parent closes our standard input.
    let mut stdin = tokio::io::stdin();
    let mut sink = Vec::new();
    let _ = tokio::io::AsyncReadExt::read_to_end(&mut stdin, &mut sink).await;
    rt.shutdown(Duration::from_secs(2)).await;
    provider.force_flush().unwrap();
    provider.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_over_nats_is_one_trace_across_two_processes() {
    if std::env::var("CHILD_NATS").is_ok() {
        return;
    }
    let nats = NatsServer::start().expect("start nats-server");
    let receiver = Receiver::default();
    let otlp_port = free_port();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve(([127, 0, 0, 1], otlp_port).into()),
    );
    let otlp_url = format!("http://127.0.0.1:{otlp_port}");

    // The child process: this very test binary, running the child test.
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "--ignored",
            "child_process_hosting_the_worker",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("CHILD_NATS", nats.url())
        .env("CHILD_OTLP", &otlp_url)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap());
    timeout(T, async {
        use tokio::io::AsyncBufReadExt;
        let mut line = String::new();
        while out.read_line(&mut line).await.unwrap() > 0 {
            if line.contains("CHILD READY") {
                return;
            }
            line.clear();
        }
        panic!("the child ended before it was ready");
    })
    .await
    .expect("the child got ready");

    let provider = otlp::tracer_provider(&otlp_url, "orchestrator").unwrap();
    let subscriber = tracing_subscriber::registry().with(
        coditect_orchestrator::observe::otel::layer(provider.tracer("parent")),
    );
    tracing::subscriber::set_global_default(subscriber).unwrap();
    let transport = NatsOptions::new(nats.url()).connect().await.unwrap();
    let rt = Runtime::builder(transport).build().await.unwrap();
    rt.register("helper", |_| Helper).await.unwrap();
    let plan = Plan::new([Step::new("a", "worker", StepInput::Goal)]);
    let orch = Orchestrator::new(rt.clone(), StaticPlanner::new(plan)).cards(vec![
        AgentCard::of::<Worker>(AgentKind::new("worker").unwrap()),
    ]);
    let outcome = timeout(T, orch.run(TaskSpec::new("x")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome.output, serde_json::json!("worked(helped(x))"));
    rt.shutdown(Duration::from_secs(2)).await;
    provider.force_flush().unwrap();

    // The child flushes and exits once its input closes.
    drop(child.stdin.take());
    let status = timeout(T, child.wait())
        .await
        .expect("the child exited")
        .unwrap();
    assert!(status.success());
    server.abort();

    let run = outcome.run.to_string();
    let spans: Vec<Got> = receiver.0.lock().unwrap().clone();
    let ours: Vec<&Got> = spans
        .iter()
        .filter(|s| s.attr("coditect.run.id") == Some(run.as_str()))
        .collect();
    let find = |name: &str| {
        ours.iter()
            .find(|s| s.name == name)
            .copied()
            .unwrap_or_else(|| {
                panic!(
                    "no {name} span in {:#?}",
                    ours.iter()
                        .map(|s| (&s.service, &s.name))
                        .collect::<Vec<_>>()
                )
            })
    };
    let workflow = find("invoke_workflow");
    let worker = find("invoke_agent worker");
    let helper = find("invoke_agent helper");
    assert_eq!(workflow.service, "orchestrator");
    assert_eq!(
        worker.service, "agents",
        "the step ran in the child process"
    );
    assert_eq!(helper.service, "orchestrator");
    assert!(
        [worker, helper].iter().all(|s| s.trace == workflow.trace),
        "one trace across both processes"
    );
    assert_eq!(
        worker.parent, workflow.id,
        "the step's span is the run's child"
    );
    assert_eq!(
        helper.parent, worker.id,
        "the delegation's span is the worker's child"
    );
}
