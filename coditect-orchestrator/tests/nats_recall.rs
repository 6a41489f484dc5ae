//! A reply published while its requester's connection is down is not lost:
//! the requester, reconnected, asks for it again, and the worker that sent
//! it sends it again. The requester's connection goes through a TCP proxy
//! the test cuts (and keeps shut until the reply is out), so the reply
//! falls in the gap every time, not by luck.
#![cfg(all(feature = "nats", feature = "test-utils"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use coditect_orchestrator::testing::NatsServer;
use coditect_orchestrator::transport::nats::{NatsEvent, NatsOptions};
use coditect_orchestrator::{
    Agent, AgentContext, AgentError, AgentKind, Destination, RequestOptions, Runtime, Transport,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, broadcast};
use tokio::time::timeout;

const T: Duration = Duration::from_secs(30);

/// A loopback TCP proxy whose connections can be cut, and which refuses new
/// ones while shut.
struct Proxy {
    addr: SocketAddr,
    shut: Arc<AtomicBool>,
    cut: broadcast::Sender<()>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shut = Arc::new(AtomicBool::new(false));
        let (cut, _) = broadcast::channel(4);
        let (s, c) = (shut.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if s.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let mut cut = c.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.recv() => {}
                    }
                });
            }
        });
        Self { addr, shut, cut }
    }

    /// Drops every connection and refuses new ones.
    fn shut(&self) {
        self.shut.store(true, Ordering::SeqCst);
        let _ = self.cut.send(());
    }

    fn open(&self) {
        self.shut.store(false, Ordering::SeqCst);
    }
}

#[derive(Default)]
struct Gate {
    started: Notify,
    go: Notify,
}

struct Hold(Arc<Gate>);

impl Agent for Hold {
    type Input = u64;
    type Output = u64;
    async fn handle(&mut self, n: u64, _ctx: &AgentContext) -> Result<u64, AgentError> {
        self.0.started.notify_one();
        self.0.go.notified().await;
        Ok(n * 2)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_sent_while_the_requester_reconnects_is_recalled() {
    let server = NatsServer::start().expect("start nats-server");
    let upstream: SocketAddr = server.url().trim_start_matches("nats://").parse().unwrap();
    let proxy = Proxy::start(upstream).await;

    let gate = Arc::new(Gate::default());
    let worker_transport = Arc::new(NatsOptions::new(server.url()).connect().await.unwrap());
    let worker = Runtime::builder_arc(worker_transport.clone() as Arc<dyn Transport>)
        .build()
        .await
        .unwrap();
    let g = gate.clone();
    worker
        .register("hold", move |_| Hold(g.clone()))
        .await
        .unwrap();

    let requester_transport = Arc::new(
        NatsOptions::new(format!("nats://{}", proxy.addr))
            .reconnect(Duration::from_millis(100), None)
            .connect()
            .await
            .unwrap(),
    );
    let mut events = requester_transport.events();
    let requester = Runtime::builder_arc(requester_transport.clone() as Arc<dyn Transport>)
        .build()
        .await
        .unwrap();
    let asked = tokio::spawn(async move {
        let answer = requester
            .request_with::<u64>(
                Destination::Kind(AgentKind::new("hold").unwrap()),
                21u64,
                RequestOptions::timeout(T),
            )
            .await;
        (answer, requester)
    });
    timeout(T, gate.started.notified())
        .await
        .expect("the handler starts");

    // The requester's connection goes down and stays down...
    proxy.shut();
    timeout(T, async {
        while events.recv().await.unwrap() != NatsEvent::Disconnected {}
    })
    .await
    .expect("the requester sees its connection lost");
    // ...while the worker answers, and the server has taken the reply.
    let sent = worker_transport.metrics().sent;
    gate.go.notify_one();
    timeout(T, async {
        while worker_transport.metrics().sent == sent {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the worker sends its reply");
    worker_transport.client().flush().await.unwrap();

    // Back: the reply comes again.
    proxy.open();
    let (answer, requester) = timeout(T + T, asked).await.unwrap().unwrap();
    assert_eq!(answer.expect("the reply was recalled"), 42);
    assert!(requester_transport.metrics().reconnects >= 1);
    requester.shutdown(Duration::from_secs(1)).await;
    worker.shutdown(Duration::from_secs(1)).await;
}
