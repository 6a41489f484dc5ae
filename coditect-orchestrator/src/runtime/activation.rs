//! One live agent id: its mailbox, its state, and the task that drains it.
//!
//! Each activation has one small task that drains its mailbox: it parks on a
//! `Notify` when the mailbox is empty (a few hundred bytes, no buffer: the
//! queue's memory is given back) and ends when the id is deactivated or the
//! runtime shuts down. The work of one message is boxed, so a parked task holds
//! only its handles. As only that task touches the agent, messages to one id are
//! handled one at a time, in arrival order.

use std::collections::VecDeque;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};

use futures::FutureExt;
use futures::future::Either;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::Instrument;

use crate::agent::DynAgent;
use crate::body::Body;
use crate::context::AgentContext;
use crate::envelope::{Deadline, Destination, Envelope, Failure, FailureKind, Payload};
use crate::id::{AgentId, MessageId};
use crate::id::{RunId, Topic};
use crate::report::{Signal, SignalKind, Tally};
use crate::runtime::RuntimeInner;
use crate::runtime::call::Node;
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
    /// A cancellation cell kept for the next direct call.
    pub(crate) spare: Option<Arc<HandlerCancel>>,
    pub(crate) last_active: Instant,
    /// The drain task's waker while it is parked (nothing to handle). Whoever
    /// gives it something to do — a message queued, a direct call ended, the
    /// id closing, the runtime draining — takes it under this lock and wakes
    /// it; the task looks at the state again under the same lock before it
    /// parks, so no wake-up is lost and none is needed while it works.
    waker: Option<Waker>,
}

impl State {
    /// Takes the parked drain task's waker, to wake it once the lock is let
    /// go: there is something for it to look at.
    pub(crate) fn unpark(&mut self) -> Option<Waker> {
        self.waker.take()
    }
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
                spare: None,
                last_active: Instant::now(),
                waker: None,
            }),
        }
    }

    pub(crate) fn load(&self) -> usize {
        self.load.load(Ordering::Relaxed)
    }

    /// Counts a message in (queued, or claimed by a direct call). The count
    /// only changes under the state lock — `_held` is its guard's state — so
    /// a load and a store do, not an atomic read-modify-write; load balancing
    /// only reads it.
    pub(crate) fn count_in(&self, _held: &mut State) {
        let n = self.load.load(Ordering::Relaxed);
        self.load.store(n + 1, Ordering::Relaxed);
    }

    /// Counts a message out (handled, or withdrawn); see
    /// [`count_in`](Self::count_in).
    pub(crate) fn count_out(&self, _held: &mut State) {
        let n = self.load.load(Ordering::Relaxed);
        self.load.store(n.saturating_sub(1), Ordering::Relaxed);
    }

    /// Withdraws message `target` if it is here: the one being handled has
    /// its cancellation signal fired; one still queued is taken out of the
    /// mailbox, never to be handled (its sender gave up on it).
    pub(crate) fn withdraw(&self, target: &MessageId) -> Option<Withdrawn> {
        let Ok(mut state) = self.state.lock() else {
            return None;
        };
        if let Some((id, cancel)) = &state.current
            && id == target
        {
            cancel.cancel();
            return Some(Withdrawn::Running);
        }
        let at = state.queue.iter().position(|d| d.envelope.id == *target)?;
        let delivery = state.queue.remove(at)?;
        self.count_out(&mut state);
        Some(Withdrawn::Queued(delivery))
    }
}

/// What [`Activation::withdraw`] found of a cancelled message.
pub(crate) enum Withdrawn {
    /// It was being handled: its handler's cancellation signal fired.
    Running,
    /// It was still in the mailbox: here it is, taken out.
    Queued(Delivery),
}

/// Handles the queued messages of one activation, parking while there are
/// none, until the id is deactivated or the runtime shuts down.
pub(crate) async fn drain(act: Arc<Activation>, host: Arc<KindHost>, rt: Arc<RuntimeInner>) {
    // Reused from message to message while nothing else holds it.
    let mut cancel = Arc::new(HandlerCancel::default());
    // The agent value back from the last message: put back under the same
    // lock that takes the next message.
    let mut returned: Option<Option<Box<dyn DynAgent>>> = None;
    loop {
        let next = std::future::poll_fn(|cx| {
            let Ok(mut st) = act.state.lock() else {
                return Poll::Ready(None);
            };
            if let Some(agent) = returned.take() {
                st.agent = agent;
                st.current = None;
                st.busy = false;
                act.count_out(&mut st);
            }
            // A direct call holds the activation: its release wakes us.
            let next = if st.busy { None } else { st.queue.pop_front() };
            match next {
                Some(d) => {
                    HandlerCancel::recycle(&mut cancel);
                    st.busy = true;
                    st.current = Some((d.envelope.id, cancel.clone()));
                    let agent = st.agent.take();
                    let was_full = st.queue.len() + 1 >= host.mailbox;
                    Poll::Ready(Some((d, agent, was_full)))
                }
                None => {
                    // A small buffer (a delivery is three words) stays for the
                    // next message; one grown by a burst is given back.
                    if st.queue.is_empty() && st.queue.capacity() > 8 {
                        st.queue = VecDeque::new();
                    }
                    if host.idle_timeout.is_some() {
                        st.last_active = Instant::now();
                    }
                    if st.dead || rt.node.life.is_draining() {
                        st.task = false;
                        return Poll::Ready(None);
                    }
                    // Parked: the same task's waker is kept from the last
                    // time, not cloned again.
                    match &mut st.waker {
                        Some(w) => w.clone_from(cx.waker()),
                        none => *none = Some(cx.waker().clone()),
                    }
                    Poll::Pending
                }
            }
        })
        .await;
        let Some((delivery, agent, was_full)) = next else {
            return;
        };
        if was_full {
            act.room.notify_one();
        }
        // Boxed, so the parked task stays small.
        let agent = Box::pin(handle_one(&act, &host, &rt, delivery, agent, &cancel)).await;
        let left = host.load.fetch_sub(1, Ordering::Relaxed);
        crate::observe::metrics::mailbox_depth(&host.kind, left.saturating_sub(1));
        returned = Some(agent);
    }
}

/// What is left to wait for of some work done at once as far as it could
/// be (a reply or signal the transport could not take at once, an ack over
/// the network): boxed, so the futures that carry one stay small.
pub(crate) type Rest<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Answers a message and acks it. What can be done at once is done here;
/// the rest is returned boxed, so that the future of every message stays small.
pub(crate) fn finish<'a>(
    rt: &'a RuntimeInner,
    env: &Envelope,
    acker: Acker,
    result: Result<Body, Failure>,
    tally: Option<Box<Tally>>,
) -> Option<Rest<'a>> {
    if let Err(f) = &result
        && env.reply_to.is_none()
    {
        tracing::warn!(message = %env.id, to = %env.to, failure = %f, "a message sent without a reply failed");
    }
    hold_result(&rt.node, env, &result, tally.as_deref());
    let mut sending = None;
    if env.reply_to.as_ref() == Some(&rt.node.id) {
        // The requester waits in this very process: hand it the answer
        // directly instead of routing a reply envelope back to ourselves.
        let answer = crate::runtime::replies::ReplyResult { result, tally };
        if !rt.node.pending.complete(&env.id, answer) {
            tracing::debug!(request = %env.id, "reply for a request that is no longer waiting; dropped");
        }
    } else if let Some(mut reply) = env.reply(result) {
        reply.tally = tally;
        match rt.node.send_fast(reply) {
            Either::Left(sent) => {
                if let Err(e) = sent.into_inner() {
                    tracing::debug!(error = %e, request = %env.id, "reply could not be sent (the requester is gone)");
                }
            }
            Either::Right(send) => sending = Some(send),
        }
    }
    if sending.is_none() && acker.is_noop() {
        return None;
    }
    let id = env.id;
    Some(Box::pin(async move {
        if let Some(send) = sending
            && let Err(e) = send.await
        {
            bad_reply(rt, e).await;
        }
        if let Err(e) = acker.ack().await {
            tracing::warn!(error = %e, message = %id, "ack failed; the transport may deliver the message again");
        }
    }))
}

/// Sends a durable run's step result to the run's journal too, when the
/// step came from another process: the reply goes to the orchestrator that
/// sent the step, and should that one have died, whichever orchestrator
/// resumes the run takes the result from here (held for up to the
/// runtime's driver wait) instead of running the step again. Failures are
/// not held: the resumed run tries the step again anyway.
fn hold_result(
    node: &Arc<Node>,
    env: &Envelope,
    result: &Result<Body, Failure>,
    tally: Option<&Tally>,
) {
    let (Some(run), Some(step), Some(_), None, Some(to), Ok(body)) = (
        env.ctx.run,
        &env.ctx.step,
        &env.ctx.journal,
        env.ctx.parent,
        &env.reply_to,
        result,
    ) else {
        return;
    };
    if to == &node.id {
        return;
    }
    let Some(tally) = tally else {
        return;
    };
    let (Some(agent), Ok(output)) = (tally.agent.clone(), body.to_json_value()) else {
        // A result that cannot be encoded is answered with a failure.
        return;
    };
    let request = crate::journal::JournalRequest::Result {
        step: step.clone(),
        attempt: env.ctx.attempt,
        message: env.id,
        agent: agent.clone(),
        output,
        tally: tally.clone(),
    };
    let origin = crate::runtime::call::Origin {
        from: Some(agent),
        ctx: crate::CallContext {
            run: Some(run),
            trace: env.ctx.trace,
            ..crate::CallContext::default()
        },
    };
    let node = node.clone();
    let message = env.id;
    tokio::spawn(async move {
        let options = crate::runtime::call::RequestOptions {
            timeout: Some(std::time::Duration::from_secs(30)),
            ..Default::default()
        };
        let sent =
            crate::context::ask_driver(&node, &origin, run, &request, &options, None, None).await;
        if let Err(e) = sent {
            tracing::debug!(%run, %message, error = %e, "no driver of the run took the step's result");
        }
    });
}

/// A reply the transport would not send. One whose body cannot be encoded
/// is answered with a `BadOutput` failure instead, so the requester learns
/// why rather than waiting for its deadline.
async fn bad_reply(rt: &RuntimeInner, e: crate::transport::SendError) {
    use crate::transport::SendErrorKind;
    if e.kind() != SendErrorKind::Encode {
        tracing::debug!(error = %e, "reply could not be sent (the requester is gone)");
        return;
    }
    let message = e.to_string();
    let Some(mut reply) = e.into_envelope() else {
        return;
    };
    let type_name = match &reply.payload {
        Payload::Reply(Ok(body)) => body.type_name(),
        _ => "reply",
    };
    tracing::warn!(request = ?reply.correlation, %message, "a handler's result cannot be encoded; answering with a failure");
    reply.payload = Payload::Reply(Err(Failure::new(
        FailureKind::BadOutput,
        format!("the handler's result, a {type_name}, cannot be encoded: {message}"),
    )));
    if let Err(e) = rt.node.transport.send(reply).await {
        tracing::debug!(error = %e, "failure reply could not be sent");
    }
}

/// Tells the run's driver what this runtime does with one of its messages
/// (best effort: the reply's tally says how many reports there were, so a
/// lost one is noticed). Sent at once when the transport can; otherwise the
/// returned future finishes the send.
fn signal(node: &Node, env: &Envelope, run: RunId, signal: Signal) -> Option<Rest<'static>> {
    let mut out = Envelope::new(
        env.tenant.clone(),
        Destination::Topic(Topic::for_run(run)),
        Payload::Message(Body::new(signal)),
    );
    out.ctx.run = Some(run);
    match node.try_send(out) {
        Ok(()) => None,
        Err(crate::transport::TrySend::Failed(e)) => {
            tracing::debug!(error = %e, %run, "run signal not sent");
            None
        }
        // A transport without a fast path (NATS), or a full inbox: the send
        // owns a handle to the transport, so it can outlive this borrow.
        Err(crate::transport::TrySend::Wait(out)) => {
            let transport = node.transport.clone();
            Some(Box::pin(async move {
                if let Err(e) = transport.send(*out).await {
                    tracing::debug!(error = %e, %run, "run signal not sent");
                }
            }))
        }
    }
}

/// The "started" signal of a message of a run (its report number 0): which
/// agent took it.
pub(crate) fn signal_started(
    node: &Node,
    env: &Envelope,
    agent: &AgentId,
) -> Option<Rest<'static>> {
    let run = env.ctx.run?;
    let started = Signal {
        message: env.id,
        root: env.ctx.root.unwrap_or(env.id),
        seq: 0,
        step: env.ctx.step.clone(),
        agent: agent.clone(),
        kind: SignalKind::Started {
            parent: env.ctx.parent,
            depth: env.ctx.depth,
        },
    };
    signal(node, env, run, started)
}

/// Closes the tally of a handled message of a run and sends the "finished"
/// signal of delegated work (a step's own message, which has no parent, is
/// answered to the orchestrator by its reply alone). `None` outside a run.
pub(crate) fn close_tally(
    node: &Node,
    env: &Envelope,
    agent: &AgentId,
    tally: &crate::report::TallyCell,
    result: &Result<Body, Failure>,
) -> (Option<Box<Tally>>, Option<Rest<'static>>) {
    let Some(run) = env.ctx.run else {
        return (None, None);
    };
    let rest = if env.ctx.parent.is_some() {
        let finished = Signal {
            message: env.id,
            root: env.ctx.root.unwrap_or(env.id),
            seq: tally.next_report(),
            step: env.ctx.step.clone(),
            agent: agent.clone(),
            kind: SignalKind::Finished {
                failure: result.as_ref().err().cloned(),
            },
        };
        signal(node, env, run, finished)
    } else {
        None
    };
    let mut t = tally.take();
    t.agent = Some(agent.clone());
    (Some(Box::new(t)), rest)
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
///
/// Every rarely taken wait (activation, a full concurrency bound, a transport
/// that cannot take a signal or reply at once) is boxed, so the future of a
/// message holds little more than the handler's own.
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
    // Scoped, so that the refusal is not kept in the future's state across
    // the handler's awaits (the state of every message is one allocation,
    // kept small enough for the allocator's per-thread cache).
    let body = {
        let refused = match std::mem::replace(&mut envelope.payload, Payload::Cancel(envelope.id)) {
            Payload::Message(body) if !rt.is_stopped() => Ok(body),
            Payload::Message(_) => Err(Failure::new(
                FailureKind::ShuttingDown,
                "the runtime is shutting down",
            )),
            other => {
                tracing::warn!(message = %envelope.id, "unexpected payload in a mailbox: {other:?}");
                Err(Failure::new(FailureKind::BadInput, "not a message"))
            }
        };
        match refused {
            Ok(body) => body,
            Err(f) => {
                if let Some(rest) = finish(rt, &envelope, acker, Err(f.at(id)), None) {
                    rest.await;
                }
                return agent;
            }
        }
    };
    let mut agent = match agent {
        Some(a) => a,
        // Boxed: only an id's first message needs it.
        None => match Box::pin(host.activate(id)).await {
            Ok(a) => a,
            Err(f) => {
                if let Some(rest) = finish(rt, &envelope, acker, Err(f), None) {
                    rest.await;
                }
                return None;
            }
        },
    };
    let _slot = match rt.node.concurrency.try_acquire() {
        Some(slot) => slot,
        None => Box::pin(rt.node.concurrency.acquire()).await,
    };
    if rt.is_stopped() {
        cancel.cancel();
    }
    let observed = crate::observe::spans::invoke_agent(id, &envelope);
    let ctx = AgentContext::new(rt.node.clone(), id.clone(), envelope, cancel.clone());
    if !ctx.defers_start()
        && let Some(rest) = ctx.report_start()
    {
        rest.await;
    }
    // The node's deadline table fires the signal when the deadline passes. A
    // request from this very node needs no entry: its caller's own deadline
    // entry sends a cancel to this handler when it expires.
    let local_caller = ctx.env.reply_to.as_ref() == Some(&rt.node.id);
    let deadline_key = ctx.env.ctx.deadline.filter(|_| !local_caller).map(|d| {
        rt.node
            .deadlines
            .insert(d.instant(), Expiry::Cancel(cancel.clone()))
    });
    let (result, keep) = {
        let handler = AssertUnwindSafe(agent.handle_dyn(body, &ctx)).catch_unwind();
        let mut handler = std::pin::pin!(handler);
        match until_done(handler.as_mut(), &ctx)
            .instrument(observed.span.clone())
            .await
        {
            Some(outcome) => settle(&rt.node, outcome, &ctx),
            // Rare, so boxed: the future of every message stays small.
            None => {
                Box::pin(wind_down(&rt.node, handler, &ctx))
                    .instrument(observed.span.clone())
                    .await
            }
        }
    };
    if let Some(key) = deadline_key {
        rt.node.deadlines.remove(key);
    }
    let result = result.map_err(|f| if f.agent.is_none() { f.at(id) } else { f });
    observed.finish(&result);
    let (tally, rest) = close_tally(&rt.node, &ctx.env, id, &ctx.tally, &result);
    if let Some(rest) = rest {
        rest.await;
    }
    let AgentContext { env: envelope, .. } = ctx;
    if let Some(rest) = finish(rt, &envelope, acker, result, tally) {
        rest.await;
    }
    keep.then_some(agent)
}

/// Runs a handler until it finishes or is cancelled (`None`). The first time
/// it has to wait, its message's deferred `Started` report is made: a step
/// that takes a while is one a watcher wants to see started.
pub(crate) async fn until_done<F: Future + ?Sized>(
    fut: Pin<&mut F>,
    ctx: &AgentContext,
) -> Option<F::Output> {
    let mut until = UntilCancelled {
        fut,
        cancel: &ctx.cancel,
    };
    if let std::task::Poll::Ready(out) = futures::poll!(&mut until) {
        return out;
    }
    if let Some(rest) = ctx.report_start() {
        rest.await;
    }
    until.await
}

/// Why a handler was stopped before it finished.
pub(crate) fn stop_reason(node: &Node, deadline: Option<Deadline>) -> Failure {
    if node.is_stopped() {
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
}

pub(crate) type HandlerOutcome = std::thread::Result<Result<Body, crate::agent::AgentError>>;

/// The result of a handler that finished, and whether the agent value is
/// still sound (it is not after a panic).
pub(crate) fn settle(
    node: &Node,
    outcome: HandlerOutcome,
    ctx: &AgentContext,
) -> (Result<Body, Failure>, bool) {
    match outcome {
        Ok(Ok(body)) => (Ok(body), true),
        // An error after the signal fired is most likely the handler giving
        // up because of it: report why it was stopped.
        Ok(Err(_)) if ctx.cancel.is_cancelled() => {
            (Err(stop_reason(node, ctx.env.ctx.deadline)), true)
        }
        Ok(Err(e)) => (Err(e.to_failure(ctx.id())), true),
        Err(panic) => {
            let msg = panic_message(&*panic);
            tracing::error!(agent = %ctx.id(), message = %ctx.message_id(), panic = %msg, "handler panicked; the activation is dropped");
            (
                Err(Failure::new(
                    FailureKind::Panicked,
                    format!("handler panicked: {msg}"),
                )),
                false,
            )
        }
    }
}

/// A cancelled handler: lets a cooperative one see its token and end cleanly,
/// for a moment, then drops it.
pub(crate) async fn wind_down<F: Future<Output = HandlerOutcome>>(
    node: &Node,
    handler: Pin<&mut F>,
    ctx: &AgentContext,
) -> (Result<Body, Failure>, bool) {
    let stopped = stop_reason(node, ctx.env.ctx.deadline);
    let keep = match tokio::time::timeout(node.cancel_grace, handler).await {
        Ok(Err(_panic)) => false,
        Ok(Ok(_)) => true,
        // Dropped mid-await: its state may be half-changed, so start afresh.
        Err(_) => false,
    };
    (Err(stopped), keep)
}
