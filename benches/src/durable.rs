//! Durable runs end to end: the orchestrator's 1,000-step wide plan of no-op
//! agents with a run store, beside the same plan without one
//! (`checkpoint_sqlite`, `checkpoint_postgres`); a 200-step chain, where each
//! result must be durable before the next step goes (`checkpoint_chained`);
//! and a stored 10,000-step run read back and folded by
//! `Orchestrator::replay` (`resume`).
//!
//! With a store, every run event is journaled (JSON, versioned and
//! checksummed) and a step's result is durable before any step depending on
//! it is dispatched; effects and questions are durable before their handler
//! goes on. A wide plan's steps depend on nothing, so its journal is written
//! at its start (the run and its first dispatches) and its end (the results,
//! before the outcome is returned).

use std::sync::Arc;
use std::time::{Duration, Instant};

use coditect_orchestrator::orchestrator::{
    Orchestrator, Plan, StaticPlanner, Step, StepInput, TaskSpec,
};
use coditect_orchestrator::store::{SqliteStore, Store, StoreOptions};
use coditect_orchestrator::{InMemoryTransport, Runtime};

use crate::orchestrate::Noop;
use crate::report::{Mode, Report, median, round2};

const STEPS: usize = 1_000;
const CHAINED_STEPS: usize = 200;
const RESUME_STEPS: usize = 10_000;

fn wide(n: usize) -> Plan {
    Plan::new((0..n).map(|i| Step::new(format!("s{i}"), "noop", StepInput::literal(i))))
}

/// `n` steps, each taking the previous one's output.
fn chain(n: usize) -> Plan {
    Plan::new((0..n).map(|i| {
        let input = match i {
            0 => StepInput::literal(0),
            _ => StepInput::output(format!("s{}", i - 1)),
        };
        Step::new(format!("s{i}"), "noop", input)
    }))
}

async fn runtime() -> Runtime {
    let rt = Runtime::builder(InMemoryTransport::new())
        .build()
        .await
        .expect("runtime");
    rt.kind("noop")
        .instances(16)
        .register(|_| Noop)
        .await
        .expect("register");
    rt
}

/// ns per step of the wide plan with `store`, and without one.
async fn side_by_side(mode: Mode, store: Arc<dyn Store>) -> (f64, f64) {
    side_by_side_plan(mode, store, wide(STEPS), STEPS).await
}

/// ns per step of `plan` (of `steps` steps) with `store`, and without one.
async fn side_by_side_plan(
    mode: Mode,
    store: Arc<dyn Store>,
    plan: Plan,
    steps: usize,
) -> (f64, f64) {
    let rt = runtime().await;
    let plain = Orchestrator::new(rt.clone(), StaticPlanner::new(plan));
    let durable = plain.clone().store(store);
    durable.run(TaskSpec::new("warm")).await.expect("run");
    plain.run(TaskSpec::new("warm")).await.expect("run");
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    for _ in 0..mode.rounds() {
        let start = Instant::now();
        let out = durable.run(TaskSpec::new("bench")).await.expect("run");
        ours.push(start.elapsed().as_nanos() as f64 / steps as f64);
        assert_eq!(out.steps.len(), steps);
        let start = Instant::now();
        plain.run(TaskSpec::new("bench")).await.expect("run");
        base.push(start.elapsed().as_nanos() as f64 / steps as f64);
    }
    rt.shutdown(Duration::from_secs(5)).await;
    (median(&mut ours), median(&mut base))
}

fn temp_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("coditect-bench-durable-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// `plan` (of `steps` steps) on a fresh SQLite file with default durability,
/// beside the same plan without a store: ns per step each, and the store's
/// commits per durable step (warm-up and measured runs).
async fn on_sqlite(mode: Mode, file: &str, plan: Plan, steps: usize) -> (f64, f64, f64) {
    let dir = temp_dir();
    let store = Arc::new(
        SqliteStore::open(dir.join(file), StoreOptions::default())
            .await
            .expect("open"),
    );
    let before = store.stats();
    let (ours, base) = side_by_side_plan(mode, store.clone(), plan, steps).await;
    let after = store.stats();
    let durable_steps = (steps * (mode.rounds() + 1)) as f64;
    let commits = (after.commits - before.commits) as f64 / durable_steps;
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    (ours, base, commits)
}

/// `checkpoint_sqlite`: the wide plan on SQLite (default durability: each
/// append committed with `synchronous=FULL`).
pub async fn checkpoint_sqlite(mode: Mode) -> Report {
    let (ours, base, commits) = on_sqlite(mode, "checkpoint.db", wide(STEPS), STEPS).await;
    Report::new(
        "checkpoint_sqlite",
        "the same orchestrator and plan without a store",
        ours,
        base,
    )
    .field("steps", STEPS)
    .field("overhead_ns_per_step", round2(ours - base))
    .field("commits_per_step", round2(commits))
    .field("fsyncs_per_step", round2(commits))
    .field("target_overhead_ns_per_step_max", 50_000)
}

/// `checkpoint_chained`: a chain on SQLite (default durability): every
/// step's result is committed, with the next step's dispatch, before that
/// step is sent — one commit, one fsync, per step.
pub async fn checkpoint_chained(mode: Mode) -> Report {
    let (ours, base, commits) =
        on_sqlite(mode, "chained.db", chain(CHAINED_STEPS), CHAINED_STEPS).await;
    Report::new(
        "checkpoint_chained",
        "the same orchestrator and chain without a store",
        ours,
        base,
    )
    .field("steps", CHAINED_STEPS)
    .field("overhead_ns_per_step", round2(ours - base))
    .field("commits_per_step", round2(commits))
}

/// `checkpoint_postgres`: the wide plan on a PostgreSQL server started here.
#[cfg(feature = "postgres")]
pub async fn checkpoint_postgres(mode: Mode) -> Option<Report> {
    use coditect_orchestrator::store::PostgresStore;
    use coditect_orchestrator::testing::PostgresServer;
    let server = match tokio::task::spawn_blocking(PostgresServer::start)
        .await
        .expect("join")
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("checkpoint_postgres skipped: {e}");
            return None;
        }
    };
    let store = Arc::new(
        PostgresStore::connect(&server.connection_string(), StoreOptions::default())
            .await
            .expect("connect"),
    );
    let (ours, base) = side_by_side(mode, store).await;
    drop(server);
    Some(
        Report::new(
            "checkpoint_postgres",
            "the same orchestrator and plan without a store",
            ours,
            base,
        )
        .field("steps", STEPS)
        .field("overhead_ns_per_step", round2(ours - base))
        .field(
            "server",
            "PostgreSQL (Debian), loopback, fsync on, synchronous_commit on",
        )
        .field("target_overhead_ns_per_step_max", 1_000_000),
    )
}

/// `resume`: a stored 10,000-step run (written by a real durable run on
/// SQLite) read back and folded by `Orchestrator::replay` from a fresh store
/// handle; the baseline folds the same events already in memory. Also the
/// journal's bytes per no-op step.
pub async fn resume(mode: Mode) -> Report {
    let dir = temp_dir();
    let path = dir.join("resume.db");
    let rt = runtime().await;
    let run = {
        let store = Arc::new(
            SqliteStore::open(&path, StoreOptions::default())
                .await
                .expect("open"),
        );
        let orch = Orchestrator::new(rt.clone(), StaticPlanner::new(wide(RESUME_STEPS)))
            .store(store.clone());
        let out = orch.run(TaskSpec::new("stored")).await.expect("run");
        out.run
    };
    let store = Arc::new(
        SqliteStore::open(&path, StoreOptions::default())
            .await
            .expect("open"),
    );
    let orch = Orchestrator::new(rt.clone(), StaticPlanner::new(wide(1))).store(store.clone());
    let events = orch.replay(run).await.expect("replay").events;
    let records = store.read(run, 0, usize::MAX).await.expect("read");
    let bytes: usize = records.iter().map(|r| r.payload.len() + r.kind.len()).sum();
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    for _ in 0..mode.rounds() {
        let start = Instant::now();
        let stored = orch.replay(run).await.expect("replay");
        ours.push(start.elapsed().as_nanos() as f64);
        assert_eq!(stored.state.outputs().len(), RESUME_STEPS);
        let start = Instant::now();
        let mut state = coditect_orchestrator::orchestrator::RunState::new(run);
        for e in &events {
            state.apply(e);
        }
        base.push(start.elapsed().as_nanos() as f64);
        assert_eq!(state.outputs().len(), RESUME_STEPS);
    }
    rt.shutdown(Duration::from_secs(5)).await;
    drop((orch, store));
    let _ = std::fs::remove_dir_all(&dir);
    let (ours, base) = (median(&mut ours), median(&mut base));
    Report::new(
        "resume",
        "folding the same events already in memory",
        ours,
        base,
    )
    .field("steps", RESUME_STEPS)
    .field("events", events.len())
    .field("load_and_fold_ms", round2(ours / 1e6))
    .field("target_load_ms_max", 100)
    .field(
        "journal_bytes_per_step",
        round2(bytes as f64 / RESUME_STEPS as f64),
    )
    .field("target_journal_bytes_per_step_max", 1024)
}

/// Never answers: the step that keeps a stored run unfinished.
struct Hang;

impl coditect_orchestrator::Agent for Hang {
    type Input = serde_json::Value;
    type Output = u64;
    async fn handle(
        &mut self,
        _: serde_json::Value,
        _ctx: &coditect_orchestrator::AgentContext,
    ) -> Result<u64, coditect_orchestrator::AgentError> {
        std::future::pending().await
    }
}

/// `RESUME_STEPS` steps (a run's default limit): no-op ones and, after
/// them, one that never ends.
fn unfinished() -> Plan {
    let mut steps: Vec<Step> = (0..RESUME_STEPS - 1)
        .map(|i| Step::new(format!("s{i}"), "noop", StepInput::literal(i)))
        .collect();
    // After all of them: their results are committed (with its dispatch)
    // before it goes, and a snapshot is taken then.
    steps.push(
        Step::new("last", "hang", StepInput::literal(0))
            .after((0..RESUME_STEPS - 1).map(|i| format!("s{i}"))),
    );
    Plan::new(steps)
}

/// Runs `f` on a tokio runtime of its own, on its own thread, and then drops
/// that runtime with whatever it still runs: as a process that dies, the
/// tasks stop where they are, with no cleanup.
fn in_a_process<T: Send + 'static>(
    f: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>> + Send + 'static,
) -> T {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let out = rt.block_on(f());
        rt.shutdown_background();
        out
    })
    .join()
    .expect("the process thread panicked")
}

async fn orchestrator_for(path: &std::path::Path, snapshot_every: u64) -> Orchestrator {
    let rt = runtime().await;
    rt.kind("hang").register(|_| Hang).await.expect("register");
    let store = Arc::new(
        SqliteStore::open(path, StoreOptions::default())
            .await
            .expect("open"),
    );
    Orchestrator::new(rt, StaticPlanner::new(unfinished()))
        .store(store)
        .lease_holder("bench")
        .snapshot_every(snapshot_every)
}

/// A stored run whose 9,999 no-op steps succeeded and whose last step was
/// in flight when its process died; with snapshots every `snapshot_every`
/// events (0: none).
/// Also the size of its latest snapshot.
fn interrupted_run(
    path: &std::path::Path,
    snapshot_every: u64,
) -> (coditect_orchestrator::RunId, usize) {
    let path = path.to_owned();
    in_a_process(move || {
        Box::pin(async move {
            let orch = orchestrator_for(&path, snapshot_every).await;
            let handle = orch.start(TaskSpec::new("stored"));
            let run = handle.id();
            let store = SqliteStore::open(&path, StoreOptions::default())
                .await
                .expect("open");
            // Three events per no-op step, and the run's own: wait until
            // they are durable, and the snapshots too (bounded: 60 s).
            let events = 3 * (RESUME_STEPS as u64 - 1);
            let began = Instant::now();
            let bytes = loop {
                // Not there until the driver has created it.
                let head = store.head(run).await.unwrap_or(0);
                let mut seen = None;
                if head >= events {
                    let snap = store.latest_snapshot(run).await.expect("snapshot");
                    seen = snap.as_ref().map(|s| s.seq);
                    let bytes = snap.as_ref().map_or(0, |s| s.payload.len());
                    if snapshot_every == 0 || snap.is_some_and(|s| s.seq + snapshot_every > events)
                    {
                        break bytes;
                    }
                }
                assert!(
                    began.elapsed() < Duration::from_secs(60),
                    "the stored run did not get there: head {head}, snapshot at {seen:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            std::mem::forget(handle);
            (run, bytes)
        })
    })
}

/// `resume_snapshot`: `Orchestrator::resume` of a 10,000-step run whose
/// orchestrator died with one step in flight — the lease taken, the latest
/// snapshot (every 10,000 events, the default) read and decoded, the events
/// after it folded — beside resuming the same run journaled without
/// snapshots (the whole journal folded).
pub async fn resume_snapshot(mode: Mode) -> Report {
    let dir = temp_dir();
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    let mut snapshot_bytes = 0;
    for round in 0..mode.rounds() {
        for (every, into) in [(10_000u64, &mut ours), (0, &mut base)] {
            let path = dir.join(format!("resume-{round}-{every}.db"));
            let (run, bytes) = interrupted_run(&path, every);
            snapshot_bytes = snapshot_bytes.max(bytes);
            let took = in_a_process(move || {
                Box::pin(async move {
                    let orch = orchestrator_for(&path, every).await;
                    let start = Instant::now();
                    let handle = orch.resume(run).await.expect("resume");
                    let took = start.elapsed();
                    std::mem::forget(handle);
                    took
                })
            });
            into.push(took.as_nanos() as f64);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let (ours, base) = (median(&mut ours), median(&mut base));
    Report::new(
        "resume_snapshot",
        "resuming the same run journaled without snapshots",
        ours,
        base,
    )
    .field("steps", RESUME_STEPS)
    .field("snapshot_every", 10_000)
    .field("snapshot_bytes", snapshot_bytes)
    .field("resume_ms", round2(ours / 1e6))
    .field("resume_without_snapshots_ms", round2(base / 1e6))
    .field("target_load_ms_max", 100)
}
