//! Every delivery and handler call is a span carrying the run, tenant, agent
//! and message ids (a handler's span is the GenAI `invoke_agent` span).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coditect_orchestrator::orchestrator::{
    Orchestrator, Plan, StaticPlanner, Step, StepInput, TaskSpec,
};
use coditect_orchestrator::{Agent, AgentContext, AgentError, InMemoryTransport, Runtime};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt};

type Spans = Arc<Mutex<Vec<(String, HashMap<String, String>)>>>;

struct Capture(Spans);

struct Fields(HashMap<String, String>);
impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl<S: tracing::Subscriber> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, _id: &Id, _ctx: Context<'_, S>) {
        let mut f = Fields(HashMap::new());
        attrs.record(&mut f);
        self.0
            .lock()
            .unwrap()
            .push((attrs.metadata().name().to_owned(), f.0));
    }
}

struct Echo;
impl Agent for Echo {
    type Input = String;
    type Output = String;
    async fn handle(&mut self, s: String, _: &AgentContext) -> Result<String, AgentError> {
        Ok(s)
    }
}

#[test]
fn deliveries_and_handlers_are_spans_with_ids() {
    let spans: Spans = Arc::default();
    let subscriber = tracing_subscriber::registry()
        .with(Capture(spans.clone()).with_filter(tracing_subscriber::filter::LevelFilter::DEBUG));
    let _guard = tracing::subscriber::set_default(subscriber);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let run = rt.block_on(async {
        let runtime = Runtime::builder(InMemoryTransport::new())
            .build()
            .await
            .unwrap();
        runtime.kind("echo").register(|_| Echo).await.unwrap();
        let orch = Orchestrator::new(
            runtime,
            StaticPlanner::new(Plan::new([Step::new("s", "echo", StepInput::Goal)])),
        );
        tokio::time::timeout(Duration::from_secs(10), orch.run(TaskSpec::new("hi")))
            .await
            .unwrap()
            .unwrap()
            .run
    });
    let spans = spans.lock().unwrap();
    let handle = spans
        .iter()
        .find(|(name, f)| {
            name == "invoke_agent"
                && f.get("coditect.run.id")
                    .is_some_and(|r| r.contains(&run.to_string()))
        })
        .unwrap_or_else(|| panic!("no handler span for the run: {spans:?}"));
    assert!(
        handle.1["gen_ai.agent.id"].starts_with("echo/"),
        "{:?}",
        handle.1
    );
    assert_eq!(handle.1["coditect.tenant.id"], "default");
    assert!(handle.1.contains_key("coditect.message.id"));
    let deliver = spans
        .iter()
        .find(|(name, f)| name == "coditect.deliver" && f.get("kind").is_some_and(|k| k == "echo"))
        .unwrap_or_else(|| panic!("no delivery span: {spans:?}"));
    assert_eq!(deliver.1["message"], handle.1["coditect.message.id"]);
    assert!(deliver.1["run"].contains(&run.to_string()));
    assert!(spans.iter().any(|(name, _)| name == "invoke_workflow"));
}
