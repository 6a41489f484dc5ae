//! Serving MCP over streamable HTTP, behind a bearer token.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

use super::error::{McpError, McpErrorKind};
use super::server::McpOrchestratorServer;

/// The path the MCP endpoint is served at.
pub const MCP_PATH: &str = "/mcp";

/// A running MCP server on HTTP; stops when [`shutdown`](Self::shutdown) is
/// called or it is dropped.
#[derive(Debug)]
pub struct McpHttpServer {
    addr: SocketAddr,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl McpHttpServer {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The MCP endpoint's URL, such as `http://127.0.0.1:8080/mcp`.
    pub fn url(&self) -> String {
        format!("http://{}{MCP_PATH}", self.addr)
    }

    /// Stops taking requests, ends the sessions and waits for the server's task.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for McpHttpServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl McpOrchestratorServer {
    /// The MCP endpoint as an axum router (at [`MCP_PATH`]), to mount in an
    /// app of your own. With a `token`, every request must carry
    /// `Authorization: Bearer <token>`; others get 401 and reach nothing.
    pub fn router(&self, token: Option<String>, stop: CancellationToken) -> axum::Router {
        let handler = self.clone();
        let config = StreamableHttpServerConfig::default().with_cancellation_token(stop);
        let service: StreamableHttpService<McpOrchestratorServer, LocalSessionManager> =
            StreamableHttpService::new(
                move || Ok(handler.clone()),
                Arc::new(LocalSessionManager::default()),
                config,
            );
        let router = axum::Router::new().nest_service(MCP_PATH, service);
        match token {
            Some(token) => router.layer(middleware::from_fn_with_state(
                Arc::<str>::from(token),
                require_bearer,
            )),
            None => router,
        }
    }

    /// Serves MCP over streamable HTTP at `addr` (use port 0 for any free
    /// port), in a background task. Give a `token` unless the address is
    /// reachable only by people you trust.
    ///
    /// # Errors
    ///
    /// [`McpErrorKind::Serve`] if the address cannot be bound.
    pub async fn serve_http(
        self,
        addr: SocketAddr,
        token: Option<String>,
    ) -> Result<McpHttpServer, McpError> {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            McpError::new(
                McpErrorKind::Serve,
                self.server_name(),
                format!("could not listen on {addr}: {e}"),
            )
            .with_source(e)
        })?;
        let addr = listener.local_addr().map_err(|e| {
            McpError::new(McpErrorKind::Serve, self.server_name(), e.to_string()).with_source(e)
        })?;
        let stop = CancellationToken::new();
        let router = self.router(token, stop.child_token());
        let until = stop.clone();
        let name = self.server_name().to_owned();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(async move { until.cancelled_owned().await })
                .await;
            if let Err(e) = served {
                tracing::warn!(server = %name, error = %e, "the MCP HTTP server stopped");
            }
        });
        Ok(McpHttpServer {
            addr,
            stop,
            task: Some(task),
        })
    }
}

/// Refuses a request without the right bearer token, before it reaches MCP.
async fn require_bearer(State(token): State<Arc<str>>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    match presented {
        Some(p) if same(p.as_bytes(), token.as_bytes()) => next.run(request).await,
        _ => {
            let mut response =
                (StatusCode::UNAUTHORIZED, "a valid bearer token is required").into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"coditect\""),
            );
            response
        }
    }
}

/// Compares in time that depends only on the lengths, not on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::same;

    #[test]
    fn tokens_compare_exactly() {
        assert!(same(b"secret", b"secret"));
        assert!(!same(b"secret", b"secreT"));
        assert!(!same(b"secret", b"secret2"));
        assert!(!same(b"", b"x"));
    }
}
