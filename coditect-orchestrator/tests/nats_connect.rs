//! Connection options against a real nats-server: token auth (and a wrong
//! token refused), nkey auth (an unknown key refused), a credentials file
//! (operator mode with JWTs made here), TLS with a private CA, and a typed
//! error when no server listens.
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

/// A NATS JWT (v2) for `claims`, signed by `issuer`.
fn jwt(issuer: &nkeys::KeyPair, mut claims: serde_json::Value) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    claims["iss"] = issuer.public_key().into();
    claims["iat"] = 1_700_000_000u64.into();
    // A unique id per token; the server does not check how it was made.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    claims["jti"] = format!("CODITECTTEST{n:020}").into();
    let header = b64.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let body = b64.encode(serde_json::to_vec(&claims).unwrap());
    let signing_input = format!("{header}.{body}");
    let sig = issuer.sign(signing_input.as_bytes()).unwrap();
    format!("{signing_input}.{}", b64.encode(sig))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credentials_file_authenticates() {
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    let system = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    let unlimited = serde_json::json!({
        "subs": -1, "conn": -1, "leaf": -1, "imports": -1, "exports": -1,
        "data": -1, "payload": -1, "wildcards": true,
    });
    let operator_jwt = jwt(
        &operator,
        serde_json::json!({"sub": operator.public_key(), "name": "op",
            "nats": {"type": "operator", "version": 2, "system_account": system.public_key()}}),
    );
    let system_jwt = jwt(
        &operator,
        serde_json::json!({"sub": system.public_key(), "name": "SYS",
            "nats": {"type": "account", "version": 2, "limits": unlimited}}),
    );
    let account_jwt = jwt(
        &operator,
        serde_json::json!({"sub": account.public_key(), "name": "acme",
            "nats": {"type": "account", "version": 2, "limits": unlimited}}),
    );
    let user_jwt = jwt(
        &account,
        serde_json::json!({"sub": user.public_key(), "name": "worker",
            "nats": {"type": "user", "version": 2, "subs": -1, "data": -1, "payload": -1}}),
    );
    let server = NatsServer::builder()
        .config(&format!(
            "operator: \"{operator_jwt}\"\nsystem_account: {sys}\nresolver: MEMORY\n\
             resolver_preload: {{ {acc}: \"{account_jwt}\", {sys}: \"{system_jwt}\" }}",
            acc = account.public_key(),
            sys = system.public_key(),
        ))
        .start()
        .expect("start nats-server");
    let dir = std::env::temp_dir().join(format!("coditect-creds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let creds = dir.join("worker.creds");
    std::fs::write(
        &creds,
        format!(
            "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            user.seed().unwrap()
        ),
    )
    .unwrap();
    let connect = || {
        NatsOptions::new(server.url())
            .credentials_file(creds.clone())
            .kind_delivery(coditect_orchestrator::transport::nats::KindDelivery::AtMostOnce)
            .name("creds-test")
            .connect()
    };
    round_trip(connect().await.unwrap(), connect().await.unwrap()).await;
    // Without credentials the server refuses.
    let err = timeout(T, NatsOptions::new(server.url()).connect())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind(), NatsErrorKind::Connect, "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
