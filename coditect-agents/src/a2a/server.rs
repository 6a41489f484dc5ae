//! Publishing coditect agents as an A2A agent: the card, the JSON-RPC
//! endpoint (send, stream, get, cancel, push configs) and bearer auth.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use a2a_server::jsonrpc::jsonrpc_router;
use a2a_server::{
    DefaultRequestHandler, HttpPushSender, HttpPushSenderConfig, InMemoryPushConfigStore,
    InMemoryTaskStore, StaticAgentCard, agent_card::agent_card_router,
};
use a2a_types::AgentCapabilities;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use coditect_orchestrator::orchestrator::{Plan, RunPolicy, StaticPlanner, Step, StepInput};
use coditect_orchestrator::{AgentCard, AgentKind, Orchestrator, Runtime};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::convert::{CardSpec, a2a_card};
use super::error::{A2aError, A2aErrorKind, UNAUTHENTICATED_CODE};
use super::executor::{Executor, Target};

/// Whether the server accepts push-notification configs, and where it may
/// post them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum PushPolicy {
    /// Accepted; posted only to public addresses (loopback, private and
    /// link-local targets are refused, against server-side request forgery).
    #[default]
    PublicOnly,
    /// Accepted and posted to any address, private and loopback included:
    /// for trusted networks and tests.
    AnyAddress,
    /// Not offered: the card says so and configs are refused.
    Off,
}

/// An A2A server publishing one coditect agent kind, or a whole
/// orchestrator, built by [`A2aServer::for_kind`] or
/// [`A2aServer::for_orchestrator`].
///
/// Every A2A message becomes a coditect run: for a kind, a one-step plan on
/// the capability asked for (metadata `coditect.capability`, else the kind's
/// first); for an orchestrator, a task its planner plans. The run's progress
/// streams as `working` status updates (each a data part holding the
/// progress value), its result as an artifact and the final `completed`
/// status (whose message metadata `coditect.usage` says what it spent);
/// `CancelTask` cancels the run. A caller's `coditect.deadline_ms` and
/// `coditect.budget` metadata tighten the run's policy.
///
/// # Examples
///
/// ```no_run
/// # use coditect_orchestrator::{Agent, AgentContext, AgentError, InMemoryTransport, Runtime};
/// use coditect_agents::a2a::A2aServer;
/// # struct Upper;
/// # impl Agent for Upper { type Input = String; type Output = String;
/// #   async fn handle(&mut self, s: String, _: &AgentContext) -> Result<String, AgentError> { Ok(s.to_uppercase()) } }
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let runtime = Runtime::builder(InMemoryTransport::new()).build().await?;
/// runtime.kind("upper").capability("shout").register(|_| Upper).await?;
/// let serving = A2aServer::for_kind(&runtime, "upper")?
///     .bearer_token("s3cret")
///     .build()?
///     .serve(tokio::net::TcpListener::bind("127.0.0.1:0").await?)
///     .await?;
/// println!("card at {}.well-known/agent-card.json", serving.url());
/// # Ok(()) }
/// ```
pub struct A2aServer {
    cards: Vec<AgentCard>,
    target: Target,
    name: String,
    description: String,
    version: String,
    bearer: Option<Arc<str>>,
    url: Option<String>,
    push: PushPolicy,
    policy: RunPolicy,
}

/// Configures an [`A2aServer`]; ends in [`build`](A2aServerBuilder::build).
#[must_use]
pub struct A2aServerBuilder {
    server: A2aServer,
    bad_token: bool,
}

impl std::fmt::Debug for A2aServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("A2aServer")
            .field("name", &self.name)
            .field(
                "skills",
                &self
                    .cards
                    .iter()
                    .map(|c| &c.capabilities)
                    .collect::<Vec<_>>(),
            )
            .field("bearer", &self.bearer.is_some())
            .field("push", &self.push)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for A2aServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.server.fmt(f)
    }
}

impl A2aServer {
    /// Publishes the agent kind `kind` registered on `runtime`: its card's
    /// capabilities become the A2A skills. Each message runs as a one-step
    /// plan on the capability asked for, so if another kind of the runtime
    /// offers that capability too, the runtime's router may pick it.
    ///
    /// # Errors
    /// [`A2aErrorKind::UnknownKind`] if `runtime` hosts no such kind.
    pub fn for_kind(runtime: &Runtime, kind: &str) -> Result<A2aServerBuilder, A2aError> {
        let card = runtime
            .cards()
            .into_iter()
            .find(|c| c.kind.as_str() == kind)
            .ok_or_else(|| {
                A2aError::new(
                    A2aErrorKind::UnknownKind,
                    format!("no agent kind {kind:?} is registered on the runtime"),
                )
            })?;
        let orchestrators = card
            .capabilities
            .iter()
            .map(|cap| {
                let plan = Plan::new([Step::new("call", cap.clone(), StepInput::TaskInput)]);
                (
                    cap.clone(),
                    Orchestrator::new(runtime.clone(), StaticPlanner::new(plan)),
                )
            })
            .collect::<HashMap<_, _>>();
        let target = Target::Kind {
            capabilities: card.capabilities.clone(),
            orchestrators,
        };
        let description = if card.description.is_empty() {
            format!("The coditect agent kind {}.", card.kind)
        } else {
            card.description.clone()
        };
        Ok(Self::builder(
            card.name.clone(),
            description,
            vec![card],
            target,
        ))
    }

    /// Publishes a whole orchestrator: every capability of its agents is a
    /// skill, and each message is a task its planner plans.
    pub fn for_orchestrator(orchestrator: Orchestrator) -> A2aServerBuilder {
        let cards = orchestrator.all_cards();
        Self::builder(
            "coditect".to_owned(),
            "A coditect orchestrator: plans a task over its agents and runs it.".to_owned(),
            cards,
            Target::Orchestrator(orchestrator),
        )
    }

    fn builder(
        name: String,
        description: String,
        cards: Vec<AgentCard>,
        target: Target,
    ) -> A2aServerBuilder {
        A2aServerBuilder {
            server: A2aServer {
                cards,
                target,
                name,
                description,
                version: env!("CARGO_PKG_VERSION").to_owned(),
                bearer: None,
                url: None,
                push: PushPolicy::default(),
                policy: RunPolicy::default(),
            },
            bad_token: false,
        }
    }

    /// The A2A card this server serves, with its JSON-RPC endpoint at
    /// `base_url` (the configured URL wins if one was set).
    pub fn card(&self, base_url: &str) -> a2a_types::AgentCard {
        let url = self.url.as_deref().unwrap_or(base_url);
        a2a_card(
            &CardSpec {
                name: &self.name,
                description: &self.description,
                version: &self.version,
                url,
                push_notifications: self.push != PushPolicy::Off,
                bearer: self.bearer.is_some(),
            },
            &self.cards,
        )
    }

    /// The HTTP routes: the card at `/.well-known/agent-card.json` (public,
    /// as discovery needs) and JSON-RPC at `/` (behind the bearer token, if
    /// one is set). Mount it in an axum app, or use [`serve`](Self::serve).
    pub fn router(&self, base_url: &str) -> axum::Router {
        let card = self.card(base_url);
        let mut handler = DefaultRequestHandler::new(
            Executor::new(self.target.clone(), self.policy.clone()),
            InMemoryTaskStore::new(),
        )
        .with_default_input_modes(card.default_input_modes.clone());
        handler = match self.push {
            PushPolicy::Off => handler,
            PushPolicy::PublicOnly => handler
                .with_push_notifications(InMemoryPushConfigStore::new(), HttpPushSender::new(None)),
            PushPolicy::AnyAddress => handler.with_push_notifications(
                InMemoryPushConfigStore::new(),
                HttpPushSender::new(Some(HttpPushSenderConfig {
                    validate_urls: false,
                    ..HttpPushSenderConfig::default()
                })),
            ),
        };
        let handler = handler.with_capabilities(AgentCapabilities {
            streaming: Some(true),
            push_notifications: Some(self.push != PushPolicy::Off),
            extensions: None,
            extended_agent_card: None,
        });
        let mut rpc = jsonrpc_router(Arc::new(handler));
        if let Some(token) = &self.bearer {
            rpc = rpc.layer(axum::middleware::from_fn_with_state(
                token.clone(),
                require_bearer,
            ));
        }
        agent_card_router(Arc::new(StaticAgentCard::new(card))).merge(rpc)
    }

    /// Serves on `listener` until [`A2aServing::shutdown`]; the card names
    /// `http://<local address>/` unless a URL was configured. Connections
    /// get `TCP_NODELAY`, so streamed events go out at once (mount
    /// [`router`](Self::router) in your own server with the same setting).
    ///
    /// # Errors
    /// [`A2aErrorKind::Serve`] if the listener has no local address.
    pub async fn serve(self, listener: TcpListener) -> Result<A2aServing, A2aError> {
        let addr = listener.local_addr().map_err(|e| {
            A2aError::new(A2aErrorKind::Serve, "listener has no local address").with_source(e)
        })?;
        let url = self
            .url
            .clone()
            .unwrap_or_else(|| format!("http://{addr}/"));
        let router = self.router(&url);
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        // Without TCP_NODELAY an SSE stream's small writes wait for the
        // peer's delayed ACK (~40 ms per event on Linux).
        let listener = listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
        });
        let task = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move { stopped.cancelled().await })
                .await
        });
        Ok(A2aServing {
            addr,
            url,
            stop,
            task,
        })
    }
}

impl A2aServerBuilder {
    /// The agent's name on its card.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.server.name = name.into();
        self
    }

    /// The agent's description on its card.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.server.description = description.into();
        self
    }

    /// The agent's version on its card (the crate's version by default).
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.server.version = version.into();
        self
    }

    /// Requires `Authorization: Bearer <token>` on every JSON-RPC call
    /// (declared on the card as the `bearer` security scheme); a call
    /// without it is answered HTTP 401.
    pub fn bearer_token(mut self, token: impl Into<String>) -> Self {
        let token = token.into();
        self.bad_token = token.trim().is_empty() || token.chars().any(char::is_whitespace);
        self.server.bearer = Some(token.into());
        self
    }

    /// The public base URL the card names (when the server is behind a
    /// proxy, say); by default the address it listens on.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.server.url = Some(url.into());
        self
    }

    /// Whether and where push notifications are sent.
    pub fn push_notifications(mut self, push: PushPolicy) -> Self {
        self.server.push = push;
        self
    }

    /// The limits of every run a message starts (a caller's deadline and
    /// budget can only tighten them).
    pub fn run_policy(mut self, policy: RunPolicy) -> Self {
        self.server.policy = policy;
        self
    }

    /// The server.
    ///
    /// # Errors
    /// [`A2aErrorKind::Config`] if the bearer token is empty or holds
    /// whitespace, or the URL is not `http(s)://…`.
    pub fn build(self) -> Result<A2aServer, A2aError> {
        if self.bad_token {
            return Err(A2aError::new(
                A2aErrorKind::Config,
                "bearer token must be non-empty and without whitespace",
            ));
        }
        if let Some(url) = &self.server.url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(A2aError::new(
                A2aErrorKind::Config,
                format!("server url {url:?} is not an http(s) url"),
            ));
        }
        Ok(self.server)
    }
}

/// A running [`A2aServer`].
#[derive(Debug)]
pub struct A2aServing {
    addr: SocketAddr,
    url: String,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl A2aServing {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL on its card (the card is at
    /// `<url>.well-known/agent-card.json`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Stops taking connections and waits for the open ones to finish.
    ///
    /// # Errors
    /// [`A2aErrorKind::Serve`] if serving had failed.
    pub async fn shutdown(self) -> Result<(), A2aError> {
        self.stop.cancel();
        self.wait().await
    }

    /// Waits until the server stops (it stops only on
    /// [`shutdown`](Self::shutdown) or an error).
    ///
    /// # Errors
    /// [`A2aErrorKind::Serve`] if serving failed.
    pub async fn wait(self) -> Result<(), A2aError> {
        match self.task.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(A2aError::new(A2aErrorKind::Serve, "serving failed").with_source(e)),
            Err(e) => Err(A2aError::new(A2aErrorKind::Serve, "server task ended").with_source(e)),
        }
    }
}

/// Refuses a request without `Authorization: Bearer <token>` with HTTP 401
/// (and a JSON-RPC error body, for clients that read one).
async fn require_bearer(State(token): State<Arc<str>>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(rest.trim())
        });
    match presented {
        Some(p) if constant_time_eq(p.as_bytes(), token.as_bytes()) => next.run(request).await,
        _ => {
            let body = serde_json::json!({
                "jsonrpc": "2.0",
                "id": null,
                "error": {
                    "code": UNAUTHENTICATED_CODE,
                    "message": "unauthenticated: a valid bearer token is required",
                }
            });
            let mut response = (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"a2a\""),
            );
            response
        }
    }
}

/// Compares two byte strings in time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl A2aServer {
    /// The coditect kinds whose capabilities are this server's skills.
    pub fn kinds(&self) -> Vec<AgentKind> {
        self.cards.iter().map(|c| c.kind.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }
}
