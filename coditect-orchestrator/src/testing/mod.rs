//! Test helpers for code built on coditect (feature `test-utils`): a
//! transport conformance suite every transport must pass, and (with the `nats`
//! feature) a helper that starts real `nats-server` processes.

pub mod conformance;
#[cfg(feature = "nats")]
pub mod server;

#[cfg(feature = "nats")]
pub use server::{INSTALL_HINT, NatsCluster, NatsServer, NatsServerBuilder, nats_server_binary};
