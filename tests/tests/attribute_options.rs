//! The attribute's `limit`, `per` and `transaction` options end to end,
//! against the real server (their runtimes are tested in limits.rs and
//! transaction.rs through the same entry points).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use advisory_locked::{advisory_locked, LockConfig, Outcome};
use advisory_locked_tests::{db_url, raw_connect, unique, ScratchTable};
use tokio::sync::Semaphore;

async fn install() {
    // One entry for the whole file; the first test to get here installs it.
    static ONCE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    ONCE.get_or_init(|| async {
        LockConfig::from_url(&db_url())
            .unwrap()
            .name("options")
            .install()
            .await
            .expect("install");
    })
    .await;
}

/// A body that counts itself in, then stays until the test opens `gate`.
#[advisory_locked(key = "{key}", limit = 2, wait = "20s", pool = "options")]
async fn limited(key: &str, inside: &AtomicUsize, most: &AtomicUsize, gate: &Semaphore) {
    let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
    most.fetch_max(now, Ordering::SeqCst);
    gate.acquire()
        .await
        .expect("the gate is never closed")
        .forget();
    inside.fetch_sub(1, Ordering::SeqCst);
}

/// Polls `done` every 5 ms until it holds, at most 20 s; panics with `what`.
async fn until(what: &str, done: impl FnMut() -> bool) {
    advisory_locked_tests::until(what, Duration::from_secs(20), done).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_lets_n_bodies_run_at_once() {
    install().await;
    let entry = advisory_locked::locker("options").unwrap();
    let key = unique("opt:limit");
    let inside = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let refused = || {
        let s = entry.stats();
        s.busy + s.local_busy
    };
    let refused_before = refused();
    let calls: Vec<_> = (0..6)
        .map(|_| {
            let (key, inside, most, gate) =
                (key.clone(), inside.clone(), most.clone(), gate.clone());
            tokio::spawn(async move { limited(&key, &inside, &most, &gate).await })
        })
        .collect();
    // Two bodies get in and stay; the other four find both slots taken
    // (each refusal is counted) and must not get in while they stay.
    until("two bodies never ran at once", || {
        inside.load(Ordering::SeqCst) >= 2
    })
    .await;
    until("the other calls never found the slots taken", || {
        refused() - refused_before >= 8
    })
    .await;
    assert_eq!(inside.load(Ordering::SeqCst), 2, "a third body got in");
    gate.add_permits(6);
    for c in calls {
        tokio::time::timeout(Duration::from_secs(30), c)
            .await
            .expect("a call hung")
            .unwrap()
            .expect("every call runs");
    }
    assert_eq!(most.load(Ordering::SeqCst), 2, "exactly 2 at once");
}

#[advisory_locked(key = "{key}", limit = 1, per = "400ms", pool = "options")]
async fn rated(key: &str) {}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_keeps_the_slot_for_the_period() {
    install().await;
    let key = unique("opt:per");
    assert!(rated(&key).await.unwrap().is_ran());
    // The call returned, but its slot is held until 400 ms after it started.
    assert!(rated(&key).await.unwrap().is_skipped());
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(rated(&key).await.unwrap().is_ran());
}

#[advisory_locked(key = "{key}", transaction = tx, pool = "options")]
async fn insert(key: &str, table: &str, fail: bool) -> Result<u64, String> {
    let n = tx
        .execute(&format!("INSERT INTO {table} (k) VALUES ($1)"), &[&key])
        .await
        .map_err(|e| e.to_string())?;
    if fail {
        return Err("rolled back".to_owned());
    }
    Ok(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_commits_on_ok_and_rolls_back_on_err() {
    install().await;
    let admin = raw_connect(&db_url()).await;
    let table = ScratchTable::create(&admin, "opt_tx", "(k text NOT NULL)").await;
    let key = unique("opt:tx");
    assert_eq!(
        insert(&key, &table.name, false).await.unwrap(),
        Outcome::Ran(Ok(1))
    );
    assert_eq!(
        insert(&key, &table.name, true).await.unwrap(),
        Outcome::Ran(Err("rolled back".to_owned()))
    );
    let rows: i64 = admin
        .query_one(&format!("SELECT count(*) FROM {}", table.name), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 1, "the Ok body committed, the Err body rolled back");
    // Busy: a raw session holding the key makes the transaction call skip.
    advisory_locked_tests::pg_lock(
        &admin,
        advisory_locked_tests::named(&key),
        advisory_locked::Mode::Exclusive,
    )
    .await;
    assert!(insert(&key, &table.name, false).await.unwrap().is_skipped());
}
