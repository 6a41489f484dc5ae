//! The agents the `nats_worker` example hosts. The `nats_orchestrator`
//! example does not link them: it reads their cards from the bus.

use std::time::Duration;

use coditect_orchestrator::{Agent, AgentContext, AgentError};

/// Upper-cases a sentence and signs it with the worker that did it, so you
/// can see the load spread over workers.
pub(crate) struct Shout {
    /// The worker's name.
    pub(crate) worker: String,
}

impl Agent for Shout {
    type Input = String;
    type Output = String;
    async fn handle(&mut self, text: String, _ctx: &AgentContext) -> Result<String, AgentError> {
        // Pretend this is real work (a model call, say).
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(format!("{} (by {})", text.to_uppercase(), self.worker))
    }
}

/// Counts the words of a text.
pub(crate) struct Count;

impl Agent for Count {
    type Input = String;
    type Output = usize;
    async fn handle(&mut self, text: String, _ctx: &AgentContext) -> Result<usize, AgentError> {
        Ok(text.split_whitespace().count())
    }
}

/// `--name value` from the command line, else the environment variable, else
/// the default.
pub(crate) fn arg(name: &str, env: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .or_else(|| std::env::var(env).ok())
        .unwrap_or_else(|| default.to_owned())
}
