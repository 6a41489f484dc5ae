//! The envelope every message travels in, and what it can carry.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::body::Body;
use crate::call_context::CallContext;
use crate::id::{AgentId, AgentKind, MessageId, NodeId, RunId, TenantId, Topic};
use crate::report::Tally;

/// Where a message goes.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Destination {
    /// One agent id: handled by its single activation, in order.
    Agent(AgentId),
    /// Any agent of a kind: load-balanced over its instances, in any process.
    Kind(AgentKind),
    /// Every subscriber of a topic.
    Topic(Topic),
    /// The requests-in-flight table of one node: replies go here.
    Reply(NodeId),
}

impl fmt::Debug for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Agent(id) => write!(f, "agent {id}"),
            Destination::Kind(k) => write!(f, "kind {k}"),
            Destination::Topic(t) => write!(f, "topic {t}"),
            Destination::Reply(n) => write!(f, "replies of {n}"),
        }
    }
}

impl From<AgentId> for Destination {
    fn from(id: AgentId) -> Self {
        Destination::Agent(id)
    }
}

impl From<&AgentId> for Destination {
    fn from(id: &AgentId) -> Self {
        Destination::Agent(id.clone())
    }
}

impl From<AgentKind> for Destination {
    fn from(kind: AgentKind) -> Self {
        Destination::Kind(kind)
    }
}

impl From<&AgentKind> for Destination {
    fn from(kind: &AgentKind) -> Self {
        Destination::Kind(kind.clone())
    }
}

impl From<Topic> for Destination {
    fn from(topic: Topic) -> Self {
        Destination::Topic(topic)
    }
}

/// A point in time after which nobody waits for the answer any more.
///
/// In one process it is an instant of tokio's clock (so tests can pause time);
/// on the wire it travels as the time that remains, as gRPC does, so clocks of
/// different hosts need not agree.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Deadline(Instant);

impl Deadline {
    /// The deadline `after` from now (a century at most).
    pub fn after(after: Duration) -> Self {
        Self::after_from(Instant::now(), after)
    }

    /// The deadline `after` from `now` (a century at most).
    pub(crate) fn after_from(now: Instant, after: Duration) -> Self {
        const CENTURY: Duration = Duration::from_secs(100 * 365 * 86_400);
        Deadline(now + after.min(CENTURY))
    }

    /// The deadline at an instant.
    pub fn at(instant: Instant) -> Self {
        Deadline(instant)
    }

    /// The instant.
    pub fn instant(&self) -> Instant {
        self.0
    }

    /// The time left, zero if passed.
    pub fn remaining(&self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }

    /// Whether the deadline has passed.
    pub fn is_past(&self) -> bool {
        Instant::now() >= self.0
    }

    /// The earlier of two optional deadlines.
    pub fn earliest(a: Option<Deadline>, b: Option<Deadline>) -> Option<Deadline> {
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, None) => a,
            (None, b) => b,
        }
    }
}

impl fmt::Debug for Deadline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Deadline(in {:?})", self.remaining())
    }
}

impl Serialize for Deadline {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Milliseconds left, rounded up so a live deadline never arrives as 0.
        let left = self.remaining();
        let ms =
            left.as_millis() as u64 + u64::from(!left.subsec_nanos().is_multiple_of(1_000_000));
        s.serialize_u64(ms)
    }
}

impl<'de> Deserialize<'de> for Deadline {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let ms = u64::deserialize(d)?;
        Ok(Deadline::after(Duration::from_millis(
            ms.min(u64::from(u32::MAX)),
        )))
    }
}

/// W3C trace context, carried so spans of one run join up across processes.
#[derive(Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TraceContext {
    /// The trace id (all zeros: none).
    pub trace_id: u128,
    /// The id of the span that sent this message.
    pub parent_span: u64,
}

impl TraceContext {
    /// The `traceparent` header value (`00-<trace>-<span>-01`).
    pub fn traceparent(&self) -> String {
        format!("00-{:032x}-{:016x}-01", self.trace_id, self.parent_span)
    }

    /// Parses a `traceparent` header value.
    pub fn from_traceparent(s: &str) -> Option<Self> {
        let mut parts = s.split('-');
        let _version = parts.next()?;
        let trace_id = u128::from_str_radix(parts.next()?, 16).ok()?;
        let parent_span = u64::from_str_radix(parts.next()?, 16).ok()?;
        Some(Self {
            trace_id,
            parent_span,
        })
    }

    /// Whether any trace is being carried.
    pub fn is_empty(&self) -> bool {
        self.trace_id == 0
    }
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.traceparent())
    }
}

/// The agents that are waiting, each on the next, for this request to be
/// answered: the call chain. A request to an agent already in the chain would
/// wait on itself forever, so it fails at once with a cycle error instead.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CallChain(Option<Arc<[AgentId]>>);

impl CallChain {
    /// The empty chain.
    pub fn new() -> Self {
        Self(None)
    }

    /// The agents in the chain, the first caller first.
    pub fn agents(&self) -> &[AgentId] {
        self.0.as_deref().unwrap_or(&[])
    }

    /// Whether `id` is waiting in this chain.
    pub fn contains(&self, id: &AgentId) -> bool {
        self.agents().contains(id)
    }

    /// The chain with `id` appended.
    pub fn with(&self, id: &AgentId) -> Self {
        let mut v = Vec::with_capacity(self.agents().len() + 1);
        v.extend_from_slice(self.agents());
        v.push(id.clone());
        Self(Some(v.into()))
    }

    /// How many agents are in the chain.
    pub fn len(&self) -> usize {
        self.agents().len()
    }

    /// Whether the chain is empty.
    pub fn is_empty(&self) -> bool {
        self.agents().is_empty()
    }
}

impl fmt::Debug for CallChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for CallChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, id) in self.agents().iter().enumerate() {
            if i > 0 {
                f.write_str(" -> ")?;
            }
            write!(f, "{id}")?;
        }
        Ok(())
    }
}

/// What went wrong on the far side of a request, as it travels back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct Failure {
    /// What kind of failure.
    pub kind: FailureKind,
    /// What happened, for a person.
    pub message: String,
    /// The agent that failed, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentId>,
    /// Whether trying again may succeed.
    #[serde(default)]
    pub transient: bool,
}

impl Failure {
    /// A failure of a kind with a message.
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            agent: None,
            transient: kind.is_transient_by_default(),
        }
    }

    /// Names the agent that failed.
    #[must_use]
    pub fn at(mut self, agent: &AgentId) -> Self {
        self.agent = Some(agent.clone());
        self
    }
}

/// The kinds of [`Failure`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FailureKind {
    /// The handler returned an error.
    Handler,
    /// The handler panicked; the activation was dropped and will be made anew.
    Panicked,
    /// No agent of that kind is registered anywhere reachable.
    NoSuchAgent,
    /// The body was not what the agent takes.
    BadInput,
    /// The handler's result could not be encoded (it names the type).
    BadOutput,
    /// A step's input refers to an output that is not there.
    UnresolvedInput,
    /// The deadline passed before the handler finished.
    Timeout,
    /// The request was cancelled (its caller gave up or its run was cancelled).
    Cancelled,
    /// The request would have waited on an agent that is itself waiting in the
    /// same call chain.
    CallCycle,
    /// The runtime hosting the agent is shutting down.
    ShuttingDown,
    /// A run policy (depth, fan-out, budget) refused the work.
    Policy,
    /// Anything else.
    Other,
}

impl FailureKind {
    fn is_transient_by_default(self) -> bool {
        matches!(
            self,
            FailureKind::Timeout | FailureKind::ShuttingDown | FailureKind::Panicked
        )
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailureKind::Handler => "handler error",
            FailureKind::Panicked => "handler panicked",
            FailureKind::NoSuchAgent => "no such agent",
            FailureKind::BadInput => "bad input",
            FailureKind::BadOutput => "bad output",
            FailureKind::UnresolvedInput => "unresolved input",
            FailureKind::Timeout => "timed out",
            FailureKind::Cancelled => "cancelled",
            FailureKind::CallCycle => "call cycle",
            FailureKind::ShuttingDown => "shutting down",
            FailureKind::Policy => "policy",
            FailureKind::Other => "failed",
        })
    }
}

/// What an envelope carries.
#[derive(Debug)]
pub enum Payload {
    /// A message for an agent (a request if the envelope has `reply_to`).
    Message(Body),
    /// The answer to the request whose id is the envelope's `correlation`.
    Reply(Result<Body, Failure>),
    /// Stop working on the request with this id: its caller gave up.
    Cancel(MessageId),
}

/// Every message, with what the system needs to route, bound and trace it.
#[derive(Debug)]
#[non_exhaustive]
pub struct Envelope {
    /// This message's id.
    pub id: MessageId,
    /// The tenant it belongs to.
    pub tenant: TenantId,
    /// The agent that sent it (none for messages from outside any agent).
    pub from: Option<AgentId>,
    /// Where it goes.
    pub to: Destination,
    /// For a reply: the id of the request it answers.
    pub correlation: Option<MessageId>,
    /// For a request: the node the reply goes to.
    pub reply_to: Option<NodeId>,
    /// The run context: run, step, parent, depth, deadline, attempt, trace,
    /// call chain and budget.
    pub ctx: CallContext,
    /// For a reply of a message of a run: what its handling reported.
    pub tally: Option<Box<Tally>>,
    /// What it carries.
    pub payload: Payload,
}

impl Envelope {
    /// A new envelope with a fresh id, attempt 1 and nothing else set.
    pub fn new(tenant: TenantId, to: Destination, payload: Payload) -> Self {
        Self::with_id(MessageId::new(), tenant, to, payload)
    }

    /// A new envelope with a given id, attempt 1 and nothing else set.
    pub(crate) fn with_id(
        id: MessageId,
        tenant: TenantId,
        to: Destination,
        payload: Payload,
    ) -> Self {
        Self {
            id,
            tenant,
            from: None,
            to,
            correlation: None,
            reply_to: None,
            ctx: CallContext::default(),
            tally: None,
            payload,
        }
    }

    /// The run it belongs to, if any.
    pub fn run(&self) -> Option<RunId> {
        self.ctx.run
    }

    /// Whether the sender waits for a reply.
    pub fn is_request(&self) -> bool {
        self.reply_to.is_some() && matches!(self.payload, Payload::Message(_))
    }

    /// The reply to this request, addressed back to its sender. `None` if this
    /// is not a request.
    pub fn reply(&self, result: Result<Body, Failure>) -> Option<Envelope> {
        let node = self.reply_to.clone()?;
        // A reply has the id of its request: one answer per request, which is
        // also what de-duplicates a reply published twice.
        Some(Envelope {
            id: self.id,
            tenant: self.tenant.clone(),
            from: None,
            to: Destination::Reply(node),
            correlation: Some(self.id),
            reply_to: None,
            ctx: CallContext {
                run: self.ctx.run,
                depth: self.ctx.depth,
                attempt: self.ctx.attempt,
                trace: self.ctx.trace,
                ..CallContext::default()
            },
            tally: None,
            payload: Payload::Reply(result),
        })
    }

    /// A copy of a message for one more subscriber (the same id: it is the
    /// same message). `None` for a reply, or a body that cannot be copied.
    pub(crate) fn copy(&mut self) -> Option<Envelope> {
        let payload = match &mut self.payload {
            Payload::Message(body) => Payload::Message(body.try_clone().ok()?),
            Payload::Cancel(id) => Payload::Cancel(*id),
            Payload::Reply(_) => return None,
        };
        Some(Envelope {
            id: self.id,
            tenant: self.tenant.clone(),
            from: self.from.clone(),
            to: self.to.clone(),
            correlation: self.correlation,
            reply_to: self.reply_to.clone(),
            ctx: self.ctx.clone(),
            tally: self.tally.clone(),
            payload,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_detects_members_and_prints_path() {
        let a = AgentId::new("a", "1").unwrap();
        let b = AgentId::new("b", "1").unwrap();
        let chain = CallChain::new().with(&a).with(&b);
        assert!(chain.contains(&a) && chain.contains(&b));
        assert_eq!(chain.to_string(), "a/1 -> b/1");
        assert!(!CallChain::new().contains(&a));
    }

    #[test]
    fn traceparent_round_trips() {
        let t = TraceContext {
            trace_id: 0xabc,
            parent_span: 0x12,
        };
        assert_eq!(TraceContext::from_traceparent(&t.traceparent()), Some(t));
        assert_eq!(TraceContext::from_traceparent("garbage"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_travels_as_time_left() {
        let d = Deadline::after(Duration::from_millis(1500));
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, "1500");
        let back: Deadline = serde_json::from_str(&json).unwrap();
        assert_eq!(back.remaining(), Duration::from_millis(1500));
    }

    #[test]
    fn failure_round_trips() {
        let f = Failure::new(FailureKind::Timeout, "slow").at(&AgentId::new("a", "b").unwrap());
        assert!(f.transient);
        let json = serde_json::to_string(&f).unwrap();
        assert_eq!(serde_json::from_str::<Failure>(&json).unwrap(), f);
    }
}
