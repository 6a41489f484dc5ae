//! Direct calls: a request from this process to an idle agent of this process
//! runs the handler in the caller's task; and a message from another process
//! to an idle agent runs it in the task that delivered it (see [`deliver`]).
//!
//! The usual path of a request queues the message in the agent's mailbox,
//! wakes the agent's drain task, and has that task wake the caller again with
//! the answer: two task switches and, on a multi-threaded runtime, often two
//! threads. When the transport delivers in process and the target id is idle —
//! activated, nothing running, nothing queued — none of that is needed: the
//! caller claims the activation (so that it stays one message at a time),
//! polls the handler itself, and gives the activation back. Most handlers
//! finish in that first poll; one that waits gets its deadline entry then, not
//! before.
//!
//! Everything a handler can observe stays as on the usual path: its context,
//! the run's signals, the concurrency bound, the deadline and cancellation
//! (including the grace period: a caller that gives up hands the unfinished
//! handler to a task of its own, which cancels it and waits the grace period
//! out), panics contained. Messages that arrive meanwhile queue up and are
//! handed to the drain task when the call ends.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures::FutureExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tracing::Instrument;

use crate::agent::DynAgent;
use crate::body::Body;
use crate::context::AgentContext;
use crate::envelope::{Deadline, Destination, Envelope, Failure, Payload};
use crate::error::RequestError;
use crate::report::Tally;
use crate::runtime::activation::{
    Activation, close_tally, settle, stop_reason, until_done, wind_down,
};
use crate::runtime::call::Node;
use crate::runtime::cancel::{HandlerCancel, UntilCancelled};
use crate::runtime::deadlines::{DeadlineKey, Expiry};
use crate::runtime::kind::{Claim, KindHost};
use crate::transport::LocalInbox;

/// What a finished handler leaves: its result, the agent if still sound, and
/// the context (which holds the message's envelope).
struct Done {
    result: Result<Body, Failure>,
    agent: Option<Box<dyn DynAgent>>,
    ctx: AgentContext,
}

type Call = Pin<Box<dyn Future<Output = Done> + Send>>;

/// A handler's result with what its handling reported.
type Answer = (Result<Body, Failure>, Option<Box<Tally>>);

/// What a request gets back: its result and the reply's tally.
type Reply = (Result<Body, RequestError>, Option<Box<Tally>>);

/// A send still to finish, owning what it needs.
type Rest = crate::runtime::activation::Rest<'static>;

/// The handler of a direct call, owning everything it borrows.
async fn run(
    mut agent: Box<dyn DynAgent>,
    ctx: AgentContext,
    body: Body,
    observed: crate::observe::spans::AgentSpan,
) -> Done {
    let (result, keep) = {
        let handler = AssertUnwindSafe(agent.handle_dyn(body, &ctx)).catch_unwind();
        let mut handler = std::pin::pin!(handler);
        match until_done(handler.as_mut(), &ctx).await {
            Some(outcome) => settle(&ctx.node, outcome, &ctx),
            // Rare: boxed, so the future of every call stays small.
            None => Box::pin(wind_down(&ctx.node, handler, &ctx)).await,
        }
    };
    let id = ctx.id();
    let result = result.map_err(|f| if f.agent.is_none() { f.at(id) } else { f });
    observed.finish(&result);
    Done {
        result,
        agent: keep.then_some(agent),
        ctx,
    }
}

/// What a direct call holds until it ends, besides the handler.
struct Parts {
    /// When the caller stops waiting.
    due: Option<Deadline>,
    host: Arc<dyn LocalInbox>,
    act: Arc<Activation>,
    cancel: Arc<HandlerCancel>,
    deadline: Option<DeadlineKey>,
    _tracked: TaskTrackerToken,
}

impl Parts {
    fn host(&self) -> Option<&KindHost> {
        self.host.as_any().downcast_ref::<KindHost>()
    }

    /// Ends the call: removes the deadline entry, sends the "finished" signal
    /// of delegated work, gives the activation and the concurrency slot back.
    /// What must wait (a signal the transport could not take at once) is
    /// returned, boxed.
    fn end(self, done: Done) -> (Answer, Option<Rest>) {
        let (answer, rest, _) = self.end_keeping(done);
        (answer, rest)
    }

    /// [`end`](Self::end), handing back the message's envelope too (what a
    /// reply is addressed from).
    fn end_keeping(self, done: Done) -> (Answer, Option<Rest>, Box<Envelope>) {
        let Done { result, agent, ctx } = done;
        let node = &ctx.node;
        if let Some(key) = self.deadline {
            node.deadlines.remove(key);
        }
        let (tally, rest) = close_tally(node, &ctx.env, &self.act.id, &ctx.tally, &result);
        if let Some(host) = self.host() {
            host.release(&self.act, agent, self.cancel.clone());
        }
        node.concurrency.release();
        let AgentContext { env, .. } = ctx;
        ((result, tally), rest, env)
    }

    /// Ends a call whose handler was dropped unfinished: the agent value goes
    /// with it (its state may be half-changed).
    fn abandon(self) {
        let Some(host) = self.host() else { return };
        if let Some(node) = host.node() {
            if let Some(key) = self.deadline {
                node.deadlines.remove(key);
            }
            node.concurrency.release();
        }
        host.release(&self.act, None, self.cancel.clone());
    }
}

/// A direct call in progress. Dropped before the handler finished (the caller
/// gave up), it hands the handler to a task of its own to wind down.
struct DirectCall {
    call: Option<Call>,
    parts: Option<Parts>,
}

impl Drop for DirectCall {
    fn drop(&mut self) {
        let (Some(call), Some(parts)) = (self.call.take(), self.parts.take()) else {
            return;
        };
        // The caller gave up while the handler ran: cancel it and let it wind
        // down in a task of its own (as a handler on the usual path would).
        parts.cancel.cancel();
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    let done = call.await;
                    if let (_, Some(rest)) = parts.end(done) {
                        rest.await;
                    }
                });
            }
            Err(_) => {
                drop(call);
                parts.abandon();
            }
        }
    }
}

/// A request that cannot be answered in place: its envelope, and the
/// in-process inbox it goes to when the route was looked up already.
pub(crate) type NotDirect = (Box<Envelope>, Option<Arc<dyn LocalInbox>>);

/// Tries to answer a request in the caller's task. Hands the envelope back
/// (with the inbox found for it, so the mailbox path need not look again)
/// when the target is not an idle agent of this node.
pub(crate) async fn try_call(
    node: &Arc<Node>,
    mut env: Box<Envelope>,
    timeout: Duration,
    cancel: Option<&CancellationToken>,
    to: &Destination,
) -> Result<Reply, NotDirect> {
    let Some(inbox) = node
        .memory
        .as_ref()
        .and_then(|m| m.local_inbox(&env.tenant, &env.to))
    else {
        return Err((env, None));
    };
    let Some(host) = inbox
        .as_any()
        .downcast_ref::<KindHost>()
        .filter(|h| h.direct_calls())
    else {
        // The mailbox path: its wait for the answer counts against the
        // task's cooperative budget already.
        return Err((env, Some(inbox)));
    };
    // A handler that answers at once never makes the caller wait, so a task
    // that calls in a loop would never yield to the scheduler: count each
    // direct call against the task's cooperative budget, as a channel
    // operation is, so that it yields now and then.
    tokio::task::consume_budget().await;
    // Only a message can be answered in place.
    let body = match std::mem::replace(&mut env.payload, Payload::Cancel(env.id)) {
        Payload::Message(body) => body,
        other => {
            env.payload = other;
            return Err((env, Some(inbox)));
        }
    };
    let claim = host.claim(node, &env);
    let Some(claim) = claim else {
        env.payload = Payload::Message(body);
        return Err((env, Some(inbox)));
    };
    Ok(call(node, inbox, claim, env, body, timeout, cancel, to).await)
}

#[allow(clippy::too_many_arguments)]
async fn call(
    node: &Arc<Node>,
    inbox: Arc<dyn LocalInbox>,
    claim: Claim,
    env: Box<Envelope>,
    body: Body,
    timeout: Duration,
    cancel: Option<&CancellationToken>,
    to: &Destination,
) -> Reply {
    // Everything up to the handler's first poll is synchronous, and the
    // future of a request holds little besides the call: requests in flight
    // by the thousand (a wide plan) each keep one.
    let (mut flight, started) = start(node, inbox, claim, env, body);
    let first = first_poll(&mut flight, started).await;
    match first {
        Poll::Ready(done) => {
            let ((result, tally), rest) = end_call(&mut flight, done);
            if let Some(rest) = rest {
                rest.await;
            }
            (result.map_err(|f| RequestError::from_failure(f, to)), tally)
        }
        // A handler that waits: boxed, so the common case stays small.
        Poll::Pending => Box::pin(wait(node, flight, timeout, cancel, to)).await,
    }
}

/// Claims done, sets up the handler of a direct call: its context, the run's
/// "started" signal (returned if it must still be sent), and the call.
fn start(
    node: &Arc<Node>,
    inbox: Arc<dyn LocalInbox>,
    claim: Claim,
    env: Box<Envelope>,
    body: Body,
) -> (DirectCall, Option<Rest>) {
    let Claim {
        act,
        agent,
        cancel: cell,
    } = claim;
    let parts = Parts {
        due: env.ctx.deadline,
        host: inbox,
        act,
        cancel: cell,
        deadline: None,
        _tracked: node.tracker.token(),
    };
    let observed = crate::observe::spans::invoke_agent(&parts.act.id, &env);
    let span = observed.span.clone();
    let ctx = AgentContext::new(
        node.clone(),
        parts.act.id.clone(),
        env,
        parts.cancel.clone(),
    );
    let started = if ctx.defers_start() {
        None
    } else {
        ctx.report_start()
    };
    let call: Call = if span.is_disabled() {
        Box::pin(run(agent, ctx, body, observed))
    } else {
        Box::pin(run(agent, ctx, body, observed).instrument(span))
    };
    (
        DirectCall {
            call: Some(call),
            parts: Some(parts),
        },
        started,
    )
}

/// Sends the call's "started" report if it had to wait, then polls the
/// handler once, inline: most handlers finish here and never need a
/// deadline entry.
async fn first_poll(flight: &mut DirectCall, started: Option<Rest>) -> Poll<Done> {
    if let Some(rest) = started {
        rest.await;
    }
    std::future::poll_fn(|cx| {
        Poll::Ready(match flight.call.as_mut() {
            Some(call) => call.as_mut().poll(cx),
            None => Poll::Pending,
        })
    })
    .await
}

/// Ends a call whose handler finished.
fn end_call(flight: &mut DirectCall, done: Done) -> (Answer, Option<Rest>) {
    flight.call = None;
    match flight.parts.take() {
        Some(parts) => parts.end(done),
        None => ((done.result, None), None),
    }
}

/// The rest of a direct call whose handler waits: under its deadline, the
/// caller's cancellation and the runtime's shutdown.
async fn wait(
    node: &Arc<Node>,
    mut flight: DirectCall,
    timeout: Duration,
    cancel: Option<&CancellationToken>,
    to: &Destination,
) -> Reply {
    let (Some(call), Some(parts)) = (flight.call.as_mut(), flight.parts.as_mut()) else {
        return (Err(RequestError::ShuttingDown), None);
    };
    let deadline = parts.due.unwrap_or_else(|| Deadline::after(timeout));
    parts.deadline = Some(
        node.deadlines
            .insert(deadline.instant(), Expiry::Cancel(parts.cancel.clone())),
    );
    let caller_cancelled = async {
        match cancel {
            Some(c) => c.cancelled().await,
            None => std::future::pending().await,
        }
    };
    let watched = UntilCancelled {
        fut: call.as_mut(),
        cancel: &parts.cancel,
    };
    let outcome = tokio::select! {
        biased;
        done = watched => done,
        () = caller_cancelled => None,
    };
    let Some(done) = outcome else {
        // Stopped before it finished: the deadline passed, the caller was
        // cancelled, or the runtime is shutting down. Dropping `flight` winds
        // the handler down in a task of its own; the caller has its answer now.
        let at = &parts.act.id;
        let err = if cancel.is_some_and(|c| c.is_cancelled()) {
            RequestError::Cancelled(to.clone())
        } else if deadline.is_past() {
            RequestError::Timeout {
                to: to.clone(),
                after: timeout,
            }
        } else {
            // Shut down, or cancelled by a `Cancel` message.
            RequestError::Failed(stop_reason(node, None).at(at))
        };
        return (Err(err), None);
    };
    let ((result, tally), rest) = end_call(&mut flight, done);
    if let Some(rest) = rest {
        rest.await;
    }
    (result.map_err(|f| RequestError::from_failure(f, to)), tally)
}

/// Handles a message that a transport brought from another process in the
/// delivering task (a subscription's pump) when its agent is idle, as a
/// direct call does for a request from this process: no mailbox, no wake-up
/// of a drain task. The handler's first poll runs here; most handlers answer
/// in it, and the reply and the ack go out before the next message is taken.
/// A handler that waits goes on in a task of its own, under its deadline
/// (the entry made then), so the pump is free again at once. Everything else
/// is as on the mailbox path: one message at a time per id (a message that
/// arrives meanwhile queues and is handed to the drain task when this one
/// ends), the concurrency bound, cancellation, the reply and the ack after
/// the result, a durable step's result held for a resumed run.
///
/// Hands the delivery back when the target is not an idle, live agent of
/// this kind (or the kind has direct calls off).
pub(crate) async fn deliver(
    host: &KindHost,
    rt: &Arc<crate::runtime::RuntimeInner>,
    delivery: crate::transport::Delivery,
) -> Result<(), crate::transport::Delivery> {
    let crate::transport::Delivery {
        mut envelope,
        acker,
    } = delivery;
    let give_back = |envelope, acker| crate::transport::Delivery { envelope, acker };
    // Only a message is handled in place; its body is put back if not.
    let body = match std::mem::replace(&mut envelope.payload, Payload::Cancel(envelope.id)) {
        Payload::Message(body) => body,
        other => {
            envelope.payload = other;
            return Err(give_back(envelope, acker));
        }
    };
    let node = &rt.node;
    // The activation's owner is the kind's own handle (found by name: the
    // one registered must be this very host).
    let claimed = host.claim(node, &envelope).and_then(|claim| {
        match rt
            .kind_host(&host.kind)
            .filter(|h| std::ptr::eq(Arc::as_ptr(h), host))
        {
            Some(owner) => Some((claim, owner)),
            None => {
                host.release(&claim.act, Some(claim.agent), claim.cancel);
                node.concurrency.release();
                None
            }
        }
    });
    let Some((claim, owner)) = claimed else {
        envelope.payload = Payload::Message(body);
        return Err(give_back(envelope, acker));
    };
    let owner: Arc<dyn LocalInbox> = owner;
    let (mut flight, started) = start(node, owner, claim, envelope, body);
    let first = first_poll(&mut flight, started).await;
    let (Some(call), Some(mut parts)) = (flight.call.take(), flight.parts.take()) else {
        return Ok(());
    };
    match first {
        Poll::Ready(done) => answer(rt, parts, done, acker).await,
        Poll::Pending => {
            let rt = rt.clone();
            tokio::spawn(async move {
                if let Some(due) = parts.due {
                    parts.deadline = Some(
                        rt.node
                            .deadlines
                            .insert(due.instant(), Expiry::Cancel(parts.cancel.clone())),
                    );
                }
                // The call winds the handler down itself when its cell is
                // cancelled (deadline, a `Cancel` message, shutdown).
                let done = call.await;
                answer(&rt, parts, done, acker).await;
            });
        }
    }
    Ok(())
}

/// Ends an inline delivery: the activation given back, then the reply (or
/// the failure) sent and the message acked, as the drain task would.
async fn answer(
    rt: &crate::runtime::RuntimeInner,
    parts: Parts,
    done: Done,
    acker: crate::transport::Acker,
) {
    let ((result, tally), rest, envelope) = parts.end_keeping(done);
    if let Some(rest) = rest {
        rest.await;
    }
    if let Some(rest) = crate::runtime::activation::finish(rt, &envelope, acker, result, tally) {
        rest.await;
    }
}
