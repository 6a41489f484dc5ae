//! Side-by-side benchmarks of coditect against raw baselines in the same process.
//!
//! Every workload runs coditect and a hand-written baseline alternately, several
//! rounds each, and reports the median of each side. The `compare` binary prints
//! one JSON object per workload, so every figure is a ratio that stays stable on a
//! noisy machine.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

pub mod a2a;
#[cfg(feature = "sqlite")]
pub mod durable;
pub mod mcp;
#[cfg(feature = "nats")]
pub mod nats;
pub mod observe;
pub mod orchestrate;
pub mod report;
pub mod runtime;
pub mod sse;
#[cfg(feature = "sqlite")]
pub mod store;
