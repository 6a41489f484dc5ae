//! The patterns of Anthropic's "Building effective agents", as small agents.
//!
//! Each is an [`Agent`](coditect_orchestrator::Agent) you register on a runtime
//! like any other; it reaches the agents it composes by capability through
//! its context (so every hand-off is a delegation: traced, depth-bounded,
//! fan-out-bounded, cancelled with its caller).
//!
//! | pattern | here |
//! |---|---|
//! | routing | [`Route`]: a model picks one specialist, the input goes there |
//! | parallelization: sectioning | [`Sectioning`]: fixed sections done at once, optionally aggregated |
//! | parallelization: voting | [`Voting`]: the same input to several voters, majority wins |
//! | orchestrator-workers | [`LlmPlanner`](crate::LlmPlanner) with the orchestrator |
//! | evaluator-optimizer | [`EvaluatorOptimizer`] with a [`Critic`]: drafts until one passes |

mod evaluator;
mod parallel;
mod router;

pub use evaluator::{Critic, EvaluatorOptimizer, Reviewed, Verdict};
pub use parallel::{Section, Sectioning, VoteOutcome, Voting};
pub use router::{Route, RouteChoice};

use coditect_orchestrator::{AgentError, AgentErrorKind, FailureKind, RequestError};

/// A failed hand-off as this agent's error, keeping whether it was a policy
/// stop or worth retrying.
pub(crate) fn policy_aware(e: RequestError, what: String) -> AgentError {
    let f = e.to_failure();
    let kind = match f.kind {
        FailureKind::Policy => AgentErrorKind::Policy,
        FailureKind::Cancelled => AgentErrorKind::Cancelled,
        _ if f.transient => AgentErrorKind::Transient,
        _ => AgentErrorKind::Permanent,
    };
    AgentError::with_kind(kind, format!("{what}: {e}"))
}
