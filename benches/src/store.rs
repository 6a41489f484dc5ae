//! Store workloads: a run's journal written to SQLite / PostgreSQL beside the
//! in-memory store, and a stored 10,000-step journal loaded and folded.
//!
//! A step writes three records, as the orchestrator will: dispatched, started,
//! succeeded (JSON of 200–350 bytes, shaped like run events). Two write
//! patterns:
//!
//! - **wide** (`journal_sqlite`, `journal_postgres`): 1,000 independent steps.
//!   Their records arrive faster than commits, and one journal writer appends
//!   whatever is queued (up to 256 records) as one append, awaiting each — as
//!   a run's writer drains its event channel. Durable before it returns.
//! - **chained** (`journal_*_chained`): each step's three records are one
//!   append, awaited before the next step starts (its result must be durable
//!   before a dependent step is dispatched): one commit per step, so this is
//!   the cost of a durable commit.
//!
//! fsyncs: SQLite in WAL mode with `synchronous=FULL` fsyncs the WAL once per
//! commit (plus a checkpoint now and then), so `commits_per_step` comes from the
//! store's own counter; where `strace` is installed, the same write runs once
//! more in a child process under `strace -f -c -e trace=fsync,fdatasync` and
//! `fsyncs_per_step` is the kernel's count.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use coditect_orchestrator::store::{
    Durability, MemoryStore, NewRecord, NewRun, Record, SqliteStore, Store, StoreOptions,
};
use coditect_orchestrator::{RunId, TenantId};
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::report::{Mode, Report, median, round2};

/// Steps of the written run.
const STEPS: usize = 1_000;
/// Steps of the chained write (each is one fsync, ~5 ms on this VM's disk).
const CHAINED_STEPS: usize = 200;
/// Steps of the loaded run.
const LOAD_STEPS: usize = 10_000;
/// The most records one append of the wide writer takes.
const MAX_APPEND: usize = 256;

/// The three records of step `i` of `run`, shaped like run events.
pub fn step_records(run: RunId, i: usize) -> [NewRecord; 3] {
    let step = format!("s{i}");
    let seq = (i * 3) as u64;
    let dispatched = serde_json::json!({
        "seq": seq, "run": run.to_string(), "event": "step_dispatched", "step": step,
        "capability": "noop", "attempt": 1, "agent": format!("noop/{}", i % 16),
        "trace": {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7"},
    });
    let started = serde_json::json!({
        "seq": seq + 1, "run": run.to_string(), "event": "step_started", "step": step,
        "attempt": 1, "agent": format!("noop/{}", i % 16), "node": "n4f1c2b9a0d3e5f61",
        "trace": {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b8"},
    });
    let succeeded = serde_json::json!({
        "seq": seq + 2, "run": run.to_string(), "event": "step_succeeded", "step": step,
        "attempt": 1, "agent": format!("noop/{}", i % 16), "output": 1,
        "usage": {"input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0, "model_calls": 0},
        "elapsed_us": 3, "idempotency_key": format!("{run}/{step}"),
    });
    [
        NewRecord::json("event", &dispatched).expect("json"),
        NewRecord::json("event", &started).expect("json"),
        NewRecord::json("event", &succeeded).expect("json"),
    ]
}

/// Writes the wide run's journal as one drained writer would; returns how
/// many appends it made.
async fn write_wide(store: &dyn Store, run: RunId, steps: usize) -> usize {
    let (tx, mut rx) = mpsc::unbounded_channel::<NewRecord>();
    let producer = tokio::spawn(async move {
        let all: Vec<[NewRecord; 3]> = (0..steps).map(|i| step_records(run, i)).collect();
        for [d, _, _] in &all {
            let _ = tx.send(d.clone());
        }
        for [_, s, ok] in all {
            let _ = tx.send(s);
            let _ = tx.send(ok);
        }
    });
    let total = steps * 3;
    let (mut head, mut appends) = (0u64, 0usize);
    let mut batch = Vec::with_capacity(MAX_APPEND);
    while (head as usize) < total {
        let Some(first) = rx.recv().await else { break };
        batch.push(first);
        while batch.len() < MAX_APPEND {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        head = store.append(run, head, None, &batch).await.expect("append");
        appends += 1;
        batch.clear();
    }
    producer.await.expect("producer");
    appends
}

/// Writes `steps` steps, one awaited append of three records each.
async fn write_chained(store: &dyn Store, run: RunId, steps: usize) {
    let mut head = 0;
    for i in 0..steps {
        head = store
            .append(run, head, None, &step_records(run, i))
            .await
            .expect("append");
    }
}

async fn new_run(store: &dyn Store) -> RunId {
    let run = RunId::new();
    store
        .create_run(NewRun::new(run, TenantId::default(), "bench"))
        .await
        .expect("create_run");
    run
}

#[derive(Clone, Copy)]
enum Pattern {
    Wide,
    Chained,
}

/// Times one write of `pattern` to `store`: ns per step, and appends made.
async fn time_write(store: &dyn Store, pattern: Pattern) -> (f64, usize) {
    let run = new_run(store).await;
    let start = Instant::now();
    let (steps, appends) = match pattern {
        Pattern::Wide => (STEPS, write_wide(store, run, STEPS).await),
        Pattern::Chained => {
            write_chained(store, run, CHAINED_STEPS).await;
            (CHAINED_STEPS, CHAINED_STEPS)
        }
    };
    (start.elapsed().as_nanos() as f64 / steps as f64, appends)
}

fn rounds_of(mode: Mode, pattern: Pattern) -> usize {
    match pattern {
        Pattern::Wide => mode.rounds(),
        Pattern::Chained => mode.rounds().min(3),
    }
}

/// Runs `pattern` on `ours` and on a memory store, alternating; returns the
/// medians (ns per step) and the appends per step of our side.
async fn side_by_side(mode: Mode, ours: &dyn Store, pattern: Pattern) -> (f64, f64, f64) {
    let memory = MemoryStore::new();
    let (mut o, mut b, mut a) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds_of(mode, pattern) {
        let (ns, appends) = time_write(ours, pattern).await;
        o.push(ns);
        a.push(appends as f64 / steps_of(pattern) as f64);
        b.push(time_write(&memory, pattern).await.0);
    }
    (median(&mut o), median(&mut b), median(&mut a))
}

fn steps_of(pattern: Pattern) -> usize {
    match pattern {
        Pattern::Wide => STEPS,
        Pattern::Chained => CHAINED_STEPS,
    }
}

/// `journal_sqlite`, `journal_sqlite_chained`, `journal_sqlite_batched`.
pub async fn sqlite(mode: Mode) -> Vec<Report> {
    let dir = tempfile_dir();
    let mut out = Vec::new();
    for (name, pattern, durability) in [
        ("journal_sqlite", Pattern::Wide, Durability::PerRecord),
        (
            "journal_sqlite_chained",
            Pattern::Chained,
            Durability::PerRecord,
        ),
        (
            "journal_sqlite_batched",
            Pattern::Chained,
            Durability::Batched {
                max_delay: Duration::from_millis(10),
                max_records: 1024,
            },
        ),
    ] {
        let path = dir.join(format!("{name}.db"));
        let store = SqliteStore::open(&path, StoreOptions::default().durability(durability))
            .await
            .expect("open sqlite");
        let before = store.stats();
        let (ours, base, appends) = side_by_side(mode, &store, pattern).await;
        let after = store.stats();
        let steps = (steps_of(pattern) * rounds_of(mode, pattern)) as f64;
        let mut r = Report::new(name, "in-memory store, same appends", ours, base)
            .field("steps", steps_of(pattern))
            .field("records_per_step", 3)
            .field("durability", format!("{durability:?}"))
            .field("overhead_ns_per_step", round2(ours - base))
            .field("appends_per_step", round2(appends))
            .field(
                "commits_per_step",
                round2((after.commits - before.commits) as f64 / steps),
            );
        if let Pattern::Wide = pattern {
            r = r.field("target_overhead_ns_per_step_max", 50_000);
        }
        if let Some(f) = fsyncs_per_step(name) {
            r = r.field("fsyncs_per_step", round2(f));
        }
        store.close().await;
        out.push(r);
    }
    let _ = std::fs::remove_dir_all(&dir);
    out
}

/// `journal_postgres`, `journal_postgres_chained`: against a real server
/// started here.
#[cfg(feature = "postgres")]
pub async fn postgres(mode: Mode) -> Vec<Report> {
    use coditect_orchestrator::store::PostgresStore;
    use coditect_orchestrator::testing::PostgresServer;
    let server = match tokio::task::spawn_blocking(PostgresServer::start)
        .await
        .expect("join")
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("journal_postgres skipped: {e}");
            return Vec::new();
        }
    };
    let store = PostgresStore::connect(&server.connection_string(), StoreOptions::default())
        .await
        .expect("connect");
    let mut out = Vec::new();
    for (name, pattern) in [
        ("journal_postgres", Pattern::Wide),
        ("journal_postgres_chained", Pattern::Chained),
    ] {
        let (ours, base, appends) = side_by_side(mode, &store, pattern).await;
        // Each append is one statement, so one commit.
        let mut r = Report::new(name, "in-memory store, same appends", ours, base)
            .field("steps", steps_of(pattern))
            .field("records_per_step", 3)
            .field("overhead_ns_per_step", round2(ours - base))
            .field("appends_per_step", round2(appends))
            .field("commits_per_step", round2(appends))
            .field(
                "server",
                "PostgreSQL (Debian), loopback, fsync on, synchronous_commit on",
            );
        if let Pattern::Wide = pattern {
            r = r.field("target_overhead_ns_per_step_max", 1_000_000);
        }
        out.push(r);
    }
    drop(server);
    out
}

/// One event as the fold reads it.
#[derive(Deserialize)]
struct Event {
    event: String,
    step: String,
    #[serde(default)]
    output: Option<serde_json::Value>,
}

/// The fold of a run's events: each step's last state and output.
fn fold(records: &[Record], state: &mut HashMap<String, (u8, Option<serde_json::Value>)>) {
    for r in records {
        let e: Event = r.json().expect("event");
        let s = state.entry(e.step).or_insert((0, None));
        s.0 = match e.event.as_str() {
            "step_dispatched" => 1,
            "step_started" => 2,
            "step_succeeded" => 3,
            _ => s.0,
        };
        if e.output.is_some() {
            s.1 = e.output;
        }
    }
}

/// Reads a run's whole journal in pages and folds it; returns the steps.
async fn load(store: &dyn Store, run: RunId) -> usize {
    let mut state = HashMap::with_capacity(LOAD_STEPS);
    let mut from = 0;
    loop {
        let page = store.read(run, from, 10_000).await.expect("read");
        if page.is_empty() {
            break;
        }
        from += page.len() as u64;
        fold(&page, &mut state);
    }
    assert!(state.values().all(|s| s.0 == 3));
    state.len()
}

/// `journal_load`: a stored 10,000-step journal, opened and folded from a
/// fresh SQLite handle, beside the same fold from the in-memory store; and
/// the journal's bytes per no-op step.
pub async fn load_journal(mode: Mode) -> Report {
    let dir = tempfile_dir();
    let path = dir.join("load.db");
    let store = SqliteStore::open(&path, StoreOptions::default())
        .await
        .expect("open");
    let memory = MemoryStore::new();
    let run = new_run(&store).await;
    memory
        .create_run(NewRun::new(run, TenantId::default(), "bench"))
        .await
        .expect("create");
    let mut frame_bytes = 0usize;
    let mut head = 0;
    for chunk in (0..LOAD_STEPS).collect::<Vec<_>>().chunks(100) {
        let records: Vec<NewRecord> = chunk.iter().flat_map(|&i| step_records(run, i)).collect();
        frame_bytes += records
            .iter()
            .map(|r| r.payload().len() + r.kind().len() + 18)
            .sum::<usize>();
        store
            .append(run, head, None, &records)
            .await
            .expect("append");
        head = memory
            .append(run, head, None, &records)
            .await
            .expect("append");
    }
    store.close().await;
    let file_bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let (mut o, mut b) = (Vec::new(), Vec::new());
    for _ in 0..mode.rounds() {
        let start = Instant::now();
        let fresh = SqliteStore::open(&path, StoreOptions::default())
            .await
            .expect("open");
        assert_eq!(load(&fresh, run).await, LOAD_STEPS);
        o.push(start.elapsed().as_nanos() as f64);
        fresh.close().await;
        let start = Instant::now();
        assert_eq!(load(&memory, run).await, LOAD_STEPS);
        b.push(start.elapsed().as_nanos() as f64);
    }
    let (ours, base) = (median(&mut o), median(&mut b));
    let _ = std::fs::remove_dir_all(&dir);
    Report::new(
        "journal_load",
        "the same fold over the in-memory store",
        ours,
        base,
    )
    .field("steps", LOAD_STEPS)
    .field("records", LOAD_STEPS * 3)
    .field("load_ms", round2(ours / 1e6))
    .field("target_load_ms_max", 100)
    .field(
        "journal_bytes_per_step",
        round2(frame_bytes as f64 / LOAD_STEPS as f64),
    )
    .field(
        "sqlite_file_bytes_per_step",
        round2(file_bytes as f64 / LOAD_STEPS as f64),
    )
    .field("target_bytes_per_step_max", 1024)
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("coditect-bench-store-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// The child side of the fsync count: writes one run of `workload` to a
/// fresh file and prints the store's commit count.
pub async fn fsync_child(workload: &str) -> String {
    let dir = tempfile_dir();
    let path = dir.join("fsync.db");
    let (pattern, durability) = match workload {
        "journal_sqlite" => (Pattern::Wide, Durability::PerRecord),
        "journal_sqlite_chained" => (Pattern::Chained, Durability::PerRecord),
        _ => (
            Pattern::Chained,
            Durability::Batched {
                max_delay: Duration::from_millis(10),
                max_records: 1024,
            },
        ),
    };
    let store = SqliteStore::open(&path, StoreOptions::default().durability(durability))
        .await
        .expect("open");
    // Setting up (schema, the run) is counted apart from the write.
    let run = new_run(&store).await;
    let before = store.stats().commits;
    match pattern {
        Pattern::Wide => {
            write_wide(&store, run, STEPS).await;
        }
        Pattern::Chained => write_chained(&store, run, CHAINED_STEPS).await,
    }
    store.flush().await.expect("flush");
    let commits = store.stats().commits - before;
    store.close().await;
    let _ = std::fs::remove_dir_all(&dir);
    format!("commits {commits}")
}

/// Runs the child under strace and returns fsync+fdatasync calls per step,
/// minus those of a child that only sets up (schema, the run).
fn fsyncs_per_step(workload: &str) -> Option<f64> {
    let strace = ["/usr/bin/strace", "/bin/strace"]
        .into_iter()
        .find(|p| Path::new(p).is_file())?;
    let exe = std::env::current_exe().ok()?;
    let count = |w: &str| -> Option<f64> {
        let out = std::env::temp_dir().join(format!("coditect-strace-{}-{w}", std::process::id()));
        let status = std::process::Command::new(strace)
            .args(["-f", "-c", "-e", "trace=fsync,fdatasync", "-o"])
            .arg(&out)
            .arg(&exe)
            .args(["--child", "fsyncs", w])
            .stdout(std::process::Stdio::null())
            .status()
            .ok()?;
        let text = std::fs::read_to_string(&out).ok()?;
        let _ = std::fs::remove_file(&out);
        if !status.success() {
            return None;
        }
        Some(
            text.lines()
                .filter(|l| l.trim_end().ends_with("fsync") || l.trim_end().ends_with("fdatasync"))
                .filter_map(|l| l.split_whitespace().nth(3)?.parse::<f64>().ok())
                .sum(),
        )
    };
    let total = count(workload)?;
    let setup = count("setup_only")?;
    let steps = match workload {
        "journal_sqlite" => STEPS,
        _ => CHAINED_STEPS,
    };
    Some((total - setup).max(0.0) / steps as f64)
}

/// The setup-only child: opens a fresh file and creates a run.
pub async fn setup_only_child() -> String {
    let dir = tempfile_dir();
    let store = SqliteStore::open(dir.join("fsync.db"), StoreOptions::default())
        .await
        .expect("open");
    new_run(&store).await;
    store.flush().await.expect("flush");
    store.close().await;
    let _ = std::fs::remove_dir_all(&dir);
    "setup".into()
}
