//! The limits of a run and how steps are retried.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::envelope::{Failure, FailureKind};

/// The limits every run has, each ending the run with a clear error instead of
/// running away (the answer to unbounded consumption).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunPolicy {
    /// The deepest delegation allowed below a step's agent (depth 0).
    pub max_depth: u16,
    /// The most subtasks one agent call may hand off at once.
    pub max_fanout: u32,
    /// The most units of work in a run: plan steps (all revisions) plus
    /// delegated subtasks.
    pub max_steps: usize,
    /// Wall-clock limit of the whole run.
    #[serde(with = "opt_ms")]
    pub deadline: Option<Duration>,
    /// Limit of one attempt at one step.
    #[serde(with = "opt_ms")]
    pub step_timeout: Option<Duration>,
    /// Token budget of the whole run (input plus output).
    pub max_tokens: Option<u64>,
    /// Cost budget of the whole run, in US dollars.
    pub max_cost_usd: Option<f64>,
    /// How failed steps are retried.
    pub retry: RetryPolicy,
    /// How many times the planner may revise the plan after failures.
    pub max_replans: u32,
    /// How long a step's result waits for reports its reply says were made
    /// but that have not arrived (lost on an at-most-once transport) before
    /// it is recorded anyway; their usage is counted from the reply. Reports
    /// normally arrive with or before the reply, so this wait is rarely
    /// spent.
    #[serde(with = "ms")]
    pub report_wait: Duration,
    /// How long a question of a durable run
    /// ([`AgentContext::ask`](crate::AgentContext::ask)) waits for its answer
    /// before the handler is told there is none; `None` (the default): until
    /// answered, across restarts.
    #[serde(with = "opt_ms")]
    pub input_timeout: Option<Duration>,
}

impl Default for RunPolicy {
    fn default() -> Self {
        Self {
            max_depth: 8,
            max_fanout: 16,
            max_steps: 10_000,
            deadline: None,
            step_timeout: None,
            max_tokens: None,
            max_cost_usd: None,
            retry: RetryPolicy::default(),
            max_replans: 2,
            report_wait: Duration::from_millis(500),
            input_timeout: None,
        }
    }
}

/// When a failed step is tried again.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RetryOn {
    /// Failures marked transient (timeouts, rate limits, crashed workers).
    #[default]
    Transient,
    /// Failures of these kinds.
    Kinds(Vec<FailureKind>),
    /// Every failure.
    Always,
    /// Never.
    Never,
}

/// Exponential backoff with jitter and a cap.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1: no retry).
    pub max_attempts: u32,
    /// Wait before the first retry.
    #[serde(with = "ms")]
    pub initial_backoff: Duration,
    /// The longest wait.
    #[serde(with = "ms")]
    pub max_backoff: Duration,
    /// Each wait is this many times the one before.
    pub multiplier: f64,
    /// Each wait is scaled by a random factor in `[1 - jitter, 1]`.
    pub jitter: f64,
    /// Which failures are retried.
    pub retry_on: RetryOn,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            multiplier: 2.0,
            jitter: 0.25,
            retry_on: RetryOn::Transient,
        }
    }
}

impl RetryPolicy {
    /// No retries.
    pub fn none() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// Whether attempt `attempt` (1-based) that failed with `failure` is retried.
    pub fn should_retry(&self, attempt: u32, failure: &Failure) -> bool {
        if attempt >= self.max_attempts {
            return false;
        }
        match &self.retry_on {
            RetryOn::Transient => failure.transient,
            RetryOn::Kinds(kinds) => kinds.contains(&failure.kind),
            RetryOn::Always => true,
            RetryOn::Never => false,
        }
    }

    /// The wait before retry number `attempt` (1 after the first failure),
    /// given a random draw `unit` in `[0, 1)`.
    pub fn backoff(&self, attempt: u32, unit: f64) -> Duration {
        let exp = self
            .multiplier
            .max(1.0)
            .powi(attempt.saturating_sub(1).min(64) as i32);
        let base = self.initial_backoff.as_secs_f64() * exp;
        let capped = base.min(self.max_backoff.as_secs_f64());
        let jitter = self.jitter.clamp(0.0, 1.0);
        let factor = 1.0 - jitter * unit.clamp(0.0, 1.0);
        Duration::from_secs_f64((capped * factor).max(0.0))
    }
}

mod ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;
    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

mod opt_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;
    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&(d.as_millis() as u64)),
            None => s.serialize_none(),
        }
    }
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn retries_follow_the_predicate() {
        let p = RetryPolicy::default();
        let transient = Failure::new(FailureKind::Timeout, "slow");
        let permanent = Failure::new(FailureKind::Handler, "bad");
        assert!(p.should_retry(1, &transient));
        assert!(!p.should_retry(3, &transient));
        assert!(!p.should_retry(1, &permanent));
        let kinds = RetryPolicy {
            retry_on: RetryOn::Kinds(vec![FailureKind::Handler]),
            ..p
        };
        assert!(kinds.should_retry(1, &permanent));
    }

    proptest! {
        #[test]
        fn backoff_grows_and_is_capped(attempt in 1u32..100, unit in 0.0f64..1.0) {
            let p = RetryPolicy::default();
            let d = p.backoff(attempt, unit);
            prop_assert!(d <= p.max_backoff);
            let no_jitter = RetryPolicy { jitter: 0.0, ..p.clone() };
            prop_assert!(no_jitter.backoff(attempt, unit) >= no_jitter.backoff(attempt.saturating_sub(1).max(1), unit));
            prop_assert!(d >= no_jitter.backoff(attempt, unit).mul_f64(1.0 - p.jitter) - Duration::from_nanos(1));
        }
    }

    #[test]
    fn policy_serializes() {
        let p = RunPolicy {
            deadline: Some(Duration::from_secs(3)),
            ..RunPolicy::default()
        };
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<RunPolicy>(&json).unwrap(), p);
    }
}
