//! Waiters in other processes are woken by the release itself (LISTEN /
//! NOTIFY), not by their next backoff tick; releases that notify nobody are
//! still found by polling.
//!
//! Two `Locker`s connected separately have separate sessions and separate
//! waiter tables: to the server and to each other they are two processes.

use std::time::{Duration, Instant};

use advisory_locked::{LockConfig, LockKey, Locker, Mode};
use advisory_locked_tests::{
    backends_named, db_url, db_url_with_app, join_all, named, pg_lock, pg_unlock, raw_connect,
    terminate_backend, unique,
};

/// Without wait sessions: their waits don't need the notification (see
/// wait_sessions.rs), and with them these waiters would not all use it.
async fn locker() -> Locker {
    locker_at(&db_url()).await
}

async fn locker_at(url: &str) -> Locker {
    LockConfig::from_url(url)
        .unwrap()
        .sessions(2)
        .wait_sessions(0)
        .connect()
        .await
        .unwrap()
}

/// Holds `key` on `holder` for `hold`, while `waiter` waits for it; returns
/// how long after the release the waiter got the lock.
async fn handover(holder: &Locker, waiter: &Locker, key: &str, hold: Duration) -> Duration {
    handover_of(holder, waiter, LockKey::named(key.to_owned()), hold).await
}

async fn handover_of(holder: &Locker, waiter: &Locker, key: LockKey, hold: Duration) -> Duration {
    let guard = holder
        .lock(key.clone(), Mode::Exclusive, None)
        .await
        .unwrap();
    let waiter = waiter.clone();
    let wkey = key;
    let waiting = tokio::spawn(async move {
        let g = waiter
            .lock(wkey, Mode::Exclusive, Some(Duration::from_secs(20)))
            .await
            .unwrap();
        let got = Instant::now();
        drop(g);
        got
    });
    // Long enough for the waiter's backoff to reach its 125-250 ms steps.
    tokio::time::sleep(hold).await;
    let released = Instant::now();
    guard.release().await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("the waiter never got the lock")
        .unwrap();
    got.saturating_duration_since(released)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_mode_release_wakes_waiters_in_other_processes_at_once() {
    let (a, b) = (locker().await, locker().await);
    // Four handovers at once, on four keys. Polling alone, after 700 ms of
    // waiting, finds a release 0-250 ms late (uniformly): all four within
    // 40 ms would happen by chance about once in 600 runs.
    let keys: Vec<String> = (0..4).map(|i| unique(&format!("wakeup:{i}"))).collect();
    let runs = keys
        .iter()
        .map(|k| handover(&a, &b, k, Duration::from_millis(700)));
    let delays = join_all(runs.collect()).await;
    println!("handover delays after a notified release: {delays:?}");
    for d in &delays {
        assert!(
            *d < Duration::from_millis(40),
            "a waiter was not woken by the release: {delays:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_notifies_nobody_is_found_by_polling() {
    // The holder is psql-like: a plain connection, no notification.
    let b = locker().await;
    let client = raw_connect(&db_url()).await;
    let key = unique("wakeup:silent");
    pg_lock(&client, named(&key), Mode::Exclusive).await;
    let waiter = {
        let key = key.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            let g = b
                .lock(
                    LockKey::named(key),
                    Mode::Exclusive,
                    Some(Duration::from_secs(10)),
                )
                .await
                .unwrap();
            drop(g);
            start.elapsed()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(pg_unlock(&client, named(&key), Mode::Exclusive).await);
    let waited = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("polling never found the release")
        .unwrap();
    println!("found a silent release after waiting {waited:?}");
    // Held for 300 ms; the backoff steps are at most 250 ms.
    assert!(waited >= Duration::from_millis(300) && waited < Duration::from_millis(800));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_are_woken_again_after_the_listening_session_is_replaced() {
    // One session of an entry listens: the first slot's. Kill it while the
    // other slot's session lives on and takes the new locks: the listening
    // slot must come back by itself.
    let client = raw_connect(&db_url()).await;
    let app = unique("wakeup-relisten");
    let a = locker().await;
    let b = locker_at(&db_url_with_app(&app)).await;
    let base = i64::from(std::process::id()) << 24;
    // Held keys pack into the first slot (see lanes.rs); a key released and
    // taken again then moves to the lighter second slot, which connects.
    let held: Vec<_> = {
        let mut held = Vec::new();
        for i in 0..20 {
            let key = LockKey::int(base + 100 + i);
            held.push(
                b.try_lock(key, Mode::Exclusive)
                    .await
                    .unwrap()
                    .expect("free"),
            );
        }
        held
    };
    let listening = held[0].backend_pid();
    let hot = LockKey::int(base + 200);
    for _ in 0..2 {
        b.try_lock(hot.clone(), Mode::Exclusive)
            .await
            .unwrap()
            .expect("free")
            .release()
            .await
            .unwrap();
    }
    for g in held {
        g.release().await.unwrap();
    }
    let before = backends_named(&client, &app).await;
    assert_eq!(before.len(), 2, "{before:?}");
    assert!(terminate_backend(&client, listening).await);
    let start = Instant::now();
    while backends_named(&client, &app).await.contains(&listening) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "backend still there"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Let the waiter's session notice.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let keys: Vec<LockKey> = (0..4).map(|i| LockKey::int(base + 300 + i)).collect();
    let runs = keys
        .iter()
        .map(|k| handover_of(&a, &b, k.clone(), Duration::from_millis(700)));
    let delays = join_all(runs.collect()).await;
    println!("handover delays after the listening session was replaced: {delays:?}");
    let after = backends_named(&client, &app).await;
    assert_eq!(after.len(), 2, "slot 0 not reconnected: {after:?}");
    for d in &delays {
        assert!(
            *d < Duration::from_millis(40),
            "a waiter was not woken by the release: {delays:?}"
        );
    }
}
