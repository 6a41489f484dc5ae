//! Tenant isolation enforced by nats-server: each tenant's credentials may
//! publish and subscribe only under `coditect.<tenant>.>` (replies included,
//! through the per-tenant inbox prefix); another tenant's subjects are refused
//! by the server and surface as `PermissionDenied`.
#![cfg(all(feature = "nats", feature = "test-utils"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use coditect_orchestrator::testing::NatsServer;
use coditect_orchestrator::transport::nats::{KindDelivery, NatsEvent, NatsOptions, NatsTransport};
use coditect_orchestrator::{
    Agent, AgentContext, AgentError, AgentKind, Body, Destination, Envelope, Payload, Route,
    Runtime, SendErrorKind, TenantId, Transport, TransportErrorKind, TransportExt,
};
use tokio::time::timeout;

const T: Duration = Duration::from_secs(20);

/// The server configuration this test runs, and the one to copy: one user per
/// tenant, allowed its own prefix and nothing else.
const TENANTS: &str = r#"
authorization {
  users = [
    { user: "acme", password: "acme-secret",
      permissions: { publish: ["coditect.acme.>"], subscribe: ["coditect.acme.>"] } }
    { user: "globex", password: "globex-secret",
      permissions: { publish: ["coditect.globex.>"], subscribe: ["coditect.globex.>"] } }
  ]
}
"#;

async fn connect(url: &str, user: &str) -> NatsTransport {
    timeout(
        T,
        NatsOptions::new(url)
            .user_password(user, format!("{user}-secret"))
            .tenant(TenantId::new(user).unwrap())
            // JetStream needs its API subjects too; with per-user prefixes the
            // durable path belongs in one account per tenant (see the docs).
            .kind_delivery(KindDelivery::AtMostOnce)
            .connect(),
    )
    .await
    .unwrap()
    .expect("connect")
}

struct Echo(Arc<AtomicUsize>);
impl Agent for Echo {
    type Input = String;
    type Output = String;
    async fn handle(&mut self, s: String, _ctx: &AgentContext) -> Result<String, AgentError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(s)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_credentials_are_refused_on_another_tenants_subjects() {
    let server = NatsServer::builder()
        .config(TENANTS)
        .start()
        .expect("start nats-server");
    let acme = TenantId::new("acme").unwrap();
    let url = server.url();

    // Within its own prefix a tenant works normally, across connections.
    let handled = Arc::new(AtomicUsize::new(0));
    let worker = Runtime::builder(connect(&url, "acme").await)
        .tenant(acme.clone())
        .build()
        .await
        .unwrap();
    let h = handled.clone();
    worker
        .register("echo", move |_| Echo(h.clone()))
        .await
        .unwrap();
    let caller = Runtime::builder(connect(&url, "acme").await)
        .tenant(acme.clone())
        .build()
        .await
        .unwrap();
    let r: String = timeout(
        T,
        caller.request(AgentKind::new("echo").unwrap(), "hi".to_string()),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(r, "hi");
    assert_eq!(handled.load(Ordering::SeqCst), 1);

    // Globex's credentials cannot listen to acme's subjects...
    let globex = connect(&url, "globex").await;
    let mut events = globex.events();
    let err = timeout(
        T,
        globex.subscribe(
            Route::kind(acme.clone(), AgentKind::new("echo").unwrap()),
            4,
        ),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert_eq!(err.kind(), TransportErrorKind::PermissionDenied, "{err}");
    // ...nor host a runtime for acme (its reply route is refused)...
    let err = timeout(
        T,
        Runtime::builder(globex.clone())
            .tenant(acme.clone())
            .build(),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert_eq!(err.kind(), TransportErrorKind::PermissionDenied, "{err}");
    // ...nor send to them: the server refuses the publish (reported through
    // the event callback), and later sends fail at once.
    let to_acme = || {
        Envelope::new(
            acme.clone(),
            Destination::Kind(AgentKind::new("echo").unwrap()),
            Payload::Message(Body::new("from globex".to_string())),
        )
    };
    let _ = globex.send(to_acme()).await;
    let denied = timeout(T, async {
        loop {
            if let Ok(NatsEvent::PermissionDenied { subject, .. }) = events.recv().await
                && subject.starts_with("coditect.acme.")
            {
                return;
            }
        }
    })
    .await;
    assert!(
        denied.is_ok(),
        "the server's refusal was reported as an event"
    );
    let err = globex.send(to_acme()).await.unwrap_err();
    assert_eq!(err.kind(), SendErrorKind::PermissionDenied, "{err}");
    assert!(globex.metrics().permission_denied >= 1);
    // Nothing from globex reached acme's agent.
    let r: String = timeout(
        T,
        caller.request(AgentKind::new("echo").unwrap(), "again".to_string()),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(r, "again");
    assert_eq!(handled.load(Ordering::SeqCst), 2);

    // Tenant ids that could escape their prefix never reach a subject.
    for bad in ["acme.>", "*", ">", "a b", "acme.x", ""] {
        assert!(TenantId::new(bad).is_err(), "{bad:?} must be rejected");
    }
    worker.shutdown(Duration::from_secs(2)).await;
    caller.shutdown(Duration::from_secs(2)).await;
}
