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
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crate::id::{MessageId, RunId, StepId};
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

/// What the metrics of the live runs of this process need to remember.
#[derive(Default)]
struct Runs {
    runs: std::collections::HashMap<RunId, RunMeter>,
}

#[derive(Default)]
struct RunMeter {
    tenant: String,
    /// Attempts dispatched and not finished: step → (message, dispatched at ms).
    open: std::collections::HashMap<StepId, (MessageId, u64)>,
}

fn runs() -> &'static Mutex<Runs> {
    static RUNS_SEEN: OnceLock<Mutex<Runs>> = OnceLock::new();
    RUNS_SEEN.get_or_init(Mutex::default)
}

/// Emits the metrics of one recorded event of a run.
#[inline]
pub(crate) fn on_event(record: &RunEventRecord) {
    if is_enabled() {
        event(record);
    }
}

fn event(record: &RunEventRecord) {
    let Ok(mut all) = runs().lock() else {
        return;
    };
    let meter = all.runs.entry(record.run).or_default();
    match &record.event {
        RunEvent::RunStarted { task } => meter.tenant = task.tenant.to_string(),
        RunEvent::StepDispatched { step, message, .. } => {
            let tenant = meter.tenant.clone();
            if meter
                .open
                .insert(step.clone(), (*message, record.at_ms))
                .is_none()
            {
                ::metrics::gauge!(STEPS_IN_FLIGHT).increment(1.0);
            }
            ::metrics::counter!(STEPS_DISPATCHED, "tenant" => tenant).increment(1);
        }
        RunEvent::StepStarted { step, message, .. } => {
            if let Some((m, at)) = meter.open.get(step)
                && m == message
            {
                let wait = Duration::from_millis(record.at_ms.saturating_sub(*at));
                ::metrics::histogram!(DISPATCH_LATENCY, "tenant" => meter.tenant.clone())
                    .record(wait.as_secs_f64());
            }
        }
        RunEvent::StepSucceeded { step, .. } if meter.open.remove(step).is_some() => {
            ::metrics::gauge!(STEPS_IN_FLIGHT).decrement(1.0);
        }
        RunEvent::StepFailed { step, failure, .. } => {
            if meter.open.remove(step).is_some() {
                ::metrics::gauge!(STEPS_IN_FLIGHT).decrement(1.0);
            }
            ::metrics::counter!(
                FAILURES,
                "kind" => super::spans::failure_kind(failure.kind),
                "tenant" => meter.tenant.clone()
            )
            .increment(1);
        }
        RunEvent::StepRetried { .. } => {
            ::metrics::counter!(RETRIES, "tenant" => meter.tenant.clone()).increment(1);
        }
        RunEvent::Delegated { .. } => {
            ::metrics::counter!(DELEGATIONS, "tenant" => meter.tenant.clone()).increment(1);
        }
        RunEvent::UsageReported { usage, model, .. } => {
            let model = model.as_deref().unwrap_or("unknown").to_owned();
            let tenant = meter.tenant.clone();
            let billed = usage
                .input_tokens
                .saturating_sub(usage.cache_read_tokens)
                .saturating_sub(usage.cache_write_tokens);
            for (kind, n) in [
                ("input", billed),
                ("output", usage.output_tokens),
                ("cache_read", usage.cache_read_tokens),
                ("cache_write", usage.cache_write_tokens),
            ] {
                if n > 0 {
                    ::metrics::counter!(
                        TOKENS,
                        "type" => kind,
                        "model" => model.clone(),
                        "tenant" => tenant.clone()
                    )
                    .increment(n);
                }
            }
            let micro = super::cost::nano_usd(usage.cost_usd) / 1_000;
            if micro > 0 {
                ::metrics::counter!(COST, "model" => model, "tenant" => tenant).increment(micro);
            }
        }
        RunEvent::RunFinished { status, .. } => {
            let status = match status {
                RunStatus::Succeeded => "succeeded",
                RunStatus::Failed => "failed",
                RunStatus::Cancelled => "cancelled",
                _ => "other",
            };
            if let Some(meter) = all.runs.remove(&record.run) {
                let open = meter.open.len();
                if open > 0 {
                    ::metrics::gauge!(STEPS_IN_FLIGHT).decrement(open as f64);
                }
                ::metrics::counter!(RUNS, "status" => status, "tenant" => meter.tenant)
                    .increment(1);
            }
        }
        _ => {}
    }
}

/// Records one agent handling's duration.
pub(crate) fn agent_handled(kind: &str, error: Option<&'static str>, took: Duration) {
    let kind = kind.to_owned();
    match error {
        None => ::metrics::histogram!(INVOKE_AGENT_DURATION, "gen_ai.agent.name" => kind),
        Some(e) => ::metrics::histogram!(
            INVOKE_AGENT_DURATION,
            "gen_ai.agent.name" => kind,
            "error.type" => e
        ),
    }
    .record(took.as_secs_f64());
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
