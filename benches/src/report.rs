//! One JSON line per workload, and the timing helpers every workload shares.

use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

/// How long to run: `--quick` keeps the whole binary under 30 seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Fewer rounds, for CI smoke runs and quick checks.
    Quick,
    /// More rounds, for the figures written down in `benches/README.md`.
    Full,
}

impl Mode {
    /// How many alternating rounds of (ours, baseline) to run.
    pub fn rounds(self) -> usize {
        match self {
            Mode::Quick => 3,
            Mode::Full => 7,
        }
    }
}

/// The result of one workload: ours against a baseline, plus any extra fields.
#[derive(Debug)]
pub struct Report {
    workload: String,
    baseline: String,
    ours_ns_per_op: f64,
    baseline_ns_per_op: f64,
    extra: Map<String, Value>,
}

impl Report {
    /// A report with the two medians, in nanoseconds per operation.
    pub fn new(
        workload: &str,
        baseline: &str,
        ours_ns_per_op: f64,
        baseline_ns_per_op: f64,
    ) -> Self {
        Self {
            workload: workload.to_owned(),
            baseline: baseline.to_owned(),
            ours_ns_per_op,
            baseline_ns_per_op,
            extra: Map::new(),
        }
    }

    /// Adds a field to the JSON line.
    pub fn field(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.to_owned(), value.into());
        self
    }

    /// Coditect's median, in nanoseconds per operation.
    pub fn ours_ns_per_op(&self) -> f64 {
        self.ours_ns_per_op
    }

    /// `ours / baseline`: how many times slower than the baseline coditect is.
    pub fn slowdown(&self) -> f64 {
        self.ours_ns_per_op / self.baseline_ns_per_op
    }

    /// The JSON line.
    pub fn to_json(&self) -> Value {
        let mut obj = Map::new();
        obj.insert("workload".into(), json!(self.workload));
        obj.insert("ours_ns_per_op".into(), json!(round2(self.ours_ns_per_op)));
        obj.insert("baseline".into(), json!(self.baseline));
        obj.insert(
            "baseline_ns_per_op".into(),
            json!(round2(self.baseline_ns_per_op)),
        );
        obj.insert("slowdown".into(), json!(round2(self.slowdown())));
        for (k, v) in &self.extra {
            obj.insert(k.clone(), v.clone());
        }
        Value::Object(obj)
    }
}

/// Rounds to two decimals for readable output.
pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The median of a list of figures.
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// The `q` quantile (0..=1) of durations, in nanoseconds.
pub fn quantile_ns(samples: &mut [Duration], q: f64) -> f64 {
    samples.sort_unstable();
    if samples.is_empty() {
        return f64::NAN;
    }
    let idx = ((samples.len() as f64 - 1.0) * q).round() as usize;
    samples[idx].as_nanos() as f64
}

/// Times a closure that performs `ops` operations; returns ns per operation.
pub fn ns_per_op(ops: usize, start: Instant) -> f64 {
    start.elapsed().as_nanos() as f64 / ops as f64
}
