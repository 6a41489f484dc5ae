//! Test helpers for code built on coditect (feature `test-utils`): a
//! transport conformance suite every transport must pass, a checker of a
//! run's event order, and (with the `nats` feature) a helper that starts real
//! `nats-server` processes.

pub mod conformance;
mod order;
#[cfg(feature = "nats")]
pub mod server;

pub use order::{OrderViolation, check_causal_order};
#[cfg(feature = "nats")]
pub use server::{INSTALL_HINT, NatsCluster, NatsServer, NatsServerBuilder, nats_server_binary};
