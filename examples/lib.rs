//! What the examples share: the quickstart's team ([`team`]), which
//! `quickstart` runs, `mcp_server` serves over MCP and `a2a_server` publishes
//! over A2A. Copy an example together with `team.rs` and make both yours.
//!
//! ```
//! use coditect_examples::team::{self, Brains};
//! use coditect_orchestrator::{InMemoryTransport, Runtime};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let runtime = Runtime::builder(InMemoryTransport::new()).build().await?;
//! team::register(&runtime, &Brains::scripted()).await?;
//! assert_eq!(runtime.cards().len(), team::SPECIALISTS.len());
//! # Ok(()) }
//! ```

pub mod team;
