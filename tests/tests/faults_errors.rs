//! Faults the server reports as errors: out of lock memory, a server-set
//! statement timeout, and the lock database dropped under a running entry.
//! Each must come back as a typed `advisory_locked::Error` (never a panic,
//! never "acquired"), and leave no lock of the test behind.
//!
//! The last test (ignored: a runtime bug) shows that a query cancel — what
//! a server-set `statement_timeout` also does — can fail a single try-lock
//! after the server granted it, leaving the lock held by a session that
//! keeps serving. The statement-timeout test here reports such a lock if it
//! sees one, and checks for leaks once the entry's sessions are gone.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use advisory_locked::{
    advisory_locked, Error, KeyId, LockConfig, LockGuard, LockKey, Locker, Mode,
};
use advisory_locked_tests::{
    advisory_locks, db_url, db_url_for_database, join_all, raw_connect, try_advisory_locks, unique,
    wait_until_locked, wait_until_unlocked, Prng, TempDatabase, ThrowawayServer,
};
use tokio::sync::Notify;
use tokio_postgres::Client;

/// How long the unlock queued for a failed try-lock may take to run.
const SETTLE: Duration = Duration::from_secs(2);
const LIMIT: Duration = Duration::from_secs(15);

/// All advisory locks of the client's database, whatever their keys.
async fn all_advisory(client: &Client) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[],
        )
        .await
        .expect("pg_locks")
        .get(0)
}

/// The SQLSTATE of the server's error behind `e`, if any.
fn sqlstate_of(e: &Error) -> String {
    e.server_error()
        .map(|s| s.code().code().to_owned())
        .unwrap_or_default()
}

/// Takes fresh keys, `per_call` concurrent try-locks at a time (one
/// statement), until an error; returns the guards and the errors of the
/// failing round.
async fn fill(
    locker: &Locker,
    next: &mut i64,
    per_call: usize,
    limit: usize,
) -> (Vec<LockGuard>, Vec<Error>, usize) {
    let mut guards = Vec::new();
    let mut rounds = 0;
    while guards.len() < limit {
        rounds += 1;
        let calls: Vec<_> = (0..per_call)
            .map(|i| locker.try_lock(LockKey::int(*next + i as i64), Mode::Exclusive))
            .collect();
        *next += per_call as i64;
        let mut errors = Vec::new();
        // Every call answers (a lock, busy, or an error) well within the
        // bound: a call that never does is a bug, reported as one.
        let answered = tokio::time::timeout(LIMIT * 4, join_all(calls)).await;
        let answered = answered.unwrap_or_else(|_| {
            panic!(
                "round {rounds} ({per_call} try-locks, {} held before): a call never answered",
                guards.len()
            )
        });
        for r in answered {
            match r {
                Ok(Some(g)) => guards.push(g),
                Ok(None) => panic!("a fresh key was busy"),
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return (guards, errors, rounds);
        }
    }
    panic!(
        "{} locks taken and the server never ran out of lock memory",
        guards.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_lock_memory_is_a_typed_error_and_leaves_nothing_behind() {
    let server = tokio::task::spawn_blocking(|| {
        ThrowawayServer::start_with(&["max_locks_per_transaction=10", "max_connections=10"])
    })
    .await
    .unwrap();
    let url = server.url("postgres");
    let client = raw_connect(&url).await;
    let table: String = client
        .query_one(
            "SELECT current_setting('max_locks_per_transaction') || ' x ' || current_setting('max_connections')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let locker = LockConfig::from_url(&url)
        .unwrap()
        .sessions(1)
        .connect()
        .await
        .unwrap();
    let mut next: i64 = 1_000_000;

    // 1. Many requests per statement: the failing statement closes the
    // session, so the server frees all it held; every request of it is a
    // typed Query error with SQLSTATE 53200.
    let (guards, errors, rounds) = fill(&locker, &mut next, 256, 1_000_000).await;
    let held_before = guards.len();
    println!(
        "lock table {table}: batches of 256 took {held_before} locks in {rounds} statements, then {} requests failed: {}",
        errors.len(),
        errors[0]
    );
    for e in &errors {
        // A request re-queued to a fresh session can meet the full lock
        // table in that session's set-up: its exclusion self-test takes a
        // lock (then Connect, with the same SQLSTATE from the server). One
        // that comes to that slot while it backs off after such a failure
        // fails fast (Unavailable), naming the failure.
        if let Error::Unavailable { cause, .. } = e {
            assert!(
                cause.contains("SQLSTATE 53200") && cause.contains("out of shared memory"),
                "{e:?}"
            );
            continue;
        }
        assert!(
            matches!(e, Error::Query { .. } | Error::Connect { .. }),
            "{e:?}"
        );
        assert_eq!(sqlstate_of(e), "53200", "{e}");
        let server = e.server_error().expect("the server's error");
        assert!(server.message().contains("out of shared memory"), "{e:?}");
    }
    // The failed statement's session is closed (its guards are lost, the
    // server frees its locks); requests that were still queued on it went to
    // a fresh session and hold there. The server's locks are exactly the
    // guards that still hold.
    let lost = guards.iter().filter(|g| !g.is_held()).count();
    let lost_pids: std::collections::BTreeSet<i32> = guards
        .iter()
        .filter(|g| !g.is_held())
        .map(|g| g.backend_pid())
        .collect();
    let mut expected: Vec<(i32, KeyId)> = guards
        .iter()
        .filter(|g| g.is_held())
        .map(|g| (g.backend_pid(), g.key().id()))
        .collect();
    expected.sort_by_key(|(p, k)| (*p, format!("{k:?}")));
    let start = Instant::now();
    let on_server = loop {
        let ids: Vec<KeyId> = guards.iter().map(|g| g.key().id()).collect();
        // While the closed session's backend is still exiting the lock
        // table is full, and this query (which needs locks too) fails.
        let Ok(locks) = try_advisory_locks(&client, &ids).await else {
            assert!(start.elapsed() < LIMIT, "pg_locks never answered");
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let mut seen: Vec<(i32, KeyId)> = locks.into_iter().map(|l| (l.pid, l.key)).collect();
        seen.sort_by_key(|(p, k)| (*p, format!("{k:?}")));
        if seen == expected || start.elapsed() > LIMIT {
            break seen;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    println!(
        "after the failed statement: {lost} guards lost (session(s) {lost_pids:?} closed), {} still held on a fresh session; \
         {} advisory locks on the server, all of held guards",
        expected.len(),
        on_server.len()
    );
    // Every request of a failed statement gets its error; more than one
    // means a statement with several requests failed, which must close its
    // session.
    assert!(
        errors.len() == 1 || lost > 0,
        "no guard was lost: the failed session was not closed"
    );
    assert_eq!(
        on_server, expected,
        "the server's locks differ from the held guards"
    );
    assert_eq!(all_advisory(&client).await, expected.len() as i64);
    let released: Vec<_> = join_all(
        guards
            .into_iter()
            .map(|g| (g.is_held(), g.release()))
            .map(|(held, r)| async move { (held, r.await) })
            .collect(),
    )
    .await;
    for (held, r) in &released {
        if *held {
            assert!(r.is_ok(), "{r:?}");
        } else {
            assert!(matches!(r, Err(Error::LockLost { .. })), "{r:?}");
        }
    }
    assert_eq!(all_advisory(&client).await, 0);

    // 2. One request per statement. The failing try-lock is a typed error;
    // the server's locks must still be exactly those of the guards that
    // hold (whether the runtime keeps the session, as now, or closes it).
    let (mut guards, errors, rounds) = fill(&locker, &mut next, 1, 1_000_000).await;
    let taken = guards.len();
    assert_eq!(errors.len(), 1);
    assert!(matches!(errors[0], Error::Query { .. }), "{:?}", errors[0]);
    assert_eq!(sqlstate_of(&errors[0]), "53200");
    let held: Vec<i32> = guards
        .iter()
        .filter(|g| g.is_held())
        .map(|g| g.backend_pid())
        .collect();
    let pid = guards[0].backend_pid();
    let start = Instant::now();
    let count = loop {
        let count: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = $1 AND granted",
                &[&pid],
            )
            .await
            .unwrap()
            .get(0);
        if count == held.len() as i64 || start.elapsed() > LIMIT {
            break count;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    println!(
        "single try-locks: {taken} locks in {rounds} statements, then: {}; the session was {} ({} guards hold, {count} locks on the server)",
        errors[0],
        if held.is_empty() { "closed" } else { "kept" },
        held.len()
    );
    assert_eq!(
        count,
        held.len() as i64,
        "the server's locks differ from the guards"
    );
    if !held.is_empty() {
        // Still full: still a typed error, at once.
        let again = locker
            .lock(
                LockKey::int(next),
                Mode::Exclusive,
                Some(Duration::from_secs(1)),
            )
            .await
            .expect_err("a lock in a full lock table");
        assert_eq!(sqlstate_of(&again), "53200", "{again}");
        next += 1;
        // Freeing some makes room.
        let freed: Vec<_> = join_all(guards.drain(..200).map(|g| g.release()).collect()).await;
        assert!(freed.iter().all(|r| r.is_ok()), "{freed:?}");
    }
    let g = locker
        .try_lock(LockKey::int(next), Mode::Exclusive)
        .await
        .expect("a lock after freeing room")
        .expect("a fresh key");
    guards.push(g);
    // Dropping everything leaves nothing.
    let n = guards.len();
    drop(guards);
    let start = Instant::now();
    while all_advisory(&client).await != 0 {
        assert!(
            start.elapsed() < LIMIT,
            "locks left after dropping every guard"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "dropped {n} guards: 0 advisory locks left after {:?}",
        start.elapsed()
    );
    assert_eq!(locker.stats().keys, 0);
}

#[advisory_locked(key = "{key}", pool = "faults_errors_dropdb")]
async fn long_body(key: &str, entered: &Notify, finished: &AtomicBool) {
    entered.notify_one();
    tokio::time::sleep(Duration::from_secs(30)).await;
    finished.store(true, Ordering::SeqCst);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_database_tells_holders_and_fails_new_calls_with_a_typed_error() {
    let admin = raw_connect(&db_url()).await;
    let db = TempDatabase::create(&admin, "faults_dropdb").await;
    let url = db_url_for_database(&db.name);
    let locker = LockConfig::from_url(&url)
        .unwrap()
        .name("faults_errors_dropdb")
        .sessions(2)
        .install()
        .await
        .unwrap();
    let watcher = raw_connect(&url).await;
    let key = unique("faults:dropdb");
    let entered = Arc::new(Notify::new());
    let finished = Arc::new(AtomicBool::new(false));
    let mut call = {
        let (k, e, f) = (key.clone(), entered.clone(), finished.clone());
        tokio::spawn(async move { long_body(&k, &e, &f).await })
    };
    tokio::select! {
        () = entered.notified() => {}
        r = &mut call => panic!("the holder's call ended early: {r:?}"),
        () = tokio::time::sleep(LIMIT) => panic!("the body did not start"),
    }
    let guard = locker
        .try_lock(
            LockKey::named(unique("faults:dropdb:guard")),
            Mode::Exclusive,
        )
        .await
        .unwrap()
        .expect("a fresh key");
    let held = wait_until_locked(
        &watcher,
        &[advisory_locked_tests::named(&key), guard.key().id()],
        LIMIT,
    )
    .await;
    assert_eq!(held.len(), 2, "{held:?}");
    drop(watcher);

    let dropping = Instant::now();
    admin
        .batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", db.name))
        .await
        .expect("DROP DATABASE ... WITH (FORCE)");
    let dropped = dropping.elapsed();
    let result = tokio::time::timeout(LIMIT, &mut call)
        .await
        .expect("the holder was never told")
        .expect("the holder panicked");
    let told = dropping.elapsed();
    match &result {
        Err(Error::LockLost { key: k }) => assert_eq!(k, &key),
        other => panic!("expected Err(LockLost), got {other:?}"),
    }
    assert!(!finished.load(Ordering::SeqCst));
    tokio::time::timeout(LIMIT, guard.lost())
        .await
        .expect("guard.lost() never resolved");
    assert!(!guard.is_held());
    println!(
        "DROP DATABASE ... WITH (FORCE) took {:.1} ms; the holder got LockLost {:.1} ms after it began",
        dropped.as_secs_f64() * 1e3,
        told.as_secs_f64() * 1e3
    );

    // New calls: a typed error naming the missing database (3D000), then
    // fast failures while the entry backs off; never a panic or a hang.
    let mut seen = Vec::new();
    for i in 0..6 {
        let began = Instant::now();
        let r = tokio::time::timeout(
            LIMIT,
            locker.try_lock(
                LockKey::named(unique("faults:dropdb:after")),
                Mode::Exclusive,
            ),
        )
        .await
        .expect("a call hung");
        let e = r.expect_err("a lock on a dropped database");
        let took = began.elapsed();
        match &e {
            Error::Connect { .. } => assert_eq!(sqlstate_of(&e), "3D000", "{e}"),
            Error::Unavailable { cause, .. } => assert!(cause.contains("3D000"), "{e}"),
            other => panic!("call {i}: expected Connect/Unavailable, got {other:?}"),
        }
        assert!(e.is_transient() || matches!(e, Error::Connect { .. }));
        seen.push(format!(
            "{} in {:.2} ms",
            if matches!(e, Error::Connect { .. }) {
                "Connect(3D000)"
            } else {
                "Unavailable"
            },
            took.as_secs_f64() * 1e3
        ));
        if i == 0 {
            println!("first call after the drop: {e}");
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    println!("calls after the drop: {seen:?}");
    assert!(seen.iter().any(|s| s.starts_with("Connect(3D000)")));
    let _ = guard.release().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_set_statement_timeout_of_1ms_is_typed_and_leaks_nothing() {
    let admin = raw_connect(&db_url()).await;
    let db = TempDatabase::create(&admin, "faults_stmt_timeout").await;
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {} SET statement_timeout = '1ms'",
            db.name
        ))
        .await
        .unwrap();
    let url = db_url_for_database(&db.name);
    let watcher = raw_connect(&url).await;
    watcher
        .batch_execute("SET statement_timeout = 0")
        .await
        .unwrap();
    // The database's setting, read from the catalog (a SHOW could itself
    // be cut by the 1 ms timeout on a busy machine).
    let shown: Vec<String> = admin
        .query_one(
            "SELECT setconfig FROM pg_db_role_setting \
             WHERE setdatabase = (SELECT oid FROM pg_database WHERE datname = $1) AND setrole = 0",
            &[&db.name],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        shown.contains(&"statement_timeout=1ms".to_owned()),
        "{shown:?}"
    );

    // Setting a session up takes several statements; any of them may
    // outlast 1 ms, which fails the connect with a typed error (57014).
    // Each try succeeds unless a statement is cut, so one of many does
    // (bounded in tries and time; none at all is a failure, not a pass).
    let mut connect_errors = Vec::new();
    let mut locker = None;
    let start = std::time::Instant::now();
    for _ in 0..1000 {
        if start.elapsed() > Duration::from_secs(60) {
            break;
        }
        match LockConfig::from_url(&url)
            .unwrap()
            .sessions(2)
            .connect()
            .await
        {
            Ok(l) => {
                locker = Some(l);
                break;
            }
            Err(e) => {
                assert!(matches!(e, Error::Connect { .. }), "{e:?}");
                assert_eq!(sqlstate_of(&e), "57014", "{e}");
                connect_errors.push(e.to_string());
            }
        }
    }
    println!(
        "statement_timeout = 1ms: {} failed connects before one worked ({:?})",
        connect_errors.len(),
        connect_errors.first()
    );
    let Some(locker) = locker else {
        panic!(
            "statement_timeout = 1ms: no session could be set up in {} tries \
             (every try was a typed Connect error, 57014): the set-up must \
             lift the timeout before anything that can outlast it",
            connect_errors.len()
        );
    };
    let keys: Vec<LockKey> = (0..16)
        .map(|i| LockKey::named(unique(&format!("faults:stmt:{i}"))))
        .collect();
    let ids: Vec<KeyId> = keys.iter().map(|k| k.id()).collect();
    let mut rng = Prng::seeded("faults_stmt_timeout", 0xFA17_0007);
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (locker, keys) = (locker.clone(), keys.clone());
        let mut rng = Prng::new(rng.next_u64());
        tasks.push(tokio::spawn(async move {
            let mut tally = std::collections::BTreeMap::<String, usize>::new();
            for _ in 0..150 {
                let key = keys[rng.below(keys.len() as u64) as usize].clone();
                let r = if rng.chance(1, 2) {
                    locker.try_lock(key, Mode::Exclusive).await
                } else {
                    locker
                        .lock(key, Mode::Exclusive, Some(Duration::from_millis(100)))
                        .await
                        .map(Some)
                };
                let outcome = match r {
                    Ok(Some(guard)) => {
                        tokio::task::yield_now().await;
                        match guard.release().await {
                            Ok(()) => "released".to_owned(),
                            Err(e) => format!("release: {}", kind(&e)),
                        }
                    }
                    Ok(None) => "busy".to_owned(),
                    Err(e) => format!("acquire: {}", kind(&e)),
                };
                *tally.entry(outcome).or_default() += 1;
            }
            tally
        }));
    }
    let mut tally = std::collections::BTreeMap::<String, usize>::new();
    for t in tasks {
        for (k, n) in tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("a task hung")
            .expect("a task panicked")
        {
            *tally.entry(k).or_default() += n;
        }
    }
    // Bursts: many requests in one statement, which may outlast 1 ms.
    let mut burst_ids = Vec::new();
    let mut burst = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..5 {
        let keys: Vec<LockKey> = (0..300)
            .map(|_| LockKey::named(unique("faults:stmt:burst")))
            .collect();
        burst_ids.extend(keys.iter().map(|k| k.id()));
        let results = join_all(
            keys.into_iter()
                .map(|k| locker.try_lock(k, Mode::Exclusive))
                .collect(),
        )
        .await;
        let mut guards = Vec::new();
        for r in results {
            match r {
                Ok(Some(g)) => guards.push(g),
                Ok(None) => panic!("a fresh key was busy"),
                Err(e) => *burst.entry(format!("acquire: {}", kind(&e))).or_default() += 1,
            }
        }
        for r in join_all(guards.into_iter().map(|g| g.release()).collect()).await {
            let outcome = match r {
                Ok(()) => "released".to_owned(),
                Err(e) => format!("release: {}", kind(&e)),
            };
            *burst.entry(outcome).or_default() += 1;
        }
    }
    // With the entry still alive (its sessions open) no guard is left, so a
    // lock of the test held now is one a session leaked. A cancelled single
    // try-lock can leak one (see the ignored test below, which shows it
    // deterministically): here it is reported, and checked once the
    // sessions are gone.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let all_ids: Vec<KeyId> = ids.iter().chain(burst_ids.iter()).copied().collect();
    let held = advisory_locks(&watcher, &all_ids).await;
    let stats = locker.stats();
    println!(
        "statement_timeout = 1ms: 2,400 single calls: {tally:?}; 5 bursts of 300 in one go: {burst:?}; \
         sessions opened {}, heartbeats {}; locks held by live sessions with no guard: {}{}",
        stats.sessions_opened,
        stats.heartbeats,
        held.len(),
        if held.is_empty() { "" } else { " (LEAK: the cancelled single try-lock bug)" }
    );
    assert_eq!(stats.keys, 0);
    drop(locker);
    let left = wait_until_unlocked(&watcher, &all_ids, LIMIT).await;
    assert!(
        left.is_empty(),
        "locks left after the entry was dropped: {left:?}"
    );
}

fn kind(e: &Error) -> String {
    let name = match e {
        Error::Query { .. } => "Query",
        Error::Connect { .. } => "Connect",
        Error::ConnectTimeout { .. } => "ConnectTimeout",
        Error::Unavailable { .. } => "Unavailable",
        Error::LockLost { .. } => "LockLost",
        Error::SessionEnded { .. } => "SessionEnded",
        Error::WaitTimeout { .. } => "WaitTimeout",
        _ => "Other",
    };
    let code = sqlstate_of(e);
    if code.is_empty() {
        name.to_owned()
    } else {
        format!("{name}({code})")
    }
}

/// A query cancel (`pg_cancel_backend`, as a "kill long queries" job does,
/// or a server-set `statement_timeout` firing) can fail a single try-lock
/// statement AFTER `pg_try_advisory_lock` took the lock: the error (57014)
/// arrives before ReadyForQuery, the row notwithstanding. Session locks
/// ignore the aborted transaction, so the session now holds the key while
/// the caller got `Error::Query`. Before the fix the dispatcher kept serving
/// on that session, and the key stayed held by nobody the process knew of
/// (a leak in 5 runs of 5, after 226 to 4,190 cycles). Now a failed single
/// try-lock queues an unlock of its key (tolerating "not held") before the
/// caller hears of the error: the key must be free again within `SETTLE`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_single_try_lock_never_leaves_the_lock_held() {
    let locker = LockConfig::from_url(&db_url())
        .unwrap()
        .sessions(1)
        .connect()
        .await
        .unwrap();
    let key = LockKey::named(unique("faults:cancel-leak"));
    let watcher = raw_connect(&db_url()).await;
    let other = raw_connect(&db_url()).await;
    let stop = Arc::new(AtomicBool::new(false));
    // The canceller: pg_cancel_backend on the entry's (one) lock session,
    // as fast as it can; it follows the session when the entry replaces it
    // (a cancelled unlock closes the session).
    let first = locker
        .try_lock(key.clone(), Mode::Exclusive)
        .await
        .unwrap()
        .unwrap();
    let target = Arc::new(std::sync::atomic::AtomicI32::new(first.backend_pid()));
    first.release().await.unwrap();
    let canceller = {
        let (stop, target) = (stop.clone(), target.clone());
        tokio::spawn(async move {
            let c = raw_connect(&db_url()).await;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let pid = target.load(Ordering::Relaxed);
                let _ = c.execute("SELECT pg_cancel_backend($1)", &[&pid]).await;
                n += 1;
            }
            n
        })
    };
    let start = Instant::now();
    let (mut cycles, mut granted, mut cancelled, mut other_errors, mut release_lost) =
        (0, 0, 0, 0, 0);
    let mut leak = None;
    // At least 5 s, and on until a cancel has hit a try-lock (a matter of
    // timing: under load it takes longer), bounded in time and count.
    while (start.elapsed() < Duration::from_secs(5) || cancelled == 0)
        && start.elapsed() < Duration::from_secs(60)
        && cycles < 200_000
    {
        cycles += 1;
        match locker.try_lock(key.clone(), Mode::Exclusive).await {
            Ok(Some(g)) => {
                granted += 1;
                target.store(g.backend_pid(), Ordering::Relaxed);
                if g.release().await.is_err() {
                    release_lost += 1;
                }
            }
            Ok(None) => {}
            Err(e) => {
                if sqlstate_of(&e) == "57014" {
                    cancelled += 1;
                } else {
                    other_errors += 1;
                }
                // No guard exists now: the key must be free once the unlock
                // the runtime queues for a failed try-lock has run (or its
                // session was closed, if that unlock was cancelled too).
                let held = wait_until_unlocked(&watcher, &[key.id()], SETTLE).await;
                if !held.is_empty() {
                    leak = Some((e.to_string(), held));
                    break;
                }
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let cancels = canceller.await.unwrap();
    println!(
        "{cycles} try-lock/release cycles under {cancels} cancels in {:?}: {granted} granted ({release_lost} releases cancelled: LockLost), \
         {cancelled} try-locks failed with 57014, {other_errors} other errors",
        start.elapsed()
    );
    if let Some((error, held)) = leak {
        // What the leak does: another session can't take the key, the
        // process thinks it is free, takes it again on the same session
        // (re-entrant) and "releases" it — and it stays held.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let still = advisory_locks(&watcher, &[key.id()]).await;
        let KeyId::Int(k) = key.id() else {
            unreachable!()
        };
        let other_got: bool = other
            .query_one("SELECT pg_try_advisory_lock($1)", &[&k])
            .await
            .unwrap()
            .get(0);
        let keys_here = locker.stats().keys;
        let again = locker.try_lock(key.clone(), Mode::Exclusive).await;
        let again_granted = matches!(again, Ok(Some(_)));
        if let Ok(Some(g)) = again {
            let _ = g.release().await;
        }
        let after_release = advisory_locks(&watcher, &[key.id()]).await;
        panic!(
            "LEAK after cycle {cycles}: the try-lock failed ({error}) but the server shows {held:?}; \
             200 ms later still {still:?}; another session's pg_try_advisory_lock = {other_got}; \
             keys in this process's table = {keys_here}; this process's next try_lock granted = {again_granted}; \
             after its release the server still shows {after_release:?}"
        );
    }
    assert!(
        cancelled > 0,
        "no statement was cancelled: the test proved nothing"
    );
    let left = wait_until_unlocked(&watcher, &[key.id()], LIMIT).await;
    assert!(left.is_empty(), "{left:?}");
}
