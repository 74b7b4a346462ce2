//! Waiters in other processes are woken by the release itself (LISTEN /
//! NOTIFY), not by their next backoff tick; releases that notify nobody are
//! still found by polling.
//!
//! Two `Locker`s connected separately have separate sessions and separate
//! waiter tables: to the server and to each other they are two processes.
//!
//! To tell a notified wake-up from a backoff tick without timing it, the
//! waiters run on a [`FrozenClock`]: a runtime whose clock never moves, so
//! that no backoff step (and no wait deadline) can ever fire there. A waiter
//! on it that gets its key was woken by a message from the server.

use std::time::Duration;

use advisory_locked::{LockConfig, LockKey, Locker, Mode};
use advisory_locked_tests::frozen::FrozenClock;
use advisory_locked_tests::{
    backends_named, db_url, db_url_with_app, named, pg_lock, pg_unlock, raw_connect,
    terminate_backend, unique,
};

/// How long (real time) a step may take before the test fails.
const LIMIT: Duration = Duration::from_secs(20);

/// Polls `done` every 5 ms (real time) until it holds, at most [`LIMIT`].
async fn until(what: &str, done: impl FnMut() -> bool) {
    advisory_locked_tests::until(what, LIMIT, done).await;
}

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

/// Holds every key on `holder` while a waiter on `frozen` (of `waiter`)
/// waits for it, then releases them all: every waiter must get its key.
/// Releases only once every waiter has found its key busy (so it waits for
/// a wake-up) and `ready()` holds. On the frozen clock no backoff tick can
/// wake a waiter: only the release's notification.
async fn handovers(
    frozen: &FrozenClock,
    holder: &Locker,
    waiter: &Locker,
    keys: &[LockKey],
    ready: impl FnMut() -> bool,
) {
    let mut guards = Vec::new();
    for k in keys {
        guards.push(holder.lock(k.clone(), Mode::Exclusive, None).await.unwrap());
    }
    let busy_before = waiter.stats().busy;
    let waiting: Vec<_> = keys
        .iter()
        .map(|k| {
            let (waiter, key) = (waiter.clone(), k.clone());
            frozen.handle.spawn(async move {
                waiter
                    .lock(key, Mode::Exclusive, Some(Duration::from_secs(20)))
                    .await
                    .map(drop)
            })
        })
        .collect();
    let n = keys.len() as u64;
    until("every waiter found its key busy", || {
        waiter.stats().busy - busy_before >= n
    })
    .await;
    until("ready to release", ready).await;
    for g in guards {
        g.release().await.unwrap();
    }
    for w in waiting {
        tokio::time::timeout(LIMIT, w)
            .await
            .expect("a waiter was not woken by the release (no backoff tick could wake it)")
            .expect("the waiter panicked")
            .expect("the waiter got its key");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_mode_release_wakes_waiters_in_other_processes_at_once() {
    let a = locker().await;
    let frozen = FrozenClock::start();
    let b = frozen
        .run(LIMIT, "connect the waiters' entry", locker())
        .await;
    // Four handovers at once, on four keys.
    let keys: Vec<LockKey> = (0..4)
        .map(|i| LockKey::named(unique(&format!("wakeup:{i}"))))
        .collect();
    handovers(&frozen, &a, &b, &keys, || true).await;
    assert_eq!(
        frozen.moved().await,
        Duration::ZERO,
        "the waiters' clock moved: a backoff tick could have woken them"
    );
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_notifies_nobody_is_found_by_polling() {
    // The holder is psql-like: a plain connection, no notification.
    let b = locker().await;
    let client = raw_connect(&db_url()).await;
    let key = unique("wakeup:silent");
    pg_lock(&client, named(&key), Mode::Exclusive).await;
    let busy_before = b.stats().busy;
    let waiter = {
        let (b, key) = (b.clone(), key.clone());
        tokio::spawn(async move {
            b.lock(
                LockKey::named(key),
                Mode::Exclusive,
                Some(Duration::from_secs(10)),
            )
            .await
            .map(drop)
        })
    };
    // It polls: two busy answers at least, while the key is held.
    until("the waiter polled twice", || {
        b.stats().busy - busy_before >= 2
    })
    .await;
    assert!(
        !waiter.is_finished(),
        "the waiter ended while the key was held"
    );
    assert!(pg_unlock(&client, named(&key), Mode::Exclusive).await);
    tokio::time::timeout(LIMIT, waiter)
        .await
        .expect("polling never found the release")
        .unwrap()
        .expect("the waiter got the key");
    println!(
        "found a silent release after {} busy answers",
        b.stats().busy - busy_before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_are_woken_again_after_the_listening_session_is_replaced() {
    // One session of an entry listens: the first slot's. Kill it while the
    // other slot's session lives on and takes the new locks: the listening
    // slot must come back by itself.
    let client = raw_connect(&db_url()).await;
    let app = unique("wakeup-relisten");
    let a = locker().await;
    let frozen = FrozenClock::start();
    let url = db_url_with_app(&app);
    let b = frozen
        .run(LIMIT, "connect the waiters' entry", async move {
            locker_at(&url).await
        })
        .await;
    let base = i64::from(std::process::id()) << 24;
    // Held keys pack into the first slot (see lanes.rs); a key released and
    // taken again then moves to the lighter second slot, which connects.
    let (mut held, listening) = {
        let b = b.clone();
        frozen
            .run(LIMIT, "take and release keys", async move {
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
                let listening = held[0].backend_pid();
                let hot = LockKey::int(base + 200);
                for _ in 0..2 {
                    let g = b.try_lock(hot.clone(), Mode::Exclusive).await.unwrap();
                    g.expect("free").release().await.unwrap();
                }
                (held, listening)
            })
            .await
    };
    // One key stays held on the listening session: its loss tells when
    // the entry has noticed that session's end.
    let on_listening = held.remove(0);
    assert_eq!(on_listening.backend_pid(), listening);
    frozen
        .run(LIMIT, "release the other keys", async move {
            for g in held {
                g.release().await.unwrap();
            }
        })
        .await;
    let before = backends_named(&client, &app).await;
    assert_eq!(before.len(), 2, "{before:?}");
    let opened = b.stats().sessions_opened;
    assert!(terminate_backend(&client, listening).await);
    tokio::time::timeout(LIMIT, on_listening.lost())
        .await
        .expect("the entry never noticed that its listening session ended");
    drop(on_listening);
    let keys: Vec<LockKey> = (0..4).map(|i| LockKey::int(base + 300 + i)).collect();
    // Released once the replacement has connected and listens (a session
    // is counted as opened after its LISTEN).
    handovers(&frozen, &a, &b, &keys, || {
        b.stats().sessions_opened > opened
    })
    .await;
    let after = backends_named(&client, &app).await;
    assert_eq!(after.len(), 2, "slot 0 not reconnected: {after:?}");
    assert!(!after.contains(&listening), "{after:?}");
    assert_eq!(
        frozen.moved().await,
        Duration::ZERO,
        "the waiters' clock moved"
    );
    drop(b);
}
