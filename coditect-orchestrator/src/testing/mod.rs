//! Test helpers for code built on coditect (feature `test-utils`): a
//! transport conformance suite every transport must pass, a checker of a
//! run's event order, a helper that starts a real PostgreSQL server, and
//! (with the `nats` feature) one that starts real `nats-server` processes.

pub mod conformance;
mod order;
pub mod postgres;
#[cfg(feature = "nats")]
pub mod server;

pub use order::{OrderViolation, check_causal_order};
pub use postgres::{POSTGRES_INSTALL_HINT, PostgresError, PostgresServer, postgres_bin_dir};
#[cfg(feature = "nats")]
pub use server::{INSTALL_HINT, NatsCluster, NatsServer, NatsServerBuilder, nats_server_binary};
