//! No leak (docs/design.md, invariant 2): a call dropped at any await point — while
//! it asks the server, while it waits, while its body runs — leaves no lock
//! behind, in `pg_locks` or in the process; a body that panics releases its
//! lock and the panic goes on to the caller.

use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use advisory_locked::{advisory_locked, Outcome};
use advisory_locked_tests::{
    db_url, db_url_with_app, install, named, raw_connect, sessions_named, unique, unique_ident,
    wait_until_locked, wait_until_unlocked, Prng,
};
use tokio::sync::Notify;

const SETTLE: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Counters {
    inside: Mutex<HashMap<String, usize>>,
    overlaps: AtomicUsize,
    entered: AtomicUsize,
    finished: AtomicUsize,
}

/// Leaves the "inside" count of a key when dropped: bodies can be dropped
/// mid-way, and the count must follow them out.
struct Inside<'a>(&'a Counters, &'a str);

impl<'a> Inside<'a> {
    fn enter(c: &'a Counters, key: &'a str) -> Self {
        let mut inside = c.inside.lock().unwrap();
        let n = inside.entry(key.to_owned()).or_default();
        if *n > 0 {
            c.overlaps.fetch_add(1, Ordering::SeqCst);
        }
        *n += 1;
        c.entered.fetch_add(1, Ordering::SeqCst);
        Inside(c, key)
    }
}

impl Drop for Inside<'_> {
    fn drop(&mut self) {
        *self.0.inside.lock().unwrap().get_mut(self.1).unwrap() -= 1;
    }
}

/// A body that sleeps or yields for a random while.
async fn busy_body(c: &Counters, key: &str, pause_us: u64, yields: u32) {
    let _inside = Inside::enter(c, key);
    for _ in 0..yields {
        tokio::task::yield_now().await;
    }
    if pause_us > 0 {
        tokio::time::sleep(Duration::from_micros(pause_us)).await;
    }
    c.finished.fetch_add(1, Ordering::SeqCst);
}

#[advisory_locked(key = "{key}", pool = "cancel_random")]
async fn skip_call(c: &Counters, key: &str, pause_us: u64, yields: u32) {
    busy_body(c, key, pause_us, yields).await
}

#[advisory_locked(key = "{key}", wait = "10s", pool = "cancel_random")]
async fn wait_call(c: &Counters, key: &str, pause_us: u64, yields: u32) {
    busy_body(c, key, pause_us, yields).await
}

#[advisory_locked(key = "{key}", pool = "cancel_random", shared)]
async fn shared_call(c: &Counters, key: &str, pause_us: u64, yields: u32) {
    // Shared bodies may overlap each other: no Inside count.
    for _ in 0..yields {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_micros(pause_us)).await;
    let _ = (c, key);
}

/// Where a call is cut off.
#[derive(Debug, Clone, Copy)]
enum Cut {
    /// `tokio::time::timeout` with this limit.
    After(Duration),
    /// Dropped after it returned `Pending` this many times (yielding to the
    /// runtime between polls, so that I/O and other tasks make progress).
    Polls(u32),
}

impl Cut {
    async fn run<F: Future>(self, fut: F) -> Option<F::Output> {
        match self {
            Cut::After(limit) => tokio::time::timeout(limit, fut).await.ok(),
            Cut::Polls(n) => {
                let mut fut = pin!(fut);
                for _ in 0..n {
                    if let Poll::Ready(v) = poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await {
                        return Some(v);
                    }
                    tokio::task::yield_now().await;
                }
                None
            }
        }
    }
}

#[derive(Debug, Default)]
struct Tally {
    ran: usize,
    skipped: usize,
    dropped: usize,
    errors: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_dropped_at_random_points_leave_no_lock_behind() {
    // Its own application_name, to count its sessions afterwards.
    let app = unique_ident("cancel_random");
    advisory_locked::LockConfig::from_url(&db_url_with_app(&app))
        .unwrap()
        .name("cancel_random")
        .sessions(2)
        .install()
        .await
        .unwrap();
    let client = raw_connect(&db_url()).await;
    let keys: Arc<Vec<String>> =
        Arc::new((0..6).map(|i| unique(&format!("cancel:key{i}"))).collect());
    let ids: Vec<_> = keys.iter().map(|k| named(k)).collect();
    let counters = Arc::new(Counters::default());
    let mut seeds = Prng::seeded("cancellation", 0xC0FF_EE00);

    // Rounds of 50 tasks x 100 calls, until the run has really dropped calls
    // both inside bodies and before them (at most 6 rounds).
    let (tasks, calls_per_task) = (50, 100);
    let mut calls = 0;
    let mut total = Tally::default();
    let start = Instant::now();
    for _round in 0..6 {
        let mut handles = Vec::new();
        for _ in 0..tasks {
            let (keys, counters) = (keys.clone(), counters.clone());
            let mut rng = Prng::new(seeds.next_u64());
            handles.push(tokio::spawn(async move {
                let mut tally = Tally::default();
                for _ in 0..calls_per_task {
                    let key = &keys[rng.below(keys.len() as u64) as usize];
                    let pause_us = if rng.chance(1, 4) {
                        0
                    } else {
                        rng.below(2_000)
                    };
                    let yields = rng.below(4) as u32;
                    // Drop it after a random time (0-3 ms) or after a random number of polls (1-12).
                    let cut = if rng.chance(1, 2) {
                        Cut::After(Duration::from_micros(rng.below(3_000)))
                    } else {
                        Cut::Polls(1 + rng.below(12) as u32)
                    };
                    let result = match rng.below(10) {
                        0..=4 => cut.run(skip_call(&counters, key, pause_us, yields)).await,
                        5..=8 => cut
                            .run(wait_call(&counters, key, pause_us, yields))
                            .await
                            .map(|r| r.map(Outcome::Ran)),
                        _ => cut.run(shared_call(&counters, key, pause_us, yields)).await,
                    };
                    match result {
                        None => tally.dropped += 1,
                        Some(Ok(Outcome::Ran(()))) => tally.ran += 1,
                        Some(Ok(Outcome::Skipped)) => tally.skipped += 1,
                        Some(Err(e)) => tally.errors.push(e.to_string()),
                    }
                }
                tally
            }));
        }
        for h in handles {
            let t = tokio::time::timeout(Duration::from_secs(60), h)
                .await
                .expect("a task hung")
                .expect("a task panicked");
            total.ran += t.ran;
            total.skipped += t.skipped;
            total.dropped += t.dropped;
            total.errors.extend(t.errors);
        }
        calls += tasks * calls_per_task;
        let mid_body =
            counters.entered.load(Ordering::SeqCst) - counters.finished.load(Ordering::SeqCst);
        if mid_body > 20 && total.dropped > mid_body + 200 {
            break;
        }
    }
    let entered = counters.entered.load(Ordering::SeqCst);
    let finished = counters.finished.load(Ordering::SeqCst);
    let mid_body = entered - finished;
    println!(
        "{calls} calls in {:?}: ran {}, skipped {}, dropped {} ({mid_body} of them inside the body), errors {}",
        start.elapsed(),
        total.ran,
        total.skipped,
        total.dropped,
        total.errors.len()
    );
    assert_eq!(
        total.ran + total.skipped + total.dropped + total.errors.len(),
        calls
    );
    assert!(
        total.errors.is_empty(),
        "lock machinery errors: {:?}",
        &total.errors[..total.errors.len().min(5)]
    );
    assert_eq!(
        counters.overlaps.load(Ordering::SeqCst),
        0,
        "two exclusive bodies of one key overlapped"
    );
    // The run must really have dropped calls both inside bodies and before them.
    assert!(
        mid_body > 20,
        "too few calls were dropped inside their body ({mid_body})"
    );
    assert!(
        total.dropped > mid_body + 200,
        "too few calls were dropped before their body ran"
    );

    // Afterwards: the server holds none of the keys (after a short settle) ...
    let settle = Instant::now();
    let left = wait_until_unlocked(&client, &ids, SETTLE).await;
    assert!(
        left.is_empty(),
        "locks left behind by dropped calls: {left:?}"
    );
    println!("pg_locks clear {:?} after the last call", settle.elapsed());
    // ... and this process still locks normally: every key runs again
    // (a skip may still meet a try-lock or unlock of a dropped call that is
    // finishing in the background: retry for a bounded time).
    for key in keys.iter() {
        let deadline = Instant::now() + SETTLE;
        let mut skips = 0;
        loop {
            match skip_call(&counters, key, 0, 0).await.unwrap() {
                Outcome::Ran(()) => break,
                Outcome::Skipped => skips += 1,
            }
            assert!(
                Instant::now() < deadline,
                "{key} stays busy after the dropped calls ({skips} skips)"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if skips > 0 {
            println!("{key}: {skips} skips before it ran again");
        }
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(5), wait_call(&counters, key, 0, 0))
                .await
                .expect("wait call hung")
                .unwrap(),
            ()
        );
    }
    let left = wait_until_unlocked(&client, &ids, SETTLE).await;
    assert!(left.is_empty(), "{left:?}");
    // No connection leaked: at most the entry's 2 lock sessions and its wait
    // sessions (named alike; 2 by default). A wait session can open even
    // with no wait sent: a call that found its key busy on the server (a
    // dropped call's grant given back a moment late) starts connecting one,
    // and the connect finishes in its own task when that call is dropped.
    // A session that ended leaves pg_stat_activity a moment later.
    let most = 2 + advisory_locked::DEFAULT_WAIT_SESSIONS as i64;
    let mut open = sessions_named(&client, &app).await;
    let deadline = Instant::now() + SETTLE;
    while open > most && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
        open = sessions_named(&client, &app).await;
    }
    let stats = advisory_locked::locker("cancel_random").unwrap().stats();
    println!(
        "sessions open after the run: {open} ({} opened, {} waits on the server)",
        stats.sessions_opened, stats.server_waits
    );
    assert!(
        (1..=most).contains(&open),
        "{open} sessions open; configured 2 lock sessions and 2 wait sessions ({stats:?})"
    );
}

/// Dropping a call that waits on a key held by another session.
#[tokio::test]
async fn dropping_a_waiting_call_leaves_no_lock_behind() {
    install("cancel_waiting").await;
    #[advisory_locked(key = "{key}", wait = "30s", pool = "cancel_waiting")]
    async fn f(key: &str, ran: &AtomicBool) {
        ran.store(true, Ordering::SeqCst);
    }
    let other = raw_connect(&db_url()).await;
    let key = unique("cancel:waiting");
    let id = named(&key);
    advisory_locked_tests::pg_lock(&other, id, advisory_locked::Mode::Exclusive).await;
    let ran = AtomicBool::new(false);
    for ms in [0, 1, 3, 10, 50, 120] {
        let r = tokio::time::timeout(Duration::from_millis(ms), f(&key, &ran)).await;
        assert!(r.is_err(), "the call must still be waiting after {ms} ms");
    }
    assert!(!ran.load(Ordering::SeqCst));
    assert!(advisory_locked_tests::pg_unlock(&other, id, advisory_locked::Mode::Exclusive).await);
    let left = wait_until_unlocked(&other, &[id], SETTLE).await;
    assert!(left.is_empty(), "{left:?}");
    f(&key, &ran).await.expect("free key");
    assert!(ran.load(Ordering::SeqCst));
}

// ---- panics ---------------------------------------------------------------------

#[advisory_locked(key = "{key}", pool = "cancel_panic")]
async fn panicking(key: &str, entered: &Notify, go: &Notify) -> u32 {
    entered.notify_one();
    go.notified().await;
    panic!("boom in the body of {key}");
}

#[advisory_locked(key = "{key}", wait = "10s", pool = "cancel_panic")]
async fn after_panic(key: &str) -> &'static str {
    "ran"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_body_releases_its_lock_and_the_panic_propagates() {
    install("cancel_panic").await;
    let client = raw_connect(&db_url()).await;
    let key = unique("cancel:panic");
    let id = named(&key);
    let (entered, go) = (Arc::new(Notify::new()), Arc::new(Notify::new()));

    let holder = {
        let (key, entered, go) = (key.clone(), entered.clone(), go.clone());
        tokio::spawn(async move { panicking(&key, &entered, &go).await })
    };
    tokio::time::timeout(Duration::from_secs(5), entered.notified())
        .await
        .expect("the body did not start");
    let held = wait_until_locked(&client, &[id], SETTLE).await;
    assert_eq!(held.len(), 1, "{held:?}");
    // A waiter of this process queues behind the holder: it finds the key
    // taken (counted) and waits.
    let entry = advisory_locked::locker("cancel_panic").unwrap();
    let refused = || {
        let s = entry.stats();
        s.busy + s.local_busy
    };
    let refused_before = refused();
    let waiter = {
        let key = key.clone();
        tokio::spawn(async move { after_panic(&key).await })
    };
    advisory_locked_tests::until("the waiter found the key taken", SETTLE, || {
        refused() > refused_before
    })
    .await;
    assert!(
        !waiter.is_finished(),
        "the waiter ran while the key was held"
    );

    go.notify_one();
    let err = tokio::time::timeout(Duration::from_secs(5), holder)
        .await
        .expect("holder hung")
        .expect_err("the panic must propagate to the caller");
    assert!(err.is_panic());
    let payload = err.into_panic();
    let msg = payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    assert!(msg.contains("boom in the body"), "panic payload: {msg:?}");

    // The waiter gets the lock, and the server is clear afterwards.
    let r = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the waiter never got the lock after the panic")
        .expect("waiter task");
    assert_eq!(r.unwrap(), "ran");
    let left = wait_until_unlocked(&client, &[id], SETTLE).await;
    assert!(
        left.is_empty(),
        "a panicking body left its lock behind: {left:?}"
    );
    assert_eq!(after_panic(&key).await.unwrap(), "ran");

    // A panic while holding a guard, on a runtime of its own (in a thread,
    // where catch_unwind-style code would see it): the guard's drop releases.
    let thread_key = key.clone();
    let caught = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let locker = advisory_locked::LockConfig::from_url(&db_url())
                .unwrap()
                .connect()
                .await
                .unwrap();
            let _guard = locker
                .try_lock(
                    advisory_locked::LockKey::named(thread_key),
                    advisory_locked::Mode::Exclusive,
                )
                .await
                .unwrap()
                .expect("free key");
            panic!("boom while holding a guard");
        })
    })
    .join();
    let payload = caught.expect_err("the panic must propagate");
    assert_eq!(
        payload.downcast_ref::<&str>(),
        Some(&"boom while holding a guard")
    );
    let left = wait_until_unlocked(&client, &[id], SETTLE).await;
    assert!(
        left.is_empty(),
        "a guard dropped by a panic left its lock behind: {left:?}"
    );
    assert_eq!(after_panic(&key).await.unwrap(), "ran");
}

#[tokio::test(flavor = "current_thread")]
async fn a_try_lock_dropped_on_the_wire_is_given_back() {
    // One session; each try-lock is polled once (queued, sent) and dropped.
    let locker = advisory_locked::LockConfig::from_url(&db_url())
        .unwrap()
        .sessions(1)
        .connect()
        .await
        .unwrap();
    let client = raw_connect(&db_url()).await;
    for round in 0..20 {
        let key = advisory_locked::LockKey::named(unique(&format!("cancel:wire:{round}")));
        let before = locker.stats();
        {
            // Poll once (the request goes out), then drop it.
            let mut fut = pin!(locker.try_lock(key.clone(), advisory_locked::Mode::Exclusive));
            let first = poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await;
            assert!(first.is_pending(), "answered without a round trip");
        }
        // The grant that nobody takes is unlocked by the dispatcher.
        let left = wait_until_unlocked(&client, &[key.id()], SETTLE).await;
        assert!(left.is_empty(), "round {round}: left behind: {left:?}");
        let deadline = Instant::now() + SETTLE;
        let guard = loop {
            if let Some(g) = locker
                .try_lock(key.clone(), advisory_locked::Mode::Exclusive)
                .await
                .unwrap()
            {
                break g;
            }
            assert!(Instant::now() < deadline, "round {round}: never free again");
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        guard.release().await.unwrap();
        let after = locker.stats();
        // The dropped request was granted (its answer never read) and given
        // back: two unlocks, and the server says both released a held lock.
        assert_eq!(
            after.lock_requests - before.lock_requests,
            2,
            "round {round}: {after:?}"
        );
        assert_eq!(
            after.unlock_requests - before.unlock_requests,
            2,
            "round {round}: {after:?}"
        );
        assert_eq!(
            after.released - before.released,
            2,
            "round {round}: {after:?}"
        );
    }
}
