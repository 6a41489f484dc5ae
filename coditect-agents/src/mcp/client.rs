//! The client side: connect to an MCP server, list its tools, call them.

use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::RoleClient;
use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CancelledNotification, CancelledNotificationParam,
    ClientConfig, ClientNotification, ClientRequest, Implementation, ProgressToken, RequestId,
    ServerResult,
};
use rmcp::service::{Peer, PeerRequestOptions, ServiceError};
use serde_json::Value;

use super::content::CallOutcome;
use super::error::{McpError, McpErrorKind};
use super::session::{Endpoint, McpProgress, ProgressRouter, Session};
use super::stdio::StdioCommand;
use super::tool::McpToolset;

/// How to reach one MCP server, and the limits on using it.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use coditect_agents::mcp::McpServer;
///
/// # async fn demo() -> Result<(), coditect_agents::mcp::McpError> {
/// let files = McpServer::stdio("files", "npx")
///     .args(["-y", "@modelcontextprotocol/server-filesystem", "/tmp"])
///     .call_timeout(Duration::from_secs(20))
///     .connect()
///     .await?;
/// for tool in files.tools() {
///     println!("{} — {}", tool.name, tool.description);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[must_use = "a server configuration does nothing until .connect()"]
pub struct McpServer {
    name: Arc<str>,
    endpoint: Endpoint,
    call_timeout: Duration,
    connect_timeout: Duration,
    max_restarts: u32,
}

impl McpServer {
    fn new(name: impl Into<String>, endpoint: Endpoint) -> Self {
        Self {
            name: Arc::from(name.into()),
            endpoint,
            call_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(30),
            max_restarts: 3,
        }
    }

    /// A server started as a child process, speaking MCP on its stdin and
    /// stdout. `name` is how errors and tool prefixes refer to it.
    pub fn stdio(name: impl Into<String>, program: impl Into<String>) -> Self {
        Self::new(
            name,
            Endpoint::Stdio(StdioCommand {
                program: program.into(),
                args: Vec::new(),
                env: Vec::new(),
                cwd: None,
            }),
        )
    }

    /// A server reached over MCP's streamable HTTP at `url` (such as
    /// `http://127.0.0.1:3001/mcp`).
    pub fn http(name: impl Into<String>, url: impl Into<String>) -> Self {
        Self::new(
            name,
            Endpoint::Http {
                url: url.into(),
                token: None,
            },
        )
    }

    /// Adds an argument to the command (stdio servers).
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        if let Endpoint::Stdio(c) = &mut self.endpoint {
            c.args.push(arg.into());
        }
        self
    }

    /// Adds arguments to the command (stdio servers).
    pub fn args<S: Into<String>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        if let Endpoint::Stdio(c) = &mut self.endpoint {
            c.args.extend(args.into_iter().map(Into::into));
        }
        self
    }

    /// Sets an environment variable for the process (stdio servers).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        if let Endpoint::Stdio(c) = &mut self.endpoint {
            c.env.push((key.into(), value.into()));
        }
        self
    }

    /// The process's working directory (stdio servers).
    pub fn current_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        if let Endpoint::Stdio(c) = &mut self.endpoint {
            c.cwd = Some(dir.into());
        }
        self
    }

    /// A bearer token sent with every request (HTTP servers).
    pub fn bearer_token(mut self, token: impl Into<String>) -> Self {
        if let Endpoint::Http { token: t, .. } = &mut self.endpoint {
            *t = Some(token.into());
        }
        self
    }

    /// The longest one tool call may take (default 60 s). Past it the call
    /// fails with [`McpErrorKind::Timeout`] and the server is told to cancel.
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// The longest connecting may take: start, handshake and tool listing
    /// (default 30 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How many times a server that died is started again (default 3); after
    /// that every call fails with [`McpErrorKind::Unavailable`].
    ///
    /// A call that was running when the server died is never repeated (it may
    /// have had effects): it fails with [`McpErrorKind::ServerDied`] or
    /// [`McpErrorKind::OffProtocol`], and the next call reconnects.
    pub fn max_restarts(mut self, n: u32) -> Self {
        self.max_restarts = n;
        self
    }

    /// The server's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Starts (or opens) the server, shakes hands and lists its tools.
    ///
    /// # Errors
    ///
    /// [`McpErrorKind::Spawn`] if the process cannot start;
    /// [`McpErrorKind::Connect`] if the handshake or the listing fails or
    /// takes longer than the connect timeout; [`McpErrorKind::OffProtocol`] or
    /// [`McpErrorKind::ServerDied`] if the server misbehaves or exits meanwhile.
    pub async fn connect(self) -> Result<McpClient, McpError> {
        let session = Session::open(
            &self.name,
            &self.endpoint,
            client_info(),
            self.connect_timeout,
        )
        .await?;
        let listing = tokio::time::timeout(
            self.connect_timeout,
            session.service.peer().list_all_tools(),
        )
        .await;
        let tools = match listing {
            Ok(Ok(tools)) => tools,
            Ok(Err(e)) => return Err(service_error(&self.name, &session, e, "tools/list")),
            Err(_) => {
                return Err(McpError::new(
                    McpErrorKind::Connect,
                    &*self.name,
                    format!(
                        "the server did not list its tools within {:?}",
                        self.connect_timeout
                    ),
                ));
            }
        };
        let tools = tools.into_iter().map(McpToolInfo::from).collect();
        let server_info = session
            .service
            .peer()
            .peer_info()
            .and_then(|i| i.server_info.clone())
            .map(|i| format!("{} {}", i.name, i.version));
        Ok(McpClient {
            inner: Arc::new(Inner {
                config: self,
                tools,
                server_info,
                current: Mutex::new(Arc::new(session)),
                reconnect: tokio::sync::Mutex::new(()),
                restarts: AtomicU32::new(0),
                closed: AtomicBool::new(false),
            }),
        })
    }
}

fn client_info() -> ClientConfig {
    ClientConfig::new(
        rmcp::model::ClientCapabilities::default(),
        Implementation::new("coditect", env!("CARGO_PKG_VERSION")),
    )
}

/// One tool a server offers.
#[derive(Debug, Clone, PartialEq)]
pub struct McpToolInfo {
    /// Its name on the server.
    pub name: String,
    /// A title for people, if given.
    pub title: Option<String>,
    /// What it does, for the model (empty if the server says nothing).
    pub description: String,
    /// The JSON Schema of its arguments.
    pub input_schema: Value,
    /// The JSON Schema of its structured result, if it has one.
    pub output_schema: Option<Value>,
}

impl From<rmcp::model::Tool> for McpToolInfo {
    fn from(t: rmcp::model::Tool) -> Self {
        Self {
            name: t.name.into_owned(),
            description: t
                .description
                .map(Cow::into_owned)
                .or_else(|| t.title.clone())
                .unwrap_or_default(),
            title: t.title,
            input_schema: Value::Object((*t.input_schema).clone()),
            output_schema: t.output_schema.map(|s| Value::Object((*s).clone())),
        }
    }
}

/// A connection to one MCP server: its tools, and calls to them.
///
/// Cheap to clone; clones share the connection. Calls run concurrently.
#[derive(Clone)]
pub struct McpClient {
    inner: Arc<Inner>,
}

struct Inner {
    config: McpServer,
    tools: Vec<McpToolInfo>,
    server_info: Option<String>,
    current: Mutex<Arc<Session>>,
    reconnect: tokio::sync::Mutex<()>,
    restarts: AtomicU32,
    closed: AtomicBool,
}

impl fmt::Debug for McpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("McpClient")
            .field("name", &self.inner.config.name)
            .field("server", &self.inner.server_info)
            .field("tools", &self.inner.tools.len())
            .finish_non_exhaustive()
    }
}

impl McpClient {
    /// The server's name, as configured.
    pub fn name(&self) -> &str {
        &self.inner.config.name
    }

    /// The server's own name and version, if it gave them.
    pub fn server_info(&self) -> Option<&str> {
        self.inner.server_info.as_deref()
    }

    /// The tools the server listed when it connected.
    pub fn tools(&self) -> &[McpToolInfo] {
        &self.inner.tools
    }

    /// The tool named `name`, if the server has it.
    pub fn tool(&self, name: &str) -> Option<&McpToolInfo> {
        self.inner.tools.iter().find(|t| t.name == name)
    }

    /// How many times the server was started again after dying.
    pub fn restarts(&self) -> u32 {
        self.inner.restarts.load(Ordering::Relaxed)
    }

    /// The longest one call may take.
    pub fn call_timeout(&self) -> Duration {
        self.inner.config.call_timeout
    }

    /// The server's tools as coditect tools, granting none yet: choose with
    /// [`McpToolset::allow`] or [`McpToolset::allow_all`].
    pub fn toolset(&self) -> McpToolset {
        McpToolset::new(self.clone())
    }

    /// Calls a tool with JSON arguments (an object, or null for none).
    ///
    /// A result the tool marks as an error is still `Ok`, with
    /// [`CallOutcome::is_error`] set: the server ran the tool and it says it failed.
    ///
    /// # Errors
    ///
    /// See [`call_with_progress`](Self::call_with_progress).
    pub async fn call(&self, tool: &str, args: Value) -> Result<CallOutcome, McpError> {
        self.call_with_progress(tool, args, |_| std::future::ready(()))
            .await
    }

    /// Calls a tool and hands each progress report the server sends for the
    /// call to `on_progress`, in order, before the result returns.
    ///
    /// Dropping the returned future (the caller gave up, a step was cancelled)
    /// tells the server to cancel the call.
    ///
    /// # Errors
    ///
    /// [`McpErrorKind::Timeout`] past the call timeout;
    /// [`McpErrorKind::ServerDied`] if the server exits or disconnects during
    /// the call (at once, not at the timeout); [`McpErrorKind::OffProtocol`] if
    /// it writes something that is not MCP; [`McpErrorKind::Unavailable`] once
    /// it died more often than it may be restarted; [`McpErrorKind::Rejected`]
    /// if it answers with a JSON-RPC error (an unknown tool, say);
    /// [`McpErrorKind::Cancelled`] if the server cancelled it.
    pub async fn call_with_progress<F, Fut>(
        &self,
        tool: &str,
        args: Value,
        mut on_progress: F,
    ) -> Result<CallOutcome, McpError>
    where
        F: FnMut(McpProgress) -> Fut,
        Fut: Future<Output = ()>,
    {
        let name = &*self.inner.config.name;
        let mut params = CallToolRequestParams::new(tool.to_owned());
        match args {
            Value::Object(map) => params = params.with_arguments(map),
            Value::Null => {}
            other => {
                return Err(McpError::new(
                    McpErrorKind::Rejected,
                    name,
                    format!(
                        "the arguments of tool {tool} must be a JSON object, not {}",
                        json_kind(&other)
                    ),
                ));
            }
        }
        let session = self.session().await?;
        let peer = session.service.peer();
        let request = ClientRequest::CallToolRequest(CallToolRequest::new(params));
        let handle = peer
            .send_request_with_option(request, PeerRequestOptions::no_options())
            .await
            .map_err(|e| service_error(name, &session, e, tool))?;
        let mut guard = CallGuard {
            peer: peer.clone(),
            router: session.router.clone(),
            id: handle.id.clone(),
            token: handle.progress_token.clone(),
            pending: true,
            reason: "the caller gave up on the call",
        };
        let mut progress = session.router.register(handle.progress_token.clone());
        let response = handle.await_response();
        tokio::pin!(response);
        let limit = self.inner.config.call_timeout;
        let deadline = tokio::time::sleep(limit);
        tokio::pin!(deadline);
        let result = loop {
            tokio::select! {
                biased;
                r = &mut response => break r,
                Some(p) = progress.recv() => on_progress(p).await,
                () = session.fault.happened() => {
                    guard.pending = false; // nobody is there to cancel
                    return Err(session.fault.error(name));
                }
                () = &mut deadline => {
                    guard.reason = "the call timed out";
                    return Err(McpError::new(
                        McpErrorKind::Timeout,
                        name,
                        format!("tool {tool} did not answer within {limit:?}; the server was told to cancel it"),
                    ));
                }
            }
        };
        guard.pending = false;
        // Progress read before the response is already routed: hand it over first.
        while let Ok(p) = progress.try_recv() {
            on_progress(p).await;
        }
        match result {
            Ok(ServerResult::CallToolResult(r)) => Ok(r.into()),
            Ok(ServerResult::EmptyResult(_)) => Ok(CallOutcome::default()),
            Ok(_) => Err(McpError::new(
                McpErrorKind::OffProtocol,
                name,
                format!("the server answered tools/call for {tool} with another kind of result"),
            )),
            Err(e) => Err(service_error(name, &session, e, tool)),
        }
    }

    /// The live session, started again if the last one died (bounded).
    async fn session(&self) -> Result<Arc<Session>, McpError> {
        let current = self.current();
        if !current.fault.is_set() {
            return Ok(current);
        }
        let cfg = &self.inner.config;
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(McpError::new(
                McpErrorKind::Unavailable,
                &*cfg.name,
                "the client was closed",
            ));
        }
        let _one_at_a_time = self.inner.reconnect.lock().await;
        let current = self.current();
        if !current.fault.is_set() {
            return Ok(current); // another call restarted it meanwhile
        }
        let restarts = self.inner.restarts.load(Ordering::Relaxed);
        if restarts >= cfg.max_restarts {
            let last = current.fault.error(&cfg.name);
            return Err(McpError::new(
                McpErrorKind::Unavailable,
                &*cfg.name,
                format!(
                    "the server is down and was already restarted {restarts} times (max_restarts); last failure: {}",
                    last.message()
                ),
            ));
        }
        self.inner.restarts.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(server = %cfg.name, restart = restarts + 1, "restarting the MCP server");
        let session = Arc::new(
            Session::open(&cfg.name, &cfg.endpoint, client_info(), cfg.connect_timeout).await?,
        );
        if let Ok(mut c) = self.inner.current.lock() {
            *c = session.clone();
        }
        Ok(session)
    }

    fn current(&self) -> Arc<Session> {
        match self.inner.current.lock() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Ends the session: closes the connection and stops the process.
    pub async fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        let session = self.current();
        session
            .fault
            .set(McpErrorKind::Unavailable, "the client was closed");
        session.service.cancellation_token().cancel();
    }
}

/// Unregisters a call's progress route, and tells the server to cancel the
/// call if it is dropped before its answer.
struct CallGuard {
    peer: Peer<RoleClient>,
    router: Arc<ProgressRouter>,
    id: RequestId,
    token: ProgressToken,
    pending: bool,
    reason: &'static str,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.router.unregister(&self.token);
        if !self.pending {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let peer = self.peer.clone();
        let note = ClientNotification::CancelledNotification(CancelledNotification::new(
            CancelledNotificationParam::new(Some(self.id.clone()), Some(self.reason.to_owned())),
        ));
        rt.spawn(async move {
            if let Err(e) = peer.send_notification(note).await {
                tracing::debug!(error = %e, "could not send the cancellation");
            }
        });
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// An rmcp error as coditect's, preferring what the session knows about its end.
fn service_error(server: &str, session: &Session, e: ServiceError, what: &str) -> McpError {
    match e {
        ServiceError::McpError(data) => McpError::new(
            McpErrorKind::Rejected,
            server,
            format!("{what}: {} (code {})", data.message, data.code.0),
        ),
        ServiceError::Cancelled { reason } => McpError::new(
            McpErrorKind::Cancelled,
            server,
            format!(
                "{what} was cancelled{}",
                reason.map(|r| format!(": {r}")).unwrap_or_default()
            ),
        ),
        ServiceError::Timeout { timeout } => McpError::new(
            McpErrorKind::Timeout,
            server,
            format!("{what} did not answer within {timeout:?}"),
        ),
        ServiceError::UnexpectedResponse => McpError::new(
            McpErrorKind::OffProtocol,
            server,
            format!("the server answered {what} with an unexpected kind of result"),
        ),
        other => {
            if !session.fault.is_set() {
                // A send that fails means the connection is gone: the next
                // call starts a new session.
                session
                    .fault
                    .set(McpErrorKind::ServerDied, format!("{other}"));
            }
            session.fault.error(server).with_source(other)
        }
    }
}
