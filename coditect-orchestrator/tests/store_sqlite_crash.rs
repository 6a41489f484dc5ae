//! A process appending to a SQLite store is SIGKILLed mid-stream: the file
//! reopens with a journal that is a prefix of what was appended, whole appends
//! only, and (durability `PerRecord`) every append that was acknowledged.
#![cfg(all(feature = "sqlite", feature = "test-utils"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use coditect_orchestrator::store::{
    Durability, NewRecord, NewRun, SqliteStore, Store, StoreOptions,
};
use coditect_orchestrator::{RunId, TenantId};
use tokio::time::timeout;

const STEP: Duration = Duration::from_secs(30);
const CHILD_PATH: &str = "CODITECT_CRASH_CHILD_DB";
const CHILD_RUN: &str = "CODITECT_CRASH_CHILD_RUN";
const CHILD_BATCHED: &str = "CODITECT_CRASH_CHILD_BATCHED";

fn durability(batched: bool) -> Durability {
    if batched {
        Durability::Batched {
            max_delay: Duration::from_millis(20),
            max_records: 64,
        }
    } else {
        Durability::PerRecord
    }
}

/// The child: appends three records at a time until killed, printing each
/// acknowledged head. Run only by the parent tests below (ignored otherwise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the child process of the crash tests; they run it"]
async fn crash_child() {
    let path = std::env::var(CHILD_PATH).expect("run by the crash tests");
    let run: RunId = std::env::var(CHILD_RUN).unwrap().parse().unwrap();
    let batched = std::env::var(CHILD_BATCHED).is_ok();
    let store = SqliteStore::open(
        &path,
        StoreOptions::default().durability(durability(batched)),
    )
    .await
    .unwrap();
    let mut head = store.head(run).await.unwrap();
    // Bounded: the parent kills it long before.
    for _ in 0..1_000_000u64 {
        let records: Vec<NewRecord> = (head..head + 3)
            .map(|seq| NewRecord::new("event", format!("record {seq}")))
            .collect();
        head = store.append(run, head, None, &records).await.unwrap();
        println!("acked {head}");
    }
}

async fn crash_once(batched: bool) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runs.db");
    let run = RunId::new();
    {
        let store = timeout(STEP, SqliteStore::open(&path, StoreOptions::default()))
            .await
            .unwrap()
            .unwrap();
        timeout(
            STEP,
            store.create_run(NewRun::new(run, TenantId::default(), "crash")),
        )
        .await
        .unwrap()
        .unwrap();
        store.close().await;
    }
    for round in 0..3 {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([
            "crash_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_PATH, &path)
        .env(CHILD_RUN, run.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
        if batched {
            cmd.env(CHILD_BATCHED, "1");
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        // Let it get well into its appends (a different point each round),
        // then SIGKILL it (its own PID) mid-stream.
        let want = 30 + round * 17;
        let reading = tokio::task::spawn_blocking(move || {
            let mut lines = BufReader::new(stdout).lines();
            let (mut seen, mut last) = (0, 0u64);
            while seen < want {
                match lines.next() {
                    Some(Ok(line)) => {
                        if let Some(h) = line.strip_prefix("acked ") {
                            last = h.trim().parse().unwrap();
                            seen += 1;
                        }
                    }
                    _ => break,
                }
            }
            (seen, last)
        });
        let read = timeout(Duration::from_secs(60), reading).await;
        let Ok(Ok((seen, last))) = read else {
            let _ = child.kill();
            panic!("the child did not append in time");
        };
        let acked = last;
        assert_eq!(seen, want, "the child stopped appending early");
        child.kill().unwrap();
        child.wait().unwrap();

        let store = timeout(STEP, SqliteStore::open(&path, StoreOptions::default()))
            .await
            .unwrap()
            .unwrap();
        let head = timeout(STEP, store.head(run)).await.unwrap().unwrap();
        assert_eq!(head % 3, 0, "a torn append: head {head}");
        if !batched {
            assert!(head >= acked, "acknowledged {acked}, found {head}");
        }
        let records = timeout(STEP, store.read(run, 0, 1_000_000))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(records.len() as u64, head);
        for (i, r) in records.iter().enumerate() {
            assert_eq!(&r.payload[..], format!("record {i}").as_bytes());
        }
        store.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_writer_loses_nothing_acknowledged() {
    crash_once(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_batched_writer_leaves_a_prefix_of_whole_appends() {
    crash_once(true).await;
}
