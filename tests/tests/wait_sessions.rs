//! Wait sessions (`LockConfig::wait_sessions`): a wait-mode call whose key is
//! held by another process waits on the server (`pg_advisory_lock` on a wait
//! session, bounded by `lock_timeout`) and gets the lock as the holder
//! releases it. Checked against the server's own view (`pg_stat_activity`,
//! `pg_locks`): who waits, who holds, and that nothing leaks when a waiter
//! is dropped, times out, or loses its wait session.
//!
//! Two `Locker`s connected separately have separate sessions: to the server
//! and to each other they are two processes.

use std::time::{Duration, Instant};

use advisory_locked::{Error, KeyId, LockConfig, LockGuard, LockKey, Locker, Mode};
use advisory_locked_tests::frozen::FrozenClock;
use advisory_locked_tests::{
    advisory_locks, backends_named, db_url, db_url_with_app, raw_connect, terminate_backend,
    unique, until, wait_until_unlocked,
};
use tokio_postgres::Client;

/// Every poll of the server below gives up after this long.
const BOUND: Duration = Duration::from_secs(10);

async fn locker_at(url: &str, wait_sessions: usize) -> Locker {
    locker_with(url, 2, wait_sessions).await
}

async fn locker_with(url: &str, sessions: usize, wait_sessions: usize) -> Locker {
    LockConfig::from_url(url)
        .unwrap()
        .sessions(sessions)
        .wait_sessions(wait_sessions)
        .connect()
        .await
        .unwrap()
}

/// A waiter `Locker` whose sessions carry their own `application_name`.
async fn waiter(app: &str, wait_sessions: usize) -> Locker {
    locker_at(&db_url_with_app(app), wait_sessions).await
}

/// The backends named `app` that wait for a heavyweight lock now
/// (`wait_event_type = 'Lock'`, `wait_event = 'advisory'`).
async fn waiting_backends(client: &Client, app: &str) -> Vec<i32> {
    client
        .query(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1 \
             AND wait_event_type = 'Lock' AND wait_event = 'advisory' ORDER BY pid",
            &[&app],
        )
        .await
        .expect("pg_stat_activity query failed")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Polls until a backend named `app` waits on the server for `key` (also in
/// `pg_locks`, not granted); its pid.
async fn until_waiting_on_server(client: &Client, app: &str, key: KeyId) -> i32 {
    let start = Instant::now();
    loop {
        let waiting = waiting_backends(client, app).await;
        let locks = advisory_locks(client, &[key]).await;
        if let Some(pid) = waiting
            .iter()
            .find(|pid| locks.iter().any(|l| l.pid == **pid && !l.granted))
        {
            return *pid;
        }
        assert!(
            start.elapsed() < BOUND,
            "no backend of {app} waits on the server for the key: waiting {waiting:?}, pg_locks {locks:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `holder` takes `key` exclusively; a spawned task of `b` then waits for it
/// in `mode` (at most `wait`); returns once a backend of `app` waits for it
/// on the server: the holder's guard, the waiting task, that backend's pid.
async fn held_and_awaited(
    client: &Client,
    holder: &Locker,
    b: &Locker,
    app: &str,
    key: &LockKey,
    mode: Mode,
    wait: Option<Duration>,
) -> (
    LockGuard,
    tokio::task::JoinHandle<Result<LockGuard, Error>>,
    i32,
) {
    let guard = holder
        .lock(key.clone(), Mode::Exclusive, Some(BOUND))
        .await
        .unwrap();
    let waiting = {
        let (b, key) = (b.clone(), key.clone());
        tokio::spawn(async move { b.lock(key, mode, wait).await })
    };
    let pid = until_waiting_on_server(client, app, key.id()).await;
    (guard, waiting, pid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_in_another_process_waits_on_the_server_and_gets_the_lock_at_release() {
    let client = raw_connect(&db_url()).await;
    let app = unique("ws-handover");
    let holder = locker_at(&db_url(), 2).await;
    let b = waiter(&app, 2).await;
    for (i, (key, mode)) in [
        (LockKey::named(unique("ws:handover")), Mode::Exclusive),
        (LockKey::pair(std::process::id() as i32, -41), Mode::Shared),
    ]
    .into_iter()
    .enumerate()
    {
        let id = key.id();
        let guard = holder
            .lock(key.clone(), Mode::Exclusive, Some(BOUND))
            .await
            .unwrap();
        let holder_pid = guard.backend_pid();
        let waiting = {
            let (b, key) = (b.clone(), key.clone());
            tokio::spawn(async move {
                let g = b.lock(key, mode, Some(BOUND)).await;
                (g, Instant::now())
            })
        };
        let pid = until_waiting_on_server(&client, &app, id).await;
        // Still held by the holder, still awaited by the waiter.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let locks = advisory_locks(&client, &[id]).await;
        assert!(
            locks
                .iter()
                .any(|l| l.pid == holder_pid && l.granted && l.mode == "ExclusiveLock"),
            "{locks:?}"
        );
        assert!(
            locks.iter().any(|l| l.pid == pid && !l.granted),
            "{locks:?}"
        );
        assert!(!waiting.is_finished(), "the waiter got a lock that is held");

        let released = Instant::now();
        guard.release().await.unwrap();
        let (got, at) = tokio::time::timeout(BOUND, waiting)
            .await
            .expect("the waiter never got the lock")
            .unwrap();
        let got = got.unwrap();
        let after = at.saturating_duration_since(released);
        println!("case {i}: the waiter got the lock {after:?} after the release");
        // One server-side wake-up, not a notification plus a try-lock:
        // held on the session that waited, in the mode asked.
        assert_eq!(got.backend_pid(), pid);
        let locks = advisory_locks(&client, &[id]).await;
        let want = if mode == Mode::Shared {
            "ShareLock"
        } else {
            "ExclusiveLock"
        };
        assert_eq!(locks.len(), 1, "{locks:?}");
        assert!(
            locks[0].pid == pid && locks[0].granted && locks[0].mode == want,
            "{locks:?}"
        );
        got.release().await.unwrap();
        assert!(wait_until_unlocked(&client, &[id], BOUND).await.is_empty());
    }
    assert!(b.stats().server_waits >= 2, "{:?}", b.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_dropped_while_it_waits_on_the_server_leaks_nothing() {
    let client = raw_connect(&db_url()).await;
    let app = unique("ws-dropped");
    let holder = locker_at(&db_url(), 2).await;
    let b = waiter(&app, 2).await;
    let key = LockKey::named(unique("ws:dropped"));
    let id = key.id();
    for round in 0..3 {
        let (guard, waiting, pid) =
            held_and_awaited(&client, &holder, &b, &app, &key, Mode::Exclusive, None).await;
        waiting.abort();
        assert!(waiting.await.unwrap_err().is_cancelled());
        // Round 0: released at once (the wait session is granted the lock
        // for a caller that is gone); round 1: after a while; round 2:
        // while the wait is still on the server after the drop.
        if round == 1 {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        guard.release().await.unwrap();
        let left = wait_until_unlocked(&client, &[id], BOUND).await;
        assert!(
            left.is_empty(),
            "round {round}: {left:?} (waiter pid {pid})"
        );
        // The waiter's process took nothing with it: it gets the key at once.
        let again = b
            .try_lock(key.clone(), Mode::Exclusive)
            .await
            .unwrap()
            .expect("the key is free");
        again.release().await.unwrap();
    }
    assert!(advisory_locks(&client, &[id]).await.is_empty());
}

/// A caller dropped while its wait is blocked on the server cancels that
/// wait (a CancelRequest with the wait session's backend key data): the
/// server stops waiting long before the wait's `lock_timeout` slice would
/// end (here 45 s: three eighths of a 120 s loss detection bound), and the
/// key is still held only by its holder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_waiter_cancels_its_wait_on_the_server() {
    let client = raw_connect(&db_url()).await;
    let app = unique("ws-cancel");
    let holder = locker_at(&db_url(), 2).await;
    let b = LockConfig::from_url(&db_url_with_app(&app))
        .unwrap()
        .wait_sessions(1)
        .loss_detection(Duration::from_secs(120))
        .connect()
        .await
        .unwrap();
    let key = LockKey::named(unique("ws:cancel"));
    let (guard, waiting, pid) =
        held_and_awaited(&client, &holder, &b, &app, &key, Mode::Exclusive, None).await;
    waiting.abort();
    assert!(waiting.await.unwrap_err().is_cancelled());
    // The wait leaves the server (bounded by BOUND, far below the slice).
    let start = Instant::now();
    while waiting_backends(&client, &app).await.contains(&pid) {
        assert!(
            start.elapsed() < BOUND,
            "the dropped caller's wait is still on the server (pid {pid})"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let locks = advisory_locks(&client, &[key.id()]).await;
    assert_eq!(locks.len(), 1, "{locks:?}");
    assert_eq!(locks[0].pid, guard.backend_pid());
    guard.release().await.unwrap();
    assert!(wait_until_unlocked(&client, &[key.id()], BOUND)
        .await
        .is_empty());
    // The wait session serves again: a later wait gets the key.
    let again = b
        .lock(key.clone(), Mode::Exclusive, Some(BOUND))
        .await
        .unwrap();
    again.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_wait_on_the_server_ends_near_its_timeout() {
    let client = raw_connect(&db_url()).await;
    let app = unique("ws-timeout");
    let holder = locker_at(&db_url(), 2).await;
    // A long loss-detection bound makes the longest wait slice 3.75 s: a
    // timeout that waited a whole slice would show.
    let b = LockConfig::from_url(&db_url_with_app(&app))
        .unwrap()
        .loss_detection(Duration::from_secs(10))
        .connect()
        .await
        .unwrap();
    let key = LockKey::named(unique("ws:timeout"));
    let guard = holder
        .lock(key.clone(), Mode::Exclusive, Some(BOUND))
        .await
        .unwrap();
    for timeout in [Duration::from_millis(300), Duration::from_millis(120)] {
        let start = Instant::now();
        let result =
            tokio::time::timeout(BOUND, b.lock(key.clone(), Mode::Exclusive, Some(timeout)))
                .await
                .expect("the timed wait did not end");
        let took = start.elapsed();
        match result {
            Err(Error::WaitTimeout { waited, .. }) => {
                println!("timeout {timeout:?}: WaitTimeout after {took:?} (says {waited:?})");
                assert!(waited >= timeout, "{waited:?}");
            }
            other => panic!("expected WaitTimeout, got {other:?}"),
        }
        assert!(
            took >= timeout && took < timeout + Duration::from_millis(250),
            "timeout {timeout:?}, took {took:?}"
        );
    }
    assert!(b.stats().server_waits >= 2, "{:?}", b.stats());
    // Nothing of the waiter's is left on the server: only the holder's lock.
    let locks = advisory_locks(&client, &[key.id()]).await;
    assert!(
        locks.len() == 1 && locks[0].pid == guard.backend_pid(),
        "{locks:?}"
    );
    assert!(waiting_backends(&client, &app).await.is_empty());
    guard.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_wait_session_is_survived_and_replaced() {
    let client = raw_connect(&db_url()).await;
    let app = unique("ws-terminate");
    let holder = locker_at(&db_url(), 2).await;
    let b = waiter(&app, 2).await;
    let key = LockKey::named(unique("ws:terminate"));
    let id = key.id();

    let (guard, waiting, pid) = held_and_awaited(
        &client,
        &holder,
        &b,
        &app,
        &key,
        Mode::Exclusive,
        Some(BOUND),
    )
    .await;
    assert!(terminate_backend(&client, pid).await);
    // Released once the terminated backend is gone from the server.
    let start = Instant::now();
    while backends_named(&client, &app).await.contains(&pid) {
        assert!(start.elapsed() < BOUND, "backend {pid} still there");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    guard.release().await.unwrap();
    let result = tokio::time::timeout(BOUND + BOUND, waiting)
        .await
        .expect("the wait hung after its wait session was terminated")
        .expect("the wait panicked");
    match result {
        Ok(g) => {
            // Held by a live session of the waiter, not the terminated one.
            assert_ne!(g.backend_pid(), pid);
            let locks = advisory_locks(&client, &[id]).await;
            assert!(
                locks.len() == 1 && locks[0].pid == g.backend_pid() && locks[0].granted,
                "{locks:?}"
            );
            g.release().await.unwrap();
        }
        // A typed error is acceptable too.
        Err(e) => println!("the wait ended with: {e}"),
    }
    assert!(wait_until_unlocked(&client, &[id], BOUND).await.is_empty());

    // The next wait waits on the server again, on a fresh wait session.
    let (guard, waiting, fresh) = held_and_awaited(
        &client,
        &holder,
        &b,
        &app,
        &key,
        Mode::Exclusive,
        Some(BOUND),
    )
    .await;
    assert_ne!(fresh, pid);
    guard.release().await.unwrap();
    let g = tokio::time::timeout(BOUND, waiting)
        .await
        .expect("the second wait hung")
        .unwrap()
        .unwrap();
    assert_eq!(g.backend_pid(), fresh);
    g.release().await.unwrap();
    assert!(wait_until_unlocked(&client, &[id], BOUND).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_lock_from_the_same_process_does_not_overtake_the_release() {
    let client = raw_connect(&db_url()).await;
    let app = unique("ws-order");
    let holder = locker_at(&db_url(), 2).await;
    let b2 = waiter(&app, 2).await;
    // With one lock session too (the path that chooses no lane).
    let b1 = locker_with(&db_url_with_app(&app), 1, 2).await;
    for round in 0..40 {
        let b = if round % 2 == 0 { &b2 } else { &b1 };
        let key = LockKey::named(unique("ws:order"));
        let (guard, waiting, waited_on) = held_and_awaited(
            &client,
            &holder,
            b,
            &app,
            &key,
            Mode::Exclusive,
            Some(BOUND),
        )
        .await;
        guard.release().await.unwrap();
        let got = tokio::time::timeout(BOUND, waiting)
            .await
            .expect("the waiter never got the lock")
            .unwrap()
            .unwrap();
        // Dropped: its unlock goes out on the wait session, in the
        // background. A try-lock at once from this process goes to a lock
        // session, and must not find the key busy with its own lock.
        drop(got);
        let again = b
            .try_lock(key.clone(), Mode::Exclusive)
            .await
            .unwrap()
            .unwrap_or_else(|| {
                panic!("round {round}: the key was busy with this process's own released lock")
            });
        // Taken on a lock session: a try-lock never goes to a wait session
        // (it could queue behind a blocking wait there).
        assert_ne!(again.backend_pid(), waited_on, "round {round}");
        again.release().await.unwrap();
        assert!(advisory_locks(&client, &[key.id()]).await.is_empty());
    }
}

/// A key this process last got by waiting on the server is contended: the
/// next wait-mode call waits on the server at once, on the same wait
/// session, without a try-lock first (one round trip less, and no window in
/// which the releasing process takes the key back before this wait reaches
/// the server). Checked in the server's view (who waits, who holds) and in
/// the counters: no try-lock is sent, busy or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contended_key_is_waited_for_on_the_server_at_once() {
    let client = raw_connect(&db_url()).await;
    let app = unique("ws-at-once");
    let holder = locker_at(&db_url(), 2).await;
    let b = waiter(&app, 2).await;
    let key = LockKey::named(unique("ws:at-once"));
    // First: a try-lock finds it busy, then the wait on the server.
    let (guard, waiting, first_pid) = held_and_awaited(
        &client,
        &holder,
        &b,
        &app,
        &key,
        Mode::Exclusive,
        Some(BOUND),
    )
    .await;
    guard.release().await.unwrap();
    let got = waiting.await.unwrap().unwrap();
    assert_eq!(got.backend_pid(), first_pid);
    let s0 = b.stats();
    assert!(s0.busy >= 1 && s0.server_waits >= 1, "{s0:?}");
    got.release().await.unwrap();
    for round in 0..3 {
        // Held elsewhere again: waited for on the server, on the same
        // backend, with no try-lock first.
        let before = b.stats();
        let (guard, waiting, pid) = held_and_awaited(
            &client,
            &holder,
            &b,
            &app,
            &key,
            Mode::Exclusive,
            Some(BOUND),
        )
        .await;
        assert_eq!(pid, first_pid, "round {round}: waited on another backend");
        guard.release().await.unwrap();
        let got = waiting.await.unwrap().unwrap();
        assert_eq!(got.backend_pid(), first_pid, "round {round}");
        let after = b.stats();
        assert_eq!(
            after.busy, before.busy,
            "round {round}: a try-lock was sent: {after:?}"
        );
        assert_eq!(
            after.lock_requests,
            before.lock_requests + 1,
            "round {round}: {after:?}"
        );
        assert_eq!(
            after.server_waits,
            before.server_waits + 1,
            "round {round}: {after:?}"
        );
        got.release().await.unwrap();
    }
    // Free: the wait on the server is granted at once; a key found free by
    // 4 waits in a row (CONTENDED in runtime/src/table.rs) is no longer
    // contended.
    for free in 0..4 {
        let before = b.stats();
        let got = tokio::time::timeout(BOUND, b.lock(key.clone(), Mode::Exclusive, Some(BOUND)))
            .await
            .expect("a free key was not granted")
            .unwrap();
        assert_eq!(got.backend_pid(), first_pid, "free wait {free}");
        assert_eq!(
            b.stats().server_waits,
            before.server_waits + 1,
            "free wait {free}"
        );
        let locks = advisory_locks(&client, &[key.id()]).await;
        assert!(
            locks.iter().any(|l| l.pid == first_pid && l.granted) && locks.len() == 1,
            "{locks:?}"
        );
        got.release().await.unwrap();
        assert!(wait_until_unlocked(&client, &[key.id()], BOUND)
            .await
            .is_empty());
    }
    // Found free by those waits: no longer contended. The next wait-mode
    // call takes the key with a try-lock on a lock session, no wait sent.
    let before = b.stats();
    let got = b
        .lock(key.clone(), Mode::Exclusive, Some(BOUND))
        .await
        .unwrap();
    assert_ne!(
        got.backend_pid(),
        first_pid,
        "still waited on the wait session"
    );
    assert_eq!(b.stats().server_waits, before.server_waits);
    got.release().await.unwrap();
    // A try-lock goes to a lock session in any case.
    let again = b
        .try_lock(key.clone(), Mode::Exclusive)
        .await
        .unwrap()
        .unwrap();
    assert_ne!(again.backend_pid(), first_pid);
    again.release().await.unwrap();
}

/// The handover of the old path: a notified release or a backoff tick, then
/// a try-lock. The waiter runs on `frozen`, where no backoff tick can wake
/// it: it gets the lock only if the release's notification wakes it.
/// Returns whether any backend of `app` was seen waiting on the server
/// meanwhile.
async fn handover_without_server_wait(
    client: &Client,
    holder: &Locker,
    (frozen, b): (&FrozenClock, &Locker),
    app: &str,
    key: LockKey,
) -> bool {
    let guard = holder
        .lock(key.clone(), Mode::Exclusive, Some(BOUND))
        .await
        .unwrap();
    let busy_before = b.stats().busy;
    let waiting = {
        let (b, key) = (b.clone(), key.clone());
        frozen.handle.spawn(async move {
            let g = b.lock(key, Mode::Exclusive, Some(BOUND)).await.unwrap();
            g.release().await
        })
    };
    until("the waiter found the key busy", BOUND, || {
        b.stats().busy > busy_before
    })
    .await;
    let mut seen = false;
    for _ in 0..30 {
        seen |= !waiting_backends(client, app).await.is_empty();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    guard.release().await.unwrap();
    tokio::time::timeout(BOUND, waiting)
        .await
        .expect("the waiter was not woken by the release (no backoff tick could wake it)")
        .unwrap()
        .unwrap();
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_wait_sessions_and_with_fencing_waits_work_as_before() {
    let client = raw_connect(&db_url()).await;
    let holder = locker_at(&db_url(), 2).await;

    // wait_sessions(0): no wait on the server, the notified release wakes
    // the waiter.
    let app = unique("ws-off");
    let frozen = FrozenClock::start();
    let url = db_url_with_app(&app);
    let b = frozen
        .run(BOUND, "connect the waiter", async move {
            locker_at(&url, 0).await
        })
        .await;
    let key = LockKey::named(unique("ws:off"));
    let seen = handover_without_server_wait(&client, &holder, (&frozen, &b), &app, key).await;
    assert!(
        !seen,
        "a backend waited on the server with wait_sessions(0)"
    );
    assert_eq!(b.stats().server_waits, 0);
    assert_eq!(
        frozen.moved().await,
        Duration::ZERO,
        "the waiter's clock moved"
    );
    drop(b);

    // Fencing tokens: the token is taken with the try-lock, so no wait on
    // the server; tokens still increase.
    let app = unique("ws-fenced");
    let fenced = |url: String| async move {
        LockConfig::from_url(&url)
            .unwrap()
            .fencing_tokens(true)
            .connect()
            .await
            .unwrap()
    };
    let fenced_holder = fenced(db_url()).await;
    let b = fenced(db_url_with_app(&app)).await;
    let key = LockKey::named(unique("ws:fenced"));
    let mut last = 0;
    for _ in 0..2 {
        let first = fenced_holder
            .lock(key.clone(), Mode::Exclusive, Some(BOUND))
            .await
            .unwrap();
        let token = first.fencing_token().unwrap();
        assert!(token > last);
        let busy_before = b.stats().busy;
        let waiting = {
            let (b, key) = (b.clone(), key.clone());
            tokio::spawn(async move {
                let g = b.lock(key, Mode::Exclusive, Some(BOUND)).await.unwrap();
                let t = g.fencing_token();
                g.release().await.unwrap();
                t
            })
        };
        // It waits: it found the key busy, twice.
        until("the fenced waiter tried twice", BOUND, || {
            b.stats().busy - busy_before >= 2
        })
        .await;
        assert!(waiting_backends(&client, &app).await.is_empty());
        first.release().await.unwrap();
        let t = tokio::time::timeout(BOUND, waiting)
            .await
            .expect("the fenced waiter never got the lock")
            .unwrap()
            .unwrap();
        assert!(t > token, "{t} after {token}");
        last = t;
    }
    assert_eq!(b.stats().server_waits, 0);
    let _ = holder;
}

#[tokio::test]
async fn too_many_wait_sessions_is_a_configuration_error() {
    let e = LockConfig::from_url(&db_url())
        .unwrap()
        .wait_sessions(10_001)
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(e, Error::InvalidConfig { .. }), "{e:?}");
    // 0 is valid: no wait sessions.
    let l = LockConfig::from_url(&db_url())
        .unwrap()
        .wait_sessions(0)
        .connect()
        .await
        .unwrap();
    let key = LockKey::named(unique("ws:zero"));
    l.lock(key, Mode::Exclusive, Some(BOUND))
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
}

/// A shared wait on the server may last long; a shared try-lock of the same
/// process meanwhile finds the key busy at once instead of waiting for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_try_lock_does_not_wait_behind_a_shared_wait_on_the_server() {
    let client = raw_connect(&db_url()).await;
    let app = unique("ws-shared-skip");
    let holder = locker_at(&db_url(), 2).await;
    let b = waiter(&app, 2).await;
    let key = LockKey::named(unique("ws:shared-skip"));
    let (guard, waiting, _) =
        held_and_awaited(&client, &holder, &b, &app, &key, Mode::Shared, None).await;
    let tried = tokio::time::timeout(
        Duration::from_secs(2),
        b.try_lock(key.clone(), Mode::Shared),
    )
    .await
    .expect("a shared try-lock waited behind a shared wait on the server");
    assert!(tried.unwrap().is_none(), "busy: held exclusively elsewhere");
    guard.release().await.unwrap();
    let got = tokio::time::timeout(BOUND, waiting)
        .await
        .expect("the waiter never got the lock")
        .unwrap()
        .unwrap();
    assert_eq!(got.mode(), Mode::Shared);
    got.release().await.unwrap();
}

/// What a waiting backend of `pid` runs (`pg_stat_activity.query`).
async fn running(client: &Client, pid: i32) -> String {
    client
        .query_one("SELECT query FROM pg_stat_activity WHERE pid = $1", &[&pid])
        .await
        .expect("pg_stat_activity query failed")
        .get(0)
}

/// A wait as long as the wait session's longest (an untimed wait) runs
/// under the session's own `lock_timeout`, set once: its statement sets
/// none. A shorter one sets its own in the statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_longest_wait_uses_the_wait_sessions_own_lock_timeout() {
    let client = raw_connect(&db_url()).await;
    let app = unique("ws-standing");
    let holder = locker_at(&db_url(), 2).await;
    // The longest wait is then 3.75 s: a 2 s wait is shorter.
    let b = LockConfig::from_url(&db_url_with_app(&app))
        .unwrap()
        .loss_detection(Duration::from_secs(10))
        .wait_sessions(1)
        .connect()
        .await
        .unwrap();
    let key = LockKey::named(unique("ws:standing"));
    let shorter = Some(Duration::from_secs(2));
    for (wait, sets_its_own) in [(None, false), (shorter, true)] {
        let (guard, waiting, pid) =
            held_and_awaited(&client, &holder, &b, &app, &key, Mode::Exclusive, wait).await;
        let query = running(&client, pid).await;
        let timeout: String = client
            .query_one(
                "SELECT setting FROM pg_settings WHERE name = 'lock_timeout'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        guard.release().await.unwrap();
        let got = tokio::time::timeout(BOUND, waiting)
            .await
            .expect("the waiter was not granted")
            .unwrap()
            .unwrap();
        got.release().await.unwrap();
        assert!(query.contains("pg_advisory_lock("), "{query}");
        assert_eq!(
            query.contains("set_config('lock_timeout'"),
            sets_its_own,
            "wait {wait:?}: {query}"
        );
        // The observer's own setting is untouched (the wait session's is
        // its own).
        assert_eq!(timeout, "0");
    }
}
