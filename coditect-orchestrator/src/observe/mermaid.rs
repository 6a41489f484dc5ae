//! A run as a Mermaid sequence diagram: the developer, the orchestrator and
//! every agent that took part, with the steps, delegations and results as
//! they really happened.
//!
//! ```
//! use coditect_orchestrator::observe::mermaid;
//! let text = mermaid::sequence(&[]);
//! assert!(text.starts_with("sequenceDiagram"));
//! ```

use std::collections::HashMap;
use std::fmt::Write;

use crate::id::{AgentId, MessageId, StepId};
use crate::orchestrator::{RunEvent, RunEventRecord, RunStatus};

/// The longest label drawn; longer ones are cut with an ellipsis.
const MAX_LABEL: usize = 48;

/// The Mermaid `sequenceDiagram` of a run's events (a live run's so far, or
/// a stored one).
pub fn sequence(events: &[RunEventRecord]) -> String {
    let mut d = Diagram::default();
    for r in events {
        d.participant_of(&r.event);
    }
    let mut out =
        String::from("sequenceDiagram\n    actor Developer\n    participant Orchestrator\n");
    for (i, a) in d.agents.iter().enumerate() {
        let _ = writeln!(
            out,
            "    participant A{} as {}",
            i + 1,
            label(&a.to_string())
        );
    }
    for r in events {
        d.line(&r.event, &mut out);
    }
    out
}

#[derive(Default)]
struct Diagram {
    agents: Vec<AgentId>,
    index: HashMap<AgentId, usize>,
    /// Who handled each message.
    handler: HashMap<MessageId, AgentId>,
    /// Who sent each delegated message.
    sender: HashMap<MessageId, MessageId>,
    /// The attempt each step message carries.
    attempt: HashMap<MessageId, u32>,
    /// Each step's latest message.
    step_message: HashMap<StepId, MessageId>,
}

impl Diagram {
    fn participant_of(&mut self, e: &RunEvent) {
        let agent = match e {
            RunEvent::StepStarted { agent, .. } | RunEvent::Delegated { agent, .. } => agent,
            _ => return,
        };
        if !self.index.contains_key(agent) {
            self.index.insert(agent.clone(), self.agents.len());
            self.agents.push(agent.clone());
        }
    }

    /// The participant that handled `m` (the orchestrator if none did).
    fn who(&self, m: Option<&MessageId>) -> String {
        m.and_then(|m| self.handler.get(m))
            .and_then(|a| self.index.get(a))
            .map_or_else(|| "Orchestrator".to_owned(), |i| format!("A{}", i + 1))
    }

    fn line(&mut self, e: &RunEvent, out: &mut String) {
        match e {
            RunEvent::RunStarted { task } => {
                let _ = writeln!(out, "    Developer->>Orchestrator: {}", label(&task.goal));
            }
            RunEvent::PlanMade { revision, plan } => {
                let steps: Vec<&str> = plan.steps.iter().map(|s| s.id.as_str()).collect();
                let what = if *revision == 0 {
                    "plan"
                } else {
                    "revised plan"
                };
                let _ = writeln!(
                    out,
                    "    Note over Orchestrator: {}",
                    label(&format!("{what} - {}", steps.join(", ")))
                );
            }
            RunEvent::StepDispatched {
                step,
                attempt,
                message,
                ..
            } => {
                self.attempt.insert(*message, *attempt);
                self.step_message.insert(step.clone(), *message);
            }
            RunEvent::StepStarted {
                step,
                message,
                agent,
            } => {
                self.handler.insert(*message, agent.clone());
                let attempt = self.attempt.get(message).copied().unwrap_or(1);
                let text = if attempt > 1 {
                    format!("{step} (attempt {attempt})")
                } else {
                    step.to_string()
                };
                let _ = writeln!(
                    out,
                    "    Orchestrator->>{}: {}",
                    self.who(Some(message)),
                    label(&text)
                );
            }
            RunEvent::Delegated {
                parent,
                message,
                agent,
                ..
            } => {
                self.handler.insert(*message, agent.clone());
                self.sender.insert(*message, *parent);
                let _ = writeln!(
                    out,
                    "    {}->>{}: delegate to {}",
                    self.who(Some(parent)),
                    self.who(Some(message)),
                    label(agent.kind().as_str())
                );
            }
            RunEvent::DelegationFinished { message, failure } => {
                let from = self.who(Some(message));
                let to = self.who(self.sender.get(message));
                match failure {
                    None => {
                        let _ = writeln!(out, "    {from}-->>{to}: result");
                    }
                    Some(f) => {
                        let _ = writeln!(
                            out,
                            "    {from}--x{to}: {}",
                            label(&format!("failed - {}", super::spans::failure_kind(f.kind)))
                        );
                    }
                }
            }
            RunEvent::StepSucceeded { step, .. } => {
                let from = self.who(self.step_message.get(step));
                let _ = writeln!(
                    out,
                    "    {from}-->>Orchestrator: {}",
                    label(&format!("{step} done"))
                );
            }
            RunEvent::StepFailed {
                step,
                failure,
                will_retry,
                ..
            } => {
                let from = self.who(self.step_message.get(step));
                let then = if *will_retry { ", will retry" } else { "" };
                let text = format!(
                    "{step} failed - {}{then}",
                    super::spans::failure_kind(failure.kind)
                );
                if from == "Orchestrator" {
                    let _ = writeln!(out, "    Note over Orchestrator: {}", label(&text));
                } else {
                    let _ = writeln!(out, "    {from}--xOrchestrator: {}", label(&text));
                }
            }
            RunEvent::RunFinished { status, .. } => {
                let status = match status {
                    RunStatus::Succeeded => "succeeded",
                    RunStatus::Failed => "failed",
                    RunStatus::Cancelled => "cancelled",
                    _ => "ended",
                };
                let _ = writeln!(out, "    Orchestrator-->>Developer: {status}");
            }
            _ => {}
        }
    }
}

/// Text Mermaid draws as it is: letters, digits and a few safe marks (`;`,
/// `#`, `:`, quotes and brackets mean something to its parser), cut to
/// [`MAX_LABEL`] characters.
fn label(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(MAX_LABEL + 3));
    let mut space = false;
    for (n, c) in s.chars().enumerate() {
        if n == MAX_LABEL {
            out.push_str("...");
            break;
        }
        let c = if c.is_alphanumeric() || " _-./,()=+*?!'".contains(c) {
            c
        } else {
            ' '
        };
        if c == ' ' {
            if space {
                continue;
            }
            space = true;
        } else {
            space = false;
        }
        out.push(c);
    }
    let t = out.trim();
    if t.is_empty() {
        "-".to_owned()
    } else {
        t.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_keep_mermaid_syntax_out() {
        assert_eq!(label("a;b#c:d\n e"), "a b c d e");
        assert_eq!(label(""), "-");
        assert_eq!(label(&"x".repeat(60)).len(), MAX_LABEL + 3);
    }
}
