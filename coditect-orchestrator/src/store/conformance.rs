//! The store conformance suite: the same checks against every [`Store`]
//! backend (feature `test-utils`).
//!
//! A [`Harness`] opens handles on one storage — as separate processes would,
//! each with its own connection — and can damage a stored record behind the
//! store's back. Each check panics with a clear message when the backend
//! misbehaves; every await is under a timeout, and leases expire by polling
//! with a bound, never by sleeping a fixed time. Each check uses its own runs
//! and tenant, so checks can share a storage.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use tokio::sync::Barrier;

use super::record::encode;
use super::{
    Cursor, FORMAT_VERSION, NewRecord, NewRun, RunQuery, RunStatus, Snapshot, Store, StoreError,
    StoreErrorKind, StoreOptions,
};
use crate::{RunId, TenantId};

/// How long any one store call of a check may take.
const STEP: Duration = Duration::from_secs(30);

/// Opens stores on one storage for the suite.
#[async_trait]
pub trait Harness: Send + Sync {
    /// A new handle on the storage, as another process would open it.
    async fn open(&self) -> Arc<dyn Store>;

    /// A handle with other options (a smaller record limit). It may be a
    /// separate storage; the check uses only this handle.
    async fn open_with(&self, options: StoreOptions) -> Arc<dyn Store>;

    /// Replaces the stored bytes of record `seq` of `run`, behind the store's
    /// back (the bytes are a whole stored frame; see [`frame`]).
    async fn overwrite_record(&self, run: RunId, seq: u64, bytes: Vec<u8>);
}

/// The stored frame of a record, as the store writes it, for
/// [`Harness::overwrite_record`].
pub fn frame(seq: u64, kind: &str, payload: &[u8]) -> Vec<u8> {
    encode(seq, kind, payload)
}

/// Runs every check of the suite.
pub async fn run_all(h: &dyn Harness) {
    journal_round_trip(h).await;
    run_index_round_trip(h).await;
    concurrent_appenders_exactly_one_wins(h).await;
    racing_writers_keep_a_gapless_journal(h).await;
    corrupt_record_is_a_typed_error(h).await;
    future_version_is_a_typed_error(h).await;
    oversized_record_writes_nothing(h).await;
    listing_pages_are_stable(h).await;
    leases_fence_stale_holders(h).await;
    expired_lease_can_be_taken_over(h).await;
    delete_rules(h).await;
    snapshot_round_trip(h).await;
    random_appends_and_reads_match_a_model(h).await;
}

async fn t<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, f)
        .await
        .unwrap_or_else(|_| panic!("store call hung: {what}"))
}

fn random_tenant() -> TenantId {
    TenantId::new(format!("t{:016x}", rand::random::<u64>())).unwrap()
}

async fn new_run(store: &dyn Store, tenant: &TenantId) -> RunId {
    let run = RunId::new();
    t(
        "create_run",
        store.create_run(NewRun::new(run, tenant.clone(), "conformance")),
    )
    .await
    .expect("create_run");
    run
}

fn rec(i: u64) -> NewRecord {
    NewRecord::new("event", format!("{{\"i\":{i}}}"))
}

/// Appends, reads in pieces, and reads an unknown run.
pub async fn journal_round_trip(h: &dyn Harness) {
    let store = h.open().await;
    let run = new_run(&*store, &random_tenant()).await;
    assert_eq!(t("head", store.head(run)).await.unwrap(), 0);
    assert!(t("read", store.read(run, 0, 10)).await.unwrap().is_empty());
    let head = t(
        "append",
        store.append(run, 0, None, &[rec(0), rec(1), rec(2)]),
    )
    .await
    .unwrap();
    assert_eq!(head, 3);
    let head = t("append", store.append(run, 3, None, &[rec(3), rec(4)]))
        .await
        .unwrap();
    assert_eq!(head, 5);
    // An empty append is a check of the position and nothing more.
    assert_eq!(
        t("append", store.append(run, 5, None, &[])).await.unwrap(),
        5
    );
    let all = t("read", store.read(run, 0, 100)).await.unwrap();
    assert_eq!(all.len(), 5);
    for (i, r) in all.iter().enumerate() {
        assert_eq!(r.seq, i as u64);
        assert_eq!(r.kind, "event");
        assert_eq!(r.version, FORMAT_VERSION);
        assert_eq!(r.json::<serde_json::Value>().unwrap()["i"], i as u64);
    }
    let mid = t("read", store.read(run, 1, 2)).await.unwrap();
    assert_eq!(mid.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2]);
    assert!(t("read", store.read(run, 5, 10)).await.unwrap().is_empty());
    assert!(t("read", store.read(run, 99, 10)).await.unwrap().is_empty());
    // Another handle (another process) sees the same journal.
    let other = h.open().await;
    assert_eq!(t("read", other.read(run, 0, 100)).await.unwrap(), all);

    let unknown = RunId::new();
    for e in [
        t("append", store.append(unknown, 0, None, &[rec(0)]))
            .await
            .map(|_| ())
            .unwrap_err(),
        t("read", store.read(unknown, 0, 1))
            .await
            .map(|_| ())
            .unwrap_err(),
        t("head", store.head(unknown))
            .await
            .map(|_| ())
            .unwrap_err(),
        t("run", store.run(unknown)).await.map(|_| ()).unwrap_err(),
    ] {
        assert_eq!(e.kind(), StoreErrorKind::NotFound, "{e}");
    }
}

/// Creates, reads back and updates index entries.
pub async fn run_index_round_trip(h: &dyn Harness) {
    let store = h.open().await;
    let tenant = random_tenant();
    let run = RunId::new();
    let created = t(
        "create_run",
        store.create_run(NewRun::new(run, tenant.clone(), "write the report")),
    )
    .await
    .unwrap();
    assert_eq!(created.status, RunStatus::Running);
    assert_eq!(created.goal, "write the report");
    assert_eq!(t("run", store.run(run)).await.unwrap(), created);
    let again = t(
        "create_run",
        store.create_run(NewRun::new(run, tenant.clone(), "again")),
    )
    .await
    .unwrap_err();
    assert_eq!(again.kind(), StoreErrorKind::AlreadyExists, "{again}");

    let paused = t(
        "set_status",
        store.set_status(run, RunStatus::Paused, Some("waits for approval".into())),
    )
    .await
    .unwrap();
    assert_eq!(paused.status, RunStatus::Paused);
    assert_eq!(paused.summary.as_deref(), Some("waits for approval"));
    assert!(paused.updated_at >= created.updated_at);
    assert_eq!(paused.created_at, created.created_at);
    // No summary given: the old one stays.
    let running = t(
        "set_status",
        store.set_status(run, RunStatus::Running, None),
    )
    .await
    .unwrap();
    assert_eq!(running.summary.as_deref(), Some("waits for approval"));
    let other = h.open().await;
    assert_eq!(t("run", other.run(run)).await.unwrap(), running);
    let e = t(
        "set_status",
        store.set_status(RunId::new(), RunStatus::Failed, None),
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::NotFound);
}

/// Writers on separate handles append at the same position at once: exactly
/// one wins each position, the others get a typed conflict naming it.
pub async fn concurrent_appenders_exactly_one_wins(h: &dyn Harness) {
    const WRITERS: usize = 6;
    const ROUNDS: u64 = 5;
    let mut stores = Vec::new();
    for _ in 0..WRITERS {
        stores.push(h.open().await);
    }
    let run = new_run(&*stores[0], &random_tenant()).await;
    for round in 0..ROUNDS {
        let barrier = Arc::new(Barrier::new(WRITERS));
        let mut tasks = Vec::new();
        for (w, store) in stores.iter().enumerate() {
            let (store, barrier) = (store.clone(), barrier.clone());
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                store
                    .append(
                        run,
                        round * 2,
                        None,
                        &[
                            NewRecord::new("event", format!("w{w} r{round} a")),
                            NewRecord::new("event", format!("w{w} r{round} b")),
                        ],
                    )
                    .await
            }));
        }
        let mut winners = Vec::new();
        for (w, task) in tasks.into_iter().enumerate() {
            match t("append", task).await.unwrap() {
                Ok(head) => {
                    assert_eq!(head, round * 2 + 2);
                    winners.push(w);
                }
                Err(StoreError::Conflict {
                    run: r,
                    expected,
                    actual,
                }) => {
                    assert_eq!((r, expected, actual), (run, round * 2, round * 2 + 2));
                }
                Err(e) => panic!("writer {w}: expected a conflict, got {e}"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: winners {winners:?}");
        // Both records of the winner, and nothing of anyone else.
        let got = t("read", stores[1].read(run, round * 2, 10)).await.unwrap();
        let w = winners[0];
        assert_eq!(
            got.iter()
                .map(|r| String::from_utf8_lossy(&r.payload).into_owned())
                .collect::<Vec<_>>(),
            [format!("w{w} r{round} a"), format!("w{w} r{round} b")]
        );
    }
}

/// Writers that retry on conflict: every record lands once, in each writer's
/// order, with sequence numbers from 0 without gaps.
pub async fn racing_writers_keep_a_gapless_journal(h: &dyn Harness) {
    const WRITERS: usize = 4;
    const EACH: usize = 10;
    let first = h.open().await;
    let run = new_run(&*first, &random_tenant()).await;
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let store = h.open().await;
        tasks.push(tokio::spawn(async move {
            let mut at = 0;
            let mut conflicts = 0u32;
            for i in 0..EACH {
                loop {
                    let r = NewRecord::new("event", format!("{w}:{i}"));
                    match store.append(run, at, None, &[r]).await {
                        Ok(head) => {
                            at = head;
                            break;
                        }
                        Err(StoreError::Conflict { actual, .. }) => {
                            conflicts += 1;
                            assert!(conflicts < 10_000, "writer {w} never got through");
                            at = actual;
                        }
                        Err(e) => panic!("writer {w}: {e}"),
                    }
                }
            }
        }));
    }
    for task in tasks {
        t("racing writer", task).await.unwrap();
    }
    let all = t("read", first.read(run, 0, 1000)).await.unwrap();
    assert_eq!(all.len(), WRITERS * EACH);
    let mut next = [0usize; WRITERS];
    for (i, r) in all.iter().enumerate() {
        assert_eq!(r.seq, i as u64);
        let text = String::from_utf8_lossy(&r.payload).into_owned();
        let (w, n) = text.split_once(':').unwrap();
        let (w, n): (usize, usize) = (w.parse().unwrap(), n.parse().unwrap());
        assert_eq!(n, next[w], "writer {w}'s records out of order: {text}");
        next[w] += 1;
    }
}

/// A damaged record is a typed error naming the run and its seq; reads stop
/// there instead of skipping it, and the records around it still read.
pub async fn corrupt_record_is_a_typed_error(h: &dyn Harness) {
    let store = h.open().await;
    let run = new_run(&*store, &random_tenant()).await;
    t(
        "append",
        store.append(run, 0, None, &[rec(0), rec(1), rec(2)]),
    )
    .await
    .unwrap();
    let mut bad = frame(1, "event", b"{\"i\":1}");
    let mid = bad.len() - 6;
    bad[mid] ^= 0x20;
    h.overwrite_record(run, 1, bad).await;
    let e = t("read", store.read(run, 0, 10)).await.unwrap_err();
    match &e {
        StoreError::Corrupt {
            run: r, seq, what, ..
        } => assert_eq!((*r, *seq, *what), (run, 1, "record")),
        other => panic!("expected Corrupt, got {other}"),
    }
    let msg = e.to_string();
    assert!(
        msg.contains(&run.to_string()) && msg.contains("seq 1"),
        "{msg}"
    );
    assert_eq!(t("read", store.read(run, 0, 1)).await.unwrap().len(), 1);
    assert_eq!(t("read", store.read(run, 2, 10)).await.unwrap()[0].seq, 2);

    // A frame that holds another position is corrupt too.
    h.overwrite_record(run, 2, frame(7, "event", b"{}")).await;
    let e = t("read", store.read(run, 2, 10)).await.unwrap_err();
    assert!(
        matches!(e, StoreError::Corrupt { seq: 2, .. }),
        "expected Corrupt at seq 2, got {e}"
    );
}

/// A record from a newer format is named as such, with the run and its seq.
pub async fn future_version_is_a_typed_error(h: &dyn Harness) {
    let store = h.open().await;
    let run = new_run(&*store, &random_tenant()).await;
    t("append", store.append(run, 0, None, &[rec(0), rec(1)]))
        .await
        .unwrap();
    let mut future = frame(1, "event", b"{\"i\":1}");
    future[0] = FORMAT_VERSION + 1;
    h.overwrite_record(run, 1, future).await;
    let e = t("read", store.read(run, 0, 10)).await.unwrap_err();
    match e {
        StoreError::UnsupportedVersion {
            run: r,
            seq,
            version,
            supported,
            ..
        } => assert_eq!(
            (r, seq, version, supported),
            (run, 1, FORMAT_VERSION + 1, FORMAT_VERSION)
        ),
        other => panic!("expected UnsupportedVersion, got {other}"),
    }
}

/// Past the record limit: a typed error, and nothing of the append is
/// written. Snapshots have a limit of their own, above the records' one.
pub async fn oversized_record_writes_nothing(h: &dyn Harness) {
    let store = h
        .open_with(
            StoreOptions::default()
                .max_record_bytes(1000)
                .max_snapshot_bytes(2000),
        )
        .await;
    let run = new_run(&*store, &random_tenant()).await;
    let ok = NewRecord::new("event", vec![b'x'; 1000]);
    let big = NewRecord::new("event", vec![b'x'; 1001]);
    let e = t("append", store.append(run, 0, None, &[ok.clone(), big]))
        .await
        .unwrap_err();
    match e {
        StoreError::TooLarge {
            run: r,
            size,
            limit,
            what,
        } => assert_eq!((r, size, limit, what), (run, 1001, 1000, "record")),
        other => panic!("expected TooLarge, got {other}"),
    }
    assert_eq!(t("head", store.head(run)).await.unwrap(), 0);
    let e = t(
        "put_snapshot",
        store.put_snapshot(run, &Snapshot::new(0, vec![0u8; 2001])),
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::TooLarge, "{e}");
    assert!(
        t("latest_snapshot", store.latest_snapshot(run))
            .await
            .unwrap()
            .is_none()
    );
    // Larger than a record may be, within the snapshots' own limit.
    t(
        "put_snapshot",
        store.put_snapshot(run, &Snapshot::new(0, vec![7u8; 1500])),
    )
    .await
    .unwrap();
    let kept = t("latest_snapshot", store.latest_snapshot(run))
        .await
        .unwrap()
        .expect("the snapshot within its limit was not kept");
    assert_eq!(kept.payload.len(), 1500);
    for kind in ["", "has space", &"k".repeat(65)] {
        let e = t(
            "append",
            store.append(run, 0, None, &[ok.clone(), NewRecord::new(kind, "{}")]),
        )
        .await
        .unwrap_err();
        assert_eq!(e.kind(), StoreErrorKind::Invalid, "kind {kind:?}: {e}");
    }
    assert_eq!(t("head", store.head(run)).await.unwrap(), 0);
    assert_eq!(
        t("append", store.append(run, 0, None, &[ok]))
            .await
            .unwrap(),
        1
    );
}

/// Pages of a tenant's runs: newest first, each run once, later pages not
/// shifted by runs created meanwhile, filtered by status and tenant.
pub async fn listing_pages_are_stable(h: &dyn Harness) {
    let store = h.open().await;
    let (tenant, other) = (random_tenant(), random_tenant());
    let mut ids = Vec::new();
    for i in 0..23 {
        let run = new_run(&*store, &tenant).await;
        if i % 3 == 0 {
            t(
                "set_status",
                store.set_status(run, RunStatus::Finished, None),
            )
            .await
            .unwrap();
        }
        ids.push(run);
    }
    for _ in 0..4 {
        new_run(&*store, &other).await;
    }
    let reader = h.open().await;
    let mut seen = Vec::new();
    let mut query = RunQuery::new(tenant.clone()).limit(10);
    let mut pages = 0;
    loop {
        let page = t("list_runs", reader.list_runs(&query)).await.unwrap();
        pages += 1;
        assert!(page.runs.len() <= 10);
        seen.extend(page.runs.iter().map(|r| r.id));
        if pages == 1 {
            // Created after the first page: newer than every listed run, so
            // it never appears on a later page.
            new_run(&*store, &tenant).await;
        }
        match page.next {
            Some(c) => {
                let c: Cursor = c.to_string().parse().unwrap();
                query = query.after(c);
            }
            None => break,
        }
        assert!(pages < 10, "the listing does not end");
    }
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first, "pages: {pages}");
    assert_eq!(pages, 3);

    let finished = t(
        "list_runs",
        reader.list_runs(
            &RunQuery::new(tenant.clone())
                .status(RunStatus::Finished)
                .limit(3),
        ),
    )
    .await
    .unwrap();
    assert_eq!(finished.runs.len(), 3);
    assert!(
        finished
            .runs
            .iter()
            .all(|r| r.status == RunStatus::Finished)
    );
    assert!(finished.next.is_some());
    let rest = t(
        "list_runs",
        reader.list_runs(
            &RunQuery::new(tenant.clone())
                .status(RunStatus::Finished)
                .limit(100)
                .after(finished.next.unwrap()),
        ),
    )
    .await
    .unwrap();
    assert_eq!(finished.runs.len() + rest.runs.len(), 8);
    let all: HashSet<RunId> = finished
        .runs
        .iter()
        .chain(&rest.runs)
        .map(|r| r.id)
        .collect();
    assert_eq!(all.len(), 8);
    assert!(rest.next.is_none());
    let paused = t(
        "list_runs",
        reader.list_runs(&RunQuery::new(tenant.clone()).status(RunStatus::Paused)),
    )
    .await
    .unwrap();
    assert!(paused.runs.is_empty() && paused.next.is_none());
    let e = t(
        "list_runs",
        reader.list_runs(&RunQuery::new(tenant.clone()).limit(0)),
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::Invalid);
    assert_eq!(
        "not-a-cursor".parse::<Cursor>().unwrap_err().kind(),
        StoreErrorKind::Invalid
    );
}

/// One holder at a time; a newer lease fences every older token.
pub async fn leases_fence_stale_holders(h: &dyn Harness) {
    let (a, b) = (h.open().await, h.open().await);
    let run = new_run(&*a, &random_tenant()).await;
    let ttl = Duration::from_secs(60);
    // Never leased: appends without a token are fine.
    t("append", a.append(run, 0, None, &[rec(0)]))
        .await
        .unwrap();
    let l1 = t("acquire", a.acquire_lease(run, "alpha", ttl))
        .await
        .unwrap();
    assert_eq!((l1.run, l1.holder.as_str()), (run, "alpha"));
    match t("acquire", b.acquire_lease(run, "beta", ttl)).await {
        Err(StoreError::Busy {
            run: r,
            holder,
            expires,
        }) => {
            assert_eq!((r, holder.as_str()), (run, "alpha"));
            assert_eq!(expires, l1.expires);
        }
        other => panic!("expected Busy, got {other:?}"),
    }
    // Leased: no token is refused, the token is accepted.
    let e = t("append", b.append(run, 1, None, &[rec(1)]))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::Fenced, "{e}");
    assert_eq!(
        t("append", a.append(run, 1, Some(l1.token), &[rec(1)]))
            .await
            .unwrap(),
        2
    );
    // The same holder taking its lease again (a restarted process) fences
    // its earlier self.
    let l2 = t("acquire", b.acquire_lease(run, "alpha", ttl))
        .await
        .unwrap();
    assert!(l2.token > l1.token);
    match t("append", a.append(run, 2, Some(l1.token), &[rec(2)])).await {
        Err(StoreError::Fenced {
            run: r,
            token,
            current,
        }) => assert_eq!((r, token, current), (run, Some(l1.token), l2.token.get())),
        other => panic!("expected Fenced, got {other:?}"),
    }
    let e = t("renew", a.renew_lease(&l1, ttl)).await.unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::Fenced, "{e}");
    let e = t("release", a.release_lease(&l1)).await.unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::Fenced, "{e}");
    assert_eq!(t("head", a.head(run)).await.unwrap(), 2);
    let renewed = t("renew", b.renew_lease(&l2, ttl)).await.unwrap();
    assert_eq!(renewed.token, l2.token);
    assert!(renewed.expires >= l2.expires);
    assert_eq!(
        t("append", b.append(run, 2, Some(l2.token), &[rec(2)]))
            .await
            .unwrap(),
        3
    );
    // Released: another holder takes it at once, with a larger token.
    t("release", b.release_lease(&l2)).await.unwrap();
    let l3 = t("acquire", a.acquire_lease(run, "gamma", ttl))
        .await
        .unwrap();
    assert!(l3.token > l2.token);
    let e = t("append", b.append(run, 3, Some(l2.token), &[rec(3)]))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::Fenced, "{e}");
    let e = t("acquire", a.acquire_lease(RunId::new(), "alpha", ttl))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::NotFound);
}

/// A holder that stops renewing loses its lease when it expires; the next
/// holder's token fences it.
pub async fn expired_lease_can_be_taken_over(h: &dyn Harness) {
    let (a, b) = (h.open().await, h.open().await);
    let run = new_run(&*a, &random_tenant()).await;
    let short = t(
        "acquire",
        a.acquire_lease(run, "dying", Duration::from_millis(300)),
    )
    .await
    .unwrap();
    t("append", a.append(run, 0, Some(short.token), &[rec(0)]))
        .await
        .unwrap();
    // Poll, bounded, until the lease has expired and "heir" gets it; until
    // then every refusal must be Busy naming "dying".
    let start = Instant::now();
    let heir = loop {
        match t(
            "acquire",
            b.acquire_lease(run, "heir", Duration::from_secs(60)),
        )
        .await
        {
            Ok(lease) => break lease,
            Err(StoreError::Busy { holder, .. }) => assert_eq!(holder, "dying"),
            Err(e) => panic!("expected Busy or the lease, got {e}"),
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "an expired lease was never taken over"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert!(heir.token > short.token);
    let e = t("append", a.append(run, 1, Some(short.token), &[rec(1)]))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::Fenced, "{e}");
    let e = t("renew", a.renew_lease(&short, Duration::from_secs(1)))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::Fenced, "{e}");
    assert_eq!(
        t("append", b.append(run, 1, Some(heir.token), &[rec(1)]))
            .await
            .unwrap(),
        2
    );
}

/// Only ended runs can be deleted; deleting removes the journal too.
pub async fn delete_rules(h: &dyn Harness) {
    let store = h.open().await;
    let tenant = random_tenant();
    let run = new_run(&*store, &tenant).await;
    t("append", store.append(run, 0, None, &[rec(0), rec(1)]))
        .await
        .unwrap();
    t(
        "put_snapshot",
        store.put_snapshot(run, &Snapshot::new(2, &b"state"[..])),
    )
    .await
    .unwrap();
    let lease = t(
        "acquire",
        store.acquire_lease(run, "x", Duration::from_secs(60)),
    )
    .await
    .unwrap();
    for status in [RunStatus::Running, RunStatus::Paused] {
        t("set_status", store.set_status(run, status, None))
            .await
            .unwrap();
        match t("delete", store.delete_run(run)).await {
            Err(StoreError::RunActive { run: r, status: s }) => assert_eq!((r, s), (run, status)),
            other => panic!("deleting a {status} run: expected RunActive, got {other:?}"),
        }
        assert_eq!(t("head", store.head(run)).await.unwrap(), 2);
    }
    // The lease is left held: deleting the run removes it too.
    let _ = lease;
    for status in [RunStatus::Finished, RunStatus::Failed, RunStatus::Cancelled] {
        let run = if status == RunStatus::Finished {
            run
        } else {
            new_run(&*store, &tenant).await
        };
        t("set_status", store.set_status(run, status, None))
            .await
            .unwrap();
        t("delete", store.delete_run(run)).await.unwrap();
        assert_eq!(
            t("run", store.run(run)).await.unwrap_err().kind(),
            StoreErrorKind::NotFound
        );
    }
    for e in [
        t("read", store.read(run, 0, 10))
            .await
            .map(|_| ())
            .unwrap_err(),
        t("delete", store.delete_run(run)).await.unwrap_err(),
        t("latest_snapshot", store.latest_snapshot(run))
            .await
            .map(|_| ())
            .unwrap_err(),
    ] {
        assert_eq!(e.kind(), StoreErrorKind::NotFound, "{e}");
    }
    let listed = t("list_runs", store.list_runs(&RunQuery::new(tenant)))
        .await
        .unwrap();
    assert!(listed.runs.is_empty(), "{:?}", listed.runs);
    // The id can be used again, and nothing of the old run is left.
    t(
        "create_run",
        store.create_run(NewRun::new(run, random_tenant(), "again")),
    )
    .await
    .unwrap();
    assert_eq!(t("head", store.head(run)).await.unwrap(), 0);
    assert!(
        t("latest_snapshot", store.latest_snapshot(run))
            .await
            .unwrap()
            .is_none()
    );
    t(
        "acquire",
        store.acquire_lease(run, "y", Duration::from_secs(60)),
    )
    .await
    .unwrap();
}

/// Snapshots round-trip; an older one never replaces a newer one.
pub async fn snapshot_round_trip(h: &dyn Harness) {
    let store = h.open().await;
    let run = new_run(&*store, &random_tenant()).await;
    assert!(
        t("latest_snapshot", store.latest_snapshot(run))
            .await
            .unwrap()
            .is_none()
    );
    let s5 = Snapshot::new(5, vec![5u8; 3000]);
    t("put_snapshot", store.put_snapshot(run, &s5))
        .await
        .unwrap();
    let other = h.open().await;
    assert_eq!(
        t("latest_snapshot", other.latest_snapshot(run))
            .await
            .unwrap(),
        Some(s5.clone())
    );
    t(
        "put_snapshot",
        store.put_snapshot(run, &Snapshot::new(3, &b"older"[..])),
    )
    .await
    .unwrap();
    assert_eq!(
        t("latest_snapshot", other.latest_snapshot(run))
            .await
            .unwrap(),
        Some(s5)
    );
    let s9 = Snapshot::new(9, &b""[..]);
    t("put_snapshot", store.put_snapshot(run, &s9))
        .await
        .unwrap();
    assert_eq!(
        t("latest_snapshot", other.latest_snapshot(run))
            .await
            .unwrap(),
        Some(s9)
    );
    let e = t(
        "put_snapshot",
        store.put_snapshot(RunId::new(), &Snapshot::new(1, &b"x"[..])),
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind(), StoreErrorKind::NotFound);
}

/// One operation of the model-based check.
#[derive(Debug, Clone)]
enum Op {
    /// Append `n` records of `len` bytes at the model's head plus `skew`
    /// (so some appends are made for a wrong position).
    Append {
        skew: i8,
        n: u8,
        len: u16,
    },
    /// Read `limit` records from `from`.
    Read {
        from: u8,
        limit: u8,
    },
    Head,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (prop_oneof![6 => Just(0i8), 1 => Just(-1i8), 1 => Just(1i8)], 0u8..5, 0u16..600)
            .prop_map(|(skew, n, len)| Op::Append { skew, n, len }),
        2 => (0u8..40, 0u8..12).prop_map(|(from, limit)| Op::Read { from, limit }),
        1 => Just(Op::Head),
    ]
}

/// Random appends (some at wrong positions) and reads against a model
/// journal: the store always answers as the model does.
pub async fn random_appends_and_reads_match_a_model(h: &dyn Harness) {
    let store = h.open().await;
    let tenant = random_tenant();
    let strategy = proptest::collection::vec(op(), 1..25);
    let mut runner = TestRunner::new(Config {
        cases: 24,
        ..Config::default()
    });
    for case in 0..24 {
        let ops = strategy.new_tree(&mut runner).unwrap().current();
        let run = new_run(&*store, &tenant).await;
        let mut model: Vec<Vec<u8>> = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            let ctx = || format!("case {case}, op {i} of {ops:?}");
            match *op {
                Op::Append { skew, n, len } => {
                    let head = model.len() as u64;
                    let at = head.saturating_add_signed(skew.into());
                    let payloads: Vec<Vec<u8>> = (0..n)
                        .map(|k| {
                            let mut p = vec![b'a' + (k % 26); len as usize];
                            p.extend_from_slice(format!("{case}/{i}/{k}").as_bytes());
                            p
                        })
                        .collect();
                    let records: Vec<NewRecord> = payloads
                        .iter()
                        .map(|p| NewRecord::new("event", p.clone()))
                        .collect();
                    let got = t("append", store.append(run, at, None, &records)).await;
                    if at == head {
                        assert_eq!(got.unwrap(), head + u64::from(n), "{}", ctx());
                        model.extend(payloads);
                    } else {
                        match got {
                            Err(StoreError::Conflict {
                                expected, actual, ..
                            }) => assert_eq!((expected, actual), (at, head), "{}", ctx()),
                            other => panic!("expected a conflict, got {other:?}: {}", ctx()),
                        }
                    }
                }
                Op::Read { from, limit } => {
                    let got = t("read", store.read(run, from.into(), limit.into()))
                        .await
                        .unwrap();
                    let want: Vec<&Vec<u8>> =
                        model.iter().skip(from.into()).take(limit.into()).collect();
                    assert_eq!(got.len(), want.len(), "{}", ctx());
                    for (k, (r, w)) in got.iter().zip(want).enumerate() {
                        assert_eq!(r.seq, u64::from(from) + k as u64, "{}", ctx());
                        assert_eq!(&r.payload[..], &w[..], "{}", ctx());
                    }
                }
                Op::Head => {
                    assert_eq!(
                        t("head", store.head(run)).await.unwrap(),
                        model.len() as u64,
                        "{}",
                        ctx()
                    );
                }
            }
        }
    }
}
