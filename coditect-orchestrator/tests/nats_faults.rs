//! Fault tests of the NATS transport against real nats-server processes: a
//! worker killed mid-run, the server restarted mid-run, a slow consumer,
//! duplicate tasks and results, malformed and oversized messages, and tasks
//! that exhaust their deliveries. Each asserts nothing is lost and nothing is
//! counted twice.
#![cfg(all(feature = "nats", feature = "test-utils"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use coditect_orchestrator::testing::NatsServer;
use coditect_orchestrator::transport::Refused;
use coditect_orchestrator::transport::nats::wire;
use coditect_orchestrator::transport::nats::{KindDelivery, NatsOptions, NatsTransport};
use coditect_orchestrator::{
    Agent, AgentContext, AgentError, AgentKind, Body, Delivery, Destination, Envelope, Failure,
    FailureKind, Inbox, Payload, Route, Runtime, SendErrorKind, TenantId, Transport, TransportExt,
};
use common::*;
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio::time::timeout;

/// Not a test: the body of the worker processes the fault tests start (this
/// binary, re-executed with `CODITECT_NATS_WORKER` set). Without that
/// variable it returns at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the body of a child process; the tests that spawn it run it"]
async fn worker_process_entry() {
    worker_process_main().await;
}

/// Polls `f` until it holds, for at most `limit`.
async fn eventually(limit: Duration, what: &str, mut f: impl AsyncFnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !f().await {
        assert!(start.elapsed() < limit, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_run_loses_nothing_and_counts_nothing_twice() {
    let server = NatsServer::start().expect("start nats-server");
    let urls = vec![server.url()];
    let mut workers = Vec::new();
    for _ in 0..3 {
        workers.push(spawn_worker_process("worker_process_entry", &urls, 5).await);
    }
    let rt = Runtime::builder(connect(&urls, fast_durable()).await)
        .build()
        .await
        .unwrap();
    let mut victim = workers.remove(0);
    let result = run_steps(&rt, 1000, 200, || async {
        // SIGKILL: no drain, no acks; its unacked tasks must come back.
        victim.start_kill().unwrap();
        let _ = timeout(T, victim.wait()).await;
    })
    .await;
    assert!(
        result.at_fault >= 200 && result.at_fault < 1000,
        "the kill happened mid-run"
    );
    assert_complete(&result, 1000);
    rt.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_retries_off_jetstream_alone_recovers_a_killed_workers_tasks() {
    let server = NatsServer::start().expect("start nats-server");
    let urls = vec![server.url()];
    let mut workers = Vec::new();
    for _ in 0..3 {
        workers.push(spawn_worker_process("worker_process_entry", &urls, 5).await);
    }
    let rt = Runtime::builder(connect(&urls, fast_durable()).await)
        .build()
        .await
        .unwrap();
    let mut victim = workers.remove(0);
    let result = run_steps_with(&rt, 1000, 200, Retries::Off, || async {
        victim.start_kill().unwrap();
        let _ = timeout(T, victim.wait()).await;
    })
    .await;
    assert!(result.at_fault >= 200 && result.at_fault < 1000);
    assert_complete_without_retries(&result, 1000);
    rt.shutdown(Duration::from_secs(2)).await;
}

/// With retries off (no step timeout), a server restart mid-run: the tasks
/// JetStream redelivers, and the replies sent while the orchestrator's
/// connection was down (recalled once it is back), recover every step once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_retries_off_jetstream_alone_recovers_from_a_server_restart() {
    let server = Arc::new(Mutex::new(NatsServer::start().expect("start nats-server")));
    let urls = vec![server.lock().unwrap().url()];
    let mut workers = Vec::new();
    for _ in 0..3 {
        workers.push(worker(&urls, fast_durable(), Duration::from_millis(2)).await);
    }
    let transport = connect(&urls, fast_durable()).await;
    let rt = Runtime::builder(transport.clone()).build().await.unwrap();
    let s = server.clone();
    let result = run_steps_with(&rt, 1000, 300, Retries::Off, || async move {
        tokio::task::spawn_blocking(move || s.lock().unwrap().restart())
            .await
            .unwrap()
            .expect("restart nats-server");
    })
    .await;
    assert!(result.at_fault < 1000, "the restart happened mid-run");
    assert_complete_without_retries(&result, 1000);
    assert!(transport.metrics().disconnects >= 1);
    for w in workers {
        w.shutdown(Duration::from_secs(2)).await;
    }
    rt.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_mid_run_loses_nothing() {
    let server = Arc::new(Mutex::new(NatsServer::start().expect("start nats-server")));
    let urls = vec![server.lock().unwrap().url()];
    let mut workers = Vec::new();
    for _ in 0..3 {
        workers.push(worker(&urls, fast_durable(), Duration::from_millis(2)).await);
    }
    let transport = connect(&urls, fast_durable()).await;
    let rt = Runtime::builder(transport.clone()).build().await.unwrap();
    let s = server.clone();
    let result = run_steps(&rt, 1000, 300, || async move {
        // Same port, same store: JetStream keeps the stored tasks.
        tokio::task::spawn_blocking(move || s.lock().unwrap().restart())
            .await
            .unwrap()
            .expect("restart nats-server");
    })
    .await;
    assert!(result.at_fault < 1000, "the restart happened mid-run");
    assert_complete(&result, 1000);
    assert!(
        transport.metrics().disconnects >= 1,
        "the disconnect was reported"
    );
    for w in workers {
        w.shutdown(Duration::from_secs(2)).await;
    }
    rt.shutdown(Duration::from_secs(2)).await;
}

/// Waits for a gate, then counts the task it got, by number.
struct Gated {
    gate: Arc<Semaphore>,
    seen: Arc<Mutex<HashMap<u64, usize>>>,
}
impl Agent for Gated {
    type Input = u64;
    type Output = ();
    async fn handle(&mut self, n: u64, _ctx: &AgentContext) -> Result<(), AgentError> {
        self.gate.acquire().await.unwrap().forget();
        *self.seen.lock().unwrap().entry(n).or_default() += 1;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_leaves_tasks_in_the_stream_and_memory_bounded() {
    let server = NatsServer::start().expect("start nats-server");
    let urls = vec![server.url()];
    let durable = fast_durable().max_ack_pending(20).batch(10);
    let worker = Runtime::builder(connect(&urls, durable.clone()).await)
        .build()
        .await
        .unwrap();
    let gate = Arc::new(Semaphore::new(0));
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let (g, s) = (gate.clone(), seen.clone());
    worker
        .kind("slow")
        .instances(4)
        .register(move |_| Gated {
            gate: g.clone(),
            seen: s.clone(),
        })
        .await
        .unwrap();
    let producer_t = connect(&urls, durable).await;
    let producer = Runtime::builder(producer_t.clone()).build().await.unwrap();
    let kind = AgentKind::new("slow").unwrap();
    for i in 0..2000u64 {
        timeout(T, producer.send(kind.clone(), i))
            .await
            .unwrap()
            .expect("a task was refused or dropped");
    }
    let js = async_nats::jetstream::new(producer_t.client().clone());
    let stream_name = NatsTransport::task_stream(&TenantId::default());
    let mut stream = js.get_stream(&stream_name).await.unwrap();
    let consumer_info = async |js: &async_nats::jetstream::Context| {
        let mut c: async_nats::jetstream::consumer::PullConsumer = js
            .get_stream(&stream_name)
            .await
            .unwrap()
            .get_consumer("slow")
            .await
            .unwrap();
        c.info().await.unwrap().clone()
    };
    // The worker holds at most max_ack_pending tasks; the stream holds the rest.
    let info = consumer_info(&js).await;
    assert!(
        info.num_ack_pending <= 20,
        "worker holds {} tasks",
        info.num_ack_pending
    );
    assert_eq!(
        stream.info().await.unwrap().state.messages,
        2000,
        "every task is stored"
    );
    gate.add_permits(10_000);
    eventually(T, "every task was handled", async || {
        seen.lock().unwrap().len() == 2000
    })
    .await;
    eventually(T, "the stream is empty", async || {
        stream
            .info()
            .await
            .map(|i| i.state.messages == 0)
            .unwrap_or(false)
    })
    .await;
    assert!(
        seen.lock().unwrap().values().all(|&c| c == 1),
        "a task was handled twice"
    );
    worker.shutdown(Duration::from_secs(2)).await;
    producer.shutdown(Duration::from_secs(2)).await;
}

/// Counts what it handles.
struct Counter(Arc<AtomicUsize>);
impl Agent for Counter {
    type Input = u64;
    type Output = u64;
    async fn handle(&mut self, n: u64, _ctx: &AgentContext) -> Result<u64, AgentError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(n)
    }
}

fn task(id: coditect_orchestrator::MessageId, n: u64) -> Envelope {
    let mut env = Envelope::new(
        TenantId::default(),
        Destination::Kind(AgentKind::new("count").unwrap()),
        Payload::Message(Body::new(n)),
    );
    env.id = id;
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_tasks_and_results_count_once() {
    let server = NatsServer::start().expect("start nats-server");
    let urls = vec![server.url()];
    let worker = Runtime::builder(connect(&urls, fast_durable()).await)
        .build()
        .await
        .unwrap();
    let handled = Arc::new(AtomicUsize::new(0));
    let h = handled.clone();
    worker
        .register("count", move |_| Counter(h.clone()))
        .await
        .unwrap();
    // The same task published twice (a retried publish): stored once.
    let t = connect(&urls, fast_durable()).await;
    let id = coditect_orchestrator::MessageId::new();
    t.send(task(id, 1)).await.unwrap();
    t.send(task(id, 1)).await.unwrap();
    t.send(task(coditect_orchestrator::MessageId::new(), 2))
        .await
        .unwrap();
    eventually(T, "both distinct tasks were handled", async || {
        handled.load(Ordering::SeqCst) >= 2
    })
    .await;
    // A marker task after them: once it is handled, the duplicate had its chance.
    t.send(task(coditect_orchestrator::MessageId::new(), 3))
        .await
        .unwrap();
    eventually(T, "the marker was handled", async || {
        handled.load(Ordering::SeqCst) >= 3
    })
    .await;
    assert_eq!(
        handled.load(Ordering::SeqCst),
        3,
        "a duplicate task was handled"
    );

    // The same result delivered twice: the requester takes it once.
    let fake_t = connect(&urls, fast_durable()).await;
    let mut fake = fake_t
        .subscribe(
            Route::kind(TenantId::default(), AgentKind::new("twice").unwrap()),
            4,
        )
        .await
        .unwrap();
    let requester = Runtime::builder(connect(&urls, fast_durable()).await)
        .build()
        .await
        .unwrap();
    let answering = tokio::spawn(async move {
        let d = fake.next().await.unwrap();
        let env = *d.envelope;
        for _ in 0..2 {
            let reply = env.reply(Ok(Body::new(42u64))).unwrap();
            fake_t.send(reply).await.unwrap();
        }
        d.acker.ack().await.unwrap();
        fake
    });
    let got: u64 = timeout(T, requester.request(AgentKind::new("twice").unwrap(), 0u64))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, 42);
    let _fake = timeout(T, answering).await.unwrap().unwrap();
    assert_eq!(requester.pending_requests(), 0);
    worker.shutdown(Duration::from_secs(2)).await;
    requester.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_held_past_its_ack_wait_is_kept_alive_and_not_redelivered() {
    let server = NatsServer::start().expect("start nats-server");
    let urls = vec![server.url()];
    let ack_wait = Duration::from_secs(1);
    let durable = fast_durable().ack_wait(ack_wait);
    let worker_t = connect(&urls, durable.clone()).await;
    let mut tasks = worker_t
        .subscribe(
            Route::kind(TenantId::default(), AgentKind::new("count").unwrap()),
            4,
        )
        .await
        .unwrap();
    let producer = connect(&urls, durable).await;
    producer
        .send(task(coditect_orchestrator::MessageId::new(), 7))
        .await
        .unwrap();
    let held = timeout(T, tasks.next()).await.unwrap().unwrap();
    // Held unacked for three ack waits: only the in-progress acks of the
    // delivering transport keep the server from handing it out again.
    let again = timeout(ack_wait * 3, tasks.next()).await;
    assert!(
        again.is_err(),
        "a task still in flight was redelivered after its ack wait"
    );
    held.acker.ack().await.unwrap();
    // Acked: the queue is empty, and no redelivery was ever seen.
    let js = async_nats::jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_stream(format!("CODITECT_TASKS_{}", TenantId::default()))
        .await
        .unwrap()
        .get_consumer("count")
        .await
        .unwrap();
    eventually(T, "the ack was taken", async || {
        consumer.info().await.unwrap().num_ack_pending == 0
    })
    .await;
    let info = consumer.info().await.unwrap();
    assert_eq!(info.num_redelivered, 0);
    assert_eq!(info.num_pending, 0);
    assert_eq!(worker_t.metrics().redelivered, 0);
}

async fn dead_letters(
    js: &async_nats::jetstream::Context,
    n: usize,
) -> Vec<async_nats::jetstream::message::StreamMessage> {
    let stream = js
        .get_stream(NatsTransport::dead_letter_stream(&TenantId::default()))
        .await
        .unwrap();
    let mut out = Vec::new();
    for seq in 1..=n as u64 {
        if let Ok(m) = stream.get_raw_message(seq).await {
            out.push(m);
        }
    }
    out
}

fn reason(m: &async_nats::jetstream::message::StreamMessage) -> String {
    m.headers
        .get(wire::DEAD_REASON_HEADER)
        .map(|v| v.as_str().to_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_messages_are_dead_lettered_not_fatal() {
    let server = NatsServer::builder()
        .max_payload(64 * 1024)
        .start()
        .expect("start nats-server");
    let urls = vec![server.url()];
    let worker_t = NatsOptions::new(server.url())
        .durable(fast_durable())
        .max_message_size(8 * 1024)
        .connect()
        .await
        .unwrap();
    let worker = Runtime::builder(worker_t.clone()).build().await.unwrap();
    let handled = Arc::new(AtomicUsize::new(0));
    let h = handled.clone();
    worker
        .register("count", move |_| Counter(h.clone()))
        .await
        .unwrap();
    let raw = async_nats::connect(server.url()).await.unwrap();
    let js = async_nats::jetstream::new(raw.clone());
    // Garbage on the durable task subject, on an id subject, and a task whose
    // envelope is fine but larger than this worker takes.
    js.publish(
        "coditect.default.task.count",
        Bytes::from_static(b"\xff not an envelope"),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    raw.publish("coditect.default.agent.count.x", Bytes::from_static(b"{}"))
        .await
        .unwrap();
    let big = task(coditect_orchestrator::MessageId::new(), 0);
    let (headers, _) = wire::encode(&big).unwrap();
    js.publish_with_headers(
        "coditect.default.task.count",
        headers,
        Bytes::from(vec![b'1'; 20_000]),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let mut reasons = Vec::new();
    eventually(T, "three dead letters", async || {
        reasons = dead_letters(&js, 3).await.iter().map(reason).collect();
        reasons.len() == 3
    })
    .await;
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("no Coditect-Meta header")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("exceeds the limit")),
        "{reasons:?}"
    );
    assert_eq!(worker_t.metrics().dead_lettered, 3);

    // The worker is still alive and takes good work.
    let requester_t = connect(&urls, fast_durable()).await;
    let requester = Runtime::builder(requester_t.clone()).build().await.unwrap();
    let n: u64 = timeout(T, requester.request(AgentKind::new("count").unwrap(), 5u64))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 5);

    // Sending more than the server's max_payload is refused before it is
    // sent (the server would drop the whole connection), and the connection
    // stays up.
    let mut huge = task(coditect_orchestrator::MessageId::new(), 0);
    huge.payload = Payload::Message(Body::new(vec![0u8; 100_000]));
    let err = requester_t.send(huge).await.unwrap_err();
    assert_eq!(err.kind(), SendErrorKind::TooLarge, "{err}");
    assert!(err.into_envelope().is_some(), "the envelope comes back");
    let n: u64 = timeout(T, requester.request(AgentKind::new("count").unwrap(), 6u64))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 6);
    assert!(requester_t.is_connected());
    worker.shutdown(Duration::from_secs(2)).await;
    requester.shutdown(Duration::from_secs(2)).await;
}

/// Refuses everything, as a worker that keeps failing would.
struct Refusing;
#[async_trait]
impl Inbox for Refusing {
    async fn deliver(&self, delivery: Delivery) -> Result<(), Box<Refused>> {
        Err(Box::new(Refused {
            delivery,
            reason: Failure::new(FailureKind::ShuttingDown, "refusing on purpose"),
        }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_exhausts_its_deliveries_is_dead_lettered_and_removed() {
    let server = NatsServer::start().expect("start nats-server");
    let durable = fast_durable()
        .max_deliver(3)
        .dead_letter_max_age(Duration::from_secs(3 * 3600));
    let t = NatsOptions::new(server.url())
        .durable(durable)
        .connect()
        .await
        .unwrap();
    let _sub = t
        .attach(
            Route::kind(TenantId::default(), AgentKind::new("count").unwrap()),
            Arc::new(Refusing),
        )
        .await
        .unwrap();
    t.send(task(coditect_orchestrator::MessageId::new(), 9))
        .await
        .unwrap();
    let js = async_nats::jetstream::new(t.client().clone());
    let mut reasons = Vec::new();
    eventually(T, "the task was dead-lettered", async || {
        reasons = dead_letters(&js, 1).await.iter().map(reason).collect();
        !reasons.is_empty()
    })
    .await;
    assert!(reasons[0].contains("delivered 3 times"), "{reasons:?}");
    let mut dead = js
        .get_stream(NatsTransport::dead_letter_stream(&TenantId::default()))
        .await
        .unwrap();
    assert_eq!(
        dead.info().await.unwrap().config.max_age,
        Duration::from_secs(3 * 3600),
        "the dead letters are kept as long as the options say"
    );
    let mut stream = js
        .get_stream(NatsTransport::task_stream(&TenantId::default()))
        .await
        .unwrap();
    eventually(T, "the task left the work queue", async || {
        stream
            .info()
            .await
            .map(|i| i.state.messages == 0)
            .unwrap_or(false)
    })
    .await;
    let _ = KindDelivery::Durable;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_fed_damaged_envelopes_dead_letters_each_with_its_reason_and_keeps_working() {
    let server = NatsServer::start().expect("start nats-server");
    let urls = vec![server.url()];
    let worker_t = connect(&urls, fast_durable()).await;
    let worker = Runtime::builder(worker_t.clone()).build().await.unwrap();
    let handled = Arc::new(AtomicUsize::new(0));
    let h = handled.clone();
    worker
        .register("count", move |_| Counter(h.clone()))
        .await
        .unwrap();
    let raw = async_nats::connect(server.url()).await.unwrap();
    let js = async_nats::jetstream::new(raw.clone());
    // A good task's header cut short at every tenth character, and its
    // bytes flipped: none of them is an envelope.
    let (headers, payload) =
        wire::encode(&task(coditect_orchestrator::MessageId::new(), 7)).unwrap();
    let meta = headers.get(wire::META_HEADER).unwrap().as_str().to_owned();
    let mut damaged: Vec<String> = (1..meta.len())
        .step_by(10)
        .map(|i| meta[..i].to_owned())
        .collect();
    damaged.push(meta.replace('{', "["));
    damaged.push(meta.replace("\"p\":\"m\"", "\"p\":\"q\""));
    let n = damaged.len();
    for m in &damaged {
        let mut h = async_nats::HeaderMap::new();
        h.insert(wire::META_HEADER, m.as_str());
        js.publish_with_headers("coditect.default.task.count", h, payload.clone())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let mut reasons = Vec::new();
    eventually(T, "every damaged message is dead-lettered", async || {
        reasons = dead_letters(&js, n + 5).await.iter().map(reason).collect();
        reasons.len() >= n
    })
    .await;
    assert_eq!(reasons.len(), n, "{reasons:?}");
    assert!(
        reasons
            .iter()
            .all(|r| r.contains("malformed Coditect-Meta header")),
        "{reasons:?}"
    );
    assert_eq!(worker_t.metrics().dead_lettered, n as u64);
    assert_eq!(
        handled.load(Ordering::SeqCst),
        0,
        "a damaged task was handled"
    );
    // The worker still takes good work.
    let requester = Runtime::builder(connect(&urls, fast_durable()).await)
        .build()
        .await
        .unwrap();
    let got: u64 = timeout(T, requester.request(AgentKind::new("count").unwrap(), 5u64))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, 5);
    worker.shutdown(Duration::from_secs(2)).await;
    requester.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_delivered_twice_is_recorded_once_in_the_runs_events_and_usage() {
    use coditect_orchestrator::orchestrator::{RunEvent, StaticPlanner};
    use coditect_orchestrator::{
        AgentCard, Orchestrator, Plan, Step, StepInput, Tally, TaskSpec, Usage,
    };
    let server = NatsServer::start().expect("start nats-server");
    let urls = vec![server.url()];
    // A worker built on the bare transport that answers every task twice,
    // each time with the same tally of usage.
    let fake_t = connect(&urls, fast_durable()).await;
    let mut fake = fake_t
        .subscribe(
            Route::kind(TenantId::default(), AgentKind::new("twice").unwrap()),
            4,
        )
        .await
        .unwrap();
    let answering = tokio::spawn(async move {
        let d = fake.next().await.unwrap();
        let env = *d.envelope;
        for _ in 0..2 {
            let mut reply = env.reply(Ok(Body::new(42u64))).unwrap();
            let mut tally = Tally::default();
            tally.usage = Usage::new(100, 20, 0.5);
            tally.agent = Some(coditect_orchestrator::AgentId::new("twice", "_0").unwrap());
            reply.tally = Some(Box::new(tally));
            fake_t.send(reply).await.unwrap();
        }
        d.acker.ack().await.unwrap();
        fake
    });
    let rt = Runtime::builder(connect(&urls, fast_durable()).await)
        .build()
        .await
        .unwrap();
    let plan = Plan::new([Step::new("a", "twice", StepInput::literal(1u64))]);
    let orch = Orchestrator::new(rt.clone(), StaticPlanner::new(plan)).cards(vec![
        AgentCard::of::<Counter>(AgentKind::new("twice").unwrap()),
    ]);
    let mut handle = orch.start(TaskSpec::new("once"));
    let events = handle.events();
    let outcome = timeout(T, handle.outcome()).await.unwrap().unwrap();
    let _fake = timeout(T, answering).await.unwrap().unwrap();
    let events: Vec<_> = events.collect().await;
    let succeeded = events
        .iter()
        .filter(|e| matches!(e.event, RunEvent::StepSucceeded { .. }))
        .count();
    assert_eq!(succeeded, 1, "the duplicate result was recorded");
    assert_eq!(outcome.output, serde_json::json!(42));
    assert_eq!(outcome.usage.input_tokens, 100, "usage counted twice");
    assert_eq!(outcome.usage.output_tokens, 20);
    assert!((outcome.usage.cost_usd - 0.5).abs() < 1e-9);
    assert_eq!(outcome.state.usage, outcome.usage);
    rt.shutdown(Duration::from_secs(2)).await;
}

/// Resident memory of a process, from `/proc/<pid>/status`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Sends `sig` (as `kill` spells it) to a process this test started.
fn signal(pid: u32, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {sig} {pid} failed");
}

/// The most a worker process may hold while 100,000 tasks wait for it: the
/// stream keeps them, a worker only what it pulled (MaxAckPending).
const WORKER_RSS_BOUND_KIB: u64 = 64 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_tasks_wait_in_the_stream_while_two_workers_stay_small() {
    let server = NatsServer::start().expect("start nats-server");
    let urls = vec![server.url()];
    let workers = [
        spawn_worker_process("worker_process_entry", &urls, 5).await,
        spawn_worker_process("worker_process_entry", &urls, 5).await,
    ];
    let pids: Vec<u32> = workers.iter().map(|w| w.id().unwrap()).collect();
    let start_rss: Vec<u64> = pids.iter().map(|&p| rss_kib(p)).collect();
    let producer = Runtime::builder(connect(&urls, fast_durable()).await)
        .build()
        .await
        .unwrap();
    let kind = AgentKind::new("double").unwrap();
    let raw = async_nats::connect(server.url()).await.unwrap();
    let js = async_nats::jetstream::new(raw);
    let stream_name = NatsTransport::task_stream(&TenantId::default());
    const N: u64 = 100_000;
    // The workers are suspended while the whole queue is published — the most
    // a producer can outrun its consumers — so what they face when they go on
    // does not hang on how fast this machine publishes.
    for &p in &pids {
        signal(p, "-STOP");
    }
    let sends = futures::stream::iter(0..N)
        .map(|i| {
            let p = producer.clone();
            let k = kind.clone();
            async move { p.send(k, i).await }
        })
        .buffer_unordered(256);
    futures::pin_mut!(sends);
    while let Some(r) = timeout(T, sends.next()).await.expect("a send hung") {
        r.expect("a task was refused or dropped");
    }
    let queued = js
        .get_stream(&stream_name)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    assert_eq!(queued, N, "the stream did not hold every task");
    for &p in &pids {
        signal(p, "-CONT");
    }
    let mut peak_rss = 0u64;
    // Drained: every task acked (the work queue deletes acked tasks), none
    // dead-lettered, the workers' memory bounded all along.
    let mut s = js.get_stream(&stream_name).await.unwrap();
    let limit = Duration::from_secs(300);
    let began = tokio::time::Instant::now();
    loop {
        let left = s.info().await.unwrap().state.messages;
        for &p in &pids {
            peak_rss = peak_rss.max(rss_kib(p));
        }
        if left == 0 {
            break;
        }
        assert!(began.elapsed() < limit, "{left} tasks never drained");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut c = s
        .get_consumer::<async_nats::jetstream::consumer::pull::Config>("double")
        .await
        .unwrap();
    let info = c.info().await.unwrap();
    assert_eq!(
        info.ack_floor.stream_sequence, N,
        "not every task was acked"
    );
    assert_eq!(info.num_ack_pending, 0);
    let dead = js
        .get_stream(NatsTransport::dead_letter_stream(&TenantId::default()))
        .await;
    if let Ok(mut d) = dead {
        assert_eq!(
            d.info().await.unwrap().state.messages,
            0,
            "tasks were dead-lettered"
        );
    }
    println!("worker RSS: start {start_rss:?} KiB, peak {peak_rss} KiB; queued {queued}");
    assert!(peak_rss > 0, "RSS was not read");
    assert!(
        peak_rss < WORKER_RSS_BOUND_KIB,
        "a worker grew to {peak_rss} KiB with the queue full"
    );
    producer.shutdown(Duration::from_secs(2)).await;
    drop(workers);
}
