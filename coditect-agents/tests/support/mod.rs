//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::time::Duration;

use coditect_agents::model::Usage;
use coditect_agents::tool::{Tool, ToolContext, ToolError};
use coditect_orchestrator::orchestrator::{
    Orchestrator, Plan, RunEvent, RunEventRecord, StaticPlanner, Step, StepInput,
};
use coditect_orchestrator::{InMemoryTransport, Runtime};

/// Every await in a test goes through this, so a bug fails fast instead of hanging.
pub async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("test step timed out")
}

pub async fn runtime() -> Runtime {
    within(Runtime::builder(InMemoryTransport::new()).build())
        .await
        .unwrap()
}

/// An orchestrator whose plan is one step to `capability`, taking the goal.
pub fn one_step(runtime: &Runtime, capability: &str) -> Orchestrator {
    Orchestrator::new(
        runtime.clone(),
        StaticPlanner::new(Plan::new([Step::new("only", capability, StepInput::Goal)])),
    )
}

pub fn usage(input: u64, output: u64) -> Usage {
    Usage {
        input_tokens: input,
        output_tokens: output,
        ..Usage::default()
    }
}

/// The progress data of a run's events, in order.
pub fn progress(events: &[RunEventRecord]) -> Vec<serde_json::Value> {
    events
        .iter()
        .filter_map(|e| match &e.event {
            RunEvent::StepProgress { data, .. } => Some(data.clone()),
            _ => None,
        })
        .collect()
}

/// Adds two numbers.
pub struct Add;

#[derive(serde::Deserialize, schemars::JsonSchema)]
pub struct AddArgs {
    /// The first number.
    pub a: i64,
    /// The second number.
    pub b: i64,
}

impl Tool for Add {
    type Args = AddArgs;
    type Output = i64;
    fn name(&self) -> String {
        "add".into()
    }
    fn description(&self) -> String {
        "Adds two integers.".into()
    }
    async fn call(&self, a: AddArgs, _: ToolContext<'_>) -> Result<i64, ToolError> {
        a.a.checked_add(a.b)
            .ok_or_else(|| ToolError::failed("the sum overflows"))
    }
}
