//! Observability end to end over the in-memory transport: GenAI spans (with
//! an OpenTelemetry test exporter), metrics (with a debugging recorder), and
//! the cost report of a run with delegations and retries.
#![cfg(feature = "otel")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use coditect_orchestrator::observe::{self, CostReport, Tokens};
use coditect_orchestrator::orchestrator::{
    Orchestrator, Plan, RetryPolicy, RunEventRecord, RunOutcome, RunPolicy, StaticPlanner, Step,
    StepInput, TaskSpec,
};
use coditect_orchestrator::{
    Agent, AgentContext, AgentError, InMemoryTransport, Runtime, TenantId, Usage,
};
use futures::StreamExt;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tokio::time::timeout;
use tracing_subscriber::layer::SubscriberExt;

const T: Duration = Duration::from_secs(30);

/// Reports usage of `m-large`, hands two subtasks to workers at once.
struct Lead;
impl Agent for Lead {
    type Input = String;
    type Output = String;
    async fn handle(&mut self, goal: String, ctx: &AgentContext) -> Result<String, AgentError> {
        ctx.report_model_usage(Some("m-large"), Usage::new(100, 10, 0.1).with_cache(50, 20))
            .await
            .ok();
        let parts: Vec<Result<String, _>> = ctx
            .delegate_all([
                ("work".to_owned(), format!("{goal}/1")),
                ("work".to_owned(), format!("{goal}/2")),
            ])
            .await?;
        let parts: Result<Vec<String>, _> = parts.into_iter().collect();
        Ok(parts?.join("+"))
    }
}

/// Reports usage of `m-small`.
struct Worker;
impl Agent for Worker {
    type Input = String;
    type Output = String;
    async fn handle(&mut self, s: String, ctx: &AgentContext) -> Result<String, AgentError> {
        ctx.report_model_usage(Some("m-small"), Usage::new(30, 3, 0.2))
            .await
            .ok();
        Ok(format!("w({s})"))
    }
}

/// Spends, then fails its first attempt.
struct Flaky(Arc<AtomicUsize>);
impl Agent for Flaky {
    type Input = String;
    type Output = String;
    async fn handle(&mut self, s: String, ctx: &AgentContext) -> Result<String, AgentError> {
        ctx.report_model_usage(Some("m-small"), Usage::new(7, 1, 0.3))
            .await
            .ok();
        if self.0.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err(AgentError::transient("first attempt fails"));
        }
        Ok(format!("f({s})"))
    }
}

/// Runs the scenario for `tenant`: steps `a` (a lead delegating to two
/// workers at once) and `b` (flaky, retried once) in parallel, then `c` (a
/// worker) on `a`'s output.
async fn scenario(tenant: &str) -> (RunOutcome, Vec<RunEventRecord>) {
    let tenant = TenantId::new(tenant).unwrap();
    let rt = Runtime::builder(InMemoryTransport::new())
        .tenant(tenant.clone())
        .build()
        .await
        .unwrap();
    rt.kind("lead")
        .capability("lead")
        .register(|_| Lead)
        .await
        .unwrap();
    rt.kind("worker")
        .capability("work")
        .register(|_| Worker)
        .await
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    rt.kind("flaky")
        .capability("flaky")
        .register(move |_| Flaky(calls.clone()))
        .await
        .unwrap();
    let plan = Plan::new([
        Step::new("a", "lead", StepInput::Goal),
        Step::new("b", "flaky", StepInput::Goal),
        Step::new("c", "work", StepInput::output("a")),
    ]);
    let policy = RunPolicy {
        retry: RetryPolicy {
            max_attempts: 2,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
            ..RetryPolicy::default()
        },
        ..RunPolicy::default()
    };
    let orch = Orchestrator::new(rt.clone(), StaticPlanner::new(plan));
    let mut handle = orch.start(TaskSpec::new("goal").tenant(tenant).policy(policy));
    let events = handle.events();
    let out = timeout(T, handle.outcome()).await.unwrap().unwrap();
    let events: Vec<RunEventRecord> = timeout(T, events.collect()).await.unwrap();
    rt.shutdown(Duration::from_secs(1)).await;
    (out, events)
}

fn tokens(input: u64, output: u64, cache_read: u64, cache_write: u64, nano: u64) -> Tokens {
    Tokens {
        input,
        output,
        cache_read,
        cache_write,
        cost_nano_usd: nano,
    }
}

#[tokio::test]
async fn cost_is_attributed_per_step_agent_subtree_model_and_tenant_and_adds_up() {
    let (out, events) = scenario("cost").await;
    let cost = out.cost();
    assert!(cost.adds_up(), "{cost:#?}");
    // The same report from the event stream alone (a stored run's view).
    assert_eq!(CostReport::from_events(&events), cost);
    // 0.1 + 2 × 0.2 + 2 × 0.3 + 0.2, each counted once, in whole billionths.
    assert_eq!(cost.total, tokens(204, 21, 50, 20, 1_300_000_000));
    assert_eq!(cost.by_step["a"], tokens(160, 16, 50, 20, 500_000_000));
    assert_eq!(cost.by_step["b"], tokens(14, 2, 0, 0, 600_000_000));
    assert_eq!(cost.by_step["c"], tokens(30, 3, 0, 0, 200_000_000));
    assert_eq!(
        cost.by_model["m-large"],
        tokens(100, 10, 50, 20, 100_000_000)
    );
    assert_eq!(
        cost.by_model["m-small"],
        tokens(104, 11, 0, 0, 1_200_000_000)
    );
    assert_eq!(cost.by_tenant["cost"], cost.total);
    let agents: u64 = cost.by_agent.values().map(|t| t.input).sum();
    assert_eq!(agents, 204);
    // Step a's attempt: the lead's own spend and its two subtasks under it.
    let a = cost
        .subtrees
        .iter()
        .find(|s| s.step.as_ref().map(|s| s.as_str()) == Some("a"))
        .unwrap();
    assert_eq!(a.own.input, 100);
    assert_eq!(a.total.input, 160);
    assert_eq!(a.children.len(), 2);
    assert!(a.children.iter().all(|c| c.total.input == 30));
    // Both attempts of b are there, each with its own spend.
    let b: Vec<_> = cost
        .subtrees
        .iter()
        .filter(|s| s.step.as_ref().map(|s| s.as_str()) == Some("b"))
        .collect();
    assert_eq!(b.len(), 2);
    assert!(b.iter().all(|s| s.total.input == 7));
    assert_eq!(cost.outside_subtrees, Tokens::default());
    // The run's own usage total agrees with the report.
    assert_eq!(out.usage.input_tokens, cost.total.input);
}

fn attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv: &&KeyValue| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

fn attr_str(span: &SpanData, key: &str) -> Option<String> {
    attr(span, key).map(|v| v.as_str().into_owned())
}

/// The binary's one subscriber, exporting to memory (global: a thread's own
/// default would race with the callsite-interest cache of tests running at
/// the same time).
fn exported() -> &'static (SdkTracerProvider, InMemorySpanExporter) {
    static OTEL: OnceLock<(SdkTracerProvider, InMemorySpanExporter)> = OnceLock::new();
    OTEL.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = tracing_subscriber::registry().with(
            coditect_orchestrator::observe::otel::layer(provider.tracer("test")),
        );
        tracing::subscriber::set_global_default(subscriber).unwrap();
        (provider, exporter)
    })
}

#[tokio::test]
async fn spans_follow_the_genai_conventions_with_the_right_parents() {
    let (provider, exporter) = exported();
    let (out, _) = scenario("spans").await;
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    let run = out.run.to_string();
    let spans: Vec<SpanData> = spans
        .into_iter()
        .filter(|s| attr_str(s, "coditect.run.id").as_deref() == Some(run.as_str()))
        .collect();
    let named = |n: &str| spans.iter().filter(|s| s.name == n).collect::<Vec<_>>();
    let [workflow] = named("invoke_workflow")[..] else {
        panic!(
            "one invoke_workflow span: {:#?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        )
    };
    assert_eq!(
        attr_str(workflow, "gen_ai.operation.name").as_deref(),
        Some("invoke_workflow")
    );
    assert_eq!(
        attr_str(workflow, "coditect.tenant.id").as_deref(),
        Some("spans")
    );
    let trace = workflow.span_context.trace_id();
    assert!(
        spans.iter().all(|s| s.span_context.trace_id() == trace),
        "one trace"
    );
    let [plan] = named("plan")[..] else {
        panic!("one plan span")
    };
    assert_eq!(plan.parent_span_id, workflow.span_context.span_id());

    // Steps: children of the run; delegations: children of the handler that
    // delegated them (two at once, from one lead).
    let leads = named("invoke_agent lead");
    let workers = named("invoke_agent worker");
    let flaky = named("invoke_agent flaky");
    assert_eq!((leads.len(), workers.len(), flaky.len()), (1, 3, 2));
    let lead = leads[0];
    for s in leads.iter().chain(&flaky) {
        assert_eq!(
            s.parent_span_id,
            workflow.span_context.span_id(),
            "{}",
            s.name
        );
        assert_eq!(
            attr_str(s, "gen_ai.operation.name").as_deref(),
            Some("invoke_agent")
        );
    }
    assert_eq!(attr_str(lead, "gen_ai.agent.name").as_deref(), Some("lead"));
    assert!(
        attr_str(lead, "gen_ai.agent.id")
            .unwrap()
            .starts_with("lead/")
    );
    assert_eq!(attr_str(lead, "coditect.step.id").as_deref(), Some("a"));
    let lead_msg = attr_str(lead, "coditect.message.id").unwrap();
    let (under_lead, step_c): (Vec<&SpanData>, Vec<&SpanData>) = workers
        .iter()
        .copied()
        .partition(|w| w.parent_span_id == lead.span_context.span_id());
    assert_eq!(under_lead.len(), 2, "both subtasks are the lead's children");
    for w in &under_lead {
        assert_eq!(
            attr_str(w, "coditect.parent.message.id"),
            Some(lead_msg.clone())
        );
        assert_eq!(attr_str(w, "coditect.step.id").as_deref(), Some("a"));
    }
    assert_eq!(step_c[0].parent_span_id, workflow.span_context.span_id());
    // The failed attempt says why; the retried one does not.
    let errors: Vec<Option<String>> = flaky.iter().map(|s| attr_str(s, "error.type")).collect();
    assert_eq!(
        errors
            .iter()
            .filter(|e| e.as_deref() == Some("handler"))
            .count(),
        1,
        "{errors:?}"
    );
    assert_eq!(errors.iter().filter(|e| e.is_none()).count(), 1);
}

/// The process's recorder (the metrics facade has one global recorder).
fn recorder() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder.install().unwrap();
        observe::metrics::enable();
        snapshotter
    })
}

#[tokio::test]
async fn metrics_count_steps_retries_failures_tokens_and_cost_by_model_and_tenant() {
    let snapshotter = recorder();
    let (out, _) = scenario("metered").await;
    let mut counters: HashMap<String, u64> = HashMap::new();
    let mut histograms: HashMap<String, usize> = HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        let labels: Vec<String> = {
            let mut l: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            l.sort();
            l
        };
        let ours = labels.iter().any(|l| l == "tenant=metered");
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        match value {
            DebugValue::Counter(n) if ours => {
                counters.insert(name, n);
            }
            DebugValue::Histogram(v) => {
                *histograms.entry(key.name().to_owned()).or_default() += v.len();
            }
            _ => {}
        }
    }
    let c = |n: &str| counters.get(n).copied().unwrap_or_default();
    assert_eq!(
        c("coditect.steps.dispatched{tenant=metered}"),
        4,
        "{counters:#?}"
    );
    assert_eq!(c("coditect.step.retries{tenant=metered}"), 1);
    assert_eq!(c("coditect.step.failures{kind=handler,tenant=metered}"), 1);
    assert_eq!(c("coditect.delegations{tenant=metered}"), 2);
    assert_eq!(c("coditect.runs{status=succeeded,tenant=metered}"), 1);
    // Input billed at the normal rate: 100 - 50 read - 20 written.
    assert_eq!(
        c("coditect.tokens{model=m-large,tenant=metered,type=input}"),
        30
    );
    assert_eq!(
        c("coditect.tokens{model=m-large,tenant=metered,type=cache_read}"),
        50
    );
    assert_eq!(
        c("coditect.tokens{model=m-large,tenant=metered,type=cache_write}"),
        20
    );
    assert_eq!(
        c("coditect.tokens{model=m-small,tenant=metered,type=input}"),
        104
    );
    assert_eq!(
        c("coditect.tokens{model=m-small,tenant=metered,type=output}"),
        11
    );
    assert_eq!(
        c("coditect.cost.micro_usd{model=m-small,tenant=metered}"),
        1_200_000
    );
    assert_eq!(
        c("coditect.cost.micro_usd{model=m-large,tenant=metered}") + 1_200_000,
        out.cost().total.cost_nano_usd / 1_000
    );
    assert!(histograms["coditect.dispatch.latency"] >= 4);
    assert!(histograms["gen_ai.invoke_agent.duration"] >= 6);
}

mod pictures {
    use std::path::{Path, PathBuf};

    use coditect_orchestrator::observe::{mermaid, timeline};
    use coditect_orchestrator::orchestrator::{
        Plan, RunEvent, RunEventRecord, RunStatus, Step, StepInput, TaskSpec,
    };
    use coditect_orchestrator::{AgentId, Failure, FailureKind, MessageId, RunId};
    use serde_json::json;
    use tokio::time::timeout;

    use super::T;

    fn msg(n: u128) -> MessageId {
        MessageId::from_uuid(uuid::Uuid::from_u128(n))
    }

    /// A run with a delegation and a retried step, event by event.
    fn known_run() -> Vec<RunEventRecord> {
        let run = RunId::from_uuid(uuid::Uuid::from_u128(7));
        let agent = |s: &str| {
            let (k, key) = s.split_once('/').unwrap();
            AgentId::new(k, key).unwrap()
        };
        let events = vec![
            RunEvent::RunStarted {
                task: TaskSpec::new("write a report; then #publish"),
            },
            RunEvent::PlanMade {
                revision: 0,
                plan: Plan::new([
                    Step::new("research", "research", StepInput::Goal),
                    Step::new("write", "write", StepInput::output("research")),
                ]),
            },
            RunEvent::StepDispatched {
                step: "research".into(),
                attempt: 1,
                message: msg(1),
                to: "research".into(),
            },
            RunEvent::StepStarted {
                step: "research".into(),
                message: msg(1),
                agent: agent("lead/1"),
            },
            RunEvent::Delegated {
                step: Some("research".into()),
                parent: msg(1),
                message: msg(2),
                agent: agent("search/1"),
                depth: 1,
            },
            RunEvent::DelegationFinished {
                message: msg(2),
                failure: None,
            },
            RunEvent::StepSucceeded {
                step: "research".into(),
                attempt: 1,
                output: json!("notes"),
            },
            RunEvent::StepDispatched {
                step: "write".into(),
                attempt: 1,
                message: msg(3),
                to: "write".into(),
            },
            RunEvent::StepStarted {
                step: "write".into(),
                message: msg(3),
                agent: agent("writer/1"),
            },
            RunEvent::StepFailed {
                step: "write".into(),
                attempt: 1,
                failure: Failure::new(FailureKind::Handler, "the pen broke"),
                will_retry: true,
            },
            RunEvent::StepRetried {
                step: "write".into(),
                attempt: 2,
                backoff_ms: 10,
            },
            RunEvent::StepDispatched {
                step: "write".into(),
                attempt: 2,
                message: msg(4),
                to: "write".into(),
            },
            RunEvent::StepStarted {
                step: "write".into(),
                message: msg(4),
                agent: agent("writer/1"),
            },
            RunEvent::StepSucceeded {
                step: "write".into(),
                attempt: 2,
                output: json!("the report"),
            },
            RunEvent::RunFinished {
                status: RunStatus::Succeeded,
                output: Some(json!("the report")),
                error: None,
            },
        ];
        events
            .into_iter()
            .enumerate()
            .map(|(i, event)| RunEventRecord {
                run,
                seq: i as u64,
                at_ms: 10 * i as u64,
                event,
            })
            .collect()
    }

    const EXPECTED: &str = "sequenceDiagram
    actor Developer
    participant Orchestrator
    participant A1 as lead/1
    participant A2 as search/1
    participant A3 as writer/1
    Developer->>Orchestrator: write a report then publish
    Note over Orchestrator: plan - research, write
    Orchestrator->>A1: research
    A1->>A2: delegate to search
    A2-->>A1: result
    A1-->>Orchestrator: research done
    Orchestrator->>A3: write
    A3--xOrchestrator: write failed - handler, will retry
    Orchestrator->>A3: write (attempt 2)
    A3-->>Orchestrator: write done
    Orchestrator-->>Developer: succeeded
";

    #[test]
    fn the_mermaid_diagram_of_a_known_run_is_the_expected_text() {
        assert_eq!(mermaid::sequence(&known_run()), EXPECTED);
    }

    fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    /// The mermaid npm package's bundled script, installed by
    /// `scripts/test-observe.sh install`.
    fn mermaid_js() -> PathBuf {
        std::env::var_os("MERMAID_JS").map_or_else(
            || root().join("target/observe-node/node_modules/mermaid/dist/mermaid.min.js"),
            PathBuf::from,
        )
    }

    fn chromium() -> String {
        std::env::var("CHROMIUM_BIN").unwrap_or_else(|_| "chromium".to_owned())
    }

    /// Runs headless Chromium on `page` with `args`; its standard output.
    async fn headless(page: &Path, args: &[&str], profile: &Path) -> String {
        let mut cmd = tokio::process::Command::new(chromium());
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--allow-file-access-from-files",
            "--virtual-time-budget=20000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .kill_on_drop(true);
        let out = timeout(T * 2, cmd.output())
            .await
            .expect("chromium finished in time")
            .expect("chromium runs (scripts/test-observe.sh install)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn between<'a>(dom: &'a str, start: &str, end: &str) -> &'a str {
        let from = dom.find(start).map_or(dom.len(), |i| i + start.len());
        let to = dom[from..].find(end).map_or(dom.len(), |i| from + i);
        &dom[from..to]
    }

    #[tokio::test]
    async fn the_pictures_render_in_headless_chromium() {
        let js = mermaid_js();
        assert!(
            js.exists(),
            "{} is missing: run scripts/test-observe.sh install",
            js.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let profile = dir.path().join("profile");

        // The diagram of the known run and of a real one render without error.
        let (_, real) = super::scenario("pictures").await;
        for (name, text) in [
            ("known", mermaid::sequence(&known_run())),
            ("real", mermaid::sequence(&real)),
        ] {
            let page = dir.path().join(format!("{name}.html"));
            let harness = format!(
                r#"<!DOCTYPE html><html><body><pre id="out">pending</pre>
<script src="file://{js}"></script>
<script>
mermaid.initialize({{startOnLoad:false}});
mermaid.render('g', {text}).then(function(r){{
  var participants = (r.svg.match(/<text[^>]*class="actor[^"]*"/g) || []).length;
  document.getElementById('out').textContent = 'RENDERED ' + participants + ' ' + (r.svg.indexOf('lead/') >= 0);
}}).catch(function(e){{ document.getElementById('out').textContent = 'ERROR ' + e; }});
</script></body></html>"#,
                js = js.display(),
                text = serde_json::to_string(&text).unwrap(),
            );
            std::fs::write(&page, harness).unwrap();
            let dom = headless(&page, &["--dump-dom"], &profile).await;
            let out = between(&dom, "<pre id=\"out\">", "</pre>");
            assert!(out.starts_with("RENDERED"), "{name}: {out}\n{text}");
            assert!(out.ends_with("true"), "{name}: the lead is drawn: {out}");
        }

        // The timeline of the real run: every step on the page, a click shows
        // the details, and a screenshot.
        let html = timeline::html(&real);
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "no network"
        );
        let page = dir.path().join("timeline.html");
        std::fs::write(&page, &html).unwrap();
        let bars = timeline::bars(&real);
        let failed = bars
            .iter()
            .find(|b| b.status == "failed")
            .expect("the flaky step's failed attempt");
        let harness = dir.path().join("click.html");
        std::fs::write(
            &harness,
            format!(
                r#"<!DOCTYPE html><html><body><pre id="out">pending</pre>
<iframe id="f" src="file://{page}" width="1200" height="600"></iframe>
<script>
document.getElementById('f').addEventListener('load', function(){{
  var doc = this.contentDocument, out = document.getElementById('out');
  var rows = doc.querySelectorAll('.row');
  var names = Array.prototype.map.call(rows, function(r){{ return r.querySelector('.name').textContent; }});
  var row = doc.querySelector('.row[data-id="{failed}"]');
  if (!row) {{ out.textContent = 'NO ROW'; return; }}
  row.click();
  var det = doc.getElementById('details');
  out.textContent = 'ROWS ' + rows.length + '\n' + names.join('\n') + '\nDETAILS ' +
    getComputedStyle(det).display + '\n' + det.textContent;
}});
</script></body></html>"#,
                page = page.display(),
                failed = failed.id,
            ),
        )
        .unwrap();
        let dom = headless(&harness, &["--dump-dom"], &profile).await;
        let out = between(&dom, "<pre id=\"out\">", "</pre>");
        assert!(out.starts_with(&format!("ROWS {}", bars.len())), "{out}");
        for step in ["a", "b", "c"] {
            assert!(
                out.lines().any(|l| l.starts_with(step)),
                "step {step} is on the page: {out}"
            );
        }
        let details = between(out, "DETAILS ", "\u{0}");
        assert!(details.starts_with("block"), "{details}");
        assert!(details.contains("(failed)"), "{details}");
        assert!(details.contains("error: first attempt fails"), "{details}");
        assert!(details.contains("tokens: in 7, out 1"), "{details}");

        let shot = dir.path().join("timeline.png");
        headless(
            &page,
            &[
                &format!("--screenshot={}", shot.display()),
                "--window-size=1280,720",
            ],
            &profile,
        )
        .await;
        let png = std::fs::read(&shot).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a screenshot");
        if let Some(keep) = std::env::var_os("CODITECT_SCREENSHOT") {
            std::fs::copy(&shot, keep).unwrap();
        }
    }
}
