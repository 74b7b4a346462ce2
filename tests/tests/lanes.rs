//! Lanes (runtime/src/lanes.rs): long-held locks gather in one session, and
//! keys locked and released again and again run on a session that holds
//! (almost) nothing, so their cost does not grow with the locks held.
//! A key that moves to a lighter session never overtakes its own unlock.

use std::collections::HashMap;

use advisory_locked::{
    advisory_locked, KeyId, LockConfig, LockGuard, LockKey, Locker, Mode, Outcome,
};
use advisory_locked_tests::{advisory_locks, db_url, join_all, raw_connect, unique};

async fn locker(sessions: usize) -> Locker {
    LockConfig::from_url(&db_url())
        .unwrap()
        .name(unique("lanes"))
        .sessions(sessions)
        .connect()
        .await
        .unwrap()
}

fn key(tag: &str, i: usize) -> LockKey {
    LockKey::named(unique(&format!("lanes:{tag}:{i}")))
}

/// Takes `n` fresh keys, 32 at a time.
async fn hold_many(locker: &Locker, tag: &str, n: usize) -> Vec<LockGuard> {
    let mut held = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(32) {
        let tries: Vec<_> = chunk
            .iter()
            .map(|&i| {
                let locker = locker.clone();
                async move { locker.try_lock(key(tag, i), Mode::Exclusive).await }
            })
            .collect();
        for got in join_all(tries).await {
            held.push(got.unwrap().expect("a fresh key was busy"));
        }
    }
    held
}

/// Locks `key` and drops the guard `n` times in a row; the backend of each
/// lock.
async fn lock_again_and_again(locker: &Locker, key: &LockKey, n: usize) -> Vec<i32> {
    let mut pids = Vec::with_capacity(n);
    for _ in 0..n {
        let g = locker
            .try_lock(key.clone(), Mode::Exclusive)
            .await
            .unwrap()
            .expect("the hot key was busy: a lock overtook its own unlock");
        pids.push(g.backend_pid());
        drop(g);
    }
    pids
}

/// How many of `keys` each server process holds.
async fn holders(admin: &tokio_postgres::Client, keys: &[KeyId]) -> HashMap<i32, usize> {
    let mut by_pid = HashMap::new();
    for l in advisory_locks(admin, keys).await {
        assert!(l.granted, "nothing here waits");
        *by_pid.entry(l.pid).or_insert(0) += 1;
    }
    by_pid
}

#[tokio::test]
async fn held_locks_pack_and_repeated_keys_run_on_a_light_session() {
    let admin = raw_connect(&db_url()).await;
    let locker = locker(3).await;
    let held = hold_many(&locker, "cold", 300).await;
    let cold: Vec<KeyId> = held.iter().map(|g| g.key().id()).collect();
    let by_pid = holders(&admin, &cold).await;
    assert_eq!(
        by_pid.len(),
        1,
        "keys taken once are packed into one session: {by_pid:?}"
    );
    let packed_pid = *by_pid.keys().next().unwrap();

    // A key locked and released again and again moves off the full session
    // (after its first release) and stays where it is light.
    let hot = key("hot", 0);
    let pids = lock_again_and_again(&locker, &hot, 50).await;
    assert_eq!(pids[0], packed_pid, "a key taken the first time is packed");
    assert!(
        pids[1..].iter().all(|&p| p != packed_pid),
        "a released key runs on a lighter session: {pids:?} (full: {packed_pid})"
    );
    assert!(
        pids[2..].windows(2).all(|w| w[0] == w[1]),
        "and stays there: {pids:?}"
    );
    // The server agrees about where the held ones are.
    let g = locker.try_lock(hot.clone(), Mode::Exclusive).await.unwrap();
    let g = g.expect("hot key busy");
    let on_server = holders(&admin, &[hot.id()]).await;
    assert_eq!(on_server.get(&g.backend_pid()), Some(&1));
    assert_eq!(holders(&admin, &cold).await.get(&g.backend_pid()), None);
    drop(g);
    drop(held);
}

/// A server process that held many locks stays slower after releasing
/// them (its backend-local lock table does not shrink, and is scanned at
/// every statement's end): once all 1,000 packed locks are released, a key
/// locked again and again still leaves that session for one that never
/// held much, while new keys taken once are packed into it again.
#[tokio::test]
async fn repeated_keys_avoid_a_session_that_held_many_locks() {
    let admin = raw_connect(&db_url()).await;
    let locker = locker(3).await;
    let held = hold_many(&locker, "peak", 1_000).await;
    let cold: Vec<KeyId> = held.iter().map(|g| g.key().id()).collect();
    let by_pid = holders(&admin, &cold).await;
    assert_eq!(by_pid.len(), 1, "packed: {by_pid:?}");
    let packed_pid = *by_pid.keys().next().unwrap();
    drop(held);
    let left = advisory_locked_tests::wait_until_unlocked(
        &admin,
        &cold,
        std::time::Duration::from_secs(10),
    )
    .await;
    assert!(left.is_empty(), "not released: {} left", left.len());
    assert_eq!(locker.stats().keys, 0);

    // Taken the first time: packed into the session that held the 1,000
    // (it holds nothing now, as every session does).
    let hot = key("after-peak", 0);
    let pids = lock_again_and_again(&locker, &hot, 20).await;
    assert_eq!(pids[0], packed_pid, "a key taken the first time is packed");
    assert!(
        pids[1..].iter().all(|&p| p != packed_pid),
        "a released key leaves the session that held 1,000 locks: {pids:?} (that one: {packed_pid})"
    );
    assert!(
        pids[1..].windows(2).all(|w| w[0] == w[1]),
        "and stays: {pids:?}"
    );
    // New keys still pack where the 1,000 were.
    let more = hold_many(&locker, "peak-again", 10).await;
    let ids: Vec<KeyId> = more.iter().map(|g| g.key().id()).collect();
    let by_pid = holders(&admin, &ids).await;
    assert_eq!(by_pid.keys().copied().collect::<Vec<_>>(), vec![packed_pid]);
    drop(more);
}

/// The server process holding the lock of the annotated body running now.
#[advisory_locked(key = "lanes:scoped:{tag}", pool = "lanes-scoped")]
async fn scoped_holder(tag: &str, admin: &tokio_postgres::Client) -> i32 {
    let lock = advisory_locked::current_lock().expect("inside an annotated body");
    let on_server = advisory_locks(admin, &[lock.key().id()]).await;
    assert_eq!(on_server.len(), 1, "one holder: {on_server:?}");
    on_server[0].pid
}

/// A key taken by an annotated fn is released when its body ends: even
/// the first time, it runs on a light session, not in the one where
/// long-held locks are packed (whose every statement pays for them).
#[tokio::test]
async fn an_annotated_fns_new_key_runs_on_a_light_session() {
    let admin = raw_connect(&db_url()).await;
    LockConfig::from_url(&db_url())
        .unwrap()
        .name("lanes-scoped")
        .sessions(2)
        .install()
        .await
        .expect("install");
    let locker = advisory_locked::locker("lanes-scoped").unwrap();
    let held = hold_many(&locker, "scoped-cold", 300).await;
    let cold: Vec<KeyId> = held.iter().map(|g| g.key().id()).collect();
    let by_pid = holders(&admin, &cold).await;
    assert_eq!(by_pid.len(), 1, "packed: {by_pid:?}");
    let packed_pid = *by_pid.keys().next().unwrap();
    for i in 0..5 {
        let tag = unique(&format!("new-{i}"));
        let pid = match scoped_holder(&tag, &admin).await.unwrap() {
            Outcome::Ran(pid) => pid,
            Outcome::Skipped => panic!("a fresh key was busy"),
        };
        assert_ne!(
            pid, packed_pid,
            "call {i}: a new key of an annotated fn ran in the session holding 300 locks"
        );
    }
    // A new key taken through the Locker (tenure unknown) is still packed.
    let more = hold_many(&locker, "scoped-cold-again", 1).await;
    assert_eq!(more[0].backend_pid(), packed_pid);
    drop((more, held));
}

/// Many keys, each released and at once taken again in a tight loop while
/// the session it was on is full: each moves to a light session, and the
/// new lock must never reach the server before the unlock (it would be
/// refused as busy).
#[tokio::test]
async fn a_moving_key_never_overtakes_its_unlock() {
    let locker = locker(2).await;
    let held = hold_many(&locker, "fill", 200).await;
    for round in 0..100 {
        let k = key("move", round);
        // First taken: packed with the 200.
        let first = locker.try_lock(k.clone(), Mode::Exclusive).await.unwrap();
        let first = first.expect("fresh key busy");
        let full = first.backend_pid();
        drop(first);
        // Released (unlock queued, not answered) and taken again at once.
        let again = locker.try_lock(k.clone(), Mode::Exclusive).await.unwrap();
        let again = again.unwrap_or_else(|| {
            panic!("round {round}: taken again right after its release, the key was busy")
        });
        assert_ne!(again.backend_pid(), full, "round {round}: did not move");
        // Also in wait mode, released through `release()`.
        again.release().await.unwrap();
        let g = locker
            .lock(
                k.clone(),
                Mode::Exclusive,
                Some(std::time::Duration::from_secs(5)),
            )
            .await
            .unwrap();
        drop(g);
    }
    drop(held);
}

/// Shared holders of one process share one server lock; releasing them and
/// taking the key exclusively right away works on whatever session.
#[tokio::test]
async fn shared_then_exclusive_again_and_again() {
    let admin = raw_connect(&db_url()).await;
    let locker = locker(2).await;
    let held = hold_many(&locker, "bulk", 100).await;
    let k = key("sx", 0);
    for round in 0..30 {
        let a = locker.try_lock(k.clone(), Mode::Shared).await.unwrap();
        let b = locker.try_lock(k.clone(), Mode::Shared).await.unwrap();
        let (a, b) = (a.expect("shared busy"), b.expect("shared join busy"));
        assert_eq!(a.backend_pid(), b.backend_pid());
        drop(a);
        drop(b);
        let x = locker.try_lock(k.clone(), Mode::Exclusive).await.unwrap();
        let x =
            x.unwrap_or_else(|| panic!("round {round}: exclusive refused after shared release"));
        drop(x);
    }
    // Nothing of the hot key is left on the server once its unlock is in.
    let left = advisory_locked_tests::wait_until_unlocked(
        &admin,
        &[k.id()],
        std::time::Duration::from_secs(5),
    )
    .await;
    assert!(left.is_empty(), "leaked: {left:?}");
    drop(held);
}

/// Polls (bounded) until `role` has exactly `n` connections.
async fn until_connections_of(admin: &tokio_postgres::Client, role: &str, n: i64) {
    let count = format!("SELECT count(*) FROM pg_stat_activity WHERE usename = '{role}'");
    let start = std::time::Instant::now();
    while admin.query_one(&count, &[]).await.unwrap().get::<_, i64>(0) != n {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "{role} never had {n} connections"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A lane whose session can't connect (here: the role's connection limit is
/// reached) is not a dead end: the lock is taken on a live session.
#[tokio::test]
async fn a_slot_that_cannot_connect_is_passed_over() {
    let admin = raw_connect(&db_url()).await;
    let role = advisory_locked_tests::unique_ident("lanes_limited");
    admin
        .batch_execute(&format!("CREATE ROLE {role} LOGIN"))
        .await
        .unwrap();
    let url = {
        let mut pg: tokio_postgres::Config = db_url().parse().unwrap();
        pg.user(&role);
        pg
    };
    let locker = LockConfig::new(url)
        .name(unique("lanes-limited"))
        .sessions(2)
        .wait_sessions(0)
        .connect()
        .await
        .unwrap();
    // Only the first session is open; the configuration's probes are gone.
    until_connections_of(&admin, &role, 1).await;
    admin
        .batch_execute(&format!("ALTER ROLE {role} CONNECTION LIMIT 1"))
        .await
        .unwrap();
    // 20 held on the open session make a repeated key move to the other
    // slot, which can't connect.
    let held = hold_many(&locker, "limited", 20).await;
    let k = key("limited-hot", 0);
    let first = locker.try_lock(k.clone(), Mode::Exclusive).await.unwrap();
    drop(first.expect("fresh key busy"));
    let again = locker.try_lock(k.clone(), Mode::Exclusive).await;
    let again = again
        .expect("a lock failed although a live session could take it")
        .expect("busy");
    assert_eq!(again.backend_pid(), held[0].backend_pid());
    drop(again);
    drop(held);
    drop(locker);
    // The role goes once its session has closed.
    until_connections_of(&admin, &role, 0).await;
    admin
        .batch_execute(&format!("DROP ROLE {role}"))
        .await
        .unwrap();
}
