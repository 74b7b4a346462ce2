//! Requests queued together go out as one statement (two requests: a fixed
//! two-request statement; more: one `unnest` statement), and every kind of
//! request — exclusive/shared, 64-bit/pair key, lock/unlock/unlock+notify —
//! does exactly what its own single statement would.

use std::time::Duration;

use advisory_locked::{KeyId, LockConfig, LockGuard, LockKey, Locker, Mode};
use advisory_locked_tests::{advisory_locks, db_url, join_all, raw_connect, unique};

async fn one_session_locker() -> Locker {
    LockConfig::from_url(&db_url())
        .unwrap()
        .sessions(1)
        .connect()
        .await
        .unwrap()
}

/// Keys of both kinds, unique to this run.
fn keys(n: usize, tag: &str) -> Vec<LockKey> {
    let pid = std::process::id() as i32;
    (0..n)
        .map(|i| {
            if i % 2 == 0 {
                LockKey::named(unique(&format!("stmt:{tag}:{i}")))
            } else {
                // A pair key unique to this process and test.
                LockKey::pair(pid, (tag.len() * 1000 + i) as i32)
            }
        })
        .collect()
}

fn mode_of(i: usize) -> Mode {
    if i.is_multiple_of(3) {
        Mode::Shared
    } else {
        Mode::Exclusive
    }
}

/// Takes `keys` with requests queued in the same turn, so the dispatcher
/// finds them all at once.
async fn take_together(locker: &Locker, keys: &[LockKey]) -> Vec<LockGuard> {
    let futs: Vec<_> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let locker = locker.clone();
            let k = k.clone();
            async move { locker.try_lock(k, mode_of(i)).await }
        })
        .collect();
    let mut out = Vec::new();
    for r in join_all(futs).await {
        out.push(r.unwrap().expect("a free key was busy"));
    }
    out
}

async fn check_held(keys: &[LockKey], guards: &[LockGuard]) {
    let client = raw_connect(&db_url()).await;
    let ids: Vec<KeyId> = keys.iter().map(|k| k.id()).collect();
    let locks = advisory_locks(&client, &ids).await;
    assert_eq!(locks.len(), keys.len(), "{locks:?}");
    for (i, k) in keys.iter().enumerate() {
        let l = locks
            .iter()
            .find(|l| l.key == k.id())
            .expect("key not held");
        let want = match mode_of(i) {
            Mode::Shared => "ShareLock",
            Mode::Exclusive => "ExclusiveLock",
        };
        assert_eq!(l.mode, want, "{k}");
        assert!(l.granted);
        assert_eq!(l.pid, guards[i].backend_pid());
    }
}

async fn check_free(keys: &[LockKey]) {
    let client = raw_connect(&db_url()).await;
    let ids: Vec<KeyId> = keys.iter().map(|k| k.id()).collect();
    let left = advisory_locks(&client, &ids).await;
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn two_requests_share_one_statement() {
    let locker = one_session_locker().await;
    let keys = keys(2, "two");
    let before = locker.stats();
    let guards = take_together(&locker, &keys).await;
    let after = locker.stats();
    assert_eq!(after.lock_requests - before.lock_requests, 2);
    assert_eq!(after.statements - before.statements, 1, "{after:?}");
    check_held(&keys, &guards).await;

    // Two answered releases at once: one statement again.
    let before = locker.stats();
    let releases: Vec<_> = guards.into_iter().map(|g| g.release()).collect();
    for r in join_all(releases).await {
        r.unwrap();
    }
    let after = locker.stats();
    assert_eq!(after.statements - before.statements, 1, "{after:?}");
    assert_eq!(after.released - before.released, 2);
    check_free(&keys).await;
}

#[tokio::test(flavor = "current_thread")]
async fn many_requests_share_one_statement() {
    let locker = one_session_locker().await;
    let keys = keys(24, "many");
    let before = locker.stats();
    let guards = take_together(&locker, &keys).await;
    let after = locker.stats();
    assert_eq!(after.lock_requests - before.lock_requests, 24);
    assert_eq!(after.statements - before.statements, 1, "{after:?}");
    check_held(&keys, &guards).await;

    // The same keys again: busy in this process, no statement at all.
    for (i, k) in keys.iter().enumerate() {
        if mode_of(i) == Mode::Exclusive {
            assert!(locker
                .try_lock(k.clone(), Mode::Exclusive)
                .await
                .unwrap()
                .is_none());
        }
    }
    assert_eq!(locker.stats().statements, after.statements);

    let releases: Vec<_> = guards.into_iter().map(|g| g.release()).collect();
    for r in join_all(releases).await {
        r.unwrap();
    }
    assert_eq!(locker.stats().statements - after.statements, 1);
    check_free(&keys).await;
}

#[tokio::test(flavor = "current_thread")]
async fn wait_mode_releases_notify_from_a_shared_statement() {
    // Two waiters on another Locker (another "process"); both holders
    // release in one statement with notification; both waiters wake at once.
    let holder = one_session_locker().await;
    let waiter = one_session_locker().await;
    let keys = keys(2, "notify");
    let mut guards = Vec::new();
    for k in &keys {
        guards.push(holder.lock(k.clone(), Mode::Exclusive, None).await.unwrap());
    }
    let waits: Vec<_> = keys
        .iter()
        .map(|k| {
            let (w, k) = (waiter.clone(), k.clone());
            tokio::spawn(async move {
                let g = w
                    .lock(k, Mode::Exclusive, Some(Duration::from_secs(10)))
                    .await
                    .unwrap();
                let at = std::time::Instant::now();
                drop(g);
                at
            })
        })
        .collect();
    // Let the waiters' backoff grow past 100 ms.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let before = holder.stats();
    let released = std::time::Instant::now();
    let releases: Vec<_> = guards.into_iter().map(|g| g.release()).collect();
    for r in join_all(releases).await {
        r.unwrap();
    }
    assert_eq!(holder.stats().statements - before.statements, 1);
    for w in waits {
        let at = w.await.unwrap();
        let late = at.saturating_duration_since(released);
        assert!(
            late < Duration::from_millis(60),
            "not woken by the notification: {late:?}"
        );
    }
    check_free(&keys).await;
}

/// Each lock statement is prepared alone: the text a server session shows
/// (and reads at every Bind and Execute) is the running statement's own
/// `PREPARE`, not a batch of every statement of the session.
#[tokio::test(flavor = "current_thread")]
async fn each_statement_is_prepared_alone() {
    let locker = one_session_locker().await;
    let key = LockKey::named(unique("stmt:prepared-alone"));
    let guard = locker
        .try_lock(key, Mode::Exclusive)
        .await
        .unwrap()
        .expect("a free key was busy");
    let pid = guard.backend_pid();
    let observer = raw_connect(&db_url()).await;
    let row = observer
        .query_one(
            "SELECT query, octet_length(query) FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .await
        .unwrap();
    let (query, bytes): (String, i32) = (row.get(0), row.get(1));
    guard.release().await.unwrap();
    assert!(
        query.starts_with("PREPARE ") && query.contains("pg_try_advisory_lock"),
        "the session shows {query:?}"
    );
    assert_eq!(
        query.matches("PREPARE ").count(),
        1,
        "more than one statement in {query:?}"
    );
    assert!(bytes < 1000, "the statement's text is {bytes} bytes");
}
