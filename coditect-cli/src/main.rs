//! `coditect`: look at the runs of a store.
//!
//! ```text
//! coditect --store sqlite:runs.db runs
//! coditect --store sqlite:runs.db show <RUN>
//! coditect --store sqlite:runs.db render <RUN> --html run.html --mermaid run.mmd
//! coditect --store postgres://user@host/db follow <RUN>
//! coditect --store nats://127.0.0.1:4222 follow <RUN>
//! coditect --store nats://127.0.0.1:4222 respond <RUN> <REQUEST> '{"approved": true}' --nats nats://127.0.0.1:4222
//! ```
//!
//! Stores: `sqlite:PATH`, `postgres://…` (a libpq connection string works
//! too, prefixed `postgres:`), `nats://…` (the JetStream store). The tenant
//! is `--tenant` (default: `default`).
//!
//! `follow` prints each event of a run as it is journaled and exits when the
//! run finishes: a NATS store pushes events as the server stores them (a live
//! run in another process shows up at once), SQLite and PostgreSQL are read
//! every `--every-ms`. `respond` validates the answer against the question's
//! schema and drives the run on with the agents on `--nats`; while another
//! process still holds the run's lease it refuses with "is busy".

mod commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Operate coditect runs: list, show, render, follow, respond.
#[derive(Debug, Parser)]
#[command(name = "coditect", version, about)]
struct Cli {
    /// The run store: `sqlite:PATH`, `postgres://…` or `nats://…`.
    #[arg(long, env = "CODITECT_STORE", global = true)]
    store: Option<String>,
    /// The tenant whose runs to list.
    #[arg(long, default_value = "default", global = true)]
    tenant: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Lists the runs in the store, newest first.
    Runs {
        /// Only runs with this status (running, paused, finished, failed, cancelled).
        #[arg(long)]
        status: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Shows a run as a tree of steps and delegations with what each cost.
    Show {
        /// The run's id.
        run: String,
    },
    /// Writes a run's pictures.
    Render {
        /// The run's id.
        run: String,
        /// The self-contained HTML timeline.
        #[arg(long)]
        html: Option<std::path::PathBuf>,
        /// The Mermaid sequence diagram.
        #[arg(long)]
        mermaid: Option<std::path::PathBuf>,
    },
    /// Prints a run's events as they are recorded, until it ends.
    Follow {
        /// The run's id.
        run: String,
        /// How often to read the journal of a polled store (SQLite,
        /// PostgreSQL), in milliseconds; a NATS store pushes each event as
        /// the server stores it.
        #[arg(long, default_value_t = 500)]
        every_ms: u64,
    },
    /// Answers a paused run's question and drives the run on with the agents
    /// on NATS.
    Respond {
        /// The run's id.
        run: String,
        /// The request id the question was asked under.
        request: String,
        /// The answer, as JSON.
        value: String,
        /// The NATS server the run's agents are on.
        #[arg(long)]
        nats: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("coditect: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("coditect: {e}");
            ExitCode::FAILURE
        }
    }
}
