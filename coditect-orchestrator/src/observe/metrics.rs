//! Metrics through the [`metrics`](https://docs.rs/metrics) facade.
//!
//! Nothing is emitted until [`enable`] is called (after installing a
//! recorder: a Prometheus exporter, a test's debugging recorder, your own),
//! so a process that does not listen pays one atomic load per event.
//!
//! Names follow the OpenTelemetry GenAI conventions where they exist
//! (`gen_ai.*`) and are coditect's own otherwise (`coditect.*`); a
//! Prometheus exporter writes the dots as underscores. Every name is a
//! constant here and listed in [`ALL`].
//!
//! ```
//! use coditect_orchestrator::observe::metrics;
//! assert!(metrics::ALL.contains(&metrics::TOKEN_USAGE));
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{OnceLock, RwLock};
use std::time::Duration;

use ::metrics::{Counter, Gauge, Histogram, SharedString};

use crate::id::{AgentKind, MessageId, StepId, TenantId};
use crate::orchestrator::{RunEvent, RunEventRecord, RunStatus};

/// Histogram of tokens per model call, by `gen_ai.token.type` (`input`, `output`).
pub const TOKEN_USAGE: &str = "gen_ai.client.token.usage";
/// Histogram of model call durations, in seconds.
pub const OPERATION_DURATION: &str = "gen_ai.client.operation.duration";
/// Histogram of agent handling durations (steps and delegations), in seconds.
pub const INVOKE_AGENT_DURATION: &str = "gen_ai.invoke_agent.duration";
/// Histogram of the time from a step's dispatch to its agent starting, in seconds.
pub const DISPATCH_LATENCY: &str = "coditect.dispatch.latency";
/// Gauge of step attempts dispatched and not yet finished.
pub const STEPS_IN_FLIGHT: &str = "coditect.steps.in_flight";
/// Counter of step attempts dispatched.
pub const STEPS_DISPATCHED: &str = "coditect.steps.dispatched";
/// Counter of retries scheduled.
pub const RETRIES: &str = "coditect.step.retries";
/// Counter of failed step attempts, by `kind`.
pub const FAILURES: &str = "coditect.step.failures";
/// Counter of delegations.
pub const DELEGATIONS: &str = "coditect.delegations";
/// Counter of tokens, by `type` (`input`, `output`, `cache_read`, `cache_write`), `model` and `tenant`.
pub const TOKENS: &str = "coditect.tokens";
/// Counter of cost in millionths of a US dollar, by `model` and `tenant`.
pub const COST: &str = "coditect.cost.micro_usd";
/// Counter of finished runs, by `status` and `tenant`.
pub const RUNS: &str = "coditect.runs";
/// Gauge of messages waiting in a kind's mailboxes, by `kind`.
pub const MAILBOX_DEPTH: &str = "coditect.mailbox.depth";
/// Counter of messages dead-lettered (delivered too often without an answer).
pub const DEAD_LETTERS: &str = "coditect.dead_letters";
/// Counter of reconnections to NATS.
pub const NATS_RECONNECTS: &str = "coditect.nats.reconnects";
/// Counter of NATS slow-consumer reports (a subscription dropped messages).
pub const NATS_SLOW_CONSUMERS: &str = "coditect.nats.slow_consumers";

/// Every metric name coditect emits.
pub const ALL: &[&str] = &[
    TOKEN_USAGE,
    OPERATION_DURATION,
    INVOKE_AGENT_DURATION,
    DISPATCH_LATENCY,
    STEPS_IN_FLIGHT,
    STEPS_DISPATCHED,
    RETRIES,
    FAILURES,
    DELEGATIONS,
    TOKENS,
    COST,
    RUNS,
    MAILBOX_DEPTH,
    DEAD_LETTERS,
    NATS_RECONNECTS,
    NATS_SLOW_CONSUMERS,
];

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Starts emitting metrics to the installed recorder and describes them.
///
/// ```
/// coditect_orchestrator::observe::metrics::enable();
/// assert!(coditect_orchestrator::observe::metrics::is_enabled());
/// ```
pub fn enable() {
    use ::metrics::Unit;
    ::metrics::describe_histogram!(TOKEN_USAGE, Unit::Count, "Tokens used per model call.");
    ::metrics::describe_histogram!(
        OPERATION_DURATION,
        Unit::Seconds,
        "Duration of model calls."
    );
    ::metrics::describe_histogram!(
        INVOKE_AGENT_DURATION,
        Unit::Seconds,
        "Duration of agent handlings (steps and delegations)."
    );
    ::metrics::describe_histogram!(
        DISPATCH_LATENCY,
        Unit::Seconds,
        "Time from a step's dispatch to its agent starting."
    );
    ::metrics::describe_gauge!(STEPS_IN_FLIGHT, "Step attempts in flight.");
    ::metrics::describe_counter!(STEPS_DISPATCHED, "Step attempts dispatched.");
    ::metrics::describe_counter!(RETRIES, "Step retries scheduled.");
    ::metrics::describe_counter!(FAILURES, "Failed step attempts by kind.");
    ::metrics::describe_counter!(DELEGATIONS, "Subtasks delegated.");
    ::metrics::describe_counter!(TOKENS, Unit::Count, "Tokens by type, model and tenant.");
    ::metrics::describe_counter!(
        COST,
        "Cost in millionths of a US dollar by model and tenant."
    );
    ::metrics::describe_counter!(RUNS, "Finished runs by status.");
    ::metrics::describe_gauge!(MAILBOX_DEPTH, "Messages waiting in a kind's mailboxes.");
    ::metrics::describe_counter!(DEAD_LETTERS, "Messages dead-lettered.");
    ::metrics::describe_counter!(NATS_RECONNECTS, "Reconnections to NATS.");
    ::metrics::describe_counter!(
        NATS_SLOW_CONSUMERS,
        "NATS slow-consumer reports: a subscription dropped messages it had no room for."
    );
    ENABLED.store(true, Ordering::Release);
}

/// Stops emitting (the recorder stays installed).
pub fn disable() {
    ENABLED.store(false, Ordering::Release);
}

/// Whether metrics are emitted.
#[inline]
pub fn is_enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// The metrics of one run, kept by the run's driver (no lock, no global
/// map): the handles of its tenant's series are resolved once, when the run
/// starts being metered, so an event costs an atomic add, not a registry
/// lookup with label hashing.
pub(crate) struct RunMeter {
    tenant: SharedString,
    dispatched: Counter,
    in_flight: Gauge,
    latency: Histogram,
    retries: Counter,
    delegations: Counter,
    /// Failure counters by `error.type`, made on first use.
    failures: Vec<(&'static str, Counter)>,
    /// Token and cost counters by model, made on first use.
    models: Vec<(String, ModelMeter)>,
    /// Attempts dispatched and not finished: step → (message, dispatched at ms).
    open: FastMap<StepId, (MessageId, u64)>,
}

struct ModelMeter {
    /// `input` (billed at the normal rate), `output`, `cache_read`, `cache_write`.
    tokens: [Counter; 4],
    cost: Counter,
}

const TOKEN_TYPES: [&str; 4] = ["input", "output", "cache_read", "cache_write"];

impl RunMeter {
    /// The meter of a run of `tenant`.
    pub(crate) fn new(tenant: &TenantId) -> Self {
        let tenant = SharedString::from(tenant.to_string());
        let t = || tenant.clone();
        Self {
            dispatched: ::metrics::counter!(STEPS_DISPATCHED, "tenant" => t()),
            in_flight: ::metrics::gauge!(STEPS_IN_FLIGHT),
            latency: ::metrics::histogram!(DISPATCH_LATENCY, "tenant" => t()),
            retries: ::metrics::counter!(RETRIES, "tenant" => t()),
            delegations: ::metrics::counter!(DELEGATIONS, "tenant" => t()),
            failures: Vec::new(),
            models: Vec::new(),
            open: FastMap::default(),
            tenant,
        }
    }

    /// Emits the metrics of one recorded event of the run.
    pub(crate) fn on_event(&mut self, record: &RunEventRecord) {
        match &record.event {
            RunEvent::StepDispatched { step, message, .. } => {
                if self
                    .open
                    .insert(step.clone(), (*message, record.at_ms))
                    .is_none()
                {
                    self.in_flight.increment(1.0);
                }
                self.dispatched.increment(1);
            }
            RunEvent::StepStarted { step, message, .. } => {
                if let Some((m, at)) = self.open.get(step)
                    && m == message
                {
                    let wait = Duration::from_millis(record.at_ms.saturating_sub(*at));
                    self.latency.record(wait.as_secs_f64());
                }
            }
            RunEvent::StepSucceeded { step, .. } if self.open.remove(step).is_some() => {
                self.in_flight.decrement(1.0);
            }
            RunEvent::StepFailed { step, failure, .. } => {
                if self.open.remove(step).is_some() {
                    self.in_flight.decrement(1.0);
                }
                self.failure(super::spans::failure_kind(failure.kind))
                    .increment(1);
            }
            RunEvent::StepRetried { .. } => self.retries.increment(1),
            RunEvent::Delegated { .. } => self.delegations.increment(1),
            RunEvent::UsageReported { usage, model, .. } => {
                let billed = usage
                    .input_tokens
                    .saturating_sub(usage.cache_read_tokens)
                    .saturating_sub(usage.cache_write_tokens);
                let counts = [
                    billed,
                    usage.output_tokens,
                    usage.cache_read_tokens,
                    usage.cache_write_tokens,
                ];
                let micro = super::cost::nano_usd(usage.cost_usd) / 1_000;
                let meter = self.model(model.as_deref().unwrap_or("unknown"));
                for (counter, n) in meter.tokens.iter().zip(counts) {
                    if n > 0 {
                        counter.increment(n);
                    }
                }
                if micro > 0 {
                    meter.cost.increment(micro);
                }
            }
            RunEvent::RunFinished { status, .. } => {
                let status = match status {
                    RunStatus::Succeeded => "succeeded",
                    RunStatus::Failed => "failed",
                    RunStatus::Cancelled => "cancelled",
                    _ => "other",
                };
                self.close();
                ::metrics::counter!(RUNS, "status" => status, "tenant" => self.tenant.clone())
                    .increment(1);
            }
            _ => {}
        }
    }

    fn failure(&mut self, kind: &'static str) -> &Counter {
        let at = match self.failures.iter().position(|(k, _)| *k == kind) {
            Some(at) => at,
            None => {
                let c = ::metrics::counter!(
                    FAILURES,
                    "kind" => kind,
                    "tenant" => self.tenant.clone()
                );
                self.failures.push((kind, c));
                self.failures.len() - 1
            }
        };
        &self.failures[at].1
    }

    fn model(&mut self, model: &str) -> &ModelMeter {
        let at = match self.models.iter().position(|(m, _)| m == model) {
            Some(at) => at,
            None => {
                let m = SharedString::from(model.to_owned());
                let tokens = TOKEN_TYPES.map(|kind| {
                    ::metrics::counter!(
                        TOKENS,
                        "type" => kind,
                        "model" => m.clone(),
                        "tenant" => self.tenant.clone()
                    )
                });
                let cost = ::metrics::counter!(
                    COST,
                    "model" => m,
                    "tenant" => self.tenant.clone()
                );
                self.models
                    .push((model.to_owned(), ModelMeter { tokens, cost }));
                self.models.len() - 1
            }
        };
        &self.models[at].1
    }

    /// The run's attempts are no longer in flight.
    fn close(&mut self) {
        let open = self.open.len();
        if open > 0 {
            self.in_flight.decrement(open as f64);
        }
        self.open.clear();
    }
}

impl Drop for RunMeter {
    /// A run that stops without finishing (its driver dropped) leaves
    /// nothing counted as in flight.
    fn drop(&mut self) {
        self.close();
    }
}

/// Records one agent handling's duration.
pub(crate) fn agent_handled(kind: &AgentKind, error: Option<&'static str>, took: Duration) {
    match error {
        None => agent_histogram(kind),
        Some(e) => ::metrics::histogram!(
            INVOKE_AGENT_DURATION,
            "gen_ai.agent.name" => kind.as_str().to_owned(),
            "error.type" => e
        ),
    }
    .record(took.as_secs_f64());
}

/// The duration histogram of a kind's successful handlings, resolved once
/// per kind (a read lock and a hash of the kind's name afterwards).
fn agent_histogram(kind: &AgentKind) -> Histogram {
    static KINDS: OnceLock<RwLock<FastMap<AgentKind, Histogram>>> = OnceLock::new();
    let kinds = KINDS.get_or_init(RwLock::default);
    if let Ok(known) = kinds.read()
        && let Some(h) = known.get(kind)
    {
        return h.clone();
    }
    let h = ::metrics::histogram!(INVOKE_AGENT_DURATION, "gen_ai.agent.name" => kind.as_str().to_owned());
    if let Ok(mut known) = kinds.write() {
        known.insert(kind.clone(), h.clone());
    }
    h
}

/// Records one model call: its duration and its tokens (for agent crates).
///
/// ```
/// use coditect_orchestrator::observe::metrics::{ModelCall, model_call};
/// model_call(&ModelCall { provider: "anthropic", model: "claude-sonnet-4-5", input_tokens: 10, output_tokens: 2, error: None }, std::time::Duration::from_millis(5));
/// ```
pub fn model_call(call: &ModelCall<'_>, took: Duration) {
    if !is_enabled() {
        return;
    }
    let provider = call.provider.to_owned();
    let model = call.model.to_owned();
    let duration = match call.error {
        None => ::metrics::histogram!(
            OPERATION_DURATION,
            "gen_ai.operation.name" => "chat",
            "gen_ai.provider.name" => provider.clone(),
            "gen_ai.request.model" => model.clone()
        ),
        Some(e) => ::metrics::histogram!(
            OPERATION_DURATION,
            "gen_ai.operation.name" => "chat",
            "gen_ai.provider.name" => provider.clone(),
            "gen_ai.request.model" => model.clone(),
            "error.type" => e.to_owned()
        ),
    };
    duration.record(took.as_secs_f64());
    if call.error.is_some() {
        return;
    }
    for (kind, n) in [("input", call.input_tokens), ("output", call.output_tokens)] {
        ::metrics::histogram!(
            TOKEN_USAGE,
            "gen_ai.operation.name" => "chat",
            "gen_ai.provider.name" => provider.clone(),
            "gen_ai.request.model" => model.clone(),
            "gen_ai.token.type" => kind
        )
        .record(n as f64);
    }
}

/// What [`model_call`] records.
#[derive(Clone, Copy, Debug)]
pub struct ModelCall<'a> {
    /// `gen_ai.provider.name` (`anthropic`).
    pub provider: &'a str,
    /// `gen_ai.request.model`.
    pub model: &'a str,
    /// Input tokens, cached ones included.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// `error.type`, if the call failed.
    pub error: Option<&'a str>,
}

/// Sets the depth of a kind's mailboxes.
#[inline]
pub(crate) fn mailbox_depth(kind: &crate::id::AgentKind, depth: usize) {
    if is_enabled() {
        ::metrics::gauge!(MAILBOX_DEPTH, "kind" => kind.as_str().to_owned()).set(depth as f64);
    }
}

/// Counts a dead-lettered message.
#[inline]
pub fn dead_lettered() {
    if is_enabled() {
        ::metrics::counter!(DEAD_LETTERS).increment(1);
    }
}

/// Counts a reconnection to NATS.
#[inline]
pub fn nats_reconnected() {
    if is_enabled() {
        ::metrics::counter!(NATS_RECONNECTS).increment(1);
    }
}

/// Counts a NATS slow-consumer report.
#[inline]
pub fn nats_slow_consumer() {
    if is_enabled() {
        ::metrics::counter!(NATS_SLOW_CONSUMERS).increment(1);
    }
}
