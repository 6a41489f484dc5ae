//! Identifiers: who an agent is, which run and tenant a message belongs to, and
//! the time-ordered ids of messages and runs.
//!
//! Every name that can end up in a NATS subject (kinds, keys, tenants, topic
//! tokens, node ids) is validated when it is made, so nothing malformed ever
//! reaches a subject: 1 to 128 bytes of ASCII letters, digits, `-` and `_`.

use smol_str::SmolStr;
use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The longest name (kind, key, tenant, topic token) accepted, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// A name or id that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {input:?}: {reason}")]
pub struct IdError {
    what: &'static str,
    input: String,
    reason: IdErrorReason,
}

impl IdError {
    fn new(what: &'static str, input: &str, reason: IdErrorReason) -> Self {
        let mut input = input.to_owned();
        if input.len() > 64 {
            let mut cut = 64;
            while !input.is_char_boundary(cut) {
                cut -= 1;
            }
            input.truncate(cut);
            input.push('…');
        }
        Self {
            what,
            input,
            reason,
        }
    }

    /// What was wrong with the input.
    pub fn reason(&self) -> &IdErrorReason {
        &self.reason
    }

    /// What kind of name was being parsed (`"agent kind"`, `"tenant"`, …).
    pub fn what(&self) -> &'static str {
        self.what
    }
}

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdErrorReason {
    /// The name was empty.
    #[error("it is empty")]
    Empty,
    /// The name was longer than [`MAX_NAME_LEN`].
    #[error("it is longer than {MAX_NAME_LEN} bytes")]
    TooLong,
    /// The name held a character that cannot appear in a subject token.
    #[error(
        "character {ch:?} at byte {at} is not allowed (use ASCII letters, digits, '-' and '_')"
    )]
    InvalidChar {
        /// The character refused.
        ch: char,
        /// Its byte offset.
        at: usize,
    },
    /// An agent id lacked the `/` between kind and key.
    #[error("expected \"kind/key\"")]
    MissingSeparator,
    /// A run or message id was not a UUID.
    #[error("not a UUID")]
    NotUuid,
}

fn validate_token(what: &'static str, s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::new(what, s, IdErrorReason::Empty));
    }
    if s.len() > MAX_NAME_LEN {
        return Err(IdError::new(what, s, IdErrorReason::TooLong));
    }
    if let Some((at, ch)) = s
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(IdError::new(what, s, IdErrorReason::InvalidChar { ch, at }));
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$meta:meta])* $name:ident, $what:literal) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(SmolStr);

        impl $name {
            /// Parses and validates a name.
            ///
            /// # Errors
            /// [`IdError`] if the name is empty, longer than [`MAX_NAME_LEN`] bytes,
            /// or holds anything but ASCII letters, digits, `-` and `_`.
            pub fn new(name: impl AsRef<str>) -> Result<Self, IdError> {
                let name = name.as_ref();
                validate_token($what, name)?;
                Ok(Self(SmolStr::new(name)))
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = IdError;
            fn try_from(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0.to_string()
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

name_type!(
    /// The kind of an agent (`researcher`): registered once with a factory.
    ///
    /// ```
    /// use coditect_orchestrator::AgentKind;
    /// let kind = AgentKind::new("researcher")?;
    /// assert_eq!(kind.as_str(), "researcher");
    /// assert!(AgentKind::new("has.dot").is_err());
    /// # Ok::<(), coditect_orchestrator::IdError>(())
    /// ```
    AgentKind,
    "agent kind"
);

name_type!(
    /// The key of one agent within its kind (`pr-42`).
    AgentKey,
    "agent key"
);

name_type!(
    /// A tenant: every subject, stream and credential is scoped by it.
    ///
    /// Tenant ids holding `.`, `*`, `>` or whitespace are refused, so a tenant can
    /// never reach into another tenant's subjects.
    ///
    /// ```
    /// use coditect_orchestrator::TenantId;
    /// assert!(TenantId::new("acme").is_ok());
    /// assert!(TenantId::new("acme.>").is_err());
    /// assert!(TenantId::new("a b").is_err());
    /// ```
    TenantId,
    "tenant"
);

name_type!(
    /// The id of one process hosting a runtime: replies to its requests come back
    /// to this id.
    NodeId,
    "node id"
);

impl Default for TenantId {
    fn default() -> Self {
        Self(SmolStr::new_static("default"))
    }
}

impl NodeId {
    /// A fresh random node id.
    pub fn random() -> Self {
        // 64 random bits: short enough to be kept inline (cloned without
        // touching shared memory), unique enough for the nodes of one system.
        Self(smol_str::format_smolstr!("n{:016x}", rand::random::<u64>()))
    }
}

/// A pub/sub topic: one or more names joined by `.` (`run.0193…`, `news`).
///
/// ```
/// use coditect_orchestrator::Topic;
/// let t = Topic::new("prices.eur")?;
/// assert_eq!(t.to_string(), "prices.eur");
/// assert!(Topic::new("prices.*").is_err());
/// assert!(Topic::new("a..b").is_err());
/// # Ok::<(), coditect_orchestrator::IdError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Topic(SmolStr);

impl Topic {
    /// Parses and validates a topic: tokens as for every name, joined by `.`,
    /// 1 to 8 tokens.
    ///
    /// # Errors
    /// [`IdError`] naming the first bad token.
    pub fn new(topic: impl AsRef<str>) -> Result<Self, IdError> {
        let topic = topic.as_ref();
        if topic.is_empty() {
            return Err(IdError::new("topic", topic, IdErrorReason::Empty));
        }
        if topic.len() > MAX_NAME_LEN * 2 {
            return Err(IdError::new("topic", topic, IdErrorReason::TooLong));
        }
        let mut offset = 0;
        for token in topic.split('.') {
            validate_token("topic", token).map_err(|e| match e.reason {
                IdErrorReason::InvalidChar { ch, at } => IdError::new(
                    "topic",
                    topic,
                    IdErrorReason::InvalidChar {
                        ch,
                        at: at + offset,
                    },
                ),
                reason => IdError::new("topic", topic, reason),
            })?;
            offset += token.len() + 1;
        }
        Ok(Self(SmolStr::new(topic)))
    }

    /// The topic as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The topic a durable run's driver takes journal requests on:
    /// `run.<run id>.journal`.
    pub(crate) fn for_journal(run: RunId) -> Self {
        Self(smol_str::format_smolstr!("run.{run}.journal"))
    }

    /// The topic of a run's signals, `run.<run id>`. A UUID's text is ASCII
    /// hex digits and `-`, so it needs no validation.
    ///
    /// Every message of a run sends signals here, so the last topic made on
    /// each thread is kept: a run's topic is formatted (and allocated) once,
    /// then shared.
    pub(crate) fn for_run(run: RunId) -> Self {
        thread_local! {
            static LAST: std::cell::RefCell<Option<(RunId, Topic)>> =
                const { std::cell::RefCell::new(None) };
        }
        LAST.with(|last| {
            let mut last = last.borrow_mut();
            match &*last {
                Some((r, topic)) if *r == run => topic.clone(),
                _ => {
                    let topic = Self(smol_str::format_smolstr!("run.{run}"));
                    *last = Some((run, topic.clone()));
                    topic
                }
            }
        })
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl FromStr for Topic {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::new(s)
    }
}

impl TryFrom<String> for Topic {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        Self::new(s)
    }
}

impl From<Topic> for String {
    fn from(t: Topic) -> String {
        t.0.to_string()
    }
}

/// The address of one agent: its kind and its key (`reviewer/pr-42`).
///
/// An id costs nothing until its first message activates it.
///
/// ```
/// use coditect_orchestrator::AgentId;
/// let id: AgentId = "reviewer/pr-42".parse()?;
/// assert_eq!(id.kind().as_str(), "reviewer");
/// assert_eq!(id.key().as_str(), "pr-42");
/// assert_eq!(id.to_string(), "reviewer/pr-42");
/// assert!("reviewer".parse::<AgentId>().is_err());
/// assert!("reviewer/pr 42".parse::<AgentId>().is_err());
/// # Ok::<(), coditect_orchestrator::IdError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AgentId {
    kind: AgentKind,
    key: AgentKey,
}

impl AgentId {
    /// Makes an id from a kind and a key, validating both.
    ///
    /// # Errors
    /// [`IdError`] if either part is not a valid name.
    pub fn new(kind: impl AsRef<str>, key: impl AsRef<str>) -> Result<Self, IdError> {
        Ok(Self {
            kind: AgentKind::new(kind)?,
            key: AgentKey::new(key)?,
        })
    }

    /// Makes an id from parts that are already validated.
    pub fn from_parts(kind: AgentKind, key: AgentKey) -> Self {
        Self { kind, key }
    }

    /// The agent's kind.
    pub fn kind(&self) -> &AgentKind {
        &self.kind
    }

    /// The agent's key within its kind.
    pub fn key(&self) -> &AgentKey {
        &self.key
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.key)
    }
}

impl fmt::Debug for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AgentId({self})")
    }
}

impl FromStr for AgentId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let (kind, key) = s
            .split_once('/')
            .ok_or_else(|| IdError::new("agent id", s, IdErrorReason::MissingSeparator))?;
        Self::new(kind, key)
    }
}

impl TryFrom<String> for AgentId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        s.parse()
    }
}

impl From<AgentId> for String {
    fn from(id: AgentId) -> String {
        id.to_string()
    }
}

/// Unix milliseconds at `now`, from the monotonic clock: the wall clock is read
/// once per process, so ids stay ordered even if the wall clock steps back, and
/// a caller that already read the monotonic clock (for a deadline) pays no
/// second read.
fn unix_ms_at(now: Instant) -> u64 {
    static ANCHOR: OnceLock<(u64, Instant)> = OnceLock::new();
    let (ms0, at0) = ANCHOR.get_or_init(|| {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        (ms, Instant::now())
    });
    ms0 + now.saturating_duration_since(*at0).as_millis() as u64
}

/// A generator of UUIDv7 values that costs one atomic add and one clock read:
/// 48 bits of Unix milliseconds, then a per-process random prefix and a counter
/// that starts at a random value, so ids are time-ordered and unique across
/// processes without a random draw per id.
fn next_v7(now: Instant) -> Uuid {
    static PROCESS: OnceLock<(u64, AtomicU64)> = OnceLock::new();
    let (prefix, counter) = PROCESS.get_or_init(|| {
        let seed: (u64, u64) = (rand::random(), rand::random());
        (seed.0 & 0x0FFF, AtomicU64::new(seed.1))
    });
    let ms = unix_ms_at(now) & 0xFFFF_FFFF_FFFF;
    let count = counter.fetch_add(1, Ordering::Relaxed);
    let hi = (ms << 16) | 0x7000 | prefix;
    let lo = (0b10 << 62) | (count & 0x3FFF_FFFF_FFFF_FFFF);
    Uuid::from_u64_pair(hi, lo)
}

/// The id of a step within a plan (`research`, `draft-2`).
///
/// Validated like every other name (ASCII letters, digits, `-` and `_`, at
/// most [`MAX_NAME_LEN`] bytes) when it is parsed with [`StepId::new`] or
/// read from JSON. The infallible `From<&str>` keeps plans written in code
/// short; such ids are checked when the plan is
/// (`Plan::check`, run by the orchestrator), before anything runs.
///
/// ```
/// use coditect_orchestrator::StepId;
/// assert_eq!(StepId::new("draft-2")?.as_str(), "draft-2");
/// assert!(StepId::new("no spaces").is_err());
/// assert!(serde_json::from_str::<StepId>("\"a.b\"").is_err());
/// # Ok::<(), coditect_orchestrator::IdError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct StepId(SmolStr);

impl<'de> Deserialize<'de> for StepId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = SmolStr::deserialize(d)?;
        validate_token("step id", &s).map_err(serde::de::Error::custom)?;
        Ok(Self(s))
    }
}

impl StepId {
    /// Parses and validates a step id.
    ///
    /// # Errors
    /// [`IdError`] if the id is empty, longer than [`MAX_NAME_LEN`] bytes, or
    /// holds anything but ASCII letters, digits, `-` and `_`.
    pub fn new(id: impl AsRef<str>) -> Result<Self, IdError> {
        let id = id.as_ref();
        validate_token("step id", id)?;
        Ok(Self(SmolStr::new(id)))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Checks an id made with `From<&str>`.
    ///
    /// # Errors
    /// As [`StepId::new`].
    pub fn validate(&self) -> Result<(), IdError> {
        validate_token("step id", &self.0)
    }
}

impl fmt::Display for StepId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for StepId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// Lets maps keyed by step id be read with a plain `&str` (`state.steps["a"]`).
impl std::borrow::Borrow<str> for StepId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for StepId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Unchecked: the id is validated with its plan (see the type's docs).
impl From<&str> for StepId {
    fn from(s: &str) -> Self {
        Self(SmolStr::new(s))
    }
}

/// Unchecked: the id is validated with its plan (see the type's docs).
impl From<String> for StepId {
    fn from(s: String) -> Self {
        Self(SmolStr::new(s))
    }
}

impl From<StepId> for String {
    fn from(id: StepId) -> String {
        id.0.to_string()
    }
}

impl FromStr for StepId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::new(s)
    }
}

impl schemars::JsonSchema for StepId {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "StepId".into()
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        <String as schemars::JsonSchema>::json_schema(generator)
    }
}

macro_rules! uuid_type {
    ($(#[$meta:meta])* $name:ident, $what:literal) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A fresh, time-ordered id (UUIDv7).
            pub fn new() -> Self {
                Self(next_v7(Instant::now()))
            }

            /// A fresh id stamped with the time `now` (read by the caller).
            #[allow(dead_code)] // RunId has no use for it.
            pub(crate) fn at(now: Instant) -> Self {
                Self(next_v7(now))
            }

            /// The id as a UUID.
            pub fn as_uuid(&self) -> &Uuid {
                &self.0
            }

            /// Wraps a UUID.
            pub fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            /// The 128 bits of the id.
            pub fn as_u128(&self) -> u128 {
                self.0.as_u128()
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.as_hyphenated(), f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.0.as_hyphenated())
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Uuid::parse_str(s)
                    .map(Self)
                    .map_err(|_| IdError::new($what, s, IdErrorReason::NotUuid))
            }
        }
    };
}

uuid_type!(
    /// The id of one message: time-ordered (UUIDv7), unique across processes.
    ///
    /// ```
    /// use coditect_orchestrator::MessageId;
    /// let a = MessageId::new();
    /// let b = MessageId::new();
    /// assert!(a < b);
    /// assert_eq!(a.to_string().parse::<MessageId>()?, a);
    /// # Ok::<(), coditect_orchestrator::IdError>(())
    /// ```
    MessageId,
    "message id"
);

uuid_type!(
    /// The id of one run of a task through the orchestrator (UUIDv7).
    RunId,
    "run id"
);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_runs_topic_is_its_id_behind_run_dot_whatever_was_made_before() {
        let (a, b) = (RunId::new(), RunId::new());
        assert_eq!(Topic::for_run(a).as_str(), format!("run.{a}"));
        assert_eq!(Topic::for_run(a), Topic::for_run(a));
        assert_eq!(Topic::for_run(b).as_str(), format!("run.{b}"));
        assert_eq!(Topic::for_run(a).as_str(), format!("run.{a}"));
        assert!(Topic::new(Topic::for_run(b).as_str()).is_ok());
    }

    #[test]
    fn rejects_subject_metacharacters() {
        for bad in ["a.b", "a*", ">", "a b", "a\tb", "", "é", "a/b"] {
            assert!(AgentKind::new(bad).is_err(), "{bad:?} was accepted");
            assert!(TenantId::new(bad).is_err(), "{bad:?} was accepted");
        }
        let long = "x".repeat(MAX_NAME_LEN + 1);
        assert_eq!(
            AgentKey::new(&long).unwrap_err().reason(),
            &IdErrorReason::TooLong
        );
    }

    #[test]
    fn error_names_the_character() {
        let e = AgentKind::new("ab.c").unwrap_err();
        assert_eq!(e.reason(), &IdErrorReason::InvalidChar { ch: '.', at: 2 });
        assert!(e.to_string().contains("agent kind"), "{e}");
    }

    #[test]
    fn serde_validates() {
        let ok: AgentId = serde_json::from_str("\"a/b\"").unwrap();
        assert_eq!(ok, AgentId::new("a", "b").unwrap());
        assert!(serde_json::from_str::<AgentId>("\"a/b.c\"").is_err());
        assert!(serde_json::from_str::<TenantId>("\"x>\"").is_err());
        assert_eq!(serde_json::to_string(&ok).unwrap(), "\"a/b\"");
    }

    #[test]
    fn message_ids_are_v7_and_ordered() {
        let ids: Vec<MessageId> = (0..1000).map(|_| MessageId::new()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(ids[0].as_uuid().get_version_num(), 7);
    }

    fn token() -> impl Strategy<Value = String> {
        "[A-Za-z0-9_-]{1,40}"
    }

    proptest! {
        #[test]
        fn valid_ids_round_trip(kind in token(), key in token()) {
            let id = AgentId::new(&kind, &key).unwrap();
            let parsed: AgentId = id.to_string().parse().unwrap();
            prop_assert_eq!(&parsed, &id);
            prop_assert_eq!(parsed.kind().as_str(), kind.as_str());
            let json = serde_json::to_string(&id).unwrap();
            prop_assert_eq!(serde_json::from_str::<AgentId>(&json).unwrap(), id);
        }

        #[test]
        fn any_string_parses_or_errors_without_panic(s in "\\PC{0,60}") {
            let valid = !s.is_empty()
                && s.len() <= MAX_NAME_LEN
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            prop_assert_eq!(AgentKind::new(&s).is_ok(), valid);
            let _ = s.parse::<AgentId>();
            let _ = Topic::new(&s);
            let _ = s.parse::<MessageId>();
        }

        #[test]
        fn accepted_names_are_single_subject_tokens(s in "\\PC{1,60}") {
            if let Ok(k) = AgentKind::new(&s) {
                let k = k.as_str();
                prop_assert!(!k.contains('.') && !k.contains('*') && !k.contains('>'));
                prop_assert!(!k.chars().any(char::is_whitespace));
            }
        }

        #[test]
        fn topics_round_trip(tokens in proptest::collection::vec(token(), 1..4)) {
            let joined = tokens.join(".");
            let t = Topic::new(&joined).unwrap();
            prop_assert_eq!(t.as_str(), joined.as_str());
        }
    }
}
