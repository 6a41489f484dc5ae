//! The A2A SDK's `AgentExecutor` for coditect: each A2A message becomes a
//! coditect run whose events become A2A task events.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use a2a_server::{AgentExecutor, ExecutorContext};
use a2a_types::{
    A2AError, Artifact, Message, StreamResponse, TaskArtifactUpdateEvent, TaskState, TaskStatus,
    TaskStatusUpdateEvent, new_artifact_id,
};
use coditect_orchestrator::Orchestrator;
use coditect_orchestrator::orchestrator::{RunEvent, RunPolicy, TaskSpec};
use futures::StreamExt;
use futures::stream::BoxStream;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::convert::{
    CallerLimits, META_USAGE, agent_message, caller_limits, parts_of, text_of, value_of_parts,
};

/// What a server runs each message on.
#[derive(Clone)]
pub(crate) enum Target {
    /// One kind: a one-step run per message, on one of its capabilities.
    Kind {
        capabilities: Vec<String>,
        orchestrators: HashMap<String, Orchestrator>,
    },
    /// A whole orchestrator: its planner plans each message.
    Orchestrator(Orchestrator),
}

/// Runs A2A messages as coditect runs.
pub(crate) struct Executor {
    inner: Arc<Inner>,
}

struct Inner {
    target: Target,
    policy: RunPolicy,
    /// The cancellation of each task's run, while it runs.
    running: Mutex<HashMap<String, CancellationToken>>,
}

type Events = mpsc::Sender<Result<StreamResponse, A2AError>>;

impl Executor {
    pub(crate) fn new(target: Target, policy: RunPolicy) -> Self {
        Self {
            inner: Arc::new(Inner {
                target,
                policy,
                running: Mutex::new(HashMap::new()),
            }),
        }
    }
}

impl AgentExecutor for Executor {
    fn execute(
        &self,
        ctx: ExecutorContext,
    ) -> BoxStream<'static, Result<StreamResponse, A2AError>> {
        let (tx, rx) = mpsc::channel(64);
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let task_id = ctx.task_id.clone();
            if let Err(e) = inner.run(ctx, &tx).await {
                let _ = tx.send(Err(e)).await;
            }
            inner.forget(&task_id);
        });
        receiver_stream(rx)
    }

    fn cancel(&self, ctx: ExecutorContext) -> BoxStream<'static, Result<StreamResponse, A2AError>> {
        if let Some(token) = self.inner.forget(&ctx.task_id) {
            token.cancel();
        }
        let event = status(
            &ctx.task_id,
            &ctx.context_id,
            TaskState::Canceled,
            None,
            None,
        );
        Box::pin(futures::stream::once(async move { Ok(event) }))
    }
}

/// How long progress waits to go out with the progress after it.
const PROGRESS_EVERY: Duration = Duration::from_millis(20);
/// The most progress values in one status update.
const MAX_PARTS_PER_UPDATE: usize = 256;

/// A `working` status update carrying progress values, one data part each.
fn progress_update(task_id: &str, context_id: &str, parts: Vec<a2a_types::Part>) -> StreamResponse {
    let mut m = agent_message(&Value::Null, context_id, task_id, None);
    m.parts = parts;
    status(task_id, context_id, TaskState::Working, Some(m), None)
}

fn receiver_stream<T: Send + 'static>(rx: mpsc::Receiver<T>) -> BoxStream<'static, T> {
    Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

fn status(
    task_id: &str,
    context_id: &str,
    state: TaskState,
    message: Option<Message>,
    metadata: Option<HashMap<String, Value>>,
) -> StreamResponse {
    StreamResponse::StatusUpdate(TaskStatusUpdateEvent {
        task_id: task_id.to_owned(),
        context_id: context_id.to_owned(),
        status: TaskStatus {
            state,
            message,
            // The SDK's handler stamps the time as it stores the event.
            timestamp: None,
        },
        metadata,
    })
}

impl Inner {
    fn forget(&self, task_id: &str) -> Option<CancellationToken> {
        self.running.lock().ok()?.remove(task_id)
    }

    /// The run's policy: the server's, tightened by what the caller asked.
    fn policy_for(&self, limits: &CallerLimits) -> RunPolicy {
        let mut p = self.policy.clone();
        if let Some(d) = limits.deadline {
            p.deadline = Some(p.deadline.map_or(d, |own| own.min(d)));
        }
        if let Some(b) = &limits.budget {
            if let Some(depth) = b.max_depth {
                p.max_depth = p.max_depth.min(depth);
            }
            if let Some(t) = b.tokens_left {
                p.max_tokens = Some(p.max_tokens.map_or(t, |own| own.min(t)));
            }
            if let Some(c) = b.cost_left {
                p.max_cost_usd = Some(p.max_cost_usd.map_or(c, |own| own.min(c)));
            }
        }
        p
    }

    /// Which orchestrator runs the message, and the task it runs.
    fn task_for(
        &self,
        message: &Message,
        limits: &CallerLimits,
    ) -> Result<(Orchestrator, TaskSpec), A2AError> {
        let input = value_of_parts(&message.parts)
            .ok_or_else(|| A2AError::invalid_params("invalid params: the message has no parts"))?;
        let text = text_of(&message.parts);
        let policy = self.policy_for(limits);
        match &self.target {
            Target::Kind {
                capabilities,
                orchestrators,
            } => {
                let cap = match &limits.capability {
                    Some(c) => c.as_str(),
                    None => capabilities.first().map(String::as_str).unwrap_or_default(),
                };
                let orchestrator = orchestrators.get(cap).ok_or_else(|| {
                    A2AError::invalid_params(format!(
                        "invalid params: no skill {cap:?}; skills are {}",
                        capabilities.join(", ")
                    ))
                })?;
                let goal = if text.is_empty() {
                    cap.to_owned()
                } else {
                    text
                };
                Ok((
                    orchestrator.clone(),
                    TaskSpec::new(goal).input(input).policy(policy),
                ))
            }
            Target::Orchestrator(o) => {
                let goal = if text.is_empty() {
                    input.to_string()
                } else {
                    text
                };
                let data = if input.is_string() {
                    Value::Null
                } else {
                    input
                };
                Ok((o.clone(), TaskSpec::new(goal).input(data).policy(policy)))
            }
        }
    }

    async fn run(&self, ctx: ExecutorContext, tx: &Events) -> Result<(), A2AError> {
        let (task_id, context_id) = ctx.task_info();
        let message = ctx
            .message
            .as_ref()
            .ok_or_else(|| A2AError::invalid_params("invalid params: no message"))?;
        let limits = caller_limits(&[message.metadata.as_ref(), ctx.metadata.as_ref()])
            .map_err(|e| A2AError::invalid_params(format!("invalid params: {e}")))?;
        let (orchestrator, task) = self.task_for(message, &limits)?;

        let token = CancellationToken::new();
        if let Ok(mut running) = self.running.lock() {
            running.insert(task_id.clone(), token.clone());
        }
        let send = |event: StreamResponse| async move { tx.send(Ok(event)).await.is_ok() };
        if !send(status(
            &task_id,
            &context_id,
            TaskState::Working,
            None,
            None,
        ))
        .await
        {
            return Ok(());
        }

        let mut handle = orchestrator.start(task);
        let run_cancel = handle.cancellation();
        let mut events = handle.events();
        let mut caller_gone = false;
        // Progress goes out in batches, one status update (a part per
        // progress value) at most every PROGRESS_EVERY: the SDK buffers 32
        // events per task for its subscribers, and an agent streaming text
        // word by word outruns an SSE reader, which would then be cut off.
        let mut pending: Vec<a2a_types::Part> = Vec::new();
        let mut flush_at: Option<tokio::time::Instant> = None;
        loop {
            let flush_timer = async {
                match flush_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let flush_now = tokio::select! {
                () = token.cancelled() => { run_cancel.cancel(); break; }
                () = tx.closed() => { run_cancel.cancel(); caller_gone = true; break; }
                () = flush_timer => true,
                record = events.next() => match record {
                    Some(record) => {
                        if let RunEvent::StepProgress { step, agent, data } = record.event {
                            let mut part = a2a_types::Part::data(data);
                            part.metadata = Some(HashMap::from([
                                ("coditect.step".to_owned(), json!(step)),
                                ("coditect.agent".to_owned(), json!(agent.to_string())),
                            ]));
                            pending.push(part);
                            flush_at.get_or_insert_with(|| tokio::time::Instant::now() + PROGRESS_EVERY);
                        }
                        pending.len() >= MAX_PARTS_PER_UPDATE
                    }
                    None => break,
                },
            };
            if flush_now && !pending.is_empty() {
                flush_at = None;
                let update = progress_update(&task_id, &context_id, std::mem::take(&mut pending));
                if !send(update).await {
                    run_cancel.cancel();
                    caller_gone = true;
                    break;
                }
            }
        }
        if !pending.is_empty() && !caller_gone && !token.is_cancelled() {
            let update = progress_update(&task_id, &context_id, std::mem::take(&mut pending));
            caller_gone = !send(update).await;
        }
        let outcome = handle.outcome().await;
        if token.is_cancelled() || caller_gone {
            // The cancel path already reported the task cancelled (or nobody
            // listens any more).
            return Ok(());
        }
        match outcome {
            Ok(outcome) => {
                let artifact = StreamResponse::ArtifactUpdate(TaskArtifactUpdateEvent {
                    task_id: task_id.clone(),
                    context_id: context_id.clone(),
                    artifact: Artifact {
                        artifact_id: new_artifact_id(),
                        name: Some("result".into()),
                        description: None,
                        parts: parts_of(&outcome.output),
                        metadata: None,
                        extensions: None,
                    },
                    append: None,
                    last_chunk: Some(true),
                    metadata: None,
                });
                if !send(artifact).await {
                    return Ok(());
                }
                let meta = HashMap::from([(META_USAGE.to_owned(), json!(outcome.usage))]);
                let reply = agent_message(&outcome.output, &context_id, &task_id, Some(meta));
                send(status(
                    &task_id,
                    &context_id,
                    TaskState::Completed,
                    Some(reply),
                    None,
                ))
                .await;
            }
            Err(e) => {
                let meta = HashMap::from([(META_USAGE.to_owned(), json!(e.state.usage))]);
                let reply = agent_message(&json!(e.message), &context_id, &task_id, Some(meta));
                send(status(
                    &task_id,
                    &context_id,
                    TaskState::Failed,
                    Some(reply),
                    None,
                ))
                .await;
            }
        }
        Ok(())
    }
}
