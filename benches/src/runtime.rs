//! Workloads of the core runtime: request/reply latency, fan-out throughput,
//! and the cost of virtual agents — each beside a raw tokio baseline
//! (mpsc + oneshot), the lower bound for any actor runtime on tokio.

use std::time::{Duration, Instant};

use coditect_orchestrator::{
    Agent, AgentContext, AgentError, AgentId, AgentKind, InMemoryTransport, Runtime,
};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::report::{Mode, Report, median, quantile_ns, round2};

/// A small payload of about 100 bytes, as in the peers' scripts.
#[derive(Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Task {
    pub id: u64,
    pub text: String,
}

fn task(id: u64) -> Task {
    Task {
        id,
        text: "an orchestration benchmark payload of roughly one hundred bytes, for parity".into(),
    }
}

/// Answers at once with the task's id.
pub struct Worker;

impl Agent for Worker {
    type Input = Task;
    type Output = u64;
    async fn handle(&mut self, t: Task, _ctx: &AgentContext) -> Result<u64, AgentError> {
        Ok(t.id)
    }
}

type Req = (Task, oneshot::Sender<u64>);

fn spawn_raw_worker() -> mpsc::Sender<Req> {
    let (tx, mut rx) = mpsc::channel::<Req>(256);
    tokio::spawn(async move {
        while let Some((t, reply)) = rx.recv().await {
            let _ = reply.send(t.id);
        }
    });
    tx
}

pub async fn coditect_runtime() -> Runtime {
    let rt = Runtime::builder(InMemoryTransport::new())
        .build()
        .await
        .expect("runtime");
    rt.kind("worker")
        .instances(8)
        .register(|_| Worker)
        .await
        .expect("register");
    // The same agent with direct calls off: every request goes through the
    // agent's mailbox and its drain task (the path of a busy agent, and of
    // kinds that opt out), reported beside the direct figure.
    rt.kind("queued")
        .instances(8)
        .direct_calls(false)
        .register(|_| Worker)
        .await
        .expect("register");
    rt
}

/// `request_reply`: sequential round trips to one agent.
pub async fn request_reply(mode: Mode) -> Report {
    const N: usize = 10_000;

    const WARMUP: usize = 1_000;
    let rt = coditect_runtime().await;
    let target = AgentId::new("worker", "w0").expect("id");
    let queued = AgentId::new("queued", "w0").expect("id");
    let raw = spawn_raw_worker();
    let mut mailbox = Vec::new();

    let mut ours = Vec::new();
    let mut base = Vec::new();
    let mut ours_lat = Vec::with_capacity(N * mode.rounds());
    let mut base_lat = Vec::with_capacity(N * mode.rounds());
    for _ in 0..WARMUP {
        let _: u64 = rt.request(&target, task(0)).await.expect("req");
        let _: u64 = rt.request(&queued, task(0)).await.expect("req");
        let (tx, rx) = oneshot::channel();
        raw.send((task(0), tx)).await.expect("send");
        rx.await.expect("reply");
    }
    for _ in 0..mode.rounds() {
        let start = Instant::now();
        for i in 0..N as u64 {
            let t0 = Instant::now();
            let r: u64 = rt.request(&target, task(i)).await.expect("req");
            ours_lat.push(t0.elapsed());
            debug_assert_eq!(r, i);
        }
        ours.push(start.elapsed().as_nanos() as f64 / N as f64);

        let start = Instant::now();
        for i in 0..N as u64 {
            let r: u64 = rt.request(&queued, task(i)).await.expect("req");
            debug_assert_eq!(r, i);
        }
        mailbox.push(start.elapsed().as_nanos() as f64 / N as f64);

        let start = Instant::now();
        for i in 0..N as u64 {
            let t0 = Instant::now();
            let (tx, rx) = oneshot::channel();
            raw.send((task(i), tx)).await.expect("send");
            let r = rx.await.expect("reply");
            base_lat.push(t0.elapsed());
            debug_assert_eq!(r, i);
        }
        base.push(start.elapsed().as_nanos() as f64 / N as f64);
    }
    rt.shutdown(Duration::from_secs(5)).await;
    let base_ns = median(&mut base);
    let mailbox_ns = median(&mut mailbox);
    Report::new(
        "request_reply",
        "tokio mpsc+oneshot",
        median(&mut ours),
        base_ns,
    )
    .field("n", N)
    .field("mailbox_ns_per_op", round2(mailbox_ns))
    .field("mailbox_slowdown", round2(mailbox_ns / base_ns))
    .field("p50_us", round2(quantile_ns(&mut ours_lat, 0.5) / 1e3))
    .field("p90_us", round2(quantile_ns(&mut ours_lat, 0.9) / 1e3))
    .field("p99_us", round2(quantile_ns(&mut ours_lat, 0.99) / 1e3))
    .field(
        "baseline_p50_us",
        round2(quantile_ns(&mut base_lat, 0.5) / 1e3),
    )
    .field(
        "baseline_p90_us",
        round2(quantile_ns(&mut base_lat, 0.9) / 1e3),
    )
    .field(
        "baseline_p99_us",
        round2(quantile_ns(&mut base_lat, 0.99) / 1e3),
    )
}

/// `fanout`: one caller, 8 worker agents, 100,000 requests, 256 in flight.
pub async fn fanout(mode: Mode) -> Report {
    const N: usize = 100_000;
    const IN_FLIGHT: usize = 256;
    const K: usize = 8;
    let rt = coditect_runtime().await;
    let ids: Vec<AgentId> = (0..K)
        .map(|i| AgentId::new("worker", format!("w{i}")).expect("id"))
        .collect();
    let queued: Vec<AgentId> = (0..K)
        .map(|i| AgentId::new("queued", format!("w{i}")).expect("id"))
        .collect();
    let raws: Vec<mpsc::Sender<Req>> = (0..K).map(|_| spawn_raw_worker()).collect();

    let mut ours = Vec::new();
    let mut mailbox = Vec::new();
    let mut base = Vec::new();
    for _ in 0..mode.rounds() {
        for (ids, out) in [(&ids, &mut ours), (&queued, &mut mailbox)] {
            let start = Instant::now();
            let mut inflight = FuturesUnordered::new();
            let mut sent = 0usize;
            let mut done = 0usize;
            while done < N {
                while sent < N && inflight.len() < IN_FLIGHT {
                    let rt = &rt;
                    let id = &ids[sent % K];
                    let t = task(sent as u64);
                    inflight.push(async move { rt.request::<u64>(id, t).await });
                    sent += 1;
                }
                if let Some(r) = inflight.next().await {
                    r.expect("reply");
                    done += 1;
                }
            }
            out.push(start.elapsed().as_nanos() as f64 / N as f64);
        }

        let start = Instant::now();
        let mut inflight = FuturesUnordered::new();
        let mut sent = 0usize;
        let mut done = 0usize;
        while done < N {
            while sent < N && inflight.len() < IN_FLIGHT {
                let w = &raws[sent % K];
                let t = task(sent as u64);
                inflight.push(async move {
                    let (tx, rx) = oneshot::channel();
                    w.send((t, tx)).await.expect("send");
                    rx.await
                });
                sent += 1;
            }
            if let Some(r) = inflight.next().await {
                r.expect("reply");
                done += 1;
            }
        }
        base.push(start.elapsed().as_nanos() as f64 / N as f64);
    }
    rt.shutdown(Duration::from_secs(5)).await;
    let ours = median(&mut ours);
    let base = median(&mut base);
    let mailbox = median(&mut mailbox);
    Report::new("fanout", "tokio mpsc+oneshot", ours, base)
        .field("n", N)
        .field("mailbox_ns_per_op", round2(mailbox))
        .field("mailbox_slowdown", round2(mailbox / base))
        .field("workers", K)
        .field("in_flight", IN_FLIGHT)
        .field("ours_per_s", (1e9 / ours).round())
        .field("baseline_per_s", (1e9 / base).round())
}

/// Resident set size of this process, in bytes.
pub fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// An agent with no state of its own: what an idle agent costs is the
/// runtime's bookkeeping alone.
pub struct Idle;

impl Agent for Idle {
    type Input = ();
    type Output = ();
    async fn handle(&mut self, _: (), _ctx: &AgentContext) -> Result<(), AgentError> {
        Ok(())
    }
}

/// One side of `virtual_agents`, run in a fresh child process so that its
/// resident-memory figure is not blurred by other workloads. Prints
/// `ns_per_activation bytes_per_agent [inactive_bytes]`.
pub async fn virtual_agents_child(side: &str, n: usize) -> String {
    match side {
        "ours" => {
            let rt = Runtime::builder(InMemoryTransport::new())
                .build()
                .await
                .expect("runtime");
            let before_register = rss_bytes();
            let kind: AgentKind = rt.register("idle", |_| Idle).await.expect("register");
            // A million ids of a registered kind that never got a message: no
            // per-id state exists until the first message.
            let ids: Vec<AgentId> = Vec::new();
            let inactive = rss_bytes().saturating_sub(before_register);
            drop(ids);
            let before = rss_bytes();
            let start = Instant::now();
            // Requests, so each activation is done (and idle) when we measure.
            let mut inflight = FuturesUnordered::new();
            for i in 0..n {
                let rt = &rt;
                let id = AgentId::new("idle", format!("a{i}")).expect("id");
                inflight.push(async move { rt.request::<()>(id, ()).await });
                if inflight.len() >= 256 {
                    inflight.next().await.expect("some").expect("reply");
                }
            }
            while let Some(r) = inflight.next().await {
                r.expect("reply");
            }
            let elapsed = start.elapsed();
            let after = rss_bytes();
            assert_eq!(rt.active(&kind), n);
            format!(
                "{} {} {}",
                elapsed.as_nanos() as f64 / n as f64,
                after.saturating_sub(before) as f64 / n as f64,
                inactive
            )
        }
        _ => {
            // The baseline: a parked tokio task per agent, each with its own
            // mailbox, activated with one message.
            let before = rss_bytes();
            let start = Instant::now();
            let mut senders = Vec::with_capacity(n);
            for i in 0..n {
                let (tx, mut rx) = mpsc::channel::<(u64, oneshot::Sender<u64>)>(8);
                tokio::spawn(async move {
                    while let Some((v, r)) = rx.recv().await {
                        let _ = r.send(v);
                    }
                });
                let (rtx, rrx) = oneshot::channel();
                tx.send((i as u64, rtx)).await.expect("send");
                rrx.await.expect("reply");
                senders.push(tx);
            }
            let elapsed = start.elapsed();
            let after = rss_bytes();
            let out = format!(
                "{} {} 0",
                elapsed.as_nanos() as f64 / n as f64,
                after.saturating_sub(before) as f64 / n as f64
            );
            drop(senders);
            out
        }
    }
}

/// `virtual_agents`: 100,000 ids activated with one message each, each side in
/// its own child process.
pub fn virtual_agents(mode: Mode) -> Report {
    const N: usize = 100_000;
    let run = |side: &str| -> Vec<f64> {
        let exe = std::env::current_exe().expect("exe");
        let out = std::process::Command::new(exe)
            .args(["--child", "virtual_agents", side, &N.to_string()])
            .output()
            .expect("child");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|s| s.parse().ok())
            .collect()
    };
    let rounds = match mode {
        Mode::Quick => 1,
        Mode::Full => 3,
    };
    let (mut ons, mut obytes, mut bns, mut bbytes, mut inactive) =
        (vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..rounds {
        let o = run("ours");
        let b = run("baseline");
        if o.len() == 3 && b.len() == 3 {
            ons.push(o[0]);
            obytes.push(o[1]);
            inactive.push(o[2]);
            bns.push(b[0]);
            bbytes.push(b[1]);
        }
    }
    Report::new(
        "virtual_agents",
        "tokio task+mpsc per agent",
        median(&mut ons),
        median(&mut bns),
    )
    .field("n", N)
    .field("ns_per_activation", round2(median(&mut ons)))
    .field("bytes_per_agent", median(&mut obytes).round())
    .field("baseline_bytes_per_agent", median(&mut bbytes).round())
    .field("inactive_ids", 1_000_000)
    .field("inactive_ids_bytes", median(&mut inactive).round())
}
