//! `a2a_round_trip`: one A2A round trip through coditect (client → JSON-RPC
//! over HTTP → coditect's A2A server → a one-step run → the agent → back),
//! beside a direct HTTP call of the same agent (an axum route that asks it
//! through the runtime, called with reqwest, JSON both ways, the same bearer
//! check). Both on loopback, one connection kept alive, sequential calls.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::serve::ListenerExt;
use coditect_agents::a2a::{A2aRemote, A2aServer};
use coditect_orchestrator::{
    Agent, AgentContext, AgentError, AgentKind, InMemoryTransport, Runtime,
};
use serde_json::json;

use crate::report::{Mode, Report, median, quantile_ns, round2};

const TOKEN: &str = "bench-token";

/// Shouts what it is told: the handler both sides call.
struct Upper;

impl Agent for Upper {
    type Input = String;
    type Output = String;
    async fn handle(&mut self, s: String, _: &AgentContext) -> Result<String, AgentError> {
        Ok(s.to_uppercase())
    }
}

async fn direct(
    State(rt): State<Arc<Runtime>>,
    headers: HeaderMap,
    axum::Json(text): axum::Json<String>,
) -> Result<axum::Json<String>, StatusCode> {
    let authorized = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.strip_prefix("Bearer ") == Some(TOKEN));
    if !authorized {
        return Err(StatusCode::UNAUTHORIZED);
    }
    let kind = AgentKind::new("upper").map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    rt.request::<String>(kind, text)
        .await
        .map(axum::Json)
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)
}

pub async fn run(mode: Mode) -> Report {
    let n: usize = match mode {
        Mode::Quick => 200,
        Mode::Full => 1_000,
    };
    let rt = Runtime::builder(InMemoryTransport::new())
        .build()
        .await
        .expect("runtime");
    rt.kind("upper")
        .capability("shout")
        .register(|_| Upper)
        .await
        .expect("register");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let serving = A2aServer::for_kind(&rt, "upper")
        .expect("kind")
        .bearer_token(TOKEN)
        .build()
        .expect("server")
        .serve(listener)
        .await
        .expect("serve");
    let streaming = A2aRemote::builder(serving.url())
        .bearer_token(TOKEN)
        .connect()
        .await
        .expect("connect");
    let unary = A2aRemote::builder(serving.url())
        .bearer_token(TOKEN)
        .streaming(false)
        .connect()
        .await
        .expect("connect");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let direct_url = format!("http://{}/upper", listener.local_addr().expect("addr"));
    let app = axum::Router::new()
        .route("/upper", axum::routing::post(direct))
        .with_state(Arc::new(rt.clone()));
    // Both servers set TCP_NODELAY, as coditect's A2A server does.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let direct_server = tokio::spawn(async move { axum::serve(listener, app).await });
    let http = reqwest::Client::new();
    let call_direct = |text: String| {
        let req = http.post(&direct_url).bearer_auth(TOKEN).json(&text);
        async move {
            let out: String = req
                .send()
                .await
                .expect("post")
                .error_for_status()
                .expect("status")
                .json()
                .await
                .expect("json");
            out
        }
    };

    for _ in 0..50 {
        assert_eq!(
            streaming.call(json!("warm")).await.expect("a2a"),
            json!("WARM")
        );
        assert_eq!(unary.call(json!("warm")).await.expect("a2a"), json!("WARM"));
        assert_eq!(call_direct("warm".into()).await, "WARM");
    }
    let (mut ours, mut send, mut base) = (Vec::new(), Vec::new(), Vec::new());
    let (mut ours_lat, mut base_lat) = (Vec::new(), Vec::new());
    for _ in 0..mode.rounds() {
        let start = Instant::now();
        for _ in 0..n {
            let t0 = Instant::now();
            let _ = streaming.call(json!("hello")).await.expect("a2a");
            ours_lat.push(t0.elapsed());
        }
        ours.push(start.elapsed().as_nanos() as f64 / n as f64);

        let start = Instant::now();
        for _ in 0..n {
            let _ = unary.call(json!("hello")).await.expect("a2a");
        }
        send.push(start.elapsed().as_nanos() as f64 / n as f64);

        let start = Instant::now();
        for _ in 0..n {
            let t0 = Instant::now();
            let _ = call_direct("hello".into()).await;
            base_lat.push(t0.elapsed());
        }
        base.push(start.elapsed().as_nanos() as f64 / n as f64);
    }
    let (ours, send, base) = (median(&mut ours), median(&mut send), median(&mut base));
    direct_server.abort();
    let _ = tokio::time::timeout(Duration::from_secs(5), serving.shutdown()).await;
    Report::new(
        "a2a_round_trip",
        "direct HTTP POST (axum route + reqwest, JSON, bearer) asking the same agent through the runtime",
        ours,
        base,
    )
    .field("n", n as u64)
    .field("ours_method", "SendStreamingMessage (SSE)")
    .field("send_ns_per_op", round2(send))
    .field("send_slowdown", round2(send / base))
    .field("p50_us", round2(quantile_ns(&mut ours_lat, 0.5) / 1_000.0))
    .field("p99_us", round2(quantile_ns(&mut ours_lat, 0.99) / 1_000.0))
    .field("baseline_p50_us", round2(quantile_ns(&mut base_lat, 0.5) / 1_000.0))
    .field("baseline_p99_us", round2(quantile_ns(&mut base_lat, 0.99) / 1_000.0))
}
