//! Fifty agents on one key against a stand-in enforcing a rate limit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use coditect_claude::testing::{Reply, StandIn, text_message};
use coditect_claude::{Client, GovernorConfig, RateGovernor, RetryPolicy};
use support::{builder, request};

const AGENTS: usize = 50;
const CALLS_PER_AGENT: usize = 2;
const LIMIT_PER_MINUTE: u64 = 30;

/// Runs every agent at once; returns how many calls succeeded.
async fn run_fleet(client: Client) -> usize {
    let mut tasks = Vec::new();
    for agent in 0..AGENTS {
        // Each agent is its own tenant (as separate runs would be).
        let client = client.for_tenant(format!("agent-{agent}"));
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            for _ in 0..CALLS_PER_AGENT {
                if client.messages().create(&request()).await.is_ok() {
                    ok += 1;
                }
            }
            ok
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += tokio::time::timeout(Duration::from_secs(3600), t)
            .await
            .expect("fleet timed out")
            .unwrap();
    }
    ok
}

#[tokio::test(start_paused = true)]
async fn a_naive_fleet_hits_many_429s() {
    let server = StandIn::start().await;
    server.set_fallback(Reply::message(&text_message("ok")));
    server.set_requests_per_minute(LIMIT_PER_MINUTE);
    let client = builder(&server).retry(RetryPolicy::none()).build().unwrap();
    let ok = run_fleet(client).await;
    assert!(server.rejected() >= 50, "rejected {}", server.rejected());
    assert!(ok < AGENTS * CALLS_PER_AGENT);
}

#[tokio::test(start_paused = true)]
async fn a_governed_fleet_is_paced_below_the_limit() {
    let server = StandIn::start().await;
    server.set_fallback(Reply::message(&text_message("ok")));
    server.set_requests_per_minute(LIMIT_PER_MINUTE);
    let governor = Arc::new(RateGovernor::new(GovernorConfig::default()));
    let client = builder(&server)
        .governor(Arc::clone(&governor))
        .build()
        .unwrap();
    let started = tokio::time::Instant::now();
    let ok = run_fleet(client).await;
    assert_eq!(ok, AGENTS * CALLS_PER_AGENT, "every call succeeds");
    assert!(server.rejected() <= 2, "rejected {}", server.rejected());
    // The limit allows 30 at once, then one every 2 s: pacing, not luck.
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_secs(130), "{elapsed:?}");
    assert_eq!(governor.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_concurrency_cap_holds_across_clients_sharing_a_governor() {
    let server = StandIn::start().await;
    server.set_fallback(Reply::stream(&text_message("ok")));
    let governor = Arc::new(RateGovernor::new(GovernorConfig {
        max_concurrent: 3,
        ..GovernorConfig::default()
    }));
    let a = builder(&server)
        .governor(Arc::clone(&governor))
        .build()
        .unwrap();
    let b = builder(&server)
        .governor(Arc::clone(&governor))
        .build()
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..12 {
        let (client, governor) = (
            if i % 2 == 0 { a.clone() } else { b.clone() },
            Arc::clone(&governor),
        );
        tasks.push(tokio::spawn(async move {
            let mut stream = client.messages().stream(&request()).await.unwrap();
            // While this stream is open it holds a slot.
            assert!(governor.in_flight() <= 3);
            use futures::StreamExt;
            while let Some(ev) = stream.next().await {
                ev.unwrap();
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(governor.in_flight(), 0);
}
