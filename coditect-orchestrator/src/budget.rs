//! Usage (tokens and cost) and the budget a piece of work carries.

use std::ops::{Add, AddAssign};

use serde::{Deserialize, Serialize};

/// Tokens and money spent by model calls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Usage {
    /// Input (prompt) tokens, cached reads and writes included.
    pub input_tokens: u64,
    /// Output (completion) tokens.
    pub output_tokens: u64,
    /// Cost in US dollars.
    pub cost_usd: f64,
    /// Of the input tokens, those read from a prompt cache.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache_read_tokens: u64,
    /// Of the input tokens, those written to a prompt cache.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache_write_tokens: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Usage {
    /// Usage of `input` and `output` tokens costing `cost_usd`.
    pub fn new(input_tokens: u64, output_tokens: u64, cost_usd: f64) -> Self {
        Self {
            input_tokens,
            output_tokens,
            cost_usd,
            cache_read_tokens: 0,
            cache_write_tokens: 0,
        }
    }

    /// With `read` of the input tokens read from a prompt cache and `write`
    /// of them written to it.
    ///
    /// ```
    /// use coditect_orchestrator::Usage;
    /// let u = Usage::new(1_000, 50, 0.01).with_cache(900, 100);
    /// assert_eq!(u.cache_read_tokens, 900);
    /// ```
    #[must_use]
    pub fn with_cache(mut self, read: u64, write: u64) -> Self {
        self.cache_read_tokens = read;
        self.cache_write_tokens = write;
        self
    }

    /// Input plus output tokens.
    pub fn total_tokens(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }

    /// Whether nothing was spent.
    pub fn is_zero(&self) -> bool {
        self.input_tokens == 0
            && self.output_tokens == 0
            && self.cost_usd == 0.0
            && self.cache_read_tokens == 0
            && self.cache_write_tokens == 0
    }
}

impl Add for Usage {
    type Output = Usage;
    fn add(self, o: Usage) -> Usage {
        Usage {
            input_tokens: self.input_tokens.saturating_add(o.input_tokens),
            output_tokens: self.output_tokens.saturating_add(o.output_tokens),
            cost_usd: self.cost_usd + o.cost_usd,
            cache_read_tokens: self.cache_read_tokens.saturating_add(o.cache_read_tokens),
            cache_write_tokens: self.cache_write_tokens.saturating_add(o.cache_write_tokens),
        }
    }
}

impl AddAssign for Usage {
    fn add_assign(&mut self, o: Usage) {
        *self = *self + o;
    }
}

/// What remains of a run's limits, carried by every message of the run so that
/// an agent can check before it starts work, and so that delegation deep in the
/// tree is bounded the same as at the top.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    /// The deepest delegation allowed (a step's own agent is depth 0).
    pub max_depth: u16,
    /// The most subtasks one agent call may hand off at once.
    pub max_fanout: u32,
    /// Tokens left for the whole run when this message was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_left: Option<u64>,
    /// Dollars left for the whole run when this message was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_left: Option<f64>,
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            max_depth: 8,
            max_fanout: 16,
            tokens_left: None,
            cost_left: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_adds_and_saturates() {
        let a = Usage::new(10, 5, 0.5);
        let b = Usage::new(u64::MAX, 1, 0.25);
        let c = a + b;
        assert_eq!(c.input_tokens, u64::MAX);
        assert_eq!(c.output_tokens, 6);
        assert!((c.cost_usd - 0.75).abs() < 1e-9);
        assert_eq!(a.total_tokens(), 15);
    }
}
