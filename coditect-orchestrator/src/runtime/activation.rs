//! One live agent id: its mailbox, its state, and the task that drains it.
//!
//! An idle activation holds no task and no buffer — only the agent value and a
//! few words of bookkeeping — so a million idle agents cost a million small
//! structs, not a million parked tasks. A drain task is spawned when the first
//! message arrives at an idle activation and ends when the mailbox is empty;
//! as only that task touches the agent, messages to one id are handled one at
//! a time, in arrival order.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::agent::DynAgent;
use crate::body::Body;
use crate::context::AgentContext;
use crate::envelope::{Envelope, Failure, FailureKind, Payload};
use crate::id::{AgentId, MessageId};
use crate::runtime::RuntimeInner;
use crate::runtime::kind::KindHost;
use crate::transport::{Acker, Delivery};

pub(crate) struct Activation {
    pub(crate) id: AgentId,
    /// Free mailbox slots: a sender takes one before queueing (backpressure).
    pub(crate) slots: Semaphore,
    /// Queued plus running messages: what load balancing compares.
    pub(crate) load: AtomicUsize,
    pub(crate) state: Mutex<State>,
}

pub(crate) struct State {
    pub(crate) queue: VecDeque<Delivery>,
    pub(crate) running: bool,
    /// Removed from its kind's table (deactivated): senders look again.
    pub(crate) dead: bool,
    pub(crate) agent: Option<Box<dyn DynAgent>>,
    pub(crate) current: Option<(MessageId, CancellationToken)>,
    pub(crate) last_active: Instant,
}

impl Activation {
    pub(crate) fn new(id: AgentId, mailbox: usize) -> Self {
        Self {
            id,
            slots: Semaphore::new(mailbox),
            load: AtomicUsize::new(0),
            state: Mutex::new(State {
                queue: VecDeque::new(),
                running: false,
                dead: false,
                agent: None,
                current: None,
                last_active: Instant::now(),
            }),
        }
    }

    pub(crate) fn load(&self) -> usize {
        self.load.load(Ordering::Relaxed)
    }

    /// Cancels the message being handled if it is `target`.
    pub(crate) fn cancel_if_current(&self, target: &MessageId) -> bool {
        let Ok(state) = self.state.lock() else {
            return false;
        };
        match &state.current {
            Some((id, token)) if id == target => {
                token.cancel();
                true
            }
            _ => false,
        }
    }
}

/// Handles every queued message of one activation, then ends.
pub(crate) async fn drain(act: Arc<Activation>, host: Arc<KindHost>, rt: Arc<RuntimeInner>) {
    loop {
        let (delivery, agent) = {
            let Ok(mut st) = act.state.lock() else {
                return;
            };
            match st.queue.pop_front() {
                Some(d) => {
                    let agent = st.agent.take();
                    (d, agent)
                }
                None => {
                    st.running = false;
                    // Give the buffer back: an idle agent holds no memory for it.
                    st.queue = VecDeque::new();
                    st.last_active = Instant::now();
                    return;
                }
            }
        };
        act.slots.add_permits(1);
        let agent = handle_one(&act, &host, &rt, delivery, agent).await;
        act.load.fetch_sub(1, Ordering::Relaxed);
        host.load.fetch_sub(1, Ordering::Relaxed);
        if let Ok(mut st) = act.state.lock() {
            st.agent = agent;
            st.current = None;
        }
    }
}

async fn finish(rt: &RuntimeInner, env: &Envelope, acker: Acker, result: Result<Body, Failure>) {
    if let Err(f) = &result
        && env.reply_to.is_none()
    {
        tracing::warn!(message = %env.id, to = %env.to, failure = %f, "a message sent without a reply failed");
    }
    if let Some(reply) = env.reply(result)
        && let Err(e) = rt.node.transport.send(reply).await
    {
        tracing::debug!(error = %e, request = %env.id, "reply could not be sent (the requester is gone)");
    }
    if let Err(e) = acker.ack().await {
        tracing::warn!(error = %e, message = %env.id, "ack failed; the transport may deliver the message again");
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "handler panicked".to_owned()
    }
}

/// Handles one delivery; gives back the agent to keep (none if it panicked or
/// could not be made).
async fn handle_one(
    act: &Activation,
    host: &KindHost,
    rt: &Arc<RuntimeInner>,
    delivery: Delivery,
    agent: Option<Box<dyn DynAgent>>,
) -> Option<Box<dyn DynAgent>> {
    let Delivery {
        mut envelope,
        acker,
    } = delivery;
    let id = &act.id;
    let body = match std::mem::replace(&mut envelope.payload, Payload::Cancel(envelope.id)) {
        Payload::Message(body) => body,
        other => {
            tracing::warn!(message = %envelope.id, "unexpected payload in a mailbox: {other:?}");
            finish(
                rt,
                &envelope,
                acker,
                Err(Failure::new(FailureKind::BadInput, "not a message").at(id)),
            )
            .await;
            return agent;
        }
    };
    if rt.shutdown.is_cancelled() {
        let f = Failure::new(FailureKind::ShuttingDown, "the runtime is shutting down").at(id);
        finish(rt, &envelope, acker, Err(f)).await;
        return agent;
    }
    if envelope.deadline.is_some_and(|d| d.is_past()) {
        let f = Failure::new(
            FailureKind::Timeout,
            "deadline passed before the message was handled",
        )
        .at(id);
        finish(rt, &envelope, acker, Err(f)).await;
        return agent;
    }
    let mut agent = match agent {
        Some(a) => a,
        None => match host.activate(id).await {
            Ok(a) => a,
            Err(f) => {
                finish(rt, &envelope, acker, Err(f)).await;
                return None;
            }
        },
    };
    let _permit = rt.concurrency.acquire().await.ok();

    let token = rt.shutdown.child_token();
    if let Ok(mut st) = act.state.lock() {
        st.current = Some((envelope.id, token.clone()));
    }
    let ctx = AgentContext {
        node: rt.node.clone(),
        directory: rt.directory.clone(),
        me: id.clone(),
        message: envelope.id,
        from: envelope.from.clone(),
        tenant: envelope.tenant.clone(),
        run: envelope.run,
        depth: envelope.depth,
        deadline: envelope.deadline,
        attempt: envelope.attempt,
        chain: envelope.chain.clone(),
        trace: envelope.trace,
        cancel: token.clone(),
    };
    let span = tracing::debug_span!(
        "coditect.handle",
        agent = %id,
        message = %envelope.id,
        run = envelope.run.map(tracing::field::display),
        tenant = %envelope.tenant,
    );
    let (result, keep) = run_handler(rt, &mut agent, body, &ctx, token)
        .instrument(span)
        .await;
    drop(ctx);
    finish(rt, &envelope, acker, result.map_err(|f| f.at(id))).await;
    keep.then_some(agent)
}

/// Runs the handler under the deadline and the cancellation token. Returns the
/// result and whether the agent value is still sound (it is not after a panic).
async fn run_handler(
    rt: &RuntimeInner,
    agent: &mut Box<dyn DynAgent>,
    body: Body,
    ctx: &AgentContext,
    token: CancellationToken,
) -> (Result<Body, Failure>, bool) {
    let deadline = ctx.deadline;
    let fut = AssertUnwindSafe(agent.handle_dyn(body, ctx)).catch_unwind();
    let mut fut = std::pin::pin!(fut);
    let sleep = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d.instant()).await,
            None => std::future::pending().await,
        }
    };
    let stop_reason = || {
        if rt.shutdown.is_cancelled() {
            Failure::new(
                FailureKind::ShuttingDown,
                "the runtime shut down while the handler ran",
            )
        } else if deadline.is_some_and(|d| d.is_past()) {
            Failure::new(
                FailureKind::Timeout,
                "the deadline passed while the handler ran",
            )
        } else {
            Failure::new(FailureKind::Cancelled, "the request was cancelled")
        }
    };
    let stopped = tokio::select! {
        biased;
        r = &mut fut => {
            return match r {
                Ok(Ok(body)) => (Ok(body), true),
                // An error after the token fired is most likely the handler
                // giving up because of it: report why it was stopped.
                Ok(Err(_)) if token.is_cancelled() => (Err(stop_reason()), true),
                Ok(Err(e)) => (Err(e.to_failure(ctx.id())), true),
                Err(panic) => {
                    let msg = panic_message(&*panic);
                    tracing::error!(agent = %ctx.id(), message = %ctx.message_id(), panic = %msg, "handler panicked; the activation is dropped");
                    (Err(Failure::new(FailureKind::Panicked, format!("handler panicked: {msg}"))), false)
                }
            };
        }
        () = sleep => Failure::new(FailureKind::Timeout, "the deadline passed while the handler ran"),
        () = token.cancelled() => stop_reason(),
    };
    // Let a cooperative handler see its token and end cleanly, for a moment.
    token.cancel();
    let keep = match tokio::time::timeout(rt.config.cancel_grace, &mut fut).await {
        Ok(Err(_panic)) => false,
        Ok(Ok(_)) => true,
        // Dropped mid-await: its state may be half-changed, so start afresh.
        Err(_) => false,
    };
    (Err(stopped), keep)
}
