//! One live agent id: its mailbox, its state, and the task that drains it.
//!
//! Each activation has one small task that drains its mailbox: it parks on a
//! `Notify` when the mailbox is empty (a few hundred bytes, no buffer: the
//! queue's memory is given back) and ends when the id is deactivated or the
//! runtime shuts down. The work of one message is boxed, so a parked task holds
//! only its handles. As only that task touches the agent, messages to one id are
//! handled one at a time, in arrival order.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::Instrument;

use crate::agent::DynAgent;
use crate::body::Body;
use crate::context::AgentContext;
use crate::envelope::{Destination, Envelope, Failure, FailureKind, Payload};
use crate::id::{AgentId, MessageId};
use crate::id::{RunId, Topic};
use crate::orchestrator::Signal;
use crate::runtime::RuntimeInner;
use crate::runtime::cancel::{HandlerCancel, UntilCancelled};
use crate::runtime::deadlines::Expiry;
use crate::runtime::kind::KindHost;
use crate::transport::{Acker, Delivery};

pub(crate) struct Activation {
    pub(crate) id: AgentId,
    /// Wakes senders waiting for room in a full mailbox.
    pub(crate) room: Notify,
    /// Queued plus running messages: what load balancing compares.
    pub(crate) load: AtomicUsize,
    pub(crate) state: Mutex<State>,
    /// Wakes the drain task when a message is queued or the id is closing.
    pub(crate) wake: Notify,
}

pub(crate) struct State {
    pub(crate) queue: VecDeque<Delivery>,
    /// A drain task exists for this activation.
    pub(crate) task: bool,
    /// A message is being handled.
    pub(crate) busy: bool,
    /// Removed from its kind's table (deactivated): senders look again.
    pub(crate) dead: bool,
    pub(crate) agent: Option<Box<dyn DynAgent>>,
    pub(crate) current: Option<(MessageId, Arc<HandlerCancel>)>,
    pub(crate) last_active: Instant,
}

impl Activation {
    pub(crate) fn new(id: AgentId) -> Self {
        Self {
            id,
            room: Notify::new(),
            load: AtomicUsize::new(0),
            state: Mutex::new(State {
                queue: VecDeque::new(),
                task: false,
                busy: false,
                dead: false,
                agent: None,
                current: None,
                last_active: Instant::now(),
            }),
            wake: Notify::new(),
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
            Some((id, cancel)) if id == target => {
                cancel.cancel();
                true
            }
            _ => false,
        }
    }
}

/// Handles the queued messages of one activation, parking while there are
/// none, until the id is deactivated or the runtime shuts down.
pub(crate) async fn drain(act: Arc<Activation>, host: Arc<KindHost>, rt: Arc<RuntimeInner>) {
    // Reused from message to message while nothing else holds it.
    let mut cancel = Arc::new(HandlerCancel::default());
    loop {
        let next = {
            let Ok(mut st) = act.state.lock() else {
                return;
            };
            match st.queue.pop_front() {
                Some(d) => {
                    st.busy = true;
                    let agent = st.agent.take();
                    Some((d, agent, st.queue.len() + 1 >= host.mailbox))
                }
                None => {
                    // A small buffer (a delivery is three words) stays for the
                    // next message; one grown by a burst is given back.
                    if st.queue.capacity() > 8 {
                        st.queue = VecDeque::new();
                    }
                    if host.idle_timeout.is_some() {
                        st.last_active = Instant::now();
                    }
                    if st.dead || rt.draining.load(std::sync::atomic::Ordering::Acquire) {
                        st.task = false;
                        return;
                    }
                    None
                }
            }
        };
        let Some((delivery, agent, was_full)) = next else {
            act.wake.notified().await;
            continue;
        };
        if was_full {
            act.room.notify_one();
        }
        HandlerCancel::recycle(&mut cancel);
        // Boxed, so the parked task stays small.
        let agent = Box::pin(handle_one(&act, &host, &rt, delivery, agent, &cancel)).await;
        act.load.fetch_sub(1, Ordering::Relaxed);
        host.load.fetch_sub(1, Ordering::Relaxed);
        if let Ok(mut st) = act.state.lock() {
            st.agent = agent;
            st.current = None;
            st.busy = false;
        }
    }
}

async fn finish(rt: &RuntimeInner, env: &Envelope, acker: Acker, result: Result<Body, Failure>) {
    if let Err(f) = &result
        && env.reply_to.is_none()
    {
        tracing::warn!(message = %env.id, to = %env.to, failure = %f, "a message sent without a reply failed");
    }
    if env.reply_to.as_ref() == Some(&rt.node.id) {
        // The requester waits in this very process: hand it the answer
        // directly instead of routing a reply envelope back to ourselves.
        if !rt.node.pending.complete(&env.id, result) {
            tracing::debug!(request = %env.id, "reply for a request that is no longer waiting; dropped");
        }
    } else if let Some(reply) = env.reply(result)
        && let Err(e) = crate::transport::send_fast(rt.node.transport.as_ref(), reply).await
    {
        tracing::debug!(error = %e, request = %env.id, "reply could not be sent (the requester is gone)");
    }
    if let Err(e) = acker.ack().await {
        tracing::warn!(error = %e, message = %env.id, "ack failed; the transport may deliver the message again");
    }
}

/// Tells the run's orchestrator what this runtime does with one of its
/// messages (best effort: a lost signal only thins the trace).
async fn signal(rt: &RuntimeInner, env: &Envelope, run: RunId, signal: Signal) {
    let mut out = Envelope::new(
        env.tenant.clone(),
        Destination::Topic(Topic::for_run(run)),
        Payload::Message(Body::new(signal)),
    );
    out.run = Some(run);
    if let Err(e) = crate::transport::send_fast(rt.node.transport.as_ref(), out).await {
        tracing::debug!(error = %e, %run, "run signal not sent");
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
    cancel: &Arc<HandlerCancel>,
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
    if rt.is_stopped() {
        let f = Failure::new(FailureKind::ShuttingDown, "the runtime is shutting down").at(id);
        finish(rt, &envelope, acker, Err(f)).await;
        return agent;
    }
    let mut agent = match agent {
        Some(a) => a,
        // Boxed: only an id's first message needs it; kept out of the
        // future every message allocates.
        None => match Box::pin(host.activate(id)).await {
            Ok(a) => a,
            Err(f) => {
                finish(rt, &envelope, acker, Err(f)).await;
                return None;
            }
        },
    };
    let _permit = rt.concurrency.acquire().await;
    if rt.is_stopped() {
        cancel.cancel();
    }
    if let Ok(mut st) = act.state.lock() {
        st.current = Some((envelope.id, cancel.clone()));
    }
    if let Some(run) = envelope.run {
        signal(
            rt,
            &envelope,
            run,
            Signal::Started {
                message: envelope.id,
                parent: envelope.parent,
                step: envelope.step.clone(),
                agent: id.clone(),
                depth: envelope.depth,
            },
        )
        .await;
    }
    let span = tracing::debug_span!(
        "coditect.handle",
        agent = %id,
        message = %envelope.id,
        run = envelope.run.map(tracing::field::display),
        tenant = %envelope.tenant,
    );
    let ctx = AgentContext {
        node: rt.node.clone(),
        directory: rt.directory.clone(),
        me: id.clone(),
        env: envelope,
        cancel: cancel.clone(),
    };
    let (result, keep) = run_handler(rt, &mut agent, body, &ctx)
        .instrument(span)
        .await;
    let AgentContext { env: envelope, .. } = ctx;
    let result = result.map_err(|f| if f.agent.is_none() { f.at(id) } else { f });
    // A step's own message (no parent) is answered to the orchestrator by its
    // reply; only delegated work needs a separate "finished" signal.
    if let Some(run) = envelope.run.filter(|_| envelope.parent.is_some()) {
        let failure = result.as_ref().err().cloned();
        signal(
            rt,
            &envelope,
            run,
            Signal::Finished {
                message: envelope.id,
                failure,
            },
        )
        .await;
    }
    finish(rt, &envelope, acker, result).await;
    keep.then_some(agent)
}

/// Runs the handler under the deadline and the cancellation signal. Returns
/// the result and whether the agent value is still sound (it is not after a
/// panic).
async fn run_handler(
    rt: &RuntimeInner,
    agent: &mut Box<dyn DynAgent>,
    body: Body,
    ctx: &AgentContext,
) -> (Result<Body, Failure>, bool) {
    let deadline = ctx.env.deadline;
    // The node's deadline table fires the signal when the deadline passes. A
    // request from this very node needs no entry: its caller's own deadline
    // entry sends a cancel to this handler when it expires.
    let local_caller = ctx.env.reply_to.as_ref() == Some(&rt.node.id);
    let deadline_key = deadline.filter(|_| !local_caller).map(|d| {
        rt.node
            .deadlines
            .insert(d.instant(), Expiry::Cancel(ctx.cancel.clone()))
    });
    let result = run_guarded(rt, agent, body, ctx).await;
    if let Some(key) = deadline_key {
        rt.node.deadlines.remove(key);
    }
    result
}

async fn run_guarded(
    rt: &RuntimeInner,
    agent: &mut Box<dyn DynAgent>,
    body: Body,
    ctx: &AgentContext,
) -> (Result<Body, Failure>, bool) {
    let deadline = ctx.env.deadline;
    let cancel = &*ctx.cancel;
    let fut = AssertUnwindSafe(agent.handle_dyn(body, ctx)).catch_unwind();
    let mut fut = std::pin::pin!(fut);
    let stop_reason = || {
        if rt.is_stopped() {
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
    let finished = UntilCancelled {
        fut: fut.as_mut(),
        cancel,
    }
    .await;
    let stopped = match finished {
        Some(Ok(Ok(body))) => return (Ok(body), true),
        // An error after the signal fired is most likely the handler giving
        // up because of it: report why it was stopped.
        Some(Ok(Err(_))) if cancel.is_cancelled() => return (Err(stop_reason()), true),
        Some(Ok(Err(e))) => return (Err(e.to_failure(ctx.id())), true),
        Some(Err(panic)) => {
            let msg = panic_message(&*panic);
            tracing::error!(agent = %ctx.id(), message = %ctx.message_id(), panic = %msg, "handler panicked; the activation is dropped");
            return (
                Err(Failure::new(
                    FailureKind::Panicked,
                    format!("handler panicked: {msg}"),
                )),
                false,
            );
        }
        None => stop_reason(),
    };
    // Let a cooperative handler see its token and end cleanly, for a moment.
    let keep = match Box::pin(tokio::time::timeout(rt.config.cancel_grace, &mut fut)).await {
        Ok(Err(_panic)) => false,
        Ok(Ok(_)) => true,
        // Dropped mid-await: its state may be half-changed, so start afresh.
        Err(_) => false,
    };
    (Err(stopped), keep)
}
