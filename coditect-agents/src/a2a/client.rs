//! Using a remote A2A agent as a coditect agent.

use std::sync::Arc;
use std::time::Duration;

use a2a_client::auth::AuthInterceptor;
use a2a_client::jsonrpc::JsonRpcTransport;
use a2a_client::middleware::CallInterceptor;
use a2a_client::{A2AClient, Transport};
use a2a_types::{
    AgentCard as A2aCard, CancelTaskRequest, GetTaskRequest, Message, Part, Role,
    SendMessageRequest, SendMessageResponse, StreamResponse, TRANSPORT_PROTOCOL_JSONRPC, Task,
    TaskState, TaskStatus,
};
use coditect_orchestrator::{
    Agent, AgentContext, AgentError, AgentErrorKind, AgentKind, Runtime, Usage,
};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use super::convert::{
    META_BUDGET, META_DEADLINE_MS, WireBudget, capabilities_of, parts_of, usage_of, value_of_parts,
};
use super::error::{A2aError, A2aErrorKind};

/// How long a `CancelTask` sent after a cancellation or a missed deadline
/// may take before the caller stops waiting for it.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);
/// Most `GetTask` polls of one non-streaming call.
const MAX_POLLS: u32 = 100_000;

/// A connection to a remote A2A agent: its card (read from
/// `/.well-known/agent-card.json`) and a JSON-RPC client for it.
///
/// Register it on a [`Runtime`] as a kind ([`register`](Self::register)) and
/// plans route steps to it by its skills, like to any local agent: its
/// streaming progress arrives as the step's progress events, a cancelled step
/// sends `CancelTask`, the caller's deadline bounds the HTTP call, and the
/// run's remaining budget travels with the message while the usage the
/// remote reports counts against the run.
///
/// # Examples
///
/// ```no_run
/// use coditect_agents::a2a::A2aRemote;
/// use coditect_orchestrator::{InMemoryTransport, Runtime};
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let runtime = Runtime::builder(InMemoryTransport::new()).build().await?;
/// let remote = A2aRemote::builder("http://127.0.0.1:8700/")
///     .bearer_token("s3cret")
///     .connect()
///     .await?;
/// println!("{} offers {:?}", remote.card().name, remote.capabilities());
/// remote.register(&runtime, "remote_team").await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct A2aRemote {
    inner: Arc<Remote>,
}

struct Remote {
    base_url: String,
    card: A2aCard,
    client: A2AClient<Box<dyn Transport>>,
    streaming: bool,
}

impl std::fmt::Debug for A2aRemote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("A2aRemote")
            .field("url", &self.inner.base_url)
            .field("name", &self.inner.card.name)
            .field("streaming", &self.inner.streaming)
            .finish_non_exhaustive()
    }
}

/// Configures an [`A2aRemote`]; ends in [`connect`](Self::connect).
#[must_use]
#[derive(Debug)]
pub struct A2aRemoteBuilder {
    url: String,
    token: Option<String>,
    connect_timeout: Duration,
    card_timeout: Duration,
    streaming: bool,
}

impl A2aRemote {
    /// A connection to the agent whose card is at
    /// `<url>/.well-known/agent-card.json`.
    pub fn builder(url: impl Into<String>) -> A2aRemoteBuilder {
        A2aRemoteBuilder {
            url: url.into(),
            token: None,
            connect_timeout: Duration::from_secs(5),
            card_timeout: Duration::from_secs(10),
            streaming: true,
        }
    }

    /// The remote agent's card.
    pub fn card(&self) -> &A2aCard {
        &self.inner.card
    }

    /// Its skills' ids: the capabilities it offers coditect.
    pub fn capabilities(&self) -> Vec<String> {
        capabilities_of(&self.inner.card)
    }

    /// The agent to register on a runtime (see [`register`](Self::register)).
    pub fn agent(&self) -> A2aAgent {
        A2aAgent {
            remote: self.clone(),
        }
    }

    /// Registers the remote agent on `runtime` as the kind `kind`, named and
    /// described after its card, offering its skills as capabilities.
    ///
    /// # Errors
    /// [`A2aErrorKind::Config`] if the card has no skills or the runtime
    /// refuses the kind (a bad or taken name).
    pub async fn register(&self, runtime: &Runtime, kind: &str) -> Result<AgentKind, A2aError> {
        let caps = self.capabilities();
        if caps.is_empty() {
            return Err(A2aError::new(
                A2aErrorKind::Config,
                format!("a2a agent {} lists no skills", self.inner.base_url),
            ));
        }
        let mut builder = runtime
            .kind(kind)
            .name(self.inner.card.name.clone())
            .description(self.inner.card.description.clone());
        for cap in caps {
            builder = builder.capability(cap);
        }
        let agent = self.agent();
        builder.register(move |_| agent.clone()).await.map_err(|e| {
            A2aError::new(
                A2aErrorKind::Config,
                format!("cannot register kind {kind:?}: {e}"),
            )
            .with_source(e)
        })
    }

    /// Sends `input` to the remote agent and waits for its result, outside
    /// any coditect run (no deadline, budget or progress).
    ///
    /// # Errors
    /// As [`A2aAgent`]'s calls: unreachable, refused, failed, off-protocol.
    pub async fn call(&self, input: Value) -> Result<Value, A2aError> {
        self.run(input, None).await
    }

    /// One call: the exchange, raced against the caller's cancellation and
    /// deadline; either of those cancels the remote task.
    async fn run(&self, input: Value, ctx: Option<&AgentContext>) -> Result<Value, A2aError> {
        let peer = &self.inner.base_url;
        let deadline = ctx.and_then(AgentContext::deadline);
        let mut metadata = std::collections::HashMap::new();
        if let Some(ctx) = ctx {
            let budget = ctx.budget();
            if budget.tokens_left == Some(0) || budget.cost_left.is_some_and(|c| c <= 0.0) {
                return Err(A2aError::new(
                    A2aErrorKind::Budget,
                    format!("the run's budget is spent; a2a agent {peer} not called"),
                ));
            }
            let wire = WireBudget::from_budget(budget, ctx.depth());
            metadata.insert(META_BUDGET.to_owned(), json!(wire));
        }
        if let Some(d) = deadline {
            if d.is_past() {
                return Err(A2aError::new(
                    A2aErrorKind::Deadline,
                    format!("deadline passed before calling a2a agent {peer}"),
                ));
            }
            let ms = u64::try_from(d.remaining().as_millis()).unwrap_or(u64::MAX);
            metadata.insert(META_DEADLINE_MS.to_owned(), json!(ms));
        }
        let mut message = Message::new(Role::User, parts_of(&input));
        message.metadata = (!metadata.is_empty()).then_some(metadata);
        let request = SendMessageRequest {
            message,
            configuration: None,
            metadata: None,
            tenant: None,
        };

        // The exchange runs in a task of its own, so that a call cancelled
        // before the remote task's id arrived can still learn it (the first
        // event) and cancel it, after this handler has been dropped.
        let (note_tx, mut notes) = mpsc::unbounded_channel();
        let (id_tx, mut id_rx) = watch::channel(None::<String>);
        let remote = self.clone();
        let mut work = tokio::spawn(async move {
            let notes = Notes {
                tx: note_tx,
                id: id_tx,
            };
            remote.exchange(&request, &notes).await
        });
        let cancelled = async {
            match ctx {
                Some(c) => c.cancelled().await,
                None => std::future::pending().await,
            }
        };
        let timeout = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.instant()).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(cancelled, timeout);
        let (kind, what) = loop {
            tokio::select! {
                biased;
                Some(note) = notes.recv() => forward(note, ctx).await,
                joined = &mut work => {
                    // Everything the exchange noted came before its end.
                    while let Ok(note) = notes.try_recv() {
                        forward(note, ctx).await;
                    }
                    return joined.unwrap_or_else(|e| Err(A2aError::new(
                        A2aErrorKind::Protocol,
                        format!("the call to a2a agent {peer} ended abnormally"),
                    ).with_source(e)));
                }
                () = &mut cancelled => break (A2aErrorKind::Cancelled, "the step was cancelled"),
                () = &mut timeout => break (A2aErrorKind::Deadline, "the deadline passed"),
            }
        };
        let remote = self.clone();
        let stop = tokio::spawn(async move {
            let id =
                match tokio::time::timeout(CANCEL_TIMEOUT, id_rx.wait_for(Option::is_some)).await {
                    Ok(Ok(id)) => id.clone(),
                    _ => None,
                };
            work.abort();
            if let Some(id) = &id {
                remote.cancel_remote(id).await;
            }
            id
        });
        let id = stop.await.ok().flatten();
        Err(A2aError::new(
            kind,
            match id {
                Some(id) => format!("{what}: a2a agent {peer} task {id} cancelled"),
                None => format!("{what} before a2a agent {peer} started a task"),
            },
        ))
    }

    async fn cancel_remote(&self, id: &str) {
        let request = CancelTaskRequest {
            id: id.to_owned(),
            metadata: None,
            tenant: None,
        };
        match tokio::time::timeout(CANCEL_TIMEOUT, self.inner.client.cancel_task(&request)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::debug!(task = id, error = %e, "a2a cancel refused"),
            Err(_) => tracing::debug!(task = id, "a2a cancel timed out"),
        }
    }

    async fn exchange(
        &self,
        request: &SendMessageRequest,
        notes: &Notes,
    ) -> Result<Value, A2aError> {
        let peer = self.inner.base_url.as_str();
        let sdk = |e| A2aError::from_sdk(peer, e);
        let remember = |id: &str| {
            notes.id.send_if_modified(|t| {
                let first = t.is_none();
                if first {
                    *t = Some(id.to_owned());
                }
                first
            });
        };
        let mut collected = Artifacts::default();
        if !self.inner.streaming {
            let task = match self.inner.client.send_message(request).await.map_err(sdk)? {
                SendMessageResponse::Message(m) => return self.finish_message(&m, notes).await,
                SendMessageResponse::Task(t) => t,
            };
            remember(&task.id);
            return self.poll(task, notes, collected).await;
        }
        let mut stream = self
            .inner
            .client
            .send_streaming_message(request)
            .await
            .map_err(sdk)?;
        let mut last_id = None;
        while let Some(event) = stream.next().await {
            match event.map_err(sdk)? {
                StreamResponse::Message(m) => return self.finish_message(&m, notes).await,
                StreamResponse::Task(t) => {
                    remember(&t.id);
                    last_id = Some(t.id.clone());
                    if let Some(a) = &t.artifacts {
                        collected.replace_all(a);
                    }
                    if is_settled(&t.status.state) {
                        return self.finish(&t.id, t.status, collected, notes).await;
                    }
                    self.progress(&t.status, notes).await;
                }
                StreamResponse::StatusUpdate(u) => {
                    remember(&u.task_id);
                    last_id = Some(u.task_id.clone());
                    if is_settled(&u.status.state) {
                        return self.finish(&u.task_id, u.status, collected, notes).await;
                    }
                    self.progress(&u.status, notes).await;
                }
                StreamResponse::ArtifactUpdate(a) => {
                    remember(&a.task_id);
                    collected.update(&a.artifact, a.append.unwrap_or(false));
                }
            }
        }
        // The stream ended without a final status: ask for the task.
        let Some(id) = last_id else {
            return Err(A2aError::new(
                A2aErrorKind::Protocol,
                format!("a2a agent {peer} ended its stream without a task or message"),
            ));
        };
        let task = self.get_task(&id).await?;
        self.poll(task, notes, collected).await
    }

    async fn get_task(&self, id: &str) -> Result<Task, A2aError> {
        let request = GetTaskRequest {
            id: id.to_owned(),
            history_length: Some(0),
            tenant: None,
        };
        self.inner
            .client
            .get_task(&request)
            .await
            .map_err(|e| A2aError::from_sdk(&self.inner.base_url, e))
    }

    /// Polls a task that is not finished yet until it is (bounded, with
    /// backoff up to two seconds; the caller's deadline bounds it too).
    async fn poll(
        &self,
        mut task: Task,
        notes: &Notes,
        mut collected: Artifacts,
    ) -> Result<Value, A2aError> {
        let mut wait = Duration::from_millis(20);
        for _ in 0..MAX_POLLS {
            if let Some(a) = &task.artifacts {
                collected.replace_all(a);
            }
            if is_settled(&task.status.state) {
                return self.finish(&task.id, task.status, collected, notes).await;
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(2));
            task = self.get_task(&task.id).await?;
        }
        Err(A2aError::new(
            A2aErrorKind::Protocol,
            format!(
                "a2a agent {} task {} did not finish in {MAX_POLLS} polls",
                self.inner.base_url, task.id
            ),
        ))
    }

    /// Forwards a working status's message as the step's progress, a
    /// progress event per part: a data part as itself (coditect servers send
    /// their agents' progress so), text as `{"type": "text", "text": …}`.
    async fn progress(&self, status: &TaskStatus, notes: &Notes) {
        let Some(message) = &status.message else {
            return;
        };
        for part in &message.parts {
            let data = match value_of_parts(std::slice::from_ref(part)) {
                Some(Value::String(text)) => json!({"type": "text", "text": text}),
                Some(v) => v,
                None => continue,
            };
            let _ = notes.tx.send(Note::Progress(data));
        }
    }

    async fn finish_message(&self, message: &Message, notes: &Notes) -> Result<Value, A2aError> {
        notes.usage(message);
        Ok(value_of_parts(&message.parts).unwrap_or(Value::Null))
    }

    /// The result of a task in a settled state.
    async fn finish(
        &self,
        id: &str,
        status: TaskStatus,
        collected: Artifacts,
        notes: &Notes,
    ) -> Result<Value, A2aError> {
        let peer = &self.inner.base_url;
        if let Some(m) = &status.message {
            notes.usage(m);
        }
        let said = status
            .message
            .as_ref()
            .and_then(|m| value_of_parts(&m.parts))
            .map(|v| match v {
                Value::String(s) => s,
                other => other.to_string(),
            })
            .unwrap_or_default();
        match status.state {
            TaskState::Completed => Ok(collected
                .value()
                .or_else(|| {
                    status
                        .message
                        .as_ref()
                        .and_then(|m| value_of_parts(&m.parts))
                })
                .unwrap_or(Value::Null)),
            TaskState::Canceled => Err(A2aError::new(
                A2aErrorKind::Cancelled,
                format!("a2a agent {peer} cancelled task {id}"),
            )),
            TaskState::InputRequired | TaskState::AuthRequired => {
                self.cancel_remote(id).await;
                Err(A2aError::new(
                    A2aErrorKind::TaskFailed,
                    format!(
                        "a2a agent {peer} task {id} asks for more input ({:?}), which a coditect step cannot give; cancelled it: {said}",
                        status.state
                    ),
                ))
            }
            state => Err(A2aError::new(
                A2aErrorKind::TaskFailed,
                format!("a2a agent {peer} task {id} ended {state:?}: {said}"),
            )),
        }
    }
}

/// Whether a task will not progress without the caller: finished, or
/// waiting for input coditect cannot give.
fn is_settled(state: &TaskState) -> bool {
    state.is_terminal() || matches!(state, TaskState::InputRequired | TaskState::AuthRequired)
}

/// What an exchange tells the handler while it runs.
enum Note {
    /// Progress to emit.
    Progress(Value),
    /// Usage the remote reported.
    Usage(Usage),
}

/// Where an exchange sends its notes and the remote task's id.
struct Notes {
    tx: mpsc::UnboundedSender<Note>,
    id: watch::Sender<Option<String>>,
}

impl Notes {
    fn usage(&self, message: &Message) {
        if let Some(usage) = usage_of(message.metadata.as_ref()) {
            let _ = self.tx.send(Note::Usage(usage));
        }
    }
}

/// Passes a note on to the step's context (outside a step: nowhere).
async fn forward(note: Note, ctx: Option<&AgentContext>) {
    let Some(ctx) = ctx else { return };
    let sent = match note {
        Note::Progress(data) => ctx.emit(data).await,
        Note::Usage(usage) => ctx.report_usage(usage).await,
    };
    if let Err(e) = sent {
        tracing::debug!(error = %e, "a2a progress or usage not forwarded");
    }
}

/// The artifacts of a task as they arrive, in order.
#[derive(Default)]
struct Artifacts(Vec<(String, Vec<Part>)>);

impl Artifacts {
    fn update(&mut self, artifact: &a2a_types::Artifact, append: bool) {
        match self
            .0
            .iter_mut()
            .find(|(id, _)| *id == artifact.artifact_id)
        {
            Some((_, parts)) if append => parts.extend(artifact.parts.iter().cloned()),
            Some((_, parts)) => *parts = artifact.parts.clone(),
            None => self
                .0
                .push((artifact.artifact_id.clone(), artifact.parts.clone())),
        }
    }

    fn replace_all(&mut self, artifacts: &[a2a_types::Artifact]) {
        self.0 = artifacts
            .iter()
            .map(|a| (a.artifact_id.clone(), a.parts.clone()))
            .collect();
    }

    /// The value of every artifact's parts, in order.
    fn value(&self) -> Option<Value> {
        let parts: Vec<Part> = self.0.iter().flat_map(|(_, p)| p.iter().cloned()).collect();
        value_of_parts(&parts)
    }
}

impl A2aRemoteBuilder {
    /// Sends `Authorization: Bearer <token>` with every call.
    pub fn bearer_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// How long opening a connection may take (5 s by default).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long fetching the card may take (10 s by default).
    pub fn card_timeout(mut self, timeout: Duration) -> Self {
        self.card_timeout = timeout;
        self
    }

    /// Whether to use `SendStreamingMessage` when the card offers streaming (yes
    /// by default); without it, `SendMessage` and `GetTask` polling.
    pub fn streaming(mut self, streaming: bool) -> Self {
        self.streaming = streaming;
        self
    }

    /// Reads the agent's card and makes the client for its JSON-RPC
    /// interface.
    ///
    /// # Errors
    /// [`A2aErrorKind::Config`] for a bad URL or token;
    /// [`A2aErrorKind::Connect`] if the card cannot be fetched;
    /// [`A2aErrorKind::Unauthorized`] if fetching it is refused;
    /// [`A2aErrorKind::Protocol`] if it is not an A2A card or offers no
    /// JSON-RPC interface of protocol version 1.
    pub async fn connect(self) -> Result<A2aRemote, A2aError> {
        let base = self.url.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(A2aError::new(
                A2aErrorKind::Config,
                format!("a2a agent url {:?} is not an http(s) url", self.url),
            ));
        }
        if let Some(t) = &self.token
            && (t.is_empty() || t.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(A2aError::new(
                A2aErrorKind::Config,
                "bearer token must be non-empty and without whitespace",
            ));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            .build()
            .map_err(|e| {
                A2aError::new(A2aErrorKind::Config, "cannot build the http client").with_source(e)
            })?;
        let card = fetch_card(&http, &base, self.card_timeout).await?;
        let iface = card
            .supported_interfaces
            .iter()
            .find(|i| {
                i.protocol_binding
                    .eq_ignore_ascii_case(TRANSPORT_PROTOCOL_JSONRPC)
                    && i.protocol_version.split('.').next() == Some("1")
            })
            .ok_or_else(|| {
                A2aError::new(
                    A2aErrorKind::Protocol,
                    format!("a2a agent {base} offers no JSON-RPC interface of A2A version 1"),
                )
            })?;
        let transport: Box<dyn Transport> =
            Box::new(JsonRpcTransport::new(http, iface.url.clone()));
        let mut client = A2AClient::new(transport);
        if let Some(t) = &self.token {
            let auth: Arc<dyn CallInterceptor> = Arc::new(AuthInterceptor::bearer(t.clone()));
            client = client.with_interceptors(vec![auth]);
        }
        if let Some(tenant) = iface.tenant.as_deref().filter(|t| !t.is_empty()) {
            client = client.with_tenant(tenant);
        }
        let streaming = self.streaming && card.capabilities.streaming == Some(true);
        Ok(A2aRemote {
            inner: Arc::new(Remote {
                base_url: base,
                card,
                client,
                streaming,
            }),
        })
    }
}

async fn fetch_card(
    http: &reqwest::Client,
    base: &str,
    timeout: Duration,
) -> Result<A2aCard, A2aError> {
    let url = format!("{base}{}", a2a_server::WELL_KNOWN_AGENT_CARD_PATH);
    let response = http.get(&url).timeout(timeout).send().await.map_err(|e| {
        A2aError::new(
            A2aErrorKind::Connect,
            format!("cannot fetch agent card {url}"),
        )
        .with_source(e)
    })?;
    let status = response.status();
    if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
        return Err(A2aError::new(
            A2aErrorKind::Unauthorized,
            format!("agent card {url} refused: http {status}"),
        ));
    }
    if !status.is_success() {
        return Err(A2aError::new(
            A2aErrorKind::Protocol,
            format!("agent card {url} answered http {status}"),
        ));
    }
    let body = response.bytes().await.map_err(|e| {
        A2aError::new(A2aErrorKind::Connect, format!("agent card {url} cut off")).with_source(e)
    })?;
    serde_json::from_slice(&body).map_err(|e| {
        A2aError::new(
            A2aErrorKind::Protocol,
            format!("{url} is not an A2A agent card"),
        )
        .with_source(e)
    })
}

/// A remote A2A agent as a coditect [`Agent`]: JSON in, JSON out (a string
/// travels as a text part, anything else as a data part). Made by
/// [`A2aRemote::agent`]; [`A2aRemote::register`] registers it.
#[derive(Clone, Debug)]
pub struct A2aAgent {
    remote: A2aRemote,
}

impl Agent for A2aAgent {
    type Input = Value;
    type Output = Value;

    async fn handle(&mut self, input: Value, ctx: &AgentContext) -> Result<Value, AgentError> {
        self.remote.run(input, Some(ctx)).await.map_err(agent_error)
    }
}

/// The agent error an A2A failure becomes: unreachable and past-deadline are
/// worth retrying; cancellation and budgets keep their kinds.
fn agent_error(e: A2aError) -> AgentError {
    let kind = match e.kind() {
        A2aErrorKind::Connect | A2aErrorKind::Deadline => AgentErrorKind::Transient,
        A2aErrorKind::Cancelled => AgentErrorKind::Cancelled,
        A2aErrorKind::Budget => AgentErrorKind::Policy,
        _ => AgentErrorKind::Permanent,
    };
    AgentError::with_kind(kind, e.message().to_owned()).with_source(e)
}
