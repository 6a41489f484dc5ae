//! The transport conformance suite: the same checks against every transport.
//!
//! Each check takes a [`Bus`] — a way to make transports that share one
//! message bus (clones of one in-memory transport, or separate connections to
//! one nats-server) — builds runtimes on it as separate processes would, and
//! panics with a clear message if the transport misbehaves. Every await is
//! under a timeout. Each check uses its own random tenant, so checks can share
//! a bus.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::timeout;

use crate::{
    Agent, AgentContext, AgentError, AgentId, AgentKind, Destination, FailureKind, RequestError,
    RequestOptions, Runtime, TenantId, Topic, Transport,
};

/// How long any one step of a check may take.
const STEP: Duration = Duration::from_secs(20);

/// Makes transports on one shared bus.
#[async_trait]
pub trait Bus: Send + Sync {
    /// A transport on the bus, as a new process would have.
    async fn transport(&self) -> Arc<dyn Transport>;
}

/// Runs every check of the suite.
pub async fn run_all(bus: &dyn Bus) {
    request_reply_across_runtimes(bus).await;
    kind_load_balances_over_runtimes(bus).await;
    topic_fans_out_across_runtimes(bus).await;
    unknown_agent_is_a_typed_error(bus).await;
    messages_to_one_id_stay_in_order(bus).await;
    call_cycle_across_runtimes_fails_fast(bus).await;
    deadline_times_out_across_runtimes(bus).await;
}

fn random_tenant() -> TenantId {
    TenantId::new(format!("t{}", crate::MessageId::new().as_u128() as u64)).unwrap()
}

async fn runtime(bus: &dyn Bus, tenant: &TenantId) -> Runtime {
    timeout(
        STEP,
        Runtime::builder_arc(bus.transport().await)
            .tenant(tenant.clone())
            .build(),
    )
    .await
    .expect("building a runtime hung")
    .expect("building a runtime failed")
}

struct Echo;
impl Agent for Echo {
    type Input = String;
    type Output = String;
    async fn handle(&mut self, s: String, ctx: &AgentContext) -> Result<String, AgentError> {
        Ok(format!("{s} from {}", ctx.id()))
    }
}

/// Answers with the node it runs on, after a short pause so requests overlap.
struct WhoAmI {
    node: String,
    seen: Arc<Mutex<HashSet<String>>>,
}
impl Agent for WhoAmI {
    type Input = u32;
    type Output = String;
    async fn handle(&mut self, _: u32, _ctx: &AgentContext) -> Result<String, AgentError> {
        self.seen.lock().unwrap().insert(self.node.clone());
        // Hold the task until both runtimes have taken one (bounded), so a
        // transport that sends everything to one runtime shows.
        for _ in 0..200 {
            if self.seen.lock().unwrap().len() >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(self.node.clone())
    }
}

struct Listener(mpsc::UnboundedSender<(String, u32)>, String);
impl Agent for Listener {
    type Input = u32;
    type Output = ();
    async fn handle(&mut self, n: u32, _ctx: &AgentContext) -> Result<(), AgentError> {
        let _ = self.0.send((self.1.clone(), n));
        Ok(())
    }
}

#[derive(Serialize, Deserialize, Debug, schemars::JsonSchema)]
enum RecorderMsg {
    Record(u64),
    Dump,
}

#[derive(Default)]
struct Recorder(Vec<u64>);
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
                self.0.push(n);
                tokio::task::yield_now().await;
                Ok(vec![])
            }
            RecorderMsg::Dump => Ok(self.0.clone()),
        }
    }
}

/// Forwards a request along the path it is given.
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
        let next: AgentId = path
            .remove(0)
            .parse()
            .map_err(|e: crate::IdError| AgentError::permanent(e.to_string()))?;
        let r: String = ctx.request(next, path).await?;
        Ok(r)
    }
}

/// Waits for its cancellation, then says what it saw: the caller's deadline
/// as the time left when the handler began, and whether its token fired.
struct Slow {
    seen: mpsc::UnboundedSender<(Option<Duration>, bool)>,
}
impl Agent for Slow {
    type Input = ();
    type Output = ();
    async fn handle(&mut self, _: (), ctx: &AgentContext) -> Result<(), AgentError> {
        let left = ctx.deadline().map(|d| d.remaining());
        let cancelled = tokio::select! {
            () = ctx.cancelled() => true,
            () = tokio::time::sleep(Duration::from_secs(30)) => false,
        };
        let _ = self.seen.send((left, cancelled));
        if cancelled {
            Err(AgentError::transient("cancelled"))
        } else {
            Ok(())
        }
    }
}

/// A request from one runtime reaches an agent hosted by another, by id and
/// by kind, and the reply comes back.
pub async fn request_reply_across_runtimes(bus: &dyn Bus) {
    let tenant = random_tenant();
    let worker = runtime(bus, &tenant).await;
    let caller = runtime(bus, &tenant).await;
    worker.register("echo", |_| Echo).await.unwrap();
    let r: String = timeout(
        STEP,
        caller.request(AgentId::new("echo", "e1").unwrap(), "hi".to_string()),
    )
    .await
    .expect("request by id hung")
    .expect("request by id failed");
    assert_eq!(r, "hi from echo/e1");
    let r: String = timeout(
        STEP,
        caller.request(AgentKind::new("echo").unwrap(), "yo".to_string()),
    )
    .await
    .expect("request by kind hung")
    .expect("request by kind failed");
    assert!(r.starts_with("yo from echo/"), "{r}");
    shutdown(&[worker, caller]).await;
}

/// Requests to a kind hosted by two runtimes are shared by both.
pub async fn kind_load_balances_over_runtimes(bus: &dyn Bus) {
    let tenant = random_tenant();
    let a = runtime(bus, &tenant).await;
    let b = runtime(bus, &tenant).await;
    let caller = runtime(bus, &tenant).await;
    let seen = Arc::new(Mutex::new(HashSet::new()));
    for rt in [&a, &b] {
        let (node, seen) = (rt.node_id().to_string(), seen.clone());
        rt.register("who", move |_| WhoAmI {
            node: node.clone(),
            seen: seen.clone(),
        })
        .await
        .unwrap();
    }
    let kind = AgentKind::new("who").unwrap();
    let calls = (0..20).map(|i| caller.request::<String>(kind.clone(), i as u32));
    let answers = timeout(STEP, futures::future::join_all(calls))
        .await
        .expect("load-balanced requests hung");
    let nodes: HashSet<String> = answers.into_iter().map(|r| r.unwrap()).collect();
    assert_eq!(
        nodes.len(),
        2,
        "a kind on two runtimes must share the load; answered by {nodes:?}"
    );
    shutdown(&[a, b, caller]).await;
}

/// A topic message reaches subscribers in every runtime.
pub async fn topic_fans_out_across_runtimes(bus: &dyn Bus) {
    let tenant = random_tenant();
    let a = runtime(bus, &tenant).await;
    let b = runtime(bus, &tenant).await;
    let publisher = runtime(bus, &tenant).await;
    let topic = Topic::new("news.eu").unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    for (rt, name) in [(&a, "a"), (&b, "b")] {
        let tx = tx.clone();
        rt.kind("listener")
            .subscribe(topic.clone())
            .register(move |_| Listener(tx.clone(), name.to_owned()))
            .await
            .unwrap();
    }
    timeout(STEP, publisher.publish(&topic, 7u32))
        .await
        .unwrap()
        .expect("publish failed");
    let mut got = HashSet::new();
    while got.len() < 2 {
        let (who, n) = timeout(STEP, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("a topic subscriber never got the message; got {got:?}"))
            .unwrap();
        assert_eq!(n, 7);
        got.insert(who);
    }
    shutdown(&[a, b, publisher]).await;
}

/// A request to an agent nobody hosts fails with "no such agent".
pub async fn unknown_agent_is_a_typed_error(bus: &dyn Bus) {
    let tenant = random_tenant();
    let caller = runtime(bus, &tenant).await;
    let err = timeout(
        STEP,
        caller.request::<String>(AgentKind::new("nobody").unwrap(), 1u32),
    )
    .await
    .expect("request to an unknown kind hung")
    .unwrap_err();
    assert!(matches!(err, RequestError::NoSuchAgent(_)), "{err}");
    let err = timeout(
        STEP,
        caller.request::<String>(AgentId::new("nobody", "x").unwrap(), 1u32),
    )
    .await
    .expect("request to an unknown id hung")
    .unwrap_err();
    assert_eq!(err.kind(), FailureKind::NoSuchAgent, "{err}");
    shutdown(&[caller]).await;
}

/// Messages one runtime sends to one id in another are handled in order.
pub async fn messages_to_one_id_stay_in_order(bus: &dyn Bus) {
    let tenant = random_tenant();
    let worker = runtime(bus, &tenant).await;
    let sender = runtime(bus, &tenant).await;
    worker
        .register("rec", |_| Recorder::default())
        .await
        .unwrap();
    let id = AgentId::new("rec", "one").unwrap();
    for n in 0..300u64 {
        timeout(STEP, sender.send(id.clone(), RecorderMsg::Record(n)))
            .await
            .unwrap()
            .expect("send failed");
    }
    let seen: Vec<u64> = timeout(STEP, sender.request(id, RecorderMsg::Dump))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        seen,
        (0..300).collect::<Vec<_>>(),
        "messages to one id were reordered or lost"
    );
    shutdown(&[worker, sender]).await;
}

/// A request cycle through two runtimes fails fast with a call-cycle error.
pub async fn call_cycle_across_runtimes_fails_fast(bus: &dyn Bus) {
    let tenant = random_tenant();
    let a = runtime(bus, &tenant).await;
    let b = runtime(bus, &tenant).await;
    a.register("hopa", |_| Hop).await.unwrap();
    b.register("hopb", |_| Hop).await.unwrap();
    let err = timeout(
        STEP,
        a.request::<String>(
            AgentId::new("hopa", "x").unwrap(),
            vec!["hopb/y".to_owned(), "hopa/x".to_owned()],
        ),
    )
    .await
    .expect("a call cycle across runtimes hung")
    .unwrap_err();
    assert_eq!(err.kind(), FailureKind::CallCycle, "{err}");
    assert!(
        err.to_string().contains("hopa/x -> hopb/y -> hopa/x"),
        "{err}"
    );
    let ok: String = timeout(
        STEP,
        a.request(
            AgentId::new("hopa", "x").unwrap(),
            vec!["hopb/y".to_owned()],
        ),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(ok, "end at hopb/y");
    shutdown(&[a, b]).await;
}

/// A request to a slow agent in another runtime times out at its deadline;
/// the remote handler sees that deadline (the time left, never more than the
/// caller gave) and its cancellation fires.
pub async fn deadline_times_out_across_runtimes(bus: &dyn Bus) {
    const GIVEN: Duration = Duration::from_millis(300);
    let tenant = random_tenant();
    let worker = runtime(bus, &tenant).await;
    let caller = runtime(bus, &tenant).await;
    let (seen, mut saw) = mpsc::unbounded_channel();
    worker
        .register("slow", move |_| Slow { seen: seen.clone() })
        .await
        .unwrap();
    let err = timeout(
        STEP,
        caller.request_with::<()>(
            AgentId::new("slow", "s").unwrap(),
            (),
            RequestOptions::timeout(GIVEN),
        ),
    )
    .await
    .expect("a request past its deadline hung")
    .unwrap_err();
    // The caller's deadline or the worker's (the same instant) may fire first.
    assert_eq!(err.kind(), FailureKind::Timeout, "{err:?}");
    let (left, cancelled) = timeout(STEP, saw.recv())
        .await
        .expect("the remote handler did not stop within the step's time")
        .expect("the remote handler said nothing");
    let left = left.expect("the remote handler saw no deadline");
    assert!(
        left <= GIVEN,
        "the remote handler saw {left:?} left of a {GIVEN:?} deadline"
    );
    assert!(cancelled, "the remote handler's token did not fire");
    let _ = Destination::Kind(AgentKind::new("slow").unwrap());
    shutdown(&[worker, caller]).await;
}

async fn shutdown(rts: &[Runtime]) {
    for rt in rts {
        let _ = timeout(STEP, rt.shutdown(Duration::from_secs(2))).await;
    }
}
