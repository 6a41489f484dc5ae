//! Test helpers for code built on coditect (feature `test-utils`): a
//! transport conformance suite every transport must pass, and (with the `nats`
//! feature) a helper that starts real `nats-server` processes, and one that
//! starts a real PostgreSQL server.

pub mod conformance;
pub mod postgres;
#[cfg(feature = "nats")]
pub mod server;

pub use postgres::{POSTGRES_INSTALL_HINT, PostgresError, PostgresServer, postgres_bin_dir};
#[cfg(feature = "nats")]
pub use server::{INSTALL_HINT, NatsCluster, NatsServer, NatsServerBuilder, nats_server_binary};
