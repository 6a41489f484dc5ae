//! Connection options against a real nats-server: token auth (and a wrong
//! token refused), TLS with a private CA, and a typed error when no server
//! listens.
#![cfg(all(feature = "nats", feature = "test-utils"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use coditect_orchestrator::testing::NatsServer;
use coditect_orchestrator::transport::nats::{NatsErrorKind, NatsOptions, NatsTransport};
use coditect_orchestrator::{Agent, AgentContext, AgentError, AgentId, Runtime};
use tokio::time::timeout;

const T: Duration = Duration::from_secs(20);

struct Echo;
impl Agent for Echo {
    type Input = String;
    type Output = String;
    async fn handle(&mut self, s: String, _ctx: &AgentContext) -> Result<String, AgentError> {
        Ok(s)
    }
}

/// A request/reply between two runtimes on two connections made by `make`.
async fn round_trip(a: NatsTransport, b: NatsTransport) {
    let worker = Runtime::builder(a).build().await.unwrap();
    worker.register("echo", |_| Echo).await.unwrap();
    let caller = Runtime::builder(b).build().await.unwrap();
    let r: String = timeout(
        T,
        caller.request(AgentId::new("echo", "x").unwrap(), "hi".to_string()),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(r, "hi");
    worker.shutdown(Duration::from_secs(2)).await;
    caller.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth_connects_and_a_wrong_token_is_refused() {
    let server = NatsServer::builder()
        .config("authorization { token: \"s3cret\" }")
        .start()
        .expect("start nats-server");
    let connect = |token: &str| {
        NatsOptions::new(server.url())
            .token(token)
            .name("token-test")
            .connect()
    };
    round_trip(
        connect("s3cret").await.unwrap(),
        connect("s3cret").await.unwrap(),
    )
    .await;
    let err = timeout(T, connect("wrong")).await.unwrap().unwrap_err();
    assert_eq!(err.kind(), NatsErrorKind::Connect, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_server_is_a_typed_connect_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = timeout(
        T,
        NatsOptions::new(format!("nats://127.0.0.1:{port}"))
            .connect_timeout(Duration::from_millis(500))
            .connect(),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert_eq!(err.kind(), NatsErrorKind::Connect, "{err}");
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the TLS test makes its certificates with the openssl command: install openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca() {
    let certs = tempfile::tempdir().unwrap();
    let d = certs.path();
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=coditect-test-ca",
        ],
    );
    openssl(
        d,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(
        d.join("san.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "1",
            "-extfile",
            "san.ext",
        ],
    );
    let server = NatsServer::builder()
        .config(&format!(
            "tls {{ cert_file: {:?}, key_file: {:?} }}",
            d.join("server.pem").display().to_string(),
            d.join("server.key").display().to_string()
        ))
        .start()
        .expect("start nats-server with TLS");
    let connect = || {
        NatsOptions::new(format!("tls://127.0.0.1:{}", server.port()))
            .tls_root_certificate(d.join("ca.pem"))
            .connect()
    };
    round_trip(connect().await.unwrap(), connect().await.unwrap()).await;
    // Without trusting the private CA the connection is refused.
    let err = timeout(
        T,
        NatsOptions::new(format!("tls://127.0.0.1:{}", server.port()))
            .require_tls(true)
            .connect_timeout(Duration::from_secs(2))
            .connect(),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert_eq!(err.kind(), NatsErrorKind::Connect, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nkey_auth_connects_and_an_unknown_key_is_refused() {
    let user = nkeys::KeyPair::new_user();
    let stranger = nkeys::KeyPair::new_user();
    let server = NatsServer::builder()
        .config(&format!(
            "authorization {{ users = [ {{ nkey: \"{}\" }} ] }}",
            user.public_key()
        ))
        .start()
        .expect("start nats-server");
    let connect = |seed: String| {
        NatsOptions::new(server.url())
            .nkey(seed)
            .name("nkey-test")
            .connect()
    };
    let seed = user.seed().unwrap();
    round_trip(
        connect(seed.clone()).await.unwrap(),
        connect(seed).await.unwrap(),
    )
    .await;
    let err = timeout(T, connect(stranger.seed().unwrap()))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind(), NatsErrorKind::Connect, "{err}");
}
