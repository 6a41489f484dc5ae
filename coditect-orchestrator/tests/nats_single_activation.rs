//! Single activation across processes: one id, 1,000 ordered messages, two
//! worker processes, the one holding the id killed (SIGKILL) midway. Every
//! message is handled, in order, and never by two activations at once.
#![cfg(all(feature = "nats", feature = "test-utils"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use coditect_orchestrator::testing::NatsServer;
use coditect_orchestrator::{Agent, AgentContext, AgentError, AgentId, Runtime};
use common::*;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::timeout;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Record {
    start: bool,
    n: u64,
    pid: u32,
    /// The last message this activation handled before this one.
    prev: Option<u64>,
}

/// Reports the start and end of every message on `test.seq`, on the same
/// connection the worker acks with, so the records and the acks keep their
/// order at the server.
struct Sequencer {
    client: async_nats::Client,
    last: Option<u64>,
}

impl Agent for Sequencer {
    type Input = u64;
    type Output = ();
    async fn handle(&mut self, n: u64, _ctx: &AgentContext) -> Result<(), AgentError> {
        let rec = |start| Record {
            start,
            n,
            pid: std::process::id(),
            prev: self.last,
        };
        let publish = |r: Record| {
            let c = self.client.clone();
            async move {
                c.publish("test.seq", serde_json::to_vec(&r).unwrap().into())
                    .await
                    .map_err(|e| AgentError::transient(e.to_string()))
            }
        };
        publish(rec(true)).await?;
        tokio::time::sleep(Duration::from_millis(1)).await;
        publish(rec(false)).await?;
        self.last = Some(n);
        Ok(())
    }
}

/// Not a test: the body of the worker processes below (this binary,
/// re-executed with `CODITECT_SEQ_WORKER` set). Without it, returns at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the body of a child process; the tests that spawn it run it"]
async fn seq_worker_process_entry() {
    let Ok(urls) = std::env::var("CODITECT_SEQ_WORKER") else {
        return;
    };
    let urls: Vec<String> = urls.split(',').map(str::to_owned).collect();
    let durable = fast_durable().lease_ttl(Duration::from_secs(2));
    let transport = connect(&urls, durable).await;
    let client = transport.client().clone();
    let rt = Runtime::builder(transport).build().await.unwrap();
    rt.register("seq", move |_| Sequencer {
        client: client.clone(),
        last: None,
    })
    .await
    .unwrap();
    println!("READY {}", std::process::id());
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let _ = timeout(Duration::from_secs(300), async {
        while let Ok(Some(_)) = stdin.next_line().await {}
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_id_stays_ordered_and_single_across_a_worker_kill() {
    const N: u64 = 1000;
    let server = NatsServer::start().expect("start nats-server");
    let urls = vec![server.url()];
    let watcher = async_nats::connect(server.url()).await.unwrap();
    let mut records = watcher.subscribe("test.seq").await.unwrap();
    watcher.flush().await.unwrap();

    let mut workers: HashMap<u32, tokio::process::Child> = HashMap::new();
    for _ in 0..2 {
        let child =
            spawn_process("seq_worker_process_entry", "CODITECT_SEQ_WORKER", &urls, 0).await;
        workers.insert(child.id().unwrap(), child);
    }
    let sender = Runtime::builder(connect(&urls, fast_durable()).await)
        .build()
        .await
        .unwrap();
    let id = AgentId::new("seq", "one").unwrap();
    let sending = {
        let sender = sender.clone();
        tokio::spawn(async move {
            for n in 0..N {
                sender.send(id.clone(), n).await.expect("send");
            }
        })
    };

    let mut log: Vec<Record> = Vec::new();
    let mut killed: Option<u32> = None;
    let mut done = std::collections::HashSet::new();
    timeout(Duration::from_secs(180), async {
        while done.len() < N as usize {
            let m = records.next().await.unwrap();
            let r: Record = serde_json::from_slice(&m.payload).unwrap();
            if !r.start {
                done.insert(r.n);
            }
            if killed.is_none() && !r.start && r.n >= 300 {
                // Kill whichever worker holds the id right now.
                let mut victim = workers.remove(&r.pid).expect("a worker we started");
                victim.start_kill().unwrap();
                let _ = victim.wait().await;
                killed = Some(r.pid);
            }
            log.push(r);
        }
    })
    .await
    .expect("not every message was handled");
    timeout(T, sending).await.unwrap().unwrap();
    let killed = killed.expect("the owner was killed mid-run");

    // One activation at a time: every start is closed by its own end before
    // the next start — except the one the killed worker never finished.
    let mut open: Option<&Record> = None;
    for r in &log {
        if r.start {
            if let Some(o) = open {
                assert_eq!(o.pid, killed, "two activations at once: {o:?} then {r:?}");
            }
            open = Some(r);
        } else {
            let o = open.take().expect("an end without a start");
            assert_eq!((o.n, o.pid), (r.n, r.pid), "interleaved handling");
        }
    }
    // In order: the ends run 0..N, with at most the message in flight at the
    // kill handled a second time by the new owner.
    let ends: Vec<&Record> = log.iter().filter(|r| !r.start).collect();
    let mut expected = 0;
    let mut repeats = 0;
    for r in &ends {
        if r.n + 1 == expected {
            repeats += 1;
            continue;
        }
        assert_eq!(r.n, expected, "out of order: {r:?}");
        expected += 1;
    }
    assert_eq!(expected, N);
    assert!(repeats <= 1, "{repeats} messages handled twice");
    // The id moved exactly once, from the killed worker to the survivor.
    let pids: Vec<u32> = ends.iter().map(|r| r.pid).collect();
    let switches = pids.windows(2).filter(|w| w[0] != w[1]).count();
    assert_eq!(switches, 1, "the id moved between workers {switches} times");
    assert_eq!(pids[0], killed);
    sender.shutdown(Duration::from_secs(2)).await;
}

/// Asks the next id on its path, or answers.
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
        let next: AgentId = path.remove(0).parse().unwrap();
        Ok(ctx.request(next, path).await?)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_asking_another_id_of_its_partition_does_not_wait_behind_itself() {
    use coditect_orchestrator::transport::nats::partition_of;
    let server = NatsServer::start().expect("start nats-server");
    let urls = vec![server.url()];
    let worker = Runtime::builder(connect(&urls, fast_durable()).await)
        .build()
        .await
        .unwrap();
    worker.register("hop", |_| Hop).await.unwrap();
    let caller = Runtime::builder(connect(&urls, fast_durable()).await)
        .build()
        .await
        .unwrap();
    let other = (1..1000)
        .map(|i| format!("k{i}"))
        .find(|k| partition_of(k) == partition_of("k0"))
        .unwrap();
    let r: String = timeout(
        T,
        caller.request(
            AgentId::new("hop", "k0").unwrap(),
            vec![format!("hop/{other}")],
        ),
    )
    .await
    .expect("an id waited behind itself")
    .unwrap();
    assert_eq!(r, format!("end at hop/{other}"));
    worker.shutdown(Duration::from_secs(2)).await;
    caller.shutdown(Duration::from_secs(2)).await;
}
