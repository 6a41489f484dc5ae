//! Runs each workload for coditect and for a raw baseline in the same process,
//! alternating, and prints one JSON object per line.
//!
//! ```text
//! cargo run --release -p coditect-benches --bin compare -- --quick
//! cargo run --release -p coditect-benches --bin compare -- --only fanout
//! cargo run --release -p coditect-benches --bin compare -- --only mcp_tool_call
//! cargo run --release -p coditect-benches --all-features --bin compare   # + workloads needing features
//! cargo run --release -p coditect-benches --features postgres --bin compare -- --only journal
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use coditect_benches::report::{Mode, Report};
use coditect_benches::runtime;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = if std::env::var("COMPARE_CURRENT_THREAD").is_ok() {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime")
    };

    // The MCP workload's server: speaks MCP on stdio, prints nothing else.
    if args.first().map(String::as_str) == Some("--child")
        && args.get(1).map(String::as_str) == Some("mcp_server")
    {
        rt.block_on(coditect_benches::mcp::serve_child());
        return;
    }
    // A `nats_scale` worker process: serves until its stdin closes.
    #[cfg(feature = "nats")]
    if args.first().map(String::as_str) == Some("--child")
        && args.get(1).map(String::as_str) == Some("nats_scale_worker")
    {
        let url = args.get(2).cloned().unwrap_or_default();
        let tenant = args.get(3).cloned().unwrap_or_default();
        rt.block_on(coditect_benches::nats::scale_worker_child(&url, &tenant));
        return;
    }
    // A child run measures one side of a memory workload in a fresh process.
    if args.first().map(String::as_str) == Some("--child") {
        let workload = args.get(1).cloned().unwrap_or_default();
        let side = args.get(2).cloned().unwrap_or_default();
        let n: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(100_000);
        let out = rt.block_on(async {
            match workload.as_str() {
                "virtual_agents" => runtime::virtual_agents_child(&side, n).await,
                #[cfg(feature = "sqlite")]
                "fsyncs" if side == "setup_only" => {
                    coditect_benches::store::setup_only_child().await
                }
                #[cfg(feature = "sqlite")]
                "fsyncs" => coditect_benches::store::fsync_child(&side).await,
                other => format!("unknown child workload {other}"),
            }
        });
        println!("{out}");
        return;
    }

    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!(
            "compare [--quick] [--only WORKLOAD]\n\n\
             Runs each workload for coditect and for a raw baseline, alternating, and\n\
             prints one JSON line per workload. --quick: fewer rounds (a smoke run).\n\
             --only WORKLOAD: one of request_reply, fanout, orchestrate (both shapes),\n\
             virtual_agents, a2a_round_trip, mcp_tool_call, sse_parse; with --features nats\n\
             also nats_request_reply, nats_fanout, nats_scale; with --features sqlite/postgres\n\
             journal (all store workloads), journal_sqlite, journal_postgres, journal_load.\n\n\
             Environment: COMPARE_CURRENT_THREAD=1 (a current-thread runtime, for\n\
             profiles), ORCHESTRATE_ROUNDS=N (longer orchestrate runs)."
        );
        return;
    }
    let mode = if args.iter().any(|a| a == "--quick") {
        Mode::Quick
    } else {
        Mode::Full
    };
    let only: Option<String> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1).cloned());
    let wanted = |name: &str| only.as_deref().is_none_or(|o| o == name);

    let mut reports: Vec<Report> = Vec::new();
    let mut emit = |r: Report| {
        println!("{}", r.to_json());
        reports.push(r);
    };
    // Workloads run inside a spawned task, on a runtime worker thread, as an
    // agent system's callers do (block_on would run them on the main thread and
    // measure thread hand-offs instead).
    let spawn = |f: std::pin::Pin<Box<dyn std::future::Future<Output = Report> + Send>>| {
        rt.block_on(async { tokio::spawn(f).await.expect("workload panicked") })
    };
    if wanted("request_reply") {
        emit(spawn(Box::pin(runtime::request_reply(mode))));
    }
    if wanted("fanout") {
        emit(spawn(Box::pin(runtime::fanout(mode))));
    }
    if wanted("orchestrate") {
        let reports = rt.block_on(async {
            tokio::spawn(coditect_benches::orchestrate::run(mode))
                .await
                .expect("workload panicked")
        });
        for r in reports {
            emit(r);
        }
    }
    if wanted("virtual_agents") {
        emit(runtime::virtual_agents(mode));
    }
    #[cfg(feature = "nats")]
    {
        if wanted("nats_request_reply") {
            emit(spawn(Box::pin(coditect_benches::nats::request_reply(mode))));
        }
        if wanted("nats_fanout") {
            emit(spawn(Box::pin(coditect_benches::nats::fanout(mode))));
        }
        if wanted("nats_scale") {
            emit(spawn(Box::pin(coditect_benches::nats::scale(mode))));
        }
    }
    if wanted("a2a_round_trip") {
        emit(spawn(Box::pin(coditect_benches::a2a::run(mode))));
    }
    if wanted("mcp_tool_call") {
        emit(spawn(Box::pin(coditect_benches::mcp::run(mode))));
    }
    #[cfg(feature = "sqlite")]
    {
        let store_wanted = |name: &str| {
            only.as_deref()
                .is_none_or(|o| name.starts_with(o) || o == "journal")
        };
        if store_wanted("journal_sqlite") {
            let reports = rt.block_on(async {
                tokio::spawn(coditect_benches::store::sqlite(mode))
                    .await
                    .expect("workload panicked")
            });
            for r in reports {
                emit(r);
            }
        }
        #[cfg(feature = "postgres")]
        if store_wanted("journal_postgres") {
            let reports = rt.block_on(async {
                tokio::spawn(coditect_benches::store::postgres(mode))
                    .await
                    .expect("workload panicked")
            });
            for r in reports {
                emit(r);
            }
        }
        if store_wanted("journal_load") {
            emit(spawn(Box::pin(coditect_benches::store::load_journal(mode))));
        }
        if wanted("checkpoint_sqlite") {
            emit(spawn(Box::pin(
                coditect_benches::durable::checkpoint_sqlite(mode),
            )));
        }
        if wanted("checkpoint_chained") {
            emit(spawn(Box::pin(
                coditect_benches::durable::checkpoint_chained(mode),
            )));
        }
        #[cfg(feature = "postgres")]
        if wanted("checkpoint_postgres")
            && let Some(r) = rt.block_on(async {
                tokio::spawn(coditect_benches::durable::checkpoint_postgres(mode))
                    .await
                    .expect("workload panicked")
            })
        {
            emit(r);
        }
        if wanted("resume") {
            emit(spawn(Box::pin(coditect_benches::durable::resume(mode))));
        }
        if wanted("resume_snapshot") {
            emit(spawn(Box::pin(coditect_benches::durable::resume_snapshot(
                mode,
            ))));
        }
    }
    if wanted("sse_parse") {
        emit(coditect_benches::sse::run(mode));
    }
    // Last: it installs the process's tracing subscriber and metrics recorder.
    if wanted("observe_wide") {
        emit(spawn(Box::pin(coditect_benches::observe::run(mode))));
    }
}
