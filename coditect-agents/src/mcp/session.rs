//! One live MCP session: the rmcp client service over a transport, the fault
//! that ends it, and the routing of progress notifications to the calls that
//! asked for them.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rmcp::RoleClient;
use rmcp::model::{
    ClientConfig, ClientJsonRpcMessage, JsonRpcMessage, ProgressNotificationParam, ProgressToken,
    ServerJsonRpcMessage, ServerNotification,
};
use rmcp::service::{RunningService, serve_client};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::Transport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::error::{McpError, McpErrorKind};
use super::stdio::{StdioCommand, StdioTransport};

/// Where a server lives.
#[derive(Debug, Clone)]
pub(crate) enum Endpoint {
    Stdio(StdioCommand),
    Http { url: String, token: Option<String> },
}

/// Why a session ended, set once; fires a token so waiting calls stop at once.
#[derive(Debug, Default)]
pub(crate) struct Fault {
    token: CancellationToken,
    reason: OnceLock<(McpErrorKind, String)>,
}

impl Fault {
    pub(crate) fn set(&self, kind: McpErrorKind, message: impl Into<String>) {
        let _ = self.reason.set((kind, message.into()));
        self.token.cancel();
    }

    pub(crate) fn is_set(&self) -> bool {
        self.token.is_cancelled()
    }

    pub(crate) async fn happened(&self) {
        self.token.cancelled().await;
    }

    /// The fault as an error about `server`.
    pub(crate) fn error(&self, server: &str) -> McpError {
        match self.reason.get() {
            Some((kind, message)) => McpError::new(*kind, server, message.clone()),
            None => McpError::new(
                McpErrorKind::ServerDied,
                server,
                "the connection to the server closed",
            ),
        }
    }
}

/// Progress a server reported for a call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct McpProgress {
    /// How far along (grows with every report, even when the total is unknown).
    pub progress: f64,
    /// The total, when the server knows it.
    pub total: Option<f64>,
    /// What the server is doing, in words.
    pub message: Option<String>,
}

/// The most progress reports kept for calls not yet registered (a report can
/// overtake the call's registration); older ones are dropped.
const EARLY_PROGRESS: usize = 64;

#[derive(Default)]
struct Routes {
    calls: HashMap<ProgressToken, mpsc::UnboundedSender<McpProgress>>,
    early: VecDeque<(ProgressToken, McpProgress)>,
}

/// Sends each progress notification to the call whose token it carries.
///
/// Notifications are routed as the transport reads them, in order and before
/// the call's response is read, so a call has all of its progress in hand
/// when its result arrives.
#[derive(Default)]
pub(crate) struct ProgressRouter {
    routes: Mutex<Routes>,
}

impl ProgressRouter {
    pub(crate) fn register(&self, token: ProgressToken) -> mpsc::UnboundedReceiver<McpProgress> {
        let (tx, rx) = mpsc::unbounded_channel();
        if let Ok(mut r) = self.routes.lock() {
            if !r.early.is_empty() {
                let early = std::mem::take(&mut r.early);
                for (t, p) in early {
                    if t == token {
                        let _ = tx.send(p);
                    } else {
                        r.early.push_back((t, p));
                    }
                }
            }
            r.calls.insert(token, tx);
        }
        rx
    }

    pub(crate) fn unregister(&self, token: &ProgressToken) {
        if let Ok(mut r) = self.routes.lock() {
            r.calls.remove(token);
        }
    }

    fn deliver(&self, p: &ProgressNotificationParam) {
        let progress = McpProgress {
            progress: p.progress,
            total: p.total,
            message: p.message.clone(),
        };
        if let Ok(mut r) = self.routes.lock() {
            match r.calls.get(&p.progress_token) {
                Some(tx) => {
                    let _ = tx.send(progress);
                }
                None => {
                    if r.early.len() == EARLY_PROGRESS {
                        r.early.pop_front();
                    }
                    r.early.push_back((p.progress_token.clone(), progress));
                }
            }
        }
    }
}

/// A transport that routes progress as it is read and records the session's
/// end.
struct Tapped<T> {
    inner: T,
    router: Arc<ProgressRouter>,
    fault: Arc<Fault>,
}

impl<T: Transport<RoleClient>> Transport<RoleClient> for Tapped<T> {
    type Error = T::Error;

    fn send(
        &mut self,
        item: ClientJsonRpcMessage,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        self.inner.send(item)
    }

    async fn receive(&mut self) -> Option<ServerJsonRpcMessage> {
        let message = self.inner.receive().await;
        match &message {
            Some(JsonRpcMessage::Notification(n)) => {
                if let ServerNotification::ProgressNotification(p) = &n.notification {
                    self.router.deliver(&p.params);
                }
            }
            Some(_) => {}
            None => self.fault.set(
                McpErrorKind::ServerDied,
                "the connection to the server closed",
            ),
        }
        message
    }

    fn close(&mut self) -> impl Future<Output = Result<(), Self::Error>> + Send {
        self.inner.close()
    }
}

/// A connected session.
pub(crate) struct Session {
    pub(crate) service: RunningService<RoleClient, ClientConfig>,
    pub(crate) router: Arc<ProgressRouter>,
    pub(crate) fault: Arc<Fault>,
}

impl Session {
    /// Connects: starts the process or opens the HTTP session, and shakes hands.
    pub(crate) async fn open(
        server: &Arc<str>,
        endpoint: &Endpoint,
        info: ClientConfig,
        connect_timeout: Duration,
    ) -> Result<Session, McpError> {
        let router = Arc::new(ProgressRouter::default());
        let fault = Arc::new(Fault::default());
        let service = match endpoint {
            Endpoint::Stdio(command) => {
                let inner = StdioTransport::spawn(server.clone(), command, fault.clone())?;
                let t = Tapped {
                    inner,
                    router: router.clone(),
                    fault: fault.clone(),
                };
                handshake(server, &fault, connect_timeout, serve_client(info, t)).await?
            }
            Endpoint::Http { url, token } => {
                let mut config = StreamableHttpClientTransportConfig::with_uri(url.as_str());
                if let Some(token) = token {
                    config = config.auth_header(token.clone());
                }
                let inner = StreamableHttpClientTransport::from_config(config);
                let t = Tapped {
                    inner,
                    router: router.clone(),
                    fault: fault.clone(),
                };
                handshake(server, &fault, connect_timeout, serve_client(info, t)).await?
            }
        };
        Ok(Session {
            service,
            router,
            fault,
        })
    }
}

async fn handshake<F, E>(
    server: &str,
    fault: &Fault,
    limit: Duration,
    connecting: F,
) -> Result<RunningService<RoleClient, ClientConfig>, McpError>
where
    F: Future<Output = Result<RunningService<RoleClient, ClientConfig>, E>>,
    E: std::error::Error + Send + Sync + 'static,
{
    match tokio::time::timeout(limit, connecting).await {
        Ok(Ok(service)) => Ok(service),
        Ok(Err(e)) => {
            if fault.is_set() {
                let f = fault.error(server);
                Err(McpError::new(
                    f.kind(),
                    server,
                    format!("during the handshake: {}", f.message()),
                )
                .with_source(e))
            } else {
                Err(McpError::new(
                    McpErrorKind::Connect,
                    server,
                    format!("the MCP handshake failed: {e}"),
                )
                .with_source(e))
            }
        }
        Err(_) => Err(McpError::new(
            McpErrorKind::Connect,
            server,
            format!("no answer to the MCP handshake within {limit:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmcp::model::NumberOrString;

    fn param(token: i64, progress: f64) -> ProgressNotificationParam {
        serde_json::from_value(serde_json::json!({
            "progressToken": token, "progress": progress
        }))
        .unwrap()
    }

    #[test]
    fn progress_that_overtakes_its_call_is_kept_for_it() {
        let router = ProgressRouter::default();
        router.deliver(&param(7, 1.0));
        router.deliver(&param(8, 1.0));
        let mut rx = router.register(ProgressToken(NumberOrString::Number(7)));
        router.deliver(&param(7, 2.0));
        assert_eq!(rx.try_recv().unwrap().progress, 1.0);
        assert_eq!(rx.try_recv().unwrap().progress, 2.0);
        assert!(rx.try_recv().is_err());
        // The other call's report waits for it.
        let mut other = router.register(ProgressToken(NumberOrString::Number(8)));
        assert_eq!(other.try_recv().unwrap().progress, 1.0);
    }

    #[test]
    fn unclaimed_progress_is_bounded() {
        let router = ProgressRouter::default();
        for i in 0..1000 {
            router.deliver(&param(i, 1.0));
        }
        assert_eq!(router.routes.lock().unwrap().early.len(), EARLY_PROGRESS);
    }
}
