//! `durable_pipeline` as its contract says: a real child process running a
//! run on SQLite, SIGKILLed again and again at many points (between steps,
//! inside a step after its effect, while results are written), resumed each
//! time: the run finishes, and `PATH.effects` holds exactly one line per step.
//! The effect bodies' own log (`PATH.attempts`) shows the journal at work:
//! a step's effect runs again only if its process was killed in the window
//! between doing it and recording it — at most once per kill.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_durable_pipeline");

/// A started pipeline: its first line (the run id) read, its other lines
/// collected by a thread.
struct Started {
    child: Child,
    run: Option<String>,
    lines: mpsc::Receiver<String>,
}

fn start(db: &Path, steps: usize, resume: Option<&str>) -> Started {
    let mut cmd = Command::new(BIN);
    cmd.arg("--db")
        .arg(db)
        .arg("--steps")
        .arg(steps.to_string());
    if let Some(run) = resume {
        cmd.arg("--resume").arg(run);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let run = lines
        .recv_timeout(Duration::from_secs(60))
        .ok()
        .and_then(|l| l.strip_prefix("run ").map(str::to_owned));
    Started { child, run, lines }
}

/// Waits for the child to end (bounded) and returns its last line.
fn finish(mut s: Started) -> (bool, Option<String>) {
    let mut last = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        match s.lines.recv_timeout(Duration::from_millis(200)) {
            Ok(l) => last = Some(l),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                assert!(std::time::Instant::now() < deadline, "the pipeline hung");
            }
        }
    }
    let status = s.child.wait().unwrap();
    (status.success(), last)
}

fn kill(mut s: Started) {
    // SIGKILL, to the child we started, by its PID.
    s.child.kill().unwrap();
    s.child.wait().unwrap();
}

fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn killed_again_and_again_every_effect_happens_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    let steps = 20;
    // Kill points spread over the run's ~2 s of work: some land between
    // steps, some inside a step after its effect, some while a result is
    // being written. (When a kill lands does not decide the assertion.)
    let delays_ms = [60u64, 170, 95, 240, 130, 310, 45, 205];
    let mut run: Option<String> = None;
    let mut kills = 0;
    for d in delays_ms {
        let s = start(&db, steps, run.as_deref());
        if run.is_none() {
            run.clone_from(&s.run);
        }
        assert!(s.run.is_some(), "the pipeline did not print its run id");
        std::thread::sleep(Duration::from_millis(d));
        kill(s);
        kills += 1;
    }
    let run = run.unwrap();
    // Resume until it says it finished (each resume finishes in ~2 s).
    let (ok, last) = finish(start(&db, steps, Some(&run)));
    assert!(ok, "the resumed pipeline failed: {last:?}");
    assert_eq!(last.as_deref(), Some("finished Succeeded"));

    let effects = lines_of(&with(&db, ".effects"));
    let expected: Vec<String> = (0..steps).map(|i| format!("{run} s{i:03}")).collect();
    assert_eq!(effects, expected, "exactly one line per step, in order");

    // The journal did the work, not only the idempotency key: an effect's
    // body runs again only in an attempt that began before its result was
    // journaled (the kill fell between doing it and recording it), never
    // in an attempt after the one that recorded it.
    let recorded = recorded_in(&db, &run);
    assert_eq!(recorded.len(), steps, "one record per step: {recorded:?}");
    let mut extra = 0;
    for note in lines_of(&with(&db, ".attempts")) {
        let (key, attempt) = note.rsplit_once(' ').unwrap();
        let attempt: u32 = attempt.parse().unwrap();
        let step = key.split('/').nth(1).unwrap().to_owned();
        let at = recorded[&step];
        assert!(
            attempt <= at,
            "step {step}: its effect ran in attempt {attempt}, after attempt {at} had recorded it"
        );
        if attempt < at {
            extra += 1;
        }
    }
    assert!(
        extra <= kills,
        "effects ran {extra} extra times over {kills} kills"
    );

    // Resuming a finished run says so and changes nothing.
    let (ok, last) = finish(start(&db, steps, Some(&run)));
    assert!(ok);
    assert_eq!(last.as_deref(), Some("finished Succeeded"));
    assert_eq!(lines_of(&with(&db, ".effects")).len(), steps);

    // The journal every process wrote is one causally ordered story: each
    // step interrupted by a kill goes again with the next attempt, nothing
    // of a step after its result.
    let journal = journal_of(&db, &run);
    if let Err(v) = coditect_orchestrator::testing::check_causal_order(&journal) {
        panic!("{v} after {kills} kills");
    }
}

/// Every event of the run's journal.
fn journal_of(db: &Path, run: &str) -> Vec<coditect_orchestrator::orchestrator::RunEventRecord> {
    use coditect_orchestrator::store::{SqliteStore, Store, StoreOptions};
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = SqliteStore::open(db, StoreOptions::default())
            .await
            .unwrap();
        let records = store.read(run.parse().unwrap(), 0, 100_000).await.unwrap();
        records.iter().map(|r| r.json().unwrap()).collect()
    })
}

/// For each step, the attempt during which its effect was journaled.
fn recorded_in(db: &Path, run: &str) -> BTreeMap<String, u32> {
    use coditect_orchestrator::orchestrator::RunEvent;
    let mut attempt: BTreeMap<String, u32> = BTreeMap::new();
    let mut recorded = BTreeMap::new();
    for e in journal_of(db, run) {
        match e.event {
            RunEvent::StepDispatched {
                step, attempt: a, ..
            } => {
                attempt.insert(step.to_string(), a);
            }
            RunEvent::EffectRecorded {
                step: Some(step), ..
            } => {
                let s = step.to_string();
                assert!(
                    recorded.insert(s.clone(), attempt[&s]).is_none(),
                    "{s} recorded twice"
                );
            }
            _ => {}
        }
    }
    recorded
}

fn with(path: &Path, suffix: &str) -> std::path::PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    s.into()
}
