//! The runtime over the in-memory transport: ordering, concurrency, activation,
//! backpressure, topics, deadlines, cancellation, failures, cycles, shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coditect_orchestrator::{
    Agent, AgentContext, AgentError, AgentId, AgentKind, CancellationToken, Destination,
    FailureKind, InMemoryTransport, RequestError, RequestOptions, Route, Runtime, SendErrorKind,
    Topic, TransportExt,
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{Barrier, Semaphore, mpsc};
use tokio::time::timeout;

const T: Duration = Duration::from_secs(20);

async fn runtime() -> Runtime {
    Runtime::builder(InMemoryTransport::new())
        .build()
        .await
        .unwrap()
}

fn id(kind: &str, key: &str) -> AgentId {
    AgentId::new(kind, key).unwrap()
}

fn path(hops: &[&str]) -> Vec<String> {
    hops.iter().map(|s| (*s).to_owned()).collect()
}

// ---------------------------------------------------------------- agents

#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug)]
enum RecorderMsg {
    Record(u64),
    Dump,
}

/// Remembers what it was sent, in the order it handled it.
#[derive(Default)]
struct Recorder {
    seen: Vec<u64>,
}

impl Agent for Recorder {
    type Input = RecorderMsg;
    type Output = Vec<u64>;
    async fn handle(
        &mut self,
        m: RecorderMsg,
        _ctx: &AgentContext,
    ) -> Result<Vec<u64>, AgentError> {
        match m {
            RecorderMsg::Record(n) => {
                self.seen.push(n);
                // Give other tasks a chance, so a broken ordering would show.
                tokio::task::yield_now().await;
                Ok(vec![])
            }
            RecorderMsg::Dump => Ok(self.seen.clone()),
        }
    }
}

/// Waits on a barrier shared by all its activations.
struct Meet(Arc<Barrier>);
impl Agent for Meet {
    type Input = ();
    type Output = ();
    async fn handle(&mut self, _: (), _ctx: &AgentContext) -> Result<(), AgentError> {
        self.0.wait().await;
        Ok(())
    }
}

/// Says it started, then waits for a permit before answering.
struct Gate {
    entered: mpsc::UnboundedSender<AgentId>,
    permits: Arc<Semaphore>,
}
impl Agent for Gate {
    type Input = u32;
    type Output = u32;
    async fn handle(&mut self, n: u32, ctx: &AgentContext) -> Result<u32, AgentError> {
        let _ = self.entered.send(ctx.id().clone());
        self.permits.acquire().await.unwrap().forget();
        Ok(n)
    }
}

/// Says which message it took, then waits for a permit before answering it.
struct Turnstile {
    entered: mpsc::UnboundedSender<u32>,
    permits: Arc<Semaphore>,
}
impl Agent for Turnstile {
    type Input = u32;
    type Output = u32;
    async fn handle(&mut self, n: u32, _ctx: &AgentContext) -> Result<u32, AgentError> {
        let _ = self.entered.send(n);
        self.permits.acquire().await.unwrap().forget();
        Ok(n)
    }
}

/// Hands out its cancellation token, then waits until cancelled.
struct Sleeper(mpsc::UnboundedSender<CancellationToken>);
impl Agent for Sleeper {
    type Input = ();
    type Output = ();
    async fn handle(&mut self, _: (), ctx: &AgentContext) -> Result<(), AgentError> {
        let _ = self.0.send(ctx.cancellation().clone());
        ctx.cancelled().await;
        Err(AgentError::transient("stopped"))
    }
}

/// Panics on "boom"; counts what it handled otherwise.
#[derive(Default)]
struct Fragile {
    handled: u32,
}
impl Agent for Fragile {
    type Input = String;
    type Output = u32;
    async fn handle(&mut self, s: String, _ctx: &AgentContext) -> Result<u32, AgentError> {
        if s == "boom" {
            panic!("boom requested");
        }
        if s == "fail" {
            return Err(AgentError::permanent("asked to fail"));
        }
        self.handled += 1;
        Ok(self.handled)
    }
}

/// Forwards a request to the next hop in its input, or answers if none is left.
struct Hop;
impl Agent for Hop {
    type Input = Vec<String>;
    type Output = String;
    async fn handle(
        &mut self,
        mut path: Vec<String>,
        ctx: &AgentContext,
    ) -> Result<String, AgentError> {
        if path.is_empty() {
            return Ok(format!("end at {}", ctx.id()));
        }
        let next = path.remove(0);
        let dest: Destination = if next.contains('/') {
            next.parse::<AgentId>().unwrap().into()
        } else {
            AgentKind::new(&next).unwrap().into()
        };
        let r: String = ctx.request(dest, path).await?;
        Ok(r)
    }
}

// ----------------------------------------------------------------- tests

#[tokio::test]
async fn messages_to_one_id_are_handled_in_order() {
    let rt = runtime().await;
    rt.register("recorder", |_| Recorder::default())
        .await
        .unwrap();
    let target = id("recorder", "one");
    for n in 0..2_000u64 {
        rt.send(&target, RecorderMsg::Record(n)).await.unwrap();
    }
    let seen: Vec<u64> = timeout(T, rt.request(&target, RecorderMsg::Dump))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen, (0..2_000).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_ids_run_concurrently() {
    let rt = runtime().await;
    // Both handlers must be inside at once for the barrier to open: if ids
    // were serialised, this would never finish.
    let barrier = Arc::new(Barrier::new(2));
    rt.register("meet", move |_| Meet(barrier.clone()))
        .await
        .unwrap();
    let a = rt.request::<()>(id("meet", "a"), ());
    let b = rt.request::<()>(id("meet", "b"), ());
    let (ra, rb) = timeout(T, futures::future::join(a, b)).await.unwrap();
    ra.unwrap();
    rb.unwrap();
}

#[tokio::test]
async fn ids_activate_lazily_once() {
    let rt = runtime().await;
    let made = Arc::new(AtomicUsize::new(0));
    let m = made.clone();
    let kind = rt
        .register("lazy", move |_| {
            m.fetch_add(1, Ordering::SeqCst);
            Fragile::default()
        })
        .await
        .unwrap();
    assert_eq!(made.load(Ordering::SeqCst), 0);
    assert_eq!(rt.active(&kind), 0);
    for key in ["a", "b", "c", "a", "a"] {
        let _: u32 = timeout(T, rt.request(id("lazy", key), "x".to_string()))
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(made.load(Ordering::SeqCst), 3);
    assert_eq!(rt.active(&kind), 3);
    // State lives in the activation: "a" handled three messages.
    let n: u32 = rt.request(id("lazy", "a"), "x".to_string()).await.unwrap();
    assert_eq!(n, 4);
}

#[tokio::test]
async fn a_full_mailbox_makes_senders_wait() {
    let rt = runtime().await;
    let (tx, mut entered) = mpsc::unbounded_channel();
    let permits = Arc::new(Semaphore::new(0));
    let p = permits.clone();
    rt.kind("gate")
        .mailbox(2)
        .register(move |_| Gate {
            entered: tx.clone(),
            permits: p.clone(),
        })
        .await
        .unwrap();
    let target = id("gate", "g");
    rt.send(&target, 1u32).await.unwrap();
    // The first message is running (out of the mailbox)…
    timeout(T, entered.recv()).await.unwrap().unwrap();
    // …two more fill the mailbox…
    rt.send(&target, 2u32).await.unwrap();
    rt.send(&target, 3u32).await.unwrap();
    // …and the fourth must wait.
    let mut fourth = Box::pin(rt.send(&target, 4u32));
    assert!(
        futures::poll!(fourth.as_mut()).is_pending(),
        "send into a full mailbox did not wait"
    );
    permits.add_permits(1);
    timeout(T, fourth).await.unwrap().unwrap();
    permits.add_permits(3);
    for _ in 0..3 {
        timeout(T, entered.recv()).await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn topics_reach_every_subscriber() {
    let rt = runtime().await;
    let topic = Topic::new("news.daily").unwrap();
    for k in ["r1", "r2", "r3"] {
        rt.kind(k)
            .instances(1)
            .subscribe(topic.clone())
            .register(|_| Recorder::default())
            .await
            .unwrap();
    }
    let mut stream = rt
        .transport()
        .subscribe(Route::topic(rt.tenant().clone(), topic.clone()), 8)
        .await
        .unwrap();
    rt.publish(&topic, RecorderMsg::Record(7)).await.unwrap();
    for k in ["r1", "r2", "r3"] {
        let seen: Vec<u64> = timeout(T, rt.request(AgentKind::new(k).unwrap(), RecorderMsg::Dump))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(seen, vec![7], "kind {k}");
    }
    let d = timeout(T, stream.next()).await.unwrap().unwrap();
    assert_eq!(d.envelope.to, Destination::Topic(topic));
    // A topic nobody follows is fine.
    rt.publish(&Topic::new("quiet").unwrap(), 1u8)
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_request_past_its_deadline_times_out_and_cancels_the_handler() {
    let rt = runtime().await;
    let (tx, mut tokens) = mpsc::unbounded_channel();
    rt.register("sleeper", move |_| Sleeper(tx.clone()))
        .await
        .unwrap();
    let err = timeout(
        T,
        rt.request_with::<()>(
            id("sleeper", "s"),
            (),
            RequestOptions::timeout(Duration::from_millis(50)),
        ),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert!(matches!(err, RequestError::Timeout { .. }), "{err}");
    assert_eq!(err.kind(), FailureKind::Timeout);
    let token = timeout(T, tokens.recv()).await.unwrap().unwrap();
    timeout(T, token.cancelled())
        .await
        .expect("handler's token never fired");
}

#[tokio::test]
async fn a_caller_that_gives_up_cancels_the_handler() {
    let rt = runtime().await;
    let (tx, mut tokens) = mpsc::unbounded_channel();
    rt.register("sleeper", move |_| Sleeper(tx.clone()))
        .await
        .unwrap();
    let rt2 = rt.clone();
    let call = tokio::spawn(async move { rt2.request::<()>(id("sleeper", "s"), ()).await });
    let token = timeout(T, tokens.recv()).await.unwrap().unwrap();
    assert!(!token.is_cancelled());
    call.abort();
    timeout(T, token.cancelled())
        .await
        .expect("dropping the request did not cancel the handler");
    timeout(T, async {
        while rt.pending_requests() > 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_request_given_up_before_any_reply_leaves_nothing_waiting() {
    // The request goes out through the transport to a route that takes
    // messages and never answers: only the requester itself can take its
    // entry out of the table of pending replies.
    let transport = InMemoryTransport::new();
    let requester = Runtime::builder(transport.clone()).build().await.unwrap();
    let silent = id("silent", "s");
    let mut inbox = transport
        .subscribe(Route::agent(requester.tenant().clone(), silent.clone()), 8)
        .await
        .unwrap();
    let rt = requester.clone();
    let to = silent.clone();
    let call = tokio::spawn(async move { rt.request::<()>(to, ()).await });
    let d = timeout(T, inbox.next()).await.unwrap().unwrap();
    assert_eq!(d.envelope.to, Destination::Agent(silent));
    assert_eq!(requester.pending_requests(), 1);
    call.abort();
    let _ = call.await;
    assert_eq!(
        requester.pending_requests(),
        0,
        "the given-up request stayed in the table of pending replies"
    );
    // Its callee is told it was given up.
    let cancel = timeout(T, inbox.next()).await.unwrap().unwrap();
    assert!(
        matches!(cancel.envelope.payload, coditect_orchestrator::Payload::Cancel(m) if m == d.envelope.id),
        "{:?}",
        cancel.envelope.payload
    );
}

#[tokio::test]
async fn a_request_given_up_while_queued_is_never_handled() {
    let rt = runtime().await;
    let (tx, mut entered) = mpsc::unbounded_channel();
    let permits = Arc::new(Semaphore::new(0));
    let p = permits.clone();
    rt.register("turnstile", move |_| Turnstile {
        entered: tx.clone(),
        permits: p.clone(),
    })
    .await
    .unwrap();
    let target = id("turnstile", "t");
    // 1 is being handled, held at the gate…
    let rt1 = rt.clone();
    let t1 = target.clone();
    let first = tokio::spawn(async move { rt1.request::<u32>(t1, 1u32).await });
    assert_eq!(timeout(T, entered.recv()).await.unwrap(), Some(1));
    // …2 queues behind it, and its caller gives up on it.
    let mut second = Box::pin(rt.request::<u32>(target.clone(), 2u32));
    assert!(futures::poll!(second.as_mut()).is_pending());
    drop(second);
    // The drop sends the cancel from a task of its own, which this
    // current-thread runtime runs before this task resumes.
    tokio::task::yield_now().await;
    permits.add_permits(1);
    assert_eq!(timeout(T, first).await.unwrap().unwrap().unwrap(), 1);
    // The next message handled is 3: 2 left the mailbox unhandled.
    let rt3 = rt.clone();
    let t3 = target.clone();
    let third = tokio::spawn(async move { rt3.request::<u32>(t3, 3u32).await });
    assert_eq!(timeout(T, entered.recv()).await.unwrap(), Some(3));
    permits.add_permits(1);
    assert_eq!(timeout(T, third).await.unwrap().unwrap().unwrap(), 3);
    assert!(
        entered.try_recv().is_err(),
        "the withdrawn message was handled"
    );
    assert_eq!(rt.pending_requests(), 0);
}

/// Counts what it was sent; now and then waits a turn, so that the drain
/// task parks and is woken in every order.
#[derive(Default)]
struct Tally(u64);

impl Agent for Tally {
    type Input = u64;
    type Output = u64;
    async fn handle(&mut self, n: u64, _ctx: &AgentContext) -> Result<u64, AgentError> {
        self.0 += 1;
        if n.is_multiple_of(3) {
            tokio::task::yield_now().await;
        }
        Ok(self.0)
    }
}

/// Registers `tally` with direct calls off: every message goes through the
/// id's mailbox and drain task.
async fn register_mailbox_tally(rt: &Runtime) {
    rt.kind("tally")
        .direct_calls(false)
        .register(|_| Tally::default())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_queued_from_many_threads_each_wake_the_parked_agent() {
    // Every message goes through the id's mailbox (no direct calls), from
    // four tasks on two threads: the drain task parks between messages and
    // each message must wake it. A lost wake-up leaves a request unanswered.
    let rt = runtime().await;
    register_mailbox_tally(&rt).await;
    const SENDERS: u64 = 4;
    const EACH: u64 = 2_000;
    let mut senders = Vec::new();
    for s in 0..SENDERS {
        let rt = rt.clone();
        senders.push(tokio::spawn(async move {
            for i in 0..EACH {
                let _: u64 = rt.request(id("tally", "t"), s * EACH + i).await.unwrap();
                if i.is_multiple_of(7) {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    for s in senders {
        timeout(T, s)
            .await
            .expect("a request was never answered: its message did not wake the agent")
            .unwrap();
    }
    let seen: u64 = rt.request(id("tally", "t"), 1).await.unwrap();
    assert_eq!(seen, SENDERS * EACH + 1);
}

#[tokio::test]
async fn a_panicking_handler_fails_its_request_and_the_runtime_goes_on() {
    let rt = runtime().await;
    let made = Arc::new(AtomicUsize::new(0));
    let m = made.clone();
    rt.register("fragile", move |_| {
        m.fetch_add(1, Ordering::SeqCst);
        Fragile::default()
    })
    .await
    .unwrap();
    let target = id("fragile", "f");
    assert_eq!(
        rt.request::<u32>(&target, "ok".to_string()).await.unwrap(),
        1
    );
    let err = timeout(T, rt.request::<u32>(&target, "boom".to_string()))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind(), FailureKind::Panicked, "{err}");
    assert!(err.to_string().contains("boom requested"), "{err}");
    // The activation was made anew: its count starts over.
    assert_eq!(
        rt.request::<u32>(&target, "ok".to_string()).await.unwrap(),
        1
    );
    assert_eq!(made.load(Ordering::SeqCst), 2);
    // A returned error is a failure too, and keeps the activation.
    let err = rt
        .request::<u32>(&target, "fail".to_string())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), FailureKind::Handler);
    assert!(!err.is_transient());
    assert_eq!(
        rt.request::<u32>(&target, "ok".to_string()).await.unwrap(),
        2
    );
}

#[tokio::test]
async fn unknown_agents_get_a_typed_error() {
    let rt = runtime().await;
    let err = rt.request::<()>(id("nobody", "x"), ()).await.unwrap_err();
    assert!(matches!(err, RequestError::NoSuchAgent(_)), "{err}");
    let err = rt
        .request::<()>(AgentKind::new("nobody").unwrap(), ())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), FailureKind::NoSuchAgent);
    // A failed send hands the message back.
    let err = rt.send(id("nobody", "x"), 5u8).await.unwrap_err();
    assert_eq!(err.kind(), SendErrorKind::NoRoute);
    let env = err.into_envelope().unwrap();
    assert_eq!(env.to, Destination::Agent(id("nobody", "x")));

    // A factory may refuse ids: those are no such agent either.
    rt.kind("picky")
        .register_fallible(|id: &AgentId| {
            if id.key().as_str().starts_with("ok") {
                Ok(Fragile::default())
            } else {
                Err(AgentError::permanent("unknown key"))
            }
        })
        .await
        .unwrap();
    assert_eq!(
        rt.request::<u32>(id("picky", "ok1"), "x".to_string())
            .await
            .unwrap(),
        1
    );
    let err = rt
        .request::<u32>(id("picky", "nope"), "x".to_string())
        .await
        .unwrap_err();
    assert!(matches!(err, RequestError::NoSuchAgent(_)), "{err}");
}

#[tokio::test]
async fn bad_input_is_a_typed_failure() {
    let rt = runtime().await;
    rt.register("fragile", |_| Fragile::default())
        .await
        .unwrap();
    let err = rt
        .request::<u32>(id("fragile", "f"), vec![1, 2, 3])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), FailureKind::BadInput, "{err}");
    // Asking for the wrong reply type is a typed error as well.
    let err = rt
        .request::<Vec<String>>(id("fragile", "f"), "x".to_string())
        .await
        .unwrap_err();
    assert!(matches!(err, RequestError::BadReply(_)), "{err}");
}

#[tokio::test]
async fn call_cycles_fail_fast_instead_of_hanging() {
    let rt = runtime().await;
    rt.kind("hop").instances(1).register(|_| Hop).await.unwrap();
    // a -> b -> a
    let err = timeout(
        T,
        rt.request::<String>(
            id("hop", "a"),
            vec!["hop/b".to_string(), "hop/a".to_string()],
        ),
    )
    .await
    .expect("a call cycle hung")
    .unwrap_err();
    assert_eq!(err.kind(), FailureKind::CallCycle, "{err}");
    assert!(err.to_string().contains("hop/a -> hop/b -> hop/a"), "{err}");
    // a -> b -> c -> a
    let err = timeout(
        T,
        rt.request::<String>(id("hop", "a"), path(&["hop/b", "hop/c", "hop/a"])),
    )
    .await
    .expect("a long call cycle hung")
    .unwrap_err();
    assert_eq!(err.kind(), FailureKind::CallCycle);
    assert!(
        err.to_string().contains("hop/a -> hop/b -> hop/c -> hop/a"),
        "{err}"
    );
    // a -> a
    let err = timeout(
        T,
        rt.request::<String>(id("hop", "a"), vec!["hop/a".to_string()]),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert_eq!(err.kind(), FailureKind::CallCycle);
    // A chain without a cycle works.
    let ok: String = timeout(
        T,
        rt.request(
            id("hop", "a"),
            vec!["hop/b".to_string(), "hop/c".to_string()],
        ),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(ok, "end at hop/c");
    // Through a kind with one instance: the only instance is in the chain.
    let err = timeout(
        T,
        rt.request::<String>(AgentKind::new("hop").unwrap(), path(&["hop/b", "hop"])),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert_eq!(err.kind(), FailureKind::CallCycle, "{err}");
}

#[tokio::test]
async fn a_kind_with_spare_instances_serves_a_chain_that_revisits_it() {
    let rt = runtime().await;
    rt.kind("hop").instances(2).register(|_| Hop).await.unwrap();
    rt.kind("other")
        .instances(1)
        .register(|_| Hop)
        .await
        .unwrap();
    // hop/_x -> other -> hop (the other instance answers).
    let ok: String = timeout(
        T,
        rt.request(AgentKind::new("hop").unwrap(), path(&["other", "hop"])),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(ok.starts_with("end at hop/_"), "{ok}");
}

#[tokio::test]
async fn sends_do_not_extend_the_call_chain() {
    // a sends (no wait) to b; b asks a: a is free by then, so no cycle.
    struct Kick;
    impl Agent for Kick {
        type Input = String;
        type Output = String;
        async fn handle(&mut self, s: String, ctx: &AgentContext) -> Result<String, AgentError> {
            if s == "start" {
                ctx.send(AgentId::new("asker", "b").unwrap(), ()).await?;
            }
            Ok(format!("kick got {s}"))
        }
    }
    struct Asker(mpsc::UnboundedSender<String>);
    impl Agent for Asker {
        type Input = ();
        type Output = ();
        async fn handle(&mut self, _: (), ctx: &AgentContext) -> Result<(), AgentError> {
            let r: String = ctx
                .request(AgentId::new("kick", "a").unwrap(), "ping".to_string())
                .await?;
            let _ = self.0.send(r);
            Ok(())
        }
    }
    let rt = runtime().await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    rt.register("kick", |_| Kick).await.unwrap();
    rt.register("asker", move |_| Asker(tx.clone()))
        .await
        .unwrap();
    let _: String = rt
        .request(id("kick", "a"), "start".to_string())
        .await
        .unwrap();
    assert_eq!(
        timeout(T, rx.recv()).await.unwrap().unwrap(),
        "kick got ping"
    );
}

#[tokio::test]
async fn shutdown_drains_work_in_flight() {
    let rt = runtime().await;
    let (tx, mut entered) = mpsc::unbounded_channel();
    let permits = Arc::new(Semaphore::new(0));
    let p = permits.clone();
    rt.register("gate", move |_| Gate {
        entered: tx.clone(),
        permits: p.clone(),
    })
    .await
    .unwrap();
    rt.register("fragile", |_| Fragile::default())
        .await
        .unwrap();
    let mut calls = Vec::new();
    for (i, key) in ["a", "b", "c"].into_iter().enumerate() {
        let rt = rt.clone();
        calls.push(tokio::spawn(async move {
            rt.request::<u32>(id("gate", key), i as u32).await
        }));
    }
    for _ in 0..3 {
        timeout(T, entered.recv()).await.unwrap().unwrap();
    }
    let rt2 = rt.clone();
    let shutdown = tokio::spawn(async move { rt2.shutdown(Duration::from_secs(30)).await });
    // New work is refused while draining…
    timeout(T, async {
        loop {
            match rt.request::<u32>(id("fragile", "z"), "x".to_string()).await {
                Err(e)
                    if e.kind() == FailureKind::NoSuchAgent
                        || e.kind() == FailureKind::ShuttingDown =>
                {
                    break;
                }
                _ => tokio::task::yield_now().await,
            }
        }
    })
    .await
    .unwrap();
    // …while the work in flight finishes.
    permits.add_permits(3);
    let report = timeout(T, shutdown).await.unwrap().unwrap();
    assert!(report.drained);
    assert!(report.deactivated >= 3, "{report:?}");
    for (i, c) in calls.into_iter().enumerate() {
        assert_eq!(c.await.unwrap().unwrap(), i as u32);
    }
}

#[tokio::test(start_paused = true)]
async fn shutdown_ends_the_drain_tasks_of_idle_agents() {
    // Answered through their mailboxes, so each id's drain task is parked
    // when the shutdown begins: the shutdown must wake it to end.
    let rt = runtime().await;
    register_mailbox_tally(&rt).await;
    for key in ["a", "b", "c"] {
        let n: u64 = rt.request(id("tally", key), 1).await.unwrap();
        assert_eq!(n, 1);
    }
    let report = timeout(T, rt.shutdown(Duration::from_secs(5)))
        .await
        .unwrap();
    assert!(
        report.drained,
        "a parked drain task kept the runtime from draining: {report:?}"
    );
    assert_eq!(report.deactivated, 3, "{report:?}");
}

#[tokio::test(start_paused = true)]
async fn shutdown_cancels_what_outlives_the_grace_period() {
    let rt = runtime().await;
    let (tx, mut tokens) = mpsc::unbounded_channel();
    rt.register("sleeper", move |_| Sleeper(tx.clone()))
        .await
        .unwrap();
    let rt2 = rt.clone();
    let call = tokio::spawn(async move { rt2.request::<()>(id("sleeper", "s"), ()).await });
    let token = timeout(T, tokens.recv()).await.unwrap().unwrap();
    let report = timeout(T, rt.shutdown(Duration::from_secs(1)))
        .await
        .unwrap();
    assert!(!report.drained);
    assert!(token.is_cancelled());
    let err = timeout(T, call).await.unwrap().unwrap().unwrap_err();
    assert_eq!(err.kind(), FailureKind::ShuttingDown, "{err}");
}

#[tokio::test(start_paused = true)]
async fn idle_agents_are_deactivated() {
    struct Tracked(Arc<AtomicUsize>);
    impl Agent for Tracked {
        type Input = ();
        type Output = ();
        async fn handle(&mut self, _: (), _ctx: &AgentContext) -> Result<(), AgentError> {
            Ok(())
        }
        async fn on_deactivate(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let rt = runtime().await;
    let gone = Arc::new(AtomicUsize::new(0));
    let g = gone.clone();
    let kind = rt
        .kind("tracked")
        .idle_timeout(Duration::from_secs(5))
        .register(move |_| Tracked(g.clone()))
        .await
        .unwrap();
    for key in ["a", "b"] {
        rt.request::<()>(id("tracked", key), ()).await.unwrap();
    }
    assert_eq!(rt.active(&kind), 2);
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(rt.active(&kind), 0);
    assert_eq!(gone.load(Ordering::SeqCst), 2);
    // And they come back on demand.
    rt.request::<()>(id("tracked", "a"), ()).await.unwrap();
    assert_eq!(rt.active(&kind), 1);
    // Explicit deactivation.
    assert!(rt.deactivate(&id("tracked", "a")).await);
    assert_eq!(gone.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_kind_balances_over_its_instances() {
    let rt = runtime().await;
    let (tx, mut entered) = mpsc::unbounded_channel();
    let permits = Arc::new(Semaphore::new(0));
    let p = permits.clone();
    let kind = rt
        .kind("gate")
        .instances(4)
        .register(move |_| Gate {
            entered: tx.clone(),
            permits: p.clone(),
        })
        .await
        .unwrap();
    let mut calls = Vec::new();
    for i in 0..4u32 {
        let rt = rt.clone();
        let kind = kind.clone();
        calls.push(tokio::spawn(
            async move { rt.request::<u32>(kind, i).await },
        ));
    }
    // All four start before any finishes: they went to different instances…
    let mut who = HashMap::new();
    for _ in 0..4 {
        let id = timeout(T, entered.recv()).await.unwrap().unwrap();
        *who.entry(id).or_insert(0) += 1;
    }
    assert_eq!(who.len(), 4, "{who:?}");
    permits.add_permits(4);
    for c in calls {
        c.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn registering_a_kind_twice_is_refused() {
    let rt = runtime().await;
    rt.register("x", |_| Hop).await.unwrap();
    let err = rt.register("x", |_| Hop).await.unwrap_err();
    assert!(err.to_string().contains("already registered"), "{err}");
    assert!(rt.register("bad.kind", |_| Hop).await.is_err());
}

#[tokio::test]
async fn cards_describe_registered_kinds() {
    let rt = runtime().await;
    rt.kind("summarizer")
        .description("Summarises text")
        .capability("summarize")
        .capability("tldr")
        .register(|_| Fragile::default())
        .await
        .unwrap();
    let cards = rt.cards();
    assert_eq!(cards.len(), 1);
    let card = &cards[0];
    assert!(card.can("tldr") && !card.can("summarizer"));
    assert_eq!(card.input_schema["type"], "string");
    assert_eq!(card.output_schema["type"], "integer");
}

#[tokio::test]
async fn agents_delegate_by_capability_and_depth_counts() {
    struct Outer;
    impl Agent for Outer {
        type Input = ();
        type Output = (u16, u16);
        async fn handle(&mut self, _: (), ctx: &AgentContext) -> Result<(u16, u16), AgentError> {
            let inner: u16 = ctx.delegate("depth", ()).await?;
            Ok((ctx.depth(), inner))
        }
    }
    struct Depth;
    impl Agent for Depth {
        type Input = ();
        type Output = u16;
        async fn handle(&mut self, _: (), ctx: &AgentContext) -> Result<u16, AgentError> {
            Ok(ctx.depth())
        }
    }
    let rt = runtime().await;
    rt.register("outer", |_| Outer).await.unwrap();
    rt.kind("inner")
        .capability("depth")
        .register(|_| Depth)
        .await
        .unwrap();
    let (outer, inner) = rt
        .request::<(u16, u16)>(id("outer", "o"), ())
        .await
        .unwrap();
    assert_eq!((outer, inner), (0, 1));
    let err = rt
        .request::<(u16, u16)>(id("outer", "o"), "wrong".to_string())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), FailureKind::BadInput);
}

mod ordering_property {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Whatever the interleaving of sends to several ids, each id sees its
        /// own messages in the order they were sent.
        #[test]
        fn each_id_sees_its_messages_in_send_order(sends in proptest::collection::vec((0usize..4, any::<u32>()), 1..300)) {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async {
                let runtime = runtime().await;
                runtime.kind("recorder").mailbox(4).register(|_| Recorder::default()).await.unwrap();
                let mut expected: HashMap<usize, Vec<u64>> = HashMap::new();
                for (i, (who, v)) in sends.iter().enumerate() {
                    let v = u64::from(*v) << 16 | i as u64;
                    expected.entry(*who).or_default().push(v);
                    runtime.send(id("recorder", &who.to_string()), RecorderMsg::Record(v)).await.unwrap();
                }
                for (who, want) in expected {
                    let got: Vec<u64> = timeout(T, runtime.request(id("recorder", &who.to_string()), RecorderMsg::Dump)).await.unwrap().unwrap();
                    assert_eq!(got, want);
                }
            });
        }
    }
}

#[tokio::test]
async fn agent_state_is_guarded_by_single_activation() {
    // Many concurrent senders to one id: a counter with a deliberate await
    // between read and write never loses an update.
    struct Counter(u64);
    impl Agent for Counter {
        type Input = ();
        type Output = u64;
        async fn handle(&mut self, _: (), _ctx: &AgentContext) -> Result<u64, AgentError> {
            let v = self.0;
            tokio::task::yield_now().await;
            self.0 = v + 1;
            Ok(self.0)
        }
    }
    let rt = runtime().await;
    rt.register("counter", |_| Counter(0)).await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let rt = rt.clone();
        let seen = seen.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..100 {
                let v: u64 = rt.request(id("counter", "c"), ()).await.unwrap();
                seen.lock().unwrap().push(v);
            }
        }));
    }
    for t in tasks {
        timeout(T, t).await.unwrap().unwrap();
    }
    let mut seen = seen.lock().unwrap().clone();
    seen.sort_unstable();
    assert_eq!(seen, (1..=800).collect::<Vec<_>>());
}

#[tokio::test]
async fn the_runtime_bounds_handlers_running_at_once() {
    let rt = Runtime::builder(InMemoryTransport::new())
        .max_concurrency(2)
        .build()
        .await
        .unwrap();
    let (tx, mut entered) = mpsc::unbounded_channel();
    let permits = Arc::new(Semaphore::new(0));
    let p = permits.clone();
    rt.register("gate", move |_| Gate {
        entered: tx.clone(),
        permits: p.clone(),
    })
    .await
    .unwrap();
    let mut calls = Vec::new();
    for i in 0..5u32 {
        let rt = rt.clone();
        calls.push(tokio::spawn(async move {
            rt.request::<u32>(id("gate", &i.to_string()), i).await
        }));
    }
    // Two handlers start; the other three wait for a slot.
    for _ in 0..2 {
        timeout(T, entered.recv()).await.unwrap().unwrap();
    }
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    assert!(
        entered.try_recv().is_err(),
        "a third handler started while two were running"
    );
    permits.add_permits(5);
    for c in calls {
        timeout(T, c).await.unwrap().unwrap().unwrap();
    }
}

/// Doubles a number.
struct Doubler;

impl Agent for Doubler {
    type Input = u32;
    type Output = u32;
    async fn handle(&mut self, n: u32, _ctx: &AgentContext) -> Result<u32, AgentError> {
        Ok(n * 2)
    }
}

/// Delegates to the capability it is given and answers with the error's
/// kind, or "ok".
struct Delegator;

impl Agent for Delegator {
    type Input = String;
    type Output = String;
    async fn handle(
        &mut self,
        capability: String,
        ctx: &AgentContext,
    ) -> Result<String, AgentError> {
        Ok(match ctx.delegate::<u32>(&capability, 1u32).await {
            Ok(_) => "ok".into(),
            Err(e) => format!("{:?}", e.kind()),
        })
    }
}

/// A capability no card offers is tried as a kind's name; offered by no
/// kind either (a valid name or not), the error's kind says no such agent.
#[tokio::test]
async fn delegating_to_a_capability_nobody_offers_is_no_such_agent() {
    let rt = runtime().await;
    rt.register("delegator", |_| Delegator).await.unwrap();
    rt.kind("doubler")
        .capability("double")
        .register(|_| Doubler)
        .await
        .unwrap();
    for (capability, expected) in [
        ("double", "ok"),
        ("doubler", "ok"),
        ("nobody", "NoSuchAgent"),
        ("not a kind!", "NoSuchAgent"),
    ] {
        let got: String = timeout(T, rt.request(&id("delegator", "d"), capability.to_string()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, expected, "delegating to {capability:?}");
    }
}
