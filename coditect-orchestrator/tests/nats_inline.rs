//! A message from another process to an idle agent is handled in the
//! delivering task (the subscription's pump) rather than woken up in the
//! agent's drain task; a handler that waits goes on in a task of its own,
//! so the pump takes the next message at once, and the agent still handles
//! one message at a time.
#![cfg(all(feature = "nats", feature = "test-utils"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use coditect_orchestrator::testing::NatsServer;
use coditect_orchestrator::transport::nats::{KindDelivery, NatsOptions, partition_of};
use coditect_orchestrator::{Agent, AgentContext, AgentError, AgentId, Runtime};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio::time::timeout;

const T: Duration = Duration::from_secs(20);

#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone)]
enum Cmd {
    /// Answers with the id of the tokio task the handler runs in.
    Where,
    /// Waits for a permit of the gate, then answers like `Where`.
    Wait,
    /// Adds a permit to the gate.
    Open,
}

struct Probe {
    me: String,
    gate: Arc<Semaphore>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Agent for Probe {
    type Input = Cmd;
    type Output = String;
    async fn handle(&mut self, cmd: Cmd, _ctx: &AgentContext) -> Result<String, AgentError> {
        let task = || {
            tokio::task::try_id()
                .map(|id| id.to_string())
                .unwrap_or_default()
        };
        let entry = |what: &str| format!("{} {what}", self.me);
        match cmd {
            Cmd::Where => {
                self.log.lock().unwrap().push(entry("where"));
                Ok(task())
            }
            Cmd::Wait => {
                self.log.lock().unwrap().push(entry("wait start"));
                let permit = self.gate.acquire().await.unwrap();
                permit.forget();
                self.log.lock().unwrap().push(entry("wait end"));
                Ok(task())
            }
            Cmd::Open => {
                self.gate.add_permits(1);
                Ok(task())
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_once_messages_to_idle_agents_run_in_the_pump_and_a_waiting_one_does_not_hold_it() {
    scenario(KindDelivery::AtMostOnce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_tasks_to_idle_agents_run_in_their_partitions_pull_loop() {
    scenario(KindDelivery::Durable).await;
}

/// Over core NATS one subscription (one pump) carries the messages of every
/// id of the kind; durable tasks come through one pull loop per partition.
async fn scenario(delivery: KindDelivery) {
    let server = NatsServer::start().expect("start nats-server");
    let connect = || async {
        NatsOptions::new(server.url())
            .kind_delivery(delivery)
            .connect()
            .await
            .unwrap()
    };
    let worker = Runtime::builder(connect().await).build().await.unwrap();
    let gate = Arc::new(Semaphore::new(0));
    let log = Arc::new(Mutex::new(Vec::new()));
    let (g, l) = (gate.clone(), log.clone());
    worker
        .register("probe", move |id| Probe {
            me: id.key().to_string(),
            gate: g.clone(),
            log: l.clone(),
        })
        .await
        .unwrap();
    let caller = Runtime::builder(connect().await).build().await.unwrap();
    let a = AgentId::new("probe", "a").unwrap();
    // An id whose durable tasks come through another partition than a's
    // (with one task in flight per partition, a's wait would hold it).
    let b = (0..)
        .map(|n| format!("b{n}"))
        .find(|k| partition_of(k) != partition_of("a"))
        .map(|k| AgentId::new("probe", k).unwrap())
        .unwrap();
    let ask = |id: &AgentId, cmd: Cmd| {
        let caller = caller.clone();
        let id = id.clone();
        async move {
            timeout(T, caller.request::<String>(&id, cmd))
                .await
                .expect("no answer in time")
                .expect("request failed")
        }
    };

    // The first message of an id activates it, in the id's drain task.
    let first_a = ask(&a, Cmd::Where).await;
    let first_b = ask(&b, Cmd::Where).await;
    assert_ne!(first_a, first_b, "two ids' drain tasks are two tasks");
    // Once a is idle, its messages are handled in the task that delivers
    // them, the same each time.
    let pump = ask(&a, Cmd::Where).await;
    assert_ne!(pump, first_a, "a's second message ran in its drain task");
    assert_eq!(ask(&a, Cmd::Where).await, pump);
    if delivery == KindDelivery::AtMostOnce {
        assert_eq!(
            ask(&b, Cmd::Where).await,
            pump,
            "messages to two idle ids did not run in the subscription's one pump"
        );
    }

    // a's handler waits; the message that lets it go on goes to b (through
    // the same pump over core NATS), so it is handled only if a's wait does
    // not hold the pump.
    let waiting = tokio::spawn(ask(&a, Cmd::Wait));
    timeout(T, async {
        while !log.lock().unwrap().iter().any(|e| e == "a wait start") {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("a's handler did not start");
    // Queued behind the waiting handler: one message at a time per id.
    let queued = tokio::spawn(ask(&a, Cmd::Where));
    ask(&b, Cmd::Open).await;
    let waited_in = timeout(T, waiting).await.expect("a's wait hung").unwrap();
    assert_ne!(waited_in, pump, "the waiting handler went on in the pump");
    timeout(T, queued)
        .await
        .expect("the queued message hung")
        .unwrap();
    let log = log.lock().unwrap().clone();
    let pos = |e: &str| log.iter().position(|x| x == e).unwrap();
    let last_where = log.iter().rposition(|x| x == "a where").unwrap();
    assert!(
        pos("a wait end") < last_where,
        "a handled a message while its handler waited: {log:?}"
    );
    // Given back after the wait: a is idle again and handled in the pump.
    assert_eq!(ask(&a, Cmd::Where).await, pump);

    let _ = timeout(T, caller.shutdown(Duration::from_secs(1))).await;
    let _ = timeout(T, worker.shutdown(Duration::from_secs(1))).await;
}
