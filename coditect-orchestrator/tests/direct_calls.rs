//! Direct calls: a request to an idle agent of the same runtime runs the
//! handler in the caller's task — and everything else stays as on the usual
//! path: one message at a time per id and in order, deadlines, cancellation,
//! panics, single activation across runtimes, shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use coditect_orchestrator::{
    Agent, AgentContext, AgentError, AgentId, CancellationToken, FailureKind, InMemoryTransport,
    RequestError, RequestOptions, Runtime,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc};
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

/// Answers with the id of the tokio task its handler runs in.
struct WhereAmI;
impl Agent for WhereAmI {
    type Input = ();
    type Output = String;
    async fn handle(&mut self, _: (), _ctx: &AgentContext) -> Result<String, AgentError> {
        Ok(format!("{:?}", tokio::task::try_id()))
    }
}

/// Asks twice from inside a task: the task's id, and where the handler ran
/// the second time (the first activates the id).
async fn ask_from_a_task(rt: &Runtime, to: AgentId) -> (String, String) {
    let rt = rt.clone();
    tokio::spawn(async move {
        let _: String = rt.request(to.clone(), ()).await.unwrap();
        let there: String = rt.request(to, ()).await.unwrap();
        (format!("{:?}", tokio::task::try_id()), there)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_to_an_idle_agent_runs_in_the_callers_task_unless_turned_off() {
    let rt = runtime().await;
    rt.register("here", |_| WhereAmI).await.unwrap();
    rt.kind("there")
        .direct_calls(false)
        .register(|_| WhereAmI)
        .await
        .unwrap();
    let (mine, theirs) = ask_from_a_task(&rt, id("here", "a")).await;
    assert_eq!(
        mine, theirs,
        "an idle agent should answer in the caller's task"
    );
    let (mine, theirs) = ask_from_a_task(&rt, id("there", "a")).await;
    assert_ne!(
        mine, theirs,
        "direct_calls(false) must keep the mailbox path"
    );
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug)]
enum LogMsg {
    /// Waits for a permit, then notes "hold".
    Hold,
    Note(u32),
    Dump,
}

struct Log {
    seen: Vec<String>,
    entered: mpsc::UnboundedSender<()>,
    permits: Arc<Semaphore>,
}

impl Agent for Log {
    type Input = LogMsg;
    type Output = Vec<String>;
    async fn handle(&mut self, m: LogMsg, _ctx: &AgentContext) -> Result<Vec<String>, AgentError> {
        match m {
            LogMsg::Hold => {
                let _ = self.entered.send(());
                self.permits.acquire().await.unwrap().forget();
                self.seen.push("hold".into());
            }
            LogMsg::Note(n) => self.seen.push(n.to_string()),
            LogMsg::Dump => {}
        }
        Ok(self.seen.clone())
    }
}

// One thread, so that the drain task woken by the sends below surely runs
// (and must leave them queued) before the held call finishes.
#[tokio::test(flavor = "current_thread")]
async fn messages_sent_during_a_direct_call_wait_their_turn_in_order() {
    let rt = runtime().await;
    let (tx, mut entered) = mpsc::unbounded_channel();
    let permits = Arc::new(Semaphore::new(0));
    let p = permits.clone();
    rt.register("log", move |_| Log {
        seen: Vec::new(),
        entered: tx.clone(),
        permits: p.clone(),
    })
    .await
    .unwrap();
    let log = id("log", "one");
    let first: Vec<String> = rt.request(log.clone(), LogMsg::Dump).await.unwrap();
    assert!(first.is_empty());
    let rt2 = rt.clone();
    let l2 = log.clone();
    let held = tokio::spawn(async move { rt2.request::<Vec<String>>(l2, LogMsg::Hold).await });
    timeout(T, entered.recv()).await.unwrap().unwrap();
    // The activation is held by the call: these queue behind it.
    for n in 1..=3 {
        rt.send(log.clone(), LogMsg::Note(n)).await.unwrap();
    }
    tokio::task::yield_now().await;
    permits.add_permits(1);
    let after_hold = timeout(T, held).await.unwrap().unwrap().unwrap();
    assert_eq!(after_hold, vec!["hold"]);
    let all: Vec<String> = timeout(T, rt.request(log, LogMsg::Dump))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(all, vec!["hold", "1", "2", "3"]);
}

/// `true`: hands out its token and waits until cancelled; `false`: answers.
struct MaybeSleep(mpsc::UnboundedSender<CancellationToken>);
impl Agent for MaybeSleep {
    type Input = bool;
    type Output = u32;
    async fn handle(&mut self, sleep: bool, ctx: &AgentContext) -> Result<u32, AgentError> {
        if sleep {
            let _ = self.0.send(ctx.cancellation().clone());
            ctx.cancelled().await;
            return Err(AgentError::transient("stopped"));
        }
        Ok(7)
    }
}

#[tokio::test(start_paused = true)]
async fn a_direct_call_past_its_deadline_times_out_cancels_the_handler_and_frees_the_agent() {
    let rt = runtime().await;
    let (tx, mut tokens) = mpsc::unbounded_channel();
    rt.register("sleepy", move |_| MaybeSleep(tx.clone()))
        .await
        .unwrap();
    let s = id("sleepy", "s");
    assert_eq!(rt.request::<u32>(s.clone(), false).await.unwrap(), 7);
    let err = timeout(
        T,
        rt.request_with::<u32>(
            s.clone(),
            true,
            RequestOptions::timeout(Duration::from_millis(50)),
        ),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert!(matches!(err, RequestError::Timeout { .. }), "{err}");
    let token = tokens.try_recv().expect("the handler ran");
    assert!(token.is_cancelled());
    // The activation was given back: the next request is answered.
    let again = timeout(T, rt.request::<u32>(s, false))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again, 7);
}

#[tokio::test]
async fn a_caller_that_gives_up_on_a_direct_call_cancels_the_handler() {
    let rt = runtime().await;
    let (tx, mut tokens) = mpsc::unbounded_channel();
    rt.register("sleepy", move |_| MaybeSleep(tx.clone()))
        .await
        .unwrap();
    let s = id("sleepy", "s");
    assert_eq!(rt.request::<u32>(s.clone(), false).await.unwrap(), 7);
    let rt2 = rt.clone();
    let s2 = s.clone();
    let call = tokio::spawn(async move { rt2.request::<u32>(s2, true).await });
    let token = timeout(T, tokens.recv()).await.unwrap().unwrap();
    assert!(!token.is_cancelled());
    call.abort();
    timeout(T, token.cancelled())
        .await
        .expect("dropping the request did not cancel the handler");
    let again = timeout(T, rt.request::<u32>(s, false))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again, 7);
}

/// Counts what it handled; panics on "boom".
#[derive(Default)]
struct Fragile(u32);
impl Agent for Fragile {
    type Input = String;
    type Output = u32;
    async fn handle(&mut self, s: String, _ctx: &AgentContext) -> Result<u32, AgentError> {
        if s == "boom" {
            panic!("boom requested");
        }
        self.0 += 1;
        Ok(self.0)
    }
}

#[tokio::test]
async fn a_panic_in_a_direct_call_fails_the_request_and_drops_the_activation() {
    let rt = runtime().await;
    rt.register("fragile", |_| Fragile::default())
        .await
        .unwrap();
    let f = id("fragile", "f");
    assert_eq!(
        rt.request::<u32>(f.clone(), "a".to_owned()).await.unwrap(),
        1
    );
    assert_eq!(
        rt.request::<u32>(f.clone(), "b".to_owned()).await.unwrap(),
        2
    );
    let err = rt
        .request::<u32>(f.clone(), "boom".to_owned())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), FailureKind::Panicked, "{err}");
    // A fresh agent value: the count starts again.
    assert_eq!(rt.request::<u32>(f, "c".to_owned()).await.unwrap(), 1);
}

/// Answers with the label of the runtime that made it.
struct Label(&'static str);
impl Agent for Label {
    type Input = ();
    type Output = String;
    async fn handle(&mut self, _: (), _ctx: &AgentContext) -> Result<String, AgentError> {
        Ok(self.0.to_owned())
    }
}

#[tokio::test]
async fn runtimes_sharing_a_transport_keep_one_activation_per_id() {
    let transport = InMemoryTransport::new();
    let a = Runtime::builder(transport.clone()).build().await.unwrap();
    let b = Runtime::builder(transport.clone()).build().await.unwrap();
    let kind = a.register("owned", |_| Label("a")).await.unwrap();
    b.register("owned", |_| Label("b")).await.unwrap();
    for key in ["x", "y", "z", "w"] {
        let mut answers = Vec::new();
        for _ in 0..5 {
            answers.push(a.request::<String>(id("owned", key), ()).await.unwrap());
            answers.push(b.request::<String>(id("owned", key), ()).await.unwrap());
        }
        answers.dedup();
        assert_eq!(
            answers.len(),
            1,
            "{key} answered by both runtimes: {answers:?}"
        );
    }
    assert_eq!(a.active(&kind) + b.active(&kind), 4);
}

#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_a_direct_call_and_cancels_it_past_the_grace_period() {
    let rt = runtime().await;
    let (tx, mut tokens) = mpsc::unbounded_channel();
    rt.register("sleepy", move |_| MaybeSleep(tx.clone()))
        .await
        .unwrap();
    let s = id("sleepy", "s");
    assert_eq!(rt.request::<u32>(s.clone(), false).await.unwrap(), 7);
    let rt2 = rt.clone();
    let call = tokio::spawn(async move { rt2.request::<u32>(s, true).await });
    let token = timeout(T, tokens.recv()).await.unwrap().unwrap();
    let report = rt.shutdown(Duration::from_secs(1)).await;
    assert!(
        !report.drained,
        "a direct call in flight was not waited for"
    );
    assert!(token.is_cancelled());
    let err = timeout(T, call).await.unwrap().unwrap().unwrap_err();
    assert_eq!(err.kind(), FailureKind::ShuttingDown, "{err}");
}

#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug)]
enum RecMsg {
    Record(u64),
    Dump,
}

/// Remembers what it was sent, in the order it handled it; yields in between
/// so a broken ordering would show.
#[derive(Default)]
struct Recorder(Vec<u64>);
impl Agent for Recorder {
    type Input = RecMsg;
    type Output = Vec<u64>;
    async fn handle(&mut self, m: RecMsg, _ctx: &AgentContext) -> Result<Vec<u64>, AgentError> {
        if let RecMsg::Record(v) = m {
            tokio::task::yield_now().await;
            self.0.push(v);
        }
        Ok(self.0.clone())
    }
}

mod mixed {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Sends (through the mailbox) and requests (direct when the id is
        /// idle, queued behind earlier messages otherwise), interleaved at
        /// random over a few ids: each id handles its messages in the order
        /// they were issued.
        #[test]
        fn sends_and_requests_keep_per_id_order(ops in proptest::collection::vec((0usize..3, any::<bool>()), 1..200)) {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async {
                let runtime = runtime().await;
                runtime.kind("rec").mailbox(8).register(|_| Recorder::default()).await.unwrap();
                let mut expected: HashMap<usize, Vec<u64>> = HashMap::new();
                for (i, (who, request)) in ops.iter().enumerate() {
                    let v = i as u64;
                    expected.entry(*who).or_default().push(v);
                    let to = id("rec", &who.to_string());
                    if *request {
                        let seen: Vec<u64> = timeout(T, runtime.request(to, RecMsg::Record(v))).await.unwrap().unwrap();
                        assert_eq!(seen.last(), Some(&v), "a request was handled before what was sent ahead of it");
                    } else {
                        runtime.send(to, RecMsg::Record(v)).await.unwrap();
                    }
                }
                for (who, want) in expected {
                    let got: Vec<u64> = timeout(T, runtime.request(id("rec", &who.to_string()), RecMsg::Dump)).await.unwrap().unwrap();
                    assert_eq!(got, want);
                }
            });
        }
    }
}

/// Answers at once.
struct Echo;
impl Agent for Echo {
    type Input = u32;
    type Output = u32;
    async fn handle(&mut self, n: u32, _ctx: &AgentContext) -> Result<u32, AgentError> {
        Ok(n)
    }
}

// One thread: a caller that never waited would keep every other task out.
#[tokio::test(flavor = "current_thread")]
async fn a_loop_of_direct_calls_still_lets_other_tasks_run() {
    let rt = runtime().await;
    rt.register("echo", |_| Echo).await.unwrap();
    let e = id("echo", "e");
    assert_eq!(rt.request::<u32>(e.clone(), 1).await.unwrap(), 1);
    let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let f = flag.clone();
    tokio::spawn(async move { f.store(true, std::sync::atomic::Ordering::SeqCst) });
    let mut calls = 0u32;
    while !flag.load(std::sync::atomic::Ordering::SeqCst) {
        assert_eq!(rt.request::<u32>(e.clone(), calls).await.unwrap(), calls);
        calls += 1;
        assert!(calls < 1_000_000, "the calling task never yielded");
    }
}
