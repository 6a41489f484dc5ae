//! `AgentContext`: an agent's whole view of the system while it handles a message.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::agent::{AgentError, AgentErrorKind};
use crate::body::{Body, Message};
use crate::budget::{Budget, Usage};
use crate::envelope::{CallChain, Deadline, Destination, Envelope};
use crate::envelope::{Failure, FailureKind};
use crate::error::RequestError;
use crate::id::{AgentId, AgentKind, MessageId, RunId, StepId, TenantId, Topic};
use crate::journal::{EffectKey, JournalReply, JournalRequest};
use crate::report::{ReportError, Signal, SignalKind, TallyCell};
use crate::runtime::call::{Node, Origin, RequestOptions};
use crate::runtime::cancel::HandlerCancel;
use crate::transport::SendError;

/// What an agent sees of the system while it handles one message.
///
/// Through it an agent sends and publishes without waiting, asks another agent
/// and awaits the answer (bounded by its own deadline), delegates by capability,
/// reports progress, and learns when its caller has given up.
pub struct AgentContext {
    pub(crate) node: Arc<Node>,
    pub(crate) me: AgentId,
    /// The message being handled (its payload taken out): moved in, not
    /// copied field by field, and moved back out for the reply.
    pub(crate) env: Box<Envelope>,
    pub(crate) cancel: Arc<HandlerCancel>,
    /// What this handling has reported, delegations included: its reply
    /// carries it.
    pub(crate) tally: TallyCell,
    /// How many effects (and questions) of each name this handling made: the
    /// `#n` of their keys. Allocated on the first one.
    effects_made: std::sync::Mutex<Option<HashMap<String, u32>>>,
}

type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

impl AgentContext {
    pub(crate) fn new(
        node: Arc<Node>,
        me: AgentId,
        env: Box<Envelope>,
        cancel: Arc<HandlerCancel>,
    ) -> Self {
        Self {
            node,
            me,
            env,
            cancel,
            tally: TallyCell::unstarted(),
            effects_made: std::sync::Mutex::new(None),
        }
    }

    /// Makes the message's `Started` report (number 0) if it belongs to a
    /// run and was not made yet; returns what is left of the send, if the
    /// transport could not take it at once.
    ///
    /// Delegated work makes it when its handler begins; a step's own message
    /// only when there is something after it (see [`crate::report`]).
    pub(crate) fn report_start(&self) -> Option<crate::runtime::activation::Rest<'static>> {
        if self.env.ctx.run.is_none() || !self.tally.claim_start() {
            return None;
        }
        crate::runtime::activation::signal_started(&self.node, &self.env, &self.me)
    }

    /// Whether the `Started` report may wait for something to follow it: a
    /// step's own message (no parent), whose reply names the agent anyway.
    pub(crate) fn defers_start(&self) -> bool {
        self.env.ctx.parent.is_none()
    }

    fn origin(&self) -> Origin {
        Origin {
            from: Some(self.me.clone()),
            ctx: self.env.ctx.child_of(self.env.id),
        }
    }

    /// The run context of the message being handled (run, step, depth,
    /// deadline, attempt, trace, call chain, budget).
    pub fn call_context(&self) -> &crate::CallContext {
        &self.env.ctx
    }

    /// The plan step this work belongs to, if it runs for an orchestrated run.
    pub fn step(&self) -> Option<&StepId> {
        self.env.ctx.step.as_ref()
    }

    /// What remains of the run's limits (delegation depth, fan-out, tokens,
    /// cost) when this message was sent. Outside a run: the default limits.
    pub fn budget(&self) -> &Budget {
        static DEFAULT: std::sync::OnceLock<Budget> = std::sync::OnceLock::new();
        match &self.env.ctx.budget {
            Some(b) => b,
            None => DEFAULT.get_or_init(Budget::default),
        }
    }

    /// This agent's id.
    pub fn id(&self) -> &AgentId {
        &self.me
    }

    /// The id of the message being handled.
    pub fn message_id(&self) -> MessageId {
        self.env.id
    }

    /// The agent that sent the message, if an agent did.
    pub fn sender(&self) -> Option<&AgentId> {
        self.env.from.as_ref()
    }

    /// The tenant the message belongs to.
    pub fn tenant(&self) -> &TenantId {
        &self.env.tenant
    }

    /// The run the message belongs to, if any.
    pub fn run(&self) -> Option<RunId> {
        self.env.ctx.run
    }

    /// How many delegations deep this message is.
    pub fn depth(&self) -> u16 {
        self.env.ctx.depth
    }

    /// When the caller stops waiting, if it waits.
    pub fn deadline(&self) -> Option<Deadline> {
        self.env.ctx.deadline
    }

    /// Which attempt at this message this is (1 for the first).
    pub fn attempt(&self) -> u32 {
        self.env.ctx.attempt
    }

    /// The agents waiting, each on the next, for this message's answer.
    pub fn call_chain(&self) -> &CallChain {
        &self.env.ctx.chain
    }

    /// The token that fires when the caller gives up, the deadline passes, the
    /// run is cancelled or the runtime shuts down. Long work should watch it.
    pub fn cancellation(&self) -> &CancellationToken {
        self.cancel.token()
    }

    /// Whether the work has been cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Waits until the work is cancelled.
    pub async fn cancelled(&self) {
        self.cancel.token().cancelled().await;
    }

    /// Sends a message without waiting for an answer.
    ///
    /// # Errors
    /// [`SendError`] (with the envelope handed back) if there is no such agent or
    /// the transport fails.
    pub async fn send<T: Message>(
        &self,
        to: impl Into<Destination>,
        message: T,
    ) -> Result<(), SendError> {
        self.node
            .send(&self.origin(), to.into(), Body::new(message))
            .await
    }

    /// Publishes a message to every subscriber of a topic.
    ///
    /// # Errors
    /// [`SendError`] if the transport fails.
    pub async fn publish<T: Message>(&self, topic: &Topic, message: T) -> Result<(), SendError> {
        self.node
            .send(
                &self.origin(),
                Destination::Topic(topic.clone()),
                Body::new(message),
            )
            .await
    }

    /// Asks another agent (an id, or any agent of a kind) and awaits its answer,
    /// within this handler's own deadline and the runtime's default timeout.
    ///
    /// # Errors
    /// [`RequestError`]: no such agent, timeout, the answering agent failed, a
    /// call cycle (the target is waiting on this very call chain), or this
    /// handler was cancelled while waiting.
    pub async fn request<R: Message>(
        &self,
        to: impl Into<Destination>,
        message: impl Message,
    ) -> Result<R, RequestError> {
        self.request_with(to, message, RequestOptions::default())
            .await
    }

    /// [`request`](Self::request) with options (a timeout of its own).
    ///
    /// # Errors
    /// As [`request`](Self::request).
    pub async fn request_with<R: Message>(
        &self,
        to: impl Into<Destination>,
        message: impl Message,
        options: RequestOptions,
    ) -> Result<R, RequestError> {
        // The run hears of this handler's start before its requests'.
        if let Some(rest) = self.report_start() {
            rest.await;
        }
        self.node
            .ask(
                &self.origin(),
                to.into(),
                message,
                &options,
                Some(self.cancel.token()),
                Some(&self.tally),
            )
            .await
    }

    /// Hands a subtask to an agent that offers `capability` and awaits its
    /// result. It counts as one more delegation level, is bounded by the run's
    /// depth limit, carries the run's remaining budget, is cancelled with this
    /// handler, and appears in the run's trace under this message.
    ///
    /// The agent is found by capability in the tenant's directory of cards;
    /// a capability no card offers is taken as a kind's name (the common
    /// case of kinds named for what they do).
    ///
    /// # Errors
    /// An error whose [`kind`](RequestError::kind) is
    /// [`NoSuchAgent`](crate::FailureKind::NoSuchAgent) if no agent offers
    /// the capability and no kind has that name
    /// ([`RequestError::NoSuchAgent`] with the kind tried, or a failure of
    /// that kind when the capability is not a valid kind name); a
    /// [`FailureKind::Policy`](crate::FailureKind::Policy) failure if the
    /// depth limit is reached; otherwise as [`request`](Self::request).
    pub async fn delegate<R: Message>(
        &self,
        capability: &str,
        message: impl Message,
    ) -> Result<R, RequestError> {
        let max = self.budget().max_depth;
        if self.env.ctx.depth >= max {
            return Err(RequestError::Failed(Failure::new(
                FailureKind::Policy,
                format!(
                    "max delegation depth {max} reached: {} at depth {} cannot delegate {capability:?}",
                    self.me, self.env.ctx.depth
                ),
            )));
        }
        let kind = self.resolve_capability(capability)?;
        let options = RequestOptions {
            delegation: true,
            ..RequestOptions::default()
        };
        self.request_with(kind, message, options).await
    }

    /// Hands several subtasks to agents at once and gathers every result, in
    /// order (parallel hand-off). The number at once is bounded by the run's
    /// fan-out limit.
    ///
    /// # Errors
    /// A [`FailureKind::Policy`](crate::FailureKind::Policy) failure if there
    /// are more subtasks than the fan-out limit allows; otherwise each result
    /// is that subtask's own.
    pub async fn delegate_all<R: Message, M: Message>(
        &self,
        subtasks: impl IntoIterator<Item = (String, M)>,
    ) -> Result<Vec<Result<R, RequestError>>, RequestError> {
        let subtasks: Vec<(String, M)> = subtasks.into_iter().collect();
        let max = self.budget().max_fanout as usize;
        if subtasks.len() > max {
            return Err(RequestError::Failed(Failure::new(
                FailureKind::Policy,
                format!(
                    "fan-out of {} subtasks from {} exceeds the limit of {max}",
                    subtasks.len(),
                    self.me
                ),
            )));
        }
        Ok(futures::future::join_all(
            subtasks
                .into_iter()
                .map(|(cap, m)| async move { self.delegate::<R>(&cap, m).await }),
        )
        .await)
    }

    /// Reports tokens and money spent (by a model call, say). It counts
    /// against the run's budgets exactly once: it travels at once as a signal
    /// (so the orchestrator can stop a run that overspends while this handler
    /// still works) and again in this handler's reply, which is what the run
    /// counts if the signal was lost.
    ///
    /// # Errors
    /// [`ReportError`] if the transport fails (the usage still reaches the
    /// run with the reply).
    pub async fn report_usage(&self, usage: Usage) -> Result<(), ReportError> {
        self.report_model_usage(None, usage).await
    }

    /// [`report_usage`](Self::report_usage) naming the model that spent it,
    /// so the run's cost is broken down by model too
    /// ([`CostReport`](crate::observe::CostReport)).
    ///
    /// # Errors
    /// As [`report_usage`](Self::report_usage).
    pub async fn report_model_usage(
        &self,
        model: Option<&str>,
        usage: Usage,
    ) -> Result<(), ReportError> {
        self.tally.add_usage(usage);
        let model = model.map(smol_str::SmolStr::new);
        self.report(SignalKind::Usage { usage, model }).await
    }

    /// Sends one report about the message being handled to its run.
    async fn report(&self, kind: SignalKind) -> Result<(), ReportError> {
        let Some(run) = self.env.ctx.run else {
            return Ok(());
        };
        if let Some(rest) = self.report_start() {
            rest.await;
        }
        let signal = Signal {
            message: self.env.id,
            root: self.env.ctx.root.unwrap_or(self.env.id),
            seq: self.tally.next_report(),
            step: self.env.ctx.step.clone(),
            agent: self.me.clone(),
            kind,
        };
        self.publish(&Topic::for_run(run), signal)
            .await
            .map_err(ReportError::send)
    }

    fn resolve_capability(&self, capability: &str) -> Result<AgentKind, RequestError> {
        if let Some(kind) = self.node.directory.kind_for(capability) {
            return Ok(kind);
        }
        match AgentKind::new(capability) {
            Ok(kind) => Ok(kind),
            Err(_) => Err(RequestError::Failed(Failure::new(
                FailureKind::NoSuchAgent,
                format!("no agent offers capability {capability:?}"),
            ))),
        }
    }

    /// Reports progress. It reaches the run's event stream (as a step
    /// progress event, after the step's start and before its result) through
    /// the run's topic; outside a run it is only traced.
    ///
    /// # Errors
    /// [`ReportError`] of kind
    /// [`Encode`](crate::ReportErrorKind::Encode) if `data` cannot be encoded
    /// as JSON (nothing is sent), or [`Send`](crate::ReportErrorKind::Send) if
    /// the transport fails.
    pub async fn emit<T: Serialize>(&self, data: T) -> Result<(), ReportError> {
        let data = serde_json::to_value(data)
            .map_err(|e| ReportError::encode(std::any::type_name::<T>(), e))?;
        tracing::debug!(agent = %self.me, message = %self.env.id, %data, "agent progress");
        self.report(SignalKind::Progress { data }).await
    }

    /// The stable key of this step: the same on every attempt (after a crash,
    /// a timeout, a retry), different for every step and run. Hand it to
    /// systems outside coditect as an idempotency key. Outside a run, the
    /// message's id.
    pub fn idempotency_key(&self) -> String {
        match (self.env.ctx.run, &self.env.ctx.step) {
            (Some(run), Some(step)) => format!("{run}/{step}"),
            (Some(run), None) => format!("{run}/{}", self.env.id),
            _ => self.env.id.to_string(),
        }
    }

    fn next_key(&self, name: &str) -> EffectKey {
        let n = match self.effects_made.lock() {
            Ok(mut made) => {
                let made = made.get_or_insert_with(HashMap::default);
                let n = made.entry(name.to_owned()).or_insert(0);
                let this = *n;
                *n += 1;
                this
            }
            Err(_) => 0,
        };
        EffectKey::new(
            self.env.ctx.run,
            self.env.ctx.step.as_ref(),
            self.me.kind().as_str(),
            name,
            n,
        )
    }

    /// Runs a side effect at most once per run: `effect` gets the effect's
    /// stable [`EffectKey`] (an idempotency key for outside systems) and its
    /// result is recorded in the run's journal before this returns. When
    /// the step is executed again — resumed after a crash, retried — the
    /// effects it already made return their recorded results, in order,
    /// without running; only the rest run.
    ///
    /// Effects are told apart by `name` and by how many of that name this
    /// handler made before (so keep the order of a handler's effects
    /// deterministic, or give each its own name). Outside a durable run (no
    /// store, or no run) the effect simply runs.
    ///
    /// Only successes are recorded: an effect that fails runs again on the
    /// next attempt.
    ///
    /// # Errors
    /// What `effect` returns; a [`Permanent`](crate::AgentErrorKind::Permanent)
    /// error if its result cannot be encoded as JSON (the effect happened:
    /// nothing is recorded) or a recorded one does not decode as `T`; a
    /// [`Transient`](crate::AgentErrorKind::Transient) error if the run's
    /// driver did not acknowledge the record.
    pub async fn effect<T, F, Fut>(&self, name: &str, effect: F) -> Result<T, AgentError>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce(EffectKey) -> Fut,
        Fut: std::future::Future<Output = Result<T, AgentError>>,
    {
        let key = self.next_key(name);
        let Some(journal) = self.env.ctx.journal.clone() else {
            return effect(key).await;
        };
        if let Some(value) = journal.effect(key.as_str()) {
            return decode_recorded(&key, value.clone());
        }
        let value = effect(key.clone()).await?;
        let json = serde_json::to_value(&value).map_err(|e| {
            AgentError::with_kind(
                AgentErrorKind::Permanent,
                format!("effect {key}: its result cannot be encoded as JSON, so it cannot be recorded: {e}"),
            )
        })?;
        let request = JournalRequest::Effect {
            step: self.env.ctx.step.clone(),
            agent: self.me.clone(),
            key: key.clone(),
            value: json.clone(),
        };
        match self.journal_request(request).await? {
            // Another attempt recorded its result first: the run goes on
            // with that one, so every later reader agrees.
            JournalReply::Recorded { value: recorded } => {
                if recorded == json {
                    Ok(value)
                } else {
                    decode_recorded(&key, recorded)
                }
            }
            JournalReply::Refused { reason } => Err(AgentError::with_kind(
                AgentErrorKind::Transient,
                format!("effect {key} was done but its record was refused: {reason}"),
            )),
        }
    }

    /// Asks for input from outside the run (a person's approval, a missing
    /// fact) and waits for the answer, which must satisfy `T`'s JSON Schema.
    ///
    /// The run records the question (a
    /// [`RunEvent::InputRequested`](crate::orchestrator::RunEvent::InputRequested)
    /// naming it, its step and the schema) and is marked paused; anyone may
    /// answer it with
    /// [`Orchestrator::respond`](crate::orchestrator::Orchestrator::respond),
    /// from any process, after any restart. An answered question is answered
    /// again from the journal when the step runs again.
    ///
    /// # Errors
    /// A [`Permanent`](crate::AgentErrorKind::Permanent) error outside a
    /// durable run (questions need a store); a
    /// [`Transient`](crate::AgentErrorKind::Transient) one if the run's wait
    /// for input timed out or the run is ending.
    pub async fn ask<T>(&self, name: &str, prompt: &str) -> Result<T, AgentError>
    where
        T: DeserializeOwned + schemars::JsonSchema,
    {
        let schema = serde_json::to_value(schemars::schema_for!(T)).unwrap_or_default();
        let value = self.ask_value(name, prompt, schema).await?;
        let key = EffectKey::new(
            self.env.ctx.run,
            self.env.ctx.step.as_ref(),
            "answer",
            name,
            0,
        );
        decode_recorded(&key, value)
    }

    /// [`ask`](Self::ask) with a JSON Schema given as a value; the answer
    /// comes back as JSON, already checked against it.
    ///
    /// # Errors
    /// As [`ask`](Self::ask).
    pub async fn ask_value(
        &self,
        name: &str,
        prompt: &str,
        schema: serde_json::Value,
    ) -> Result<serde_json::Value, AgentError> {
        let key = self.next_key(name);
        let Some(journal) = self.env.ctx.journal.clone() else {
            return Err(AgentError::with_kind(
                AgentErrorKind::Permanent,
                format!(
                    "{} asked {name:?} outside a durable run: questions need an orchestrator with a store",
                    self.me
                ),
            ));
        };
        if let Some(answer) = journal.answer(key.as_str()) {
            return Ok(answer.clone());
        }
        let request = JournalRequest::Ask {
            step: self.env.ctx.step.clone(),
            agent: self.me.clone(),
            key: key.clone(),
            prompt: prompt.to_owned(),
            schema,
        };
        match self.journal_request(request).await? {
            JournalReply::Recorded { value } => Ok(value),
            JournalReply::Refused { reason } => Err(AgentError::with_kind(
                AgentErrorKind::Transient,
                format!("question {key} was not answered: {reason}"),
            )),
        }
    }

    /// Sends a request to the run's driver and waits for its answer, for as
    /// long as this handler may run (a question waits for a person).
    async fn journal_request(&self, request: JournalRequest) -> Result<JournalReply, AgentError> {
        let Some(run) = self.env.ctx.run else {
            return Err(AgentError::with_kind(
                AgentErrorKind::Permanent,
                "a journal request outside a run",
            ));
        };
        // The run hears of this handler's start before its journal requests.
        if let Some(rest) = self.report_start() {
            rest.await;
        }
        // A question may wait for a person for long: the run's policy
        // bounds that wait (the driver refuses it), not the request's timeout.
        let timeout = match (&request, self.env.ctx.deadline) {
            (_, Some(d)) => d.remaining(),
            (JournalRequest::Ask { .. }, None) => Duration::from_secs(7 * 24 * 3600),
            (_, None) => self.node.default_timeout,
        };
        let options = RequestOptions {
            timeout: Some(timeout),
            ..RequestOptions::default()
        };
        let origin = self.origin();
        let result = ask_driver(
            &self.node,
            &origin,
            run,
            &request,
            &options,
            Some(self.cancel.token()),
            self.env.ctx.deadline,
        )
        .await;
        result.map_err(|e| {
            let mut err = AgentError::from(e);
            if err.kind() == AgentErrorKind::Permanent {
                err = AgentError::with_kind(AgentErrorKind::Transient, err.to_string());
            }
            err
        })
    }

    /// The default request timeout of the runtime.
    pub fn default_timeout(&self) -> Duration {
        self.node.default_timeout
    }
}

/// Sends a journal request to the driver of `run`, again while none listens
/// (its orchestrator died and no other has resumed the run yet), a little
/// later each time, for up to the runtime's driver wait — and never past
/// `deadline`.
pub(crate) async fn ask_driver(
    node: &Arc<Node>,
    origin: &Origin,
    run: RunId,
    request: &JournalRequest,
    options: &RequestOptions,
    cancel: Option<&CancellationToken>,
    deadline: Option<Deadline>,
) -> Result<JournalReply, RequestError> {
    let mut until = tokio::time::Instant::now() + node.driver_wait;
    if let Some(d) = deadline {
        until = until.min(tokio::time::Instant::now() + d.remaining());
    }
    let mut delay = Duration::from_millis(50);
    loop {
        let result = node
            .ask::<JournalReply>(
                origin,
                Destination::Topic(Topic::for_journal(run)),
                request.clone(),
                options,
                cancel,
                None,
            )
            .await;
        match result {
            Err(e)
                if e.kind() == FailureKind::NoSuchAgent
                    && tokio::time::Instant::now() + delay < until =>
            {
                tracing::debug!(%run, "no driver listens to the run's journal; asking again");
                match cancel {
                    Some(c) => tokio::select! {
                        () = c.cancelled() => return Err(e),
                        () = tokio::time::sleep(delay) => {}
                    },
                    None => tokio::time::sleep(delay).await,
                }
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            other => return other,
        }
    }
}

/// A recorded value as the type its effect (or question) returns.
fn decode_recorded<T: DeserializeOwned>(
    key: &EffectKey,
    value: serde_json::Value,
) -> Result<T, AgentError> {
    serde_json::from_value(value).map_err(|e| {
        AgentError::with_kind(
            AgentErrorKind::Permanent,
            format!(
                "the value recorded for {key} does not decode as {}: {e}",
                std::any::type_name::<T>()
            ),
        )
    })
}

impl std::fmt::Debug for AgentContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentContext")
            .field("agent", &self.me)
            .field("message", &self.env.id)
            .field("run", &self.env.ctx.run)
            .field("depth", &self.env.ctx.depth)
            .field("deadline", &self.env.ctx.deadline)
            .finish_non_exhaustive()
    }
}
