//! Envelopes on the wire: subjects, headers and payload.
//!
//! A message's payload is the body's JSON bytes as they are (no second
//! encoding); everything else about the envelope travels in the header
//! `Coditect-Meta` as one compact JSON object, with the trace context also in
//! the W3C `traceparent` header so other tools can follow it. Durable tasks
//! carry `Nats-Msg-Id` = the envelope id, so a retried publish is stored once.
//!
//! Subjects (every name is validated to hold only `[A-Za-z0-9_-]`, so none can
//! smuggle a `.`, `*` or `>` into a subject):
//!
//! | destination | subject |
//! |---|---|
//! | kind, at most once | `coditect.<tenant>.kind.<kind>` (queue group `<kind>`) |
//! | kind, durable task | `coditect.<tenant>.task.<kind>` (work-queue stream) |
//! | one id, durable | `coditect.<tenant>.task.<kind>.p<partition>` (one of 16, by key) |
//! | one id, at most once | `coditect.<tenant>.agent.<kind>.<key>` |
//! | topic | `coditect.<tenant>.topic.<topic>` |
//! | cancels for a kind or its ids | `coditect.<tenant>.cancel.<kind>` (every worker of the kind) |
//! | replies of a node | `coditect.<tenant>.reply.<node>.<request id>` |
//! | replies asked for again | `coditect.<tenant>.recall` (JSON `{"ids": [...]}`) |
//! | dead letters | `coditect.<tenant>.dead.<kind>` |

use async_nats::HeaderMap;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::body::Body;
use crate::call_context::CallContext;
use crate::envelope::{Destination, Envelope, Failure, Payload, TraceContext};
use crate::id::{AgentId, AgentKind, MessageId, NodeId, TenantId};
use crate::report::Tally;

/// The root token of every coditect subject.
pub const PREFIX: &str = "coditect";
/// The header holding the envelope's metadata.
pub const META_HEADER: &str = "Coditect-Meta";
/// The header of a dead letter saying why it died.
pub const DEAD_REASON_HEADER: &str = "Coditect-Dead-Reason";
/// The header of a dead letter naming the subject it was found on.
pub const DEAD_SUBJECT_HEADER: &str = "Coditect-Dead-Subject";

/// Everything about an envelope but its body. The run context is the
/// [`CallContext`] as it is, so a new field there travels with no edit here.
#[derive(Serialize, Deserialize)]
struct Meta {
    id: MessageId,
    tenant: TenantId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    from: Option<AgentId>,
    to: Destination,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    correlation: Option<MessageId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reply_to: Option<NodeId>,
    #[serde(default)]
    ctx: CallContext,
    /// `m` message, `r` reply, `c` cancel.
    p: char,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    failure: Option<Failure>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cancel: Option<MessageId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tally: Option<Box<Tally>>,
}

/// Why bytes off the wire are not an envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The message has no `Coditect-Meta` header.
    #[error("no Coditect-Meta header: not a coditect envelope")]
    MissingMeta,
    /// The metadata header is not valid.
    #[error("malformed Coditect-Meta header: {0}")]
    BadMeta(String),
    /// The envelope names another tenant than its subject.
    #[error("envelope tenant {envelope} does not match subject tenant {subject}")]
    TenantMismatch {
        /// The tenant in the envelope.
        envelope: String,
        /// The tenant in the subject.
        subject: String,
    },
    /// Larger than this transport accepts.
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The body could not be encoded.
    #[error("cannot encode the body: {0}")]
    Encode(String),
}

/// The subject of a destination.
pub(crate) fn subject(tenant: &TenantId, to: &Destination, durable_kind: bool) -> String {
    match to {
        Destination::Agent(id) => format!("{PREFIX}.{tenant}.agent.{}.{}", id.kind(), id.key()),
        Destination::Kind(k) if durable_kind => task_subject(tenant, k),
        Destination::Kind(k) => format!("{PREFIX}.{tenant}.kind.{k}"),
        Destination::Topic(t) => format!("{PREFIX}.{tenant}.topic.{t}"),
        Destination::Reply(n) => format!("{PREFIX}.{tenant}.reply.{n}"),
    }
}

/// The subject cancels for a kind (or one of its ids) go to: every worker
/// hosting the kind listens, since any of them may be handling the message.
pub(crate) fn cancel_subject(tenant: &TenantId, kind: &AgentKind) -> String {
    format!("{PREFIX}.{tenant}.cancel.{kind}")
}

/// The durable task subject of a kind.
pub(crate) fn task_subject(tenant: &TenantId, kind: &AgentKind) -> String {
    format!("{PREFIX}.{tenant}.task.{kind}")
}

/// The durable subject of the partition holding an id's messages.
pub(crate) fn partition_subject(tenant: &TenantId, kind: &AgentKind, p: u32) -> String {
    format!("{PREFIX}.{tenant}.task.{kind}.p{p}")
}

/// The dead-letter subject of a kind (or `_` when unknown).
pub(crate) fn dead_subject(tenant: &TenantId, kind: Option<&str>) -> String {
    format!("{PREFIX}.{tenant}.dead.{}", kind.unwrap_or("_"))
}

/// The subjects of every id of a kind (what the kind's workers subscribe to).
pub(crate) fn ids_subject(tenant: &TenantId, kind: &AgentKind) -> String {
    format!("{PREFIX}.{tenant}.agent.{kind}.*")
}

/// The subjects of a tenant's work-queue stream (every task).
pub(crate) fn tasks_subject(tenant: &TenantId) -> String {
    format!("{PREFIX}.{tenant}.task.>")
}

/// The subjects of a tenant's dead-letter stream.
pub(crate) fn dead_letters_subject(tenant: &TenantId) -> String {
    format!("{PREFIX}.{tenant}.dead.>")
}

/// The subject reply recalls of a tenant go to.
pub(crate) fn recall_subject(tenant: &TenantId) -> String {
    format!("{PREFIX}.{tenant}.recall")
}

/// The prefix of a tenant's NATS request inboxes (inside the tenant's
/// subjects, so a tenant's credentials cover them).
pub(crate) fn inbox_prefix(tenant: &TenantId) -> String {
    format!("{PREFIX}.{tenant}.inbox")
}

/// The tenant token of a coditect subject, if it is one.
pub(crate) fn subject_tenant(subject: &str) -> Option<&str> {
    let mut parts = subject.split('.');
    (parts.next()? == PREFIX).then_some(())?;
    parts.next()
}

/// Encodes an envelope: headers and payload.
///
/// ```
/// use coditect_orchestrator::transport::nats::wire;
/// use coditect_orchestrator::{AgentKind, Body, Destination, Envelope, Payload, TenantId};
/// let env = Envelope::new(
///     TenantId::default(),
///     Destination::Kind(AgentKind::new("echo")?),
///     Payload::Message(Body::new("hi".to_string())),
/// );
/// let (headers, payload) = wire::encode(&env)?;
/// assert_eq!(&payload[..], b"\"hi\"");
/// let back = wire::decode(Some(&headers), payload, Some("default"), 1 << 20)?;
/// assert_eq!(back.id, env.id);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// [`WireError::Encode`] if the body cannot be encoded.
pub fn encode(env: &Envelope) -> Result<(HeaderMap, Bytes), WireError> {
    let (p, body, failure, cancel) = match &env.payload {
        Payload::Message(b) => ('m', Some(b), None, None),
        Payload::Reply(Ok(b)) => ('r', Some(b), None, None),
        Payload::Reply(Err(f)) => ('r', None, Some(f.clone()), None),
        Payload::Cancel(id) => ('c', None, None, Some(*id)),
    };
    let payload = match body {
        Some(b) => b.encode().map_err(|e| WireError::Encode(e.to_string()))?,
        None => Bytes::new(),
    };
    let meta = Meta {
        id: env.id,
        tenant: env.tenant.clone(),
        from: env.from.clone(),
        to: env.to.clone(),
        correlation: env.correlation,
        reply_to: env.reply_to.clone(),
        ctx: env.ctx.clone(),
        p,
        failure,
        cancel,
        tally: env.tally.clone(),
    };
    let json = serde_json::to_string(&meta).map_err(|e| WireError::Encode(e.to_string()))?;
    let mut headers = HeaderMap::new();
    headers.insert(META_HEADER, json.as_str());
    if !env.ctx.trace.is_empty() {
        headers.insert("traceparent", env.ctx.trace.traceparent().as_str());
    }
    Ok((headers, payload))
}

/// The encoded size of headers and payload, as the server counts it (close
/// enough: a few bytes of framing more or less).
pub(crate) fn encoded_len(headers: &HeaderMap, payload: &Bytes) -> usize {
    let mut n = payload.len() + 12;
    for (k, vs) in headers.iter() {
        for v in vs {
            n += AsRef::<str>::as_ref(k).len() + v.as_str().len() + 4;
        }
    }
    n
}

/// Decodes a message off the wire. `subject_tenant` is the tenant token of
/// the subject it arrived on: an envelope may not claim another tenant.
/// `limit` is the largest payload taken.
///
/// # Errors
/// [`WireError`] for anything that is not a valid coditect envelope: it never
/// panics on input.
pub fn decode(
    headers: Option<&HeaderMap>,
    payload: Bytes,
    subject_tenant: Option<&str>,
    limit: usize,
) -> Result<Envelope, WireError> {
    if payload.len() > limit {
        return Err(WireError::TooLarge {
            size: payload.len(),
            limit,
        });
    }
    let meta = headers
        .and_then(|h| h.get(META_HEADER))
        .ok_or(WireError::MissingMeta)?;
    let meta: Meta =
        serde_json::from_str(meta.as_str()).map_err(|e| WireError::BadMeta(e.to_string()))?;
    if let Some(t) = subject_tenant
        && t != meta.tenant.as_str()
    {
        return Err(WireError::TenantMismatch {
            envelope: meta.tenant.to_string(),
            subject: t.to_owned(),
        });
    }
    let payload = match (meta.p, meta.failure, meta.cancel) {
        ('m', None, None) => Payload::Message(Body::from_json(payload)),
        ('r', None, None) => Payload::Reply(Ok(Body::from_json(payload))),
        ('r', Some(f), None) => Payload::Reply(Err(f)),
        ('c', None, Some(id)) => Payload::Cancel(id),
        (p, ..) => {
            return Err(WireError::BadMeta(format!(
                "payload kind {p:?} does not fit the fields given"
            )));
        }
    };
    let trace = headers
        .and_then(|h| h.get("traceparent"))
        .and_then(|v| TraceContext::from_traceparent(v.as_str()))
        .unwrap_or_default();
    let mut ctx = meta.ctx;
    ctx.trace = trace;
    ctx.attempt = ctx.attempt.max(1);
    Ok(Envelope {
        id: meta.id,
        tenant: meta.tenant,
        from: meta.from,
        to: meta.to,
        correlation: meta.correlation,
        reply_to: meta.reply_to,
        ctx,
        tally: meta.tally,
        payload,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn tenant() -> TenantId {
        TenantId::new("acme").unwrap()
    }

    #[test]
    fn envelope_round_trips() {
        let id = AgentId::new("a", "b").unwrap();
        let mut env = Envelope::new(
            tenant(),
            Destination::Agent(id.clone()),
            Payload::Message(Body::new(vec![1, 2, 3])),
        );
        env.reply_to = Some(NodeId::new("n1").unwrap());
        env.ctx.chain = crate::envelope::CallChain::new().with(&id);
        env.ctx.trace = TraceContext {
            trace_id: 7,
            parent_span: 9,
        };
        let (h, p) = encode(&env).unwrap();
        let back = decode(Some(&h), p, Some("acme"), 1 << 20).unwrap();
        assert_eq!(back.id, env.id);
        assert_eq!(back.ctx.chain, env.ctx.chain);
        assert_eq!(back.ctx.trace, env.ctx.trace);
        assert_eq!(back.reply_to, env.reply_to);
        let Payload::Message(b) = back.payload else {
            panic!("not a message")
        };
        assert_eq!(b.take::<Vec<i32>>().unwrap(), vec![1, 2, 3]);
    }

    #[test]
    fn bad_input_is_a_typed_error() {
        assert_eq!(
            decode(None, Bytes::from_static(b"x"), None, 10).unwrap_err(),
            WireError::MissingMeta
        );
        let mut h = HeaderMap::new();
        h.insert(META_HEADER, "{nope");
        assert!(matches!(
            decode(Some(&h), Bytes::new(), None, 10),
            Err(WireError::BadMeta(_))
        ));
        assert!(matches!(
            decode(Some(&h), Bytes::from_static(b"0123456789ab"), None, 10),
            Err(WireError::TooLarge { .. })
        ));
        let env = Envelope::new(
            tenant(),
            Destination::Kind(AgentKind::new("k").unwrap()),
            Payload::Cancel(MessageId::new()),
        );
        let (h, p) = encode(&env).unwrap();
        assert!(matches!(
            decode(Some(&h), p, Some("other"), 10),
            Err(WireError::TenantMismatch { .. })
        ));
    }

    /// A valid envelope's header, to mutate.
    fn valid_meta(reply: bool) -> String {
        let id = AgentId::new("a", "b").unwrap();
        let mut env = Envelope::new(
            tenant(),
            Destination::Agent(id.clone()),
            if reply {
                Payload::Reply(Err(crate::envelope::Failure::new(
                    crate::envelope::FailureKind::Handler,
                    "no",
                )))
            } else {
                Payload::Message(Body::new("x".to_string()))
            },
        );
        env.reply_to = Some(NodeId::new("n1").unwrap());
        env.ctx.chain = crate::envelope::CallChain::new().with(&id);
        let (h, _) = encode(&env).unwrap();
        h.get(META_HEADER).unwrap().as_str().to_owned()
    }

    /// Either a typed error, or an envelope that is whole: its tenant is the
    /// subject's, and it encodes and decodes again to the same message.
    fn check(meta: Option<&str>, payload: Vec<u8>, traceparent: Option<&str>) {
        let mut h = HeaderMap::new();
        if let Some(m) = meta {
            h.insert(META_HEADER, m);
        }
        if let Some(t) = traceparent {
            h.insert("traceparent", t);
        }
        let headers = meta.is_some().then_some(&h);
        match decode(headers, Bytes::from(payload), Some("acme"), 4096) {
            Err(e) => assert!(!e.to_string().is_empty()),
            Ok(env) => {
                assert_eq!(env.tenant.as_str(), "acme");
                let (h2, p2) = encode(&env).unwrap();
                let again = decode(Some(&h2), p2, Some("acme"), 1 << 20).unwrap();
                assert_eq!(again.id, env.id);
                assert_eq!(again.to, env.to);
                assert_eq!(again.ctx.chain, env.ctx.chain);
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2048))]

        #[test]
        fn random_headers_and_bytes_never_panic(
            meta in proptest::option::of("[^\r\n]{0,200}"),
            payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..5000),
            trace in proptest::option::of("[0-9a-f-]{0,60}"),
        ) {
            check(meta.as_deref(), payload, trace.as_deref());
        }

        #[test]
        fn mutated_valid_headers_never_panic(
            reply in proptest::prelude::any::<bool>(),
            edits in proptest::collection::vec(
                (
                    proptest::prelude::any::<proptest::sample::Index>(),
                    0u8..4,
                    // JSON's own characters and a few letters, so that edits
                    // hit structure and values, not only string contents.
                    proptest::sample::select("{}[]\":,.-0123456789abcmnprtz \\".chars().collect::<Vec<_>>()),
                ),
                1..4,
            ),
            payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
        ) {
            let mut meta: Vec<char> = valid_meta(reply).chars().collect();
            for (at, op, c) in edits {
                if meta.is_empty() {
                    break;
                }
                let i = at.index(meta.len());
                match op {
                    0 => meta[i] = c,
                    1 => { meta.remove(i); }
                    2 => meta.insert(i, c),
                    _ => meta.truncate(i),
                }
            }
            // Header values cannot hold line breaks.
            let meta: String = meta.into_iter().filter(|c| *c != '\r' && *c != '\n').collect();
            check(Some(&meta), payload, None);
        }
    }
}
