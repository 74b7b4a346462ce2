//! Transaction scope (`#[advisory_locked(key = …, transaction = tx)]`),
//! against a real server and a real pgbouncer in transaction pooling mode.
//!
//! The attribute is not used here: the tests call
//! `advisory_locked::__private::run_tx_skip` / `run_tx_wait` with a `Spec`,
//! which is exactly what the attribute emits for `transaction = tx`.
//!
//! "Another holder" is a plain tokio-postgres connection holding the session
//! or the transaction-level lock (another session, as another process would
//! be), or another task of this process.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use advisory_locked::__private::{run_skip, run_tx_skip, run_tx_wait, Wait};
use advisory_locked::{
    key_hash, Error, KeyId, LockConfig, LockKey, Mode, OnLost, Outcome, Transaction,
};
use advisory_locked_tests::transaction::{
    install_tx, median_max_us, poll_until, pool_name, record_hold, rows_of, spec, Inside,
};
use advisory_locked_tests::{
    advisory_locks, db_url, db_url_with_app, hold_stats, pg_lock, pg_unlock, raw_connect,
    sessions_named, terminate_backend, unique, unique_ident, wait_until_unlocked, Pgbouncer,
    ScratchTable, HOLDS_COLUMNS,
};
use tokio::sync::{oneshot, Barrier};
use tokio_postgres::types::Type;
use tokio_postgres::Client;

const SETTLE: Duration = Duration::from_secs(5);
const KEY_COLUMNS: &str = "(id bigserial PRIMARY KEY, key text NOT NULL)";

fn pair_key(name: &str) -> LockKey {
    let n = key_hash(name);
    LockKey::pair((n >> 32) as i32, n as i32)
}

/// Takes `key` as a transaction-level lock on `client` inside an open
/// transaction (`BEGIN` first); `COMMIT` on the client ends it.
async fn raw_xact_lock(client: &Client, key: KeyId) {
    client.batch_execute("BEGIN").await.expect("BEGIN");
    match key {
        KeyId::Int(k) => client
            .execute("SELECT pg_advisory_xact_lock($1::int8)", &[&k])
            .await
            .expect("xact lock"),
        KeyId::Pair(a, b) => client
            .execute(
                "SELECT pg_advisory_xact_lock($1::int4, $2::int4)",
                &[&a, &b],
            )
            .await
            .expect("xact lock"),
    };
}

/// True once some session waits (not granted) for `key`.
async fn someone_waits(admin: &Client, key: KeyId) -> bool {
    advisory_locks(admin, &[key])
        .await
        .iter()
        .any(|l| !l.granted)
}

/// A body that inserts one row of `key` into `table` in its transaction.
async fn insert_row(tx: &Transaction, table: &str, key: &str) -> Result<(), tokio_postgres::Error> {
    tx.query_typed(
        &format!("INSERT INTO {table} (key) VALUES ($1)"),
        &[(&key, Type::TEXT)],
    )
    .await
    .map(drop)
}

// ---- exclusion ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_tasks_never_run_two_bodies_at_once() {
    let pool = pool_name("tx-excl");
    install_tx(pool, &db_url(), 8, false).await;
    let admin = raw_connect(&db_url()).await;
    let holds = ScratchTable::create(&admin, "tx_holds", HOLDS_COLUMNS).await;
    let key = unique("tx-excl");
    let inside = Arc::new(Inside::default());
    let (tasks_n, rounds) = (6, 10);
    let mut tasks = Vec::new();
    for t in 0..tasks_n {
        let (inside, table, key) = (inside.clone(), holds.name.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            let (mut ran, mut skipped) = (0, 0);
            for round in 0..rounds {
                let (inside, table, k) = (inside.clone(), table.clone(), key.clone());
                let body = move |tx: Transaction| async move {
                    let _in = inside.enter();
                    record_hold(&tx, &table, &k, round, false, Duration::from_millis(3)).await
                };
                let lock_key = LockKey::named(key.clone());
                if t % 2 == 0 {
                    match run_tx_skip(spec(pool, Mode::Exclusive), lock_key, body).await {
                        Ok(Outcome::Ran(Ok(()))) => ran += 1,
                        Ok(Outcome::Skipped) => skipped += 1,
                        other => panic!("skip call failed: {other:?}"),
                    }
                } else {
                    let wait = Wait::Timeout(Duration::from_secs(20));
                    run_tx_wait(spec(pool, Mode::Exclusive), wait, lock_key, body)
                        .await
                        .expect("lock machinery")
                        .expect("body");
                    ran += 1;
                }
            }
            (ran, skipped)
        }));
    }
    let (mut ran, mut skipped) = (0, 0);
    for t in tasks {
        let (r, s) = t.await.expect("task");
        ran += r;
        skipped += s;
    }
    let stats = hold_stats(&admin, &holds.name).await;
    eprintln!("transaction scope, {tasks_n} tasks x {rounds} rounds: ran {ran}, skipped {skipped}, {stats:?}");
    assert_eq!(inside.max(), 1, "two bodies ran at once");
    assert_eq!(ran, inside.entered());
    assert!(
        ran >= (tasks_n / 2 * rounds) as usize,
        "every wait-mode call runs"
    );
    assert_eq!(stats.rows, ran as i64, "every body's row committed");
    assert_eq!(stats.conflicting_overlaps, 0, "{stats:?}");
    assert!(
        wait_until_unlocked(&admin, &[LockKey::named(key).id()], SETTLE)
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn a_holder_elsewhere_makes_skip_skip_for_both_key_spaces() {
    let pool = pool_name("tx-elsewhere");
    install_tx(pool, &db_url(), 4, false).await;
    let raw = raw_connect(&db_url()).await;
    for key in [
        LockKey::named(unique("tx-else")),
        pair_key(&unique("tx-else-pair")),
    ] {
        let ran = Arc::new(AtomicBool::new(false));
        let call = || {
            let ran = ran.clone();
            run_tx_skip(
                spec(pool, Mode::Exclusive),
                key.clone(),
                move |_tx| async move {
                    ran.store(true, Ordering::SeqCst);
                },
            )
        };
        // A session lock of another connection.
        pg_lock(&raw, key.id(), Mode::Exclusive).await;
        assert_eq!(call().await.unwrap(), Outcome::Skipped, "{key}");
        assert!(pg_unlock(&raw, key.id(), Mode::Exclusive).await);
        // A transaction-level lock of another connection.
        raw_xact_lock(&raw, key.id()).await;
        assert_eq!(call().await.unwrap(), Outcome::Skipped, "{key}");
        assert!(!ran.load(Ordering::SeqCst), "a skipped body ran");
        raw.batch_execute("COMMIT").await.unwrap();
        assert_eq!(call().await.unwrap(), Outcome::Ran(()), "{key}");
        assert!(ran.load(Ordering::SeqCst));
        // And the lock is gone with the transaction.
        assert!(wait_until_unlocked(&raw, &[key.id()], SETTLE)
            .await
            .is_empty());
    }
}

// ---- wait ---------------------------------------------------------------------

#[tokio::test]
async fn wait_times_out_then_runs_when_freed() {
    let pool = pool_name("tx-wait");
    let app = unique_ident("txwait");
    install_tx(pool, &db_url_with_app(&app), 4, true).await;
    let raw = raw_connect(&db_url()).await;
    let key = LockKey::named(unique("tx-wait"));
    pg_lock(&raw, key.id(), Mode::Exclusive).await;
    let limit = Duration::from_millis(300);
    let start = Instant::now();
    let result = run_tx_wait(
        spec(pool, Mode::Exclusive),
        Wait::Timeout(limit),
        key.clone(),
        |_tx| async {
            panic!("ran while the key was held elsewhere");
            #[allow(unreachable_code)]
            ()
        },
    )
    .await;
    let took = start.elapsed();
    eprintln!("transaction-scope wait timeout {limit:?}: gave up after {took:?}");
    match result {
        Err(Error::WaitTimeout { key: k, waited }) => {
            assert_eq!(k, key.name());
            assert!(waited >= limit - Duration::from_millis(5), "{waited:?}");
        }
        other => panic!("expected WaitTimeout, got {other:?}"),
    }
    assert!(took < limit + Duration::from_secs(2), "{took:?}");
    // Nobody waits any more; only the raw holder's lock is left.
    let admin = raw_connect(&db_url()).await;
    assert!(poll_until(SETTLE, || async { !someone_waits(&admin, key.id()).await }).await);
    // The timed-out transaction was rolled back and its connection kept.
    assert!(poll_until(SETTLE, || async { sessions_named(&admin, &app).await == 1 }).await);

    // Wait without a timeout; freed 200 ms later.
    let waiter = tokio::spawn({
        let key = key.clone();
        async move {
            let start = Instant::now();
            run_tx_wait(
                spec(pool, Mode::Exclusive),
                Wait::Forever,
                key,
                |tx| async move {
                    // The body runs with the session's own timeouts, not the wait's.
                    let rows = tx
                        .simple_query("SHOW lock_timeout")
                        .await
                        .map_err(|e| e.to_string())?;
                    let shown = rows.iter().find_map(|m| match m {
                        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                        _ => None,
                    });
                    if shown.as_deref() != Some("0") {
                        return Err(format!("lock_timeout in the body: {shown:?}"));
                    }
                    Ok::<_, String>(start.elapsed())
                },
            )
            .await
        }
    });
    assert!(poll_until(SETTLE, || async { someone_waits(&admin, key.id()).await }).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(pg_unlock(&raw, key.id(), Mode::Exclusive).await);
    let waited = waiter
        .await
        .unwrap()
        .expect("lock machinery")
        .expect("body");
    assert!(waited >= Duration::from_millis(200), "{waited:?}");
    assert_eq!(
        sessions_named(&admin, &app).await,
        1,
        "the connection is reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handover_to_a_waiter_on_commit() {
    let pool = pool_name("tx-handover");
    install_tx(pool, &db_url(), 4, true).await;
    let admin = raw_connect(&db_url()).await;
    let raw = raw_connect(&db_url()).await;
    let key = LockKey::named(unique("tx-handover"));
    let rounds = 10;

    // Holder: a raw connection's transaction; handover = its COMMIT sent
    // until the waiter's body starts.
    let mut from_raw = Vec::new();
    for _ in 0..rounds {
        raw_xact_lock(&raw, key.id()).await;
        let waiter = tokio::spawn(run_tx_wait(
            spec(pool, Mode::Exclusive),
            Wait::Timeout(Duration::from_secs(20)),
            key.clone(),
            |_tx| async { Ok::<_, ()>(Instant::now()) },
        ));
        assert!(poll_until(SETTLE, || async { someone_waits(&admin, key.id()).await }).await);
        let committed = Instant::now();
        raw.batch_execute("COMMIT").await.unwrap();
        let started = waiter.await.unwrap().expect("lock machinery").unwrap();
        from_raw.push(started.saturating_duration_since(committed));
    }

    // Holder: another transaction-scope call; handover = its body's return
    // (then its COMMIT) until the waiter's body starts.
    let mut from_call = Vec::new();
    for _ in 0..rounds {
        let (entered_tx, entered) = oneshot::channel();
        let admin2 = raw_connect(&db_url()).await;
        let id = key.id();
        let holder = tokio::spawn(run_tx_wait(
            spec(pool, Mode::Exclusive),
            Wait::Timeout(Duration::from_secs(20)),
            key.clone(),
            move |_tx| async move {
                let _ = entered_tx.send(());
                // Until the waiter waits for us.
                assert!(poll_until(SETTLE, || async { someone_waits(&admin2, id).await }).await);
                Ok::<_, ()>(Instant::now())
            },
        ));
        entered.await.unwrap();
        let waiter = run_tx_wait(
            spec(pool, Mode::Exclusive),
            Wait::Timeout(Duration::from_secs(20)),
            key.clone(),
            |_tx| async { Ok::<_, ()>(Instant::now()) },
        )
        .await
        .expect("lock machinery")
        .unwrap();
        let released = holder.await.unwrap().expect("lock machinery").unwrap();
        assert!(waiter > released);
        from_call.push(waiter - released);
    }
    let (m1, x1) = median_max_us(from_raw);
    let (m2, x2) = median_max_us(from_call);
    eprintln!("transaction-scope handover ({rounds} rounds): raw holder COMMIT -> waiter body median {m1} us, max {x1} us; call body end -> next call body median {m2} us, max {x2} us");
    assert!(wait_until_unlocked(&admin, &[key.id()], SETTLE)
        .await
        .is_empty());
}

// ---- commit semantics -------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_is_held_until_the_commit() {
    let pool = pool_name("tx-until");
    install_tx(pool, &db_url(), 4, false).await;
    let admin = raw_connect(&db_url()).await;
    let table = ScratchTable::create(&admin, "tx_until", KEY_COLUMNS).await;
    for commit in [true, false] {
        let key = unique("tx-until");
        let (inserted_tx, inserted) = oneshot::channel();
        let first = tokio::spawn({
            let (t, k) = (table.name.clone(), key.clone());
            run_tx_wait(
                spec(pool, Mode::Exclusive),
                Wait::Forever,
                LockKey::named(key.clone()),
                move |tx| async move {
                    insert_row(&tx, &t, &k).await.unwrap();
                    let _ = inserted_tx.send(());
                    tokio::time::sleep(Duration::from_millis(150)).await;
                    if commit {
                        Ok(())
                    } else {
                        Err("the body failed")
                    }
                },
            )
        });
        inserted.await.unwrap();
        // The contender waits for the lock, then looks for the row.
        let (t, k) = (table.name.clone(), key.clone());
        let seen = run_tx_wait(
            spec(pool, Mode::Exclusive),
            Wait::Timeout(Duration::from_secs(10)),
            LockKey::named(key.clone()),
            move |tx| async move {
                let n: i64 = tx
                    .query_typed_one(
                        &format!("SELECT count(*) FROM {t} WHERE key = $1"),
                        &[(&k, Type::TEXT)],
                    )
                    .await?
                    .get(0);
                Ok::<_, tokio_postgres::Error>(n)
            },
        )
        .await
        .expect("lock machinery")
        .expect("count");
        let first = first.await.unwrap().expect("lock machinery");
        if commit {
            assert_eq!(first, Ok(()));
            assert_eq!(seen, 1, "the contender must see the committed row");
        } else {
            assert_eq!(
                first,
                Err("the body failed"),
                "the body's error is passed through"
            );
            assert_eq!(seen, 0, "a rolled-back row must not be seen");
        }
        assert_eq!(rows_of(&admin, &table.name, &key).await, seen);
    }
}

#[tokio::test]
async fn ok_commits_err_rolls_back_and_failed_transactions_are_errors() {
    let pool = pool_name("tx-commit");
    install_tx(pool, &db_url(), 4, false).await;
    let admin = raw_connect(&db_url()).await;
    let table = ScratchTable::create(&admin, "tx_commit", KEY_COLUMNS).await;
    let t = table.name.clone();
    let skip = || spec(pool, Mode::Exclusive);

    // Ok commits.
    let k = unique("ok");
    let (t2, k2) = (t.clone(), k.clone());
    let r = run_tx_skip(skip(), LockKey::named(k.clone()), move |tx| async move {
        insert_row(&tx, &t2, &k2).await
    })
    .await;
    assert!(matches!(r, Ok(Outcome::Ran(Ok(())))), "{r:?}");
    assert_eq!(rows_of(&admin, &t, &k).await, 1);

    // () commits.
    let k = unique("unit");
    let (t2, k2) = (t.clone(), k.clone());
    let r = run_tx_skip(skip(), LockKey::named(k.clone()), move |tx| async move {
        insert_row(&tx, &t2, &k2).await.unwrap();
    })
    .await;
    assert_eq!(r.unwrap(), Outcome::Ran(()));
    assert_eq!(rows_of(&admin, &t, &k).await, 1);

    // Err rolls back, and the error is the body's.
    let k = unique("err");
    let (t2, k2) = (t.clone(), k.clone());
    let r = run_tx_skip(skip(), LockKey::named(k.clone()), move |tx| async move {
        insert_row(&tx, &t2, &k2).await.unwrap();
        Err::<(), _>(7)
    })
    .await;
    assert_eq!(r.unwrap(), Outcome::Ran(Err(7)));
    assert_eq!(rows_of(&admin, &t, &k).await, 0);

    // A statement failed but the body returned Ok: PostgreSQL rolls back.
    let k = unique("aborted");
    let (t2, k2) = (t.clone(), k.clone());
    let r = run_tx_skip(skip(), LockKey::named(k.clone()), move |tx| async move {
        insert_row(&tx, &t2, &k2).await.unwrap();
        let failed = tx.simple_query("SELECT 1/0").await;
        assert!(failed.is_err());
        Ok::<_, ()>(())
    })
    .await;
    match r {
        Err(Error::Transaction {
            key,
            reason,
            source,
        }) => {
            assert_eq!(key, k);
            assert!(reason.contains("had failed"), "{reason}");
            assert!(source.is_some());
        }
        other => panic!("expected Error::Transaction, got {other:?}"),
    }
    assert_eq!(rows_of(&admin, &t, &k).await, 0);

    // The body committed itself and went on in a new transaction: what it
    // ran after its own COMMIT is rolled back, and the call says so.
    let k = unique("self-commit");
    let (t2, k2) = (t.clone(), k.clone());
    let r = run_tx_skip(skip(), LockKey::named(k.clone()), move |tx| async move {
        tx.batch_execute("COMMIT; BEGIN").await.unwrap();
        insert_row(&tx, &t2, &k2).await.unwrap();
        Ok::<_, ()>(())
    })
    .await;
    match &r {
        Err(Error::Transaction { reason, .. }) => {
            assert!(reason.contains("ended the transaction itself"), "{reason}")
        }
        other => panic!("expected Error::Transaction, got {other:?}"),
    }
    eprintln!("{}", r.unwrap_err());
    assert_eq!(rows_of(&admin, &t, &k).await, 0);
}

// ---- shared mode ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_holders_run_together_and_exclude_exclusive() {
    let pool = pool_name("tx-shared");
    install_tx(pool, &db_url(), 6, false).await;
    let admin = raw_connect(&db_url()).await;
    let key = LockKey::named(unique("tx-shared"));
    let barrier = Arc::new(Barrier::new(2));
    let (release_tx, release) = tokio::sync::watch::channel(false);
    let shared_call = |b: Arc<Barrier>, mut release: tokio::sync::watch::Receiver<bool>| {
        run_tx_skip(
            spec(pool, Mode::Shared),
            key.clone(),
            move |tx| async move {
                assert_eq!(tx.mode(), Mode::Shared);
                // Both shared bodies inside at once, or this times out.
                let together = tokio::time::timeout(SETTLE, b.wait()).await.is_ok();
                let _ = tokio::time::timeout(SETTLE, release.wait_for(|r| *r)).await;
                Ok::<_, ()>(together)
            },
        )
    };
    let a = tokio::spawn(shared_call(barrier.clone(), release.clone()));
    let b = tokio::spawn(shared_call(barrier.clone(), release.clone()));
    assert!(
        poll_until(SETTLE, || async {
            advisory_locks(&admin, &[key.id()])
                .await
                .iter()
                .filter(|l| l.granted && l.mode == "ShareLock")
                .count()
                == 2
        })
        .await,
        "two shared transaction locks must show in pg_locks"
    );
    // Exclusive, meanwhile: busy.
    let excl = run_tx_skip(spec(pool, Mode::Exclusive), key.clone(), |_tx| async {}).await;
    assert_eq!(excl.unwrap(), Outcome::Skipped);
    release_tx.send(true).unwrap();
    assert_eq!(a.await.unwrap().unwrap(), Outcome::Ran(Ok(true)));
    assert_eq!(b.await.unwrap().unwrap(), Outcome::Ran(Ok(true)));

    // An exclusive holder elsewhere: shared skips.
    let raw = raw_connect(&db_url()).await;
    pg_lock(&raw, key.id(), Mode::Exclusive).await;
    let r = run_tx_skip(spec(pool, Mode::Shared), key.clone(), |_tx| async {}).await;
    assert_eq!(r.unwrap(), Outcome::Skipped);
    // A shared holder elsewhere: shared runs.
    assert!(pg_unlock(&raw, key.id(), Mode::Exclusive).await);
    pg_lock(&raw, key.id(), Mode::Shared).await;
    let r = run_tx_skip(spec(pool, Mode::Shared), key.clone(), |_tx| async {}).await;
    assert_eq!(r.unwrap(), Outcome::Ran(()));
    assert!(pg_unlock(&raw, key.id(), Mode::Shared).await);
    assert!(wait_until_unlocked(&admin, &[key.id()], SETTLE)
        .await
        .is_empty());
}

// ---- dropped futures ----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_call_mid_wait_leaves_no_lock_or_waiter() {
    let pool = pool_name("tx-dropwait");
    install_tx(pool, &db_url(), 4, false).await;
    let admin = raw_connect(&db_url()).await;
    let raw = raw_connect(&db_url()).await;
    for wait in [Wait::Forever, Wait::Timeout(Duration::from_secs(60))] {
        let key = LockKey::named(unique("tx-dropwait"));
        pg_lock(&raw, key.id(), Mode::Exclusive).await;
        let ran = Arc::new(AtomicBool::new(false));
        let r2 = ran.clone();
        let call = tokio::spawn(run_tx_wait(
            spec(pool, Mode::Exclusive),
            wait,
            key.clone(),
            move |_tx| async move {
                r2.store(true, Ordering::SeqCst);
            },
        ));
        assert!(poll_until(SETTLE, || async { someone_waits(&admin, key.id()).await }).await);
        let dropped = Instant::now();
        call.abort();
        assert!(call.await.unwrap_err().is_cancelled());
        // The server-side wait is cancelled: no waiter left, while the key
        // is still held by the raw connection.
        assert!(
            poll_until(SETTLE, || async { !someone_waits(&admin, key.id()).await }).await,
            "the dropped call still waits on the server"
        );
        let gone = dropped.elapsed();
        eprintln!(
            "transaction-scope wait ({wait:?}) dropped: server-side waiter gone after {gone:?}"
        );
        assert!(pg_unlock(&raw, key.id(), Mode::Exclusive).await);
        assert!(wait_until_unlocked(&admin, &[key.id()], SETTLE)
            .await
            .is_empty());
        assert!(!ran.load(Ordering::SeqCst), "the dropped call's body ran");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_call_mid_body_rolls_back_and_frees_the_lock() {
    let pool = pool_name("tx-dropbody");
    install_tx(pool, &db_url(), 4, false).await;
    let admin = raw_connect(&db_url()).await;
    let table = ScratchTable::create(&admin, "tx_dropbody", KEY_COLUMNS).await;
    // The body awaits something else (idle in transaction), or is inside a
    // long statement on the server (the cancel request ends it).
    for in_statement in [false, true] {
        let k = unique("tx-dropbody");
        let key = LockKey::named(k.clone());
        let (inside_tx, inside) = oneshot::channel();
        let (t, k2) = (table.name.clone(), k.clone());
        let call = tokio::spawn(run_tx_skip(
            spec(pool, Mode::Exclusive),
            key.clone(),
            move |tx| async move {
                insert_row(&tx, &t, &k2).await.unwrap();
                let _ = inside_tx.send(());
                if in_statement {
                    let _ = tx.simple_query("SELECT pg_sleep(60)").await;
                } else {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
                Ok::<_, ()>(())
            },
        ));
        inside.await.unwrap();
        assert_eq!(
            advisory_locks(&admin, &[key.id()]).await.len(),
            1,
            "held while the body runs"
        );
        let dropped = Instant::now();
        call.abort();
        let left = wait_until_unlocked(&admin, &[key.id()], SETTLE).await;
        let gone = dropped.elapsed();
        eprintln!("transaction-scope body dropped (in a server statement: {in_statement}): lock gone after {gone:?}");
        assert!(left.is_empty(), "lock left after the drop: {left:?}");
        assert_eq!(
            rows_of(&admin, &table.name, &k).await,
            0,
            "a dropped body's write committed"
        );
        // Free for the next caller.
        let r = run_tx_skip(spec(pool, Mode::Exclusive), key, |_tx| async {}).await;
        assert_eq!(r.unwrap(), Outcome::Ran(()));
    }
    // Dropped by a timeout around the call, as a caller would.
    let key = LockKey::named(unique("tx-droptimeout"));
    let r = tokio::time::timeout(
        Duration::from_millis(100),
        run_tx_skip(spec(pool, Mode::Exclusive), key.clone(), |_tx| async {
            tokio::time::sleep(Duration::from_secs(60)).await;
        }),
    )
    .await;
    assert!(r.is_err());
    assert!(wait_until_unlocked(&admin, &[key.id()], SETTLE)
        .await
        .is_empty());
}

// ---- connections ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_reused_bounded_and_never_reused_after_a_leak() {
    let pool = pool_name("tx-reuse");
    let app = unique_ident("txreuse");
    let max = 3;
    install_tx(pool, &db_url_with_app(&app), max, true).await;
    let admin = raw_connect(&db_url()).await;
    let count = || sessions_named(&admin, &app);
    // The check connection of transaction_scope_only is closed.
    assert!(poll_until(SETTLE, || async { count().await == 0 }).await);

    let key = || LockKey::named(unique("tx-reuse"));
    let skip = || spec(pool, Mode::Exclusive);
    for i in 0..20 {
        let r = run_tx_skip(skip(), key(), move |_tx| async move {
            if i % 2 == 0 {
                Ok(())
            } else {
                Err(())
            }
        })
        .await;
        assert!(r.unwrap().is_ran());
    }
    assert_eq!(
        count().await,
        1,
        "sequential calls (commits and rollbacks) share one connection"
    );

    // Concurrent calls: at most `max` connections, kept afterwards.
    let inside = Arc::new(Inside::default());
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let inside = inside.clone();
            tokio::spawn(run_tx_skip(skip(), key(), move |_tx| async move {
                let _in = inside.enter();
                // The first `max` bodies stay until `max` are inside at once.
                let full = poll_until(SETTLE, || async { inside.entered() >= max }).await;
                assert!(full, "{max} bodies never ran at once");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }))
        })
        .collect();
    for c in calls {
        assert_eq!(c.await.unwrap().unwrap(), Outcome::Ran(()));
    }
    eprintln!(
        "8 concurrent calls with transaction_connections({max}): at most {} bodies at once",
        inside.max()
    );
    assert_eq!(inside.max(), max);
    assert_eq!(count().await, max as i64);

    // A handle that outlives its body: the call fails, the connection is
    // closed, and the leaked handle can't run anything.
    let (leaked_tx, leaked) = oneshot::channel::<Transaction>();
    let r = run_tx_skip(skip(), key(), move |tx| async move {
        let _ = leaked_tx.send(tx);
        Ok::<_, ()>(())
    })
    .await;
    match &r {
        Err(Error::Transaction { reason, .. }) => assert!(reason.contains("outlived"), "{reason}"),
        other => panic!("expected Error::Transaction, got {other:?}"),
    }
    let tx = leaked.await.unwrap();
    assert!(
        poll_until(SETTLE, || async { tx.is_closed() }).await,
        "a leaked handle's connection stays open"
    );
    assert!(tx.simple_query("SELECT 1").await.is_err());
    assert!(poll_until(SETTLE, || async { count().await == max as i64 - 1 }).await);
}

#[tokio::test]
async fn session_scope_calls_fail_on_a_transaction_scope_only_entry() {
    let pool = pool_name("tx-only");
    let locker = install_tx(pool, &db_url(), 2, true).await;
    let key = LockKey::named(unique("tx-only"));
    let refused = |r: Result<_, Error>, what: &str| match r {
        Err(Error::TransactionScopeOnly { pool: p }) => {
            assert_eq!(p, pool);
        }
        Err(e) => panic!("{what}: expected TransactionScopeOnly, got {e}"),
        Ok(_) => panic!("{what}: expected TransactionScopeOnly, got Ok"),
    };
    refused(
        locker
            .try_lock(key.clone(), Mode::Exclusive)
            .await
            .map(drop),
        "try_lock",
    );
    refused(
        locker
            .lock(
                key.clone(),
                Mode::Exclusive,
                Some(Duration::from_millis(10)),
            )
            .await
            .map(drop),
        "lock",
    );
    let e = run_skip(spec(pool, Mode::Exclusive), key.clone(), async {}).await;
    eprintln!("{}", e.as_ref().unwrap_err());
    refused(e.map(drop), "the attribute without transaction");
    // Transaction scope works on it.
    let r = run_tx_skip(spec(pool, Mode::Exclusive), key, |_tx| async {}).await;
    assert_eq!(r.unwrap(), Outcome::Ran(()));
    // Bad settings.
    let zero = LockConfig::from_url(&db_url())
        .unwrap()
        .transaction_connections(0)
        .connect()
        .await;
    assert!(matches!(zero, Err(Error::InvalidConfig { .. })), "{zero:?}");
    let down = LockConfig::from_url("postgres://postgres@127.0.0.1:1/postgres")
        .unwrap()
        .transaction_scope_only()
        .connect()
        .await;
    assert!(matches!(down, Err(Error::Connect { .. })), "{down:?}");
}

// ---- a real pgbouncer, pool_mode = transaction -------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_pgbouncer_in_transaction_mode() {
    let proxy = Pgbouncer::start(&["pool_mode = transaction", "default_pool_size = 2"]);
    let url = proxy.url();
    // A normal entry (session locks) is still refused there.
    let normal = LockConfig::from_url(&url).unwrap().connect().await;
    assert!(
        matches!(normal, Err(Error::TransactionPooler { .. })),
        "{normal:?}"
    );

    let pool = pool_name("tx-bouncer");
    install_tx(pool, &url, 4, true).await;
    let admin = raw_connect(&db_url()).await;
    let holds = ScratchTable::create(&admin, "tx_bouncer", HOLDS_COLUMNS).await;
    let key = unique("tx-bouncer");
    let inside = Arc::new(Inside::default());
    let (contenders, rounds) = (3, 20);
    let (mut ran, mut skipped) = (0, 0);
    let start = Instant::now();
    for round in 0..rounds {
        let mut calls = Vec::new();
        for c in 0..contenders {
            let (inside, table, k) = (inside.clone(), holds.name.clone(), key.clone());
            calls.push(tokio::spawn(async move {
                let lock_key = LockKey::named(k.clone());
                let body = move |tx: Transaction| async move {
                    let _in = inside.enter();
                    record_hold(&tx, &table, &k, round, false, Duration::from_millis(2)).await
                };
                if c == 0 {
                    // One skips when busy, the others wait.
                    match run_tx_skip(spec(pool, Mode::Exclusive), lock_key, body).await {
                        Ok(Outcome::Ran(Ok(()))) => true,
                        Ok(Outcome::Skipped) => false,
                        other => panic!("skip call through pgbouncer failed: {other:?}"),
                    }
                } else {
                    let wait = Wait::Timeout(Duration::from_secs(20));
                    run_tx_wait(spec(pool, Mode::Exclusive), wait, lock_key, body)
                        .await
                        .expect("lock machinery through pgbouncer")
                        .expect("body through pgbouncer");
                    true
                }
            }));
        }
        for c in calls {
            if c.await.expect("contender") {
                ran += 1;
            } else {
                skipped += 1;
            }
        }
    }
    let took = start.elapsed();
    let stats = hold_stats(&admin, &holds.name).await;
    eprintln!("pgbouncer (transaction mode, pool size 2), {rounds} rounds x {contenders} contenders in {took:?}: ran {ran}, skipped {skipped}, at most {} body at once, {stats:?}", inside.max());
    assert_eq!(inside.max(), 1, "two bodies ran at once behind pgbouncer");
    assert_eq!(ran, inside.entered());
    assert!(ran >= (rounds * (contenders - 1)) as usize);
    assert_eq!(stats.rows, ran as i64, "every body's row committed");
    assert_eq!(stats.conflicting_overlaps, 0, "{stats:?}");

    // A holder connected directly to the server excludes calls through the proxy.
    let k = LockKey::named(key.clone());
    let raw = raw_connect(&db_url()).await;
    pg_lock(&raw, k.id(), Mode::Exclusive).await;
    let r = run_tx_skip(spec(pool, Mode::Exclusive), k.clone(), |_tx| async {}).await;
    assert_eq!(r.unwrap(), Outcome::Skipped);
    let r = run_tx_wait(
        spec(pool, Mode::Exclusive),
        Wait::Timeout(Duration::from_millis(200)),
        k.clone(),
        |_tx| async {},
    )
    .await;
    assert!(matches!(r, Err(Error::WaitTimeout { .. })), "{r:?}");
    // A wait dropped behind the proxy: the cancel request goes through it
    // and ends the server-side wait.
    let call = tokio::spawn(run_tx_wait(
        spec(pool, Mode::Exclusive),
        Wait::Forever,
        k.clone(),
        |_tx| async {},
    ));
    assert!(poll_until(SETTLE, || async { someone_waits(&admin, k.id()).await }).await);
    let dropped = Instant::now();
    call.abort();
    let gone = poll_until(SETTLE, || async { !someone_waits(&admin, k.id()).await }).await;
    assert!(
        gone,
        "a dropped wait behind pgbouncer still waits on the server:\n{}",
        proxy.log()
    );
    eprintln!(
        "pgbouncer: dropped wait gone from the server after {:?}",
        dropped.elapsed()
    );
    assert!(pg_unlock(&raw, k.id(), Mode::Exclusive).await);
    // A rollback through the proxy.
    let (t, k2) = (holds.name.clone(), key.clone());
    let r = run_tx_skip(
        spec(pool, Mode::Exclusive),
        k.clone(),
        move |tx| async move {
            record_hold(&tx, &t, &k2, -1, false, Duration::ZERO)
                .await
                .unwrap();
            Err::<(), _>("no")
        },
    )
    .await;
    assert_eq!(r.unwrap(), Outcome::Ran(Err("no")));
    assert_eq!(hold_stats(&admin, &holds.name).await.rows, ran as i64);
    assert!(wait_until_unlocked(&admin, &[k.id()], SETTLE)
        .await
        .is_empty());
}

// ---- loss, a full pool, Send ---------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_backend_stops_or_fails_the_call_per_policy() {
    let pool = pool_name("tx-lost");
    install_tx(pool, &db_url(), 4, false).await;
    let admin = raw_connect(&db_url()).await;
    let table = ScratchTable::create(&admin, "tx_lost", KEY_COLUMNS).await;
    for policy in [OnLost::Abort, OnLost::Continue] {
        let k = unique("tx-lost");
        let key = LockKey::named(k.clone());
        let finished = Arc::new(AtomicBool::new(false));
        let (t, k2, fin, admin_url) = (table.name.clone(), k.clone(), finished.clone(), db_url());
        let mut s = spec(pool, Mode::Exclusive);
        s.on_lost = Some(policy);
        let start = Instant::now();
        let abort = matches!(policy, OnLost::Abort);
        let r = run_tx_skip(s, key.clone(), move |tx| async move {
            insert_row(&tx, &t, &k2).await.unwrap();
            let other = raw_connect(&admin_url).await;
            assert!(terminate_backend(&other, tx.backend_pid()).await);
            // The body goes on until its connection is seen closed ...
            let ended = Instant::now();
            while !tx.is_closed() {
                assert!(ended.elapsed() < SETTLE, "the connection never ended");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // ... and, under Abort, waits to be stopped (the runtime saw the
            // same end: it stops the body long before this bound).
            if abort {
                tokio::time::sleep(SETTLE).await;
            }
            fin.store(true, Ordering::SeqCst);
            Ok::<_, ()>(())
        })
        .await;
        let took = start.elapsed();
        eprintln!(
            "transaction-scope backend terminated mid-body ({policy:?}): {r:?} after {took:?}"
        );
        match policy {
            OnLost::Abort => {
                assert!(matches!(r, Err(Error::LockLost { .. })), "{r:?}");
                assert!(!finished.load(Ordering::SeqCst), "the body was not stopped");
            }
            OnLost::Continue => {
                match &r {
                    Err(Error::Transaction { reason, .. }) => {
                        assert!(reason.contains("connection ended"), "{reason}")
                    }
                    other => panic!("expected Error::Transaction, got {other:?}"),
                }
                assert!(finished.load(Ordering::SeqCst));
            }
        }
        assert_eq!(rows_of(&admin, &table.name, &k).await, 0);
        assert!(wait_until_unlocked(&admin, &[key.id()], SETTLE)
            .await
            .is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pool_is_a_typed_error_after_a_bounded_wait() {
    let pool = pool_name("tx-full");
    LockConfig::from_url(&db_url())
        .unwrap()
        .name(pool)
        .transaction_connections(1)
        .connect_timeout(Duration::from_millis(500))
        .transaction_scope_only()
        .install()
        .await
        .unwrap();
    let (inside_tx, inside) = oneshot::channel();
    let (leave_tx, leave) = oneshot::channel::<()>();
    let holder = tokio::spawn(run_tx_skip(
        spec(pool, Mode::Exclusive),
        LockKey::named(unique("tx-full-a")),
        move |_tx| async move {
            let _ = inside_tx.send(());
            let _ = tokio::time::timeout(SETTLE, leave).await;
        },
    ));
    inside.await.unwrap();
    // Another key, but no connection for it.
    let start = Instant::now();
    let r = run_tx_skip(
        spec(pool, Mode::Exclusive),
        LockKey::named(unique("tx-full-b")),
        |_tx| async {},
    )
    .await;
    match r {
        Err(Error::TransactionConnectionsBusy {
            connections,
            waited,
            ..
        }) => {
            assert_eq!(connections, 1);
            assert!(waited >= Duration::from_millis(490), "{waited:?}");
        }
        other => panic!("expected TransactionConnectionsBusy, got {other:?}"),
    }
    assert!(start.elapsed() < Duration::from_secs(3));
    let r = run_tx_wait(
        spec(pool, Mode::Exclusive),
        Wait::Timeout(Duration::from_millis(100)),
        LockKey::named(unique("tx-full-c")),
        |_tx| async {},
    )
    .await;
    assert!(matches!(r, Err(Error::WaitTimeout { .. })), "{r:?}");
    leave_tx.send(()).unwrap();
    assert_eq!(holder.await.unwrap().unwrap(), Outcome::Ran(()));
    // Free again.
    let r = run_tx_skip(
        spec(pool, Mode::Exclusive),
        LockKey::named(unique("tx-full-b")),
        |_tx| async {},
    )
    .await;
    assert_eq!(r.unwrap(), Outcome::Ran(()));
}

/// The calls' futures are `Send` when the body's is: they can be spawned.
#[test]
fn calls_are_send() {
    fn assert_send<T: Send>(_: &T) {}
    let key = LockKey::named("send");
    let skip = run_tx_skip(
        spec("default", Mode::Exclusive),
        key.clone(),
        |tx: Transaction| async move { tx.simple_query("SELECT 1").await.map(drop) },
    );
    assert_send(&skip);
    let wait = run_tx_wait(
        spec("default", Mode::Shared),
        Wait::Forever,
        key,
        |_tx| async {},
    );
    assert_send(&wait);
}

/// The client vanishes (here: the proxy is killed) while the body is inside
/// a long server statement: no cancel request can arrive, yet the server
/// notices within about a second (`client_connection_check_interval`) and
/// frees the lock; nothing is committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_client_mid_statement_frees_the_lock_within_seconds() {
    let proxy = Pgbouncer::start(&["pool_mode = transaction", "default_pool_size = 2"]);
    let pool = pool_name("tx-vanish");
    install_tx(pool, &proxy.url(), 2, true).await;
    let admin = raw_connect(&db_url()).await;
    let table = ScratchTable::create(&admin, "tx_vanish", KEY_COLUMNS).await;
    let k = unique("tx-vanish");
    let key = LockKey::named(k.clone());
    let (inside_tx, inside) = oneshot::channel();
    let (t, k2) = (table.name.clone(), k.clone());
    let call = tokio::spawn(run_tx_skip(
        spec(pool, Mode::Exclusive),
        key.clone(),
        move |tx| async move {
            insert_row(&tx, &t, &k2).await.unwrap();
            let _ = inside_tx.send(());
            tx.simple_query("SELECT pg_sleep(60)").await.map(drop)
        },
    ));
    inside.await.unwrap();
    assert_eq!(advisory_locks(&admin, &[key.id()]).await.len(), 1);
    let killed = Instant::now();
    drop(proxy); // SIGKILL
    let left = wait_until_unlocked(&admin, &[key.id()], SETTLE).await;
    let gone = killed.elapsed();
    eprintln!("proxy killed while the body ran pg_sleep(60): lock gone after {gone:?}");
    assert!(
        left.is_empty(),
        "lock still held {gone:?} after the client vanished: {left:?}"
    );
    let r = call.await.unwrap();
    assert!(r.is_err(), "{r:?}");
    assert_eq!(rows_of(&admin, &table.name, &k).await, 0);
}

// ---- processes ---------------------------------------------------------------------------

/// Environment of a contender process started by
/// `processes_exclude_each_other`: `"<key> <holds table>"`.
const WORKER_ENV: &str = "ADVISORY_LOCKED_TX_WORKER";

/// Rounds of one contender (wait mode, then skip mode) on `key`, each body
/// recording its interval in `table`; returns how many bodies ran.
async fn contend(pool: &'static str, key: &str, table: &str, rounds: i32) -> usize {
    let mut ran = 0;
    for round in 0..rounds {
        let (t, k) = (table.to_owned(), key.to_owned());
        run_tx_wait(
            spec(pool, Mode::Exclusive),
            Wait::Timeout(Duration::from_secs(30)),
            LockKey::named(key.to_owned()),
            move |tx| async move {
                record_hold(&tx, &t, &k, round, false, Duration::from_millis(2)).await
            },
        )
        .await
        .expect("lock machinery")
        .expect("body");
        ran += 1;
        let (t, k) = (table.to_owned(), key.to_owned());
        let r = run_tx_skip(
            spec(pool, Mode::Exclusive),
            LockKey::named(key.to_owned()),
            move |tx| async move {
                record_hold(&tx, &t, &k, round, false, Duration::from_millis(1)).await
            },
        )
        .await
        .expect("lock machinery");
        if let Outcome::Ran(r) = r {
            r.expect("body");
            ran += 1;
        }
    }
    ran
}

/// A contender process of `processes_exclude_each_other` (started with
/// `WORKER_ENV` set). Run alone, it contends with itself (two tasks) on a
/// key of its own and checks the holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a contender process started by processes_exclude_each_other (runs alone too)"]
async fn contender_process() {
    let pool = pool_name("tx-proc");
    install_tx(pool, &db_url(), 4, false).await;
    let rounds = 25;
    match std::env::var(WORKER_ENV) {
        Ok(job) => {
            let (key, table) = job.split_once(' ').expect("key and table");
            let ran = contend(pool, key, table, rounds).await;
            println!("TXWORKER ran {ran}");
        }
        Err(_) => {
            let admin = raw_connect(&db_url()).await;
            let holds = ScratchTable::create(&admin, "tx_proc", HOLDS_COLUMNS).await;
            let key = unique("tx-proc");
            let (a, b) = tokio::join!(
                contend(pool, &key, &holds.name, rounds),
                contend(pool, &key, &holds.name, rounds)
            );
            let stats = hold_stats(&admin, &holds.name).await;
            assert_eq!(stats.rows, (a + b) as i64);
            assert_eq!(stats.conflicting_overlaps, 0, "{stats:?}");
        }
    }
}

/// Two other processes and this one contend for one key with transaction
/// scope; the bodies' committed intervals never overlap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_exclude_each_other() {
    let pool = pool_name("tx-procs");
    install_tx(pool, &db_url(), 4, false).await;
    let admin = raw_connect(&db_url()).await;
    let holds = ScratchTable::create(&admin, "tx_procs", HOLDS_COLUMNS).await;
    let key = unique("tx-procs");
    let exe = std::env::current_exe().expect("test binary");
    let mut children = Vec::new();
    for _ in 0..2 {
        children.push(
            tokio::process::Command::new(&exe)
                .args([
                    "--exact",
                    "contender_process",
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(WORKER_ENV, format!("{key} {}", holds.name))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .expect("contender process"),
        );
    }
    let mine = contend(pool, &key, &holds.name, 25).await;
    let mut theirs = 0;
    for child in children {
        let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
            .await
            .expect("a contender process did not finish in 120 s")
            .expect("contender output");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "contender failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let ran: usize = stdout
            .lines()
            .find_map(|l| l.split("TXWORKER ran ").nth(1))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no count from the contender:\n{stdout}"));
        theirs += ran;
    }
    let stats = hold_stats(&admin, &holds.name).await;
    eprintln!("3 processes x 25 rounds (wait + skip): this one ran {mine}, the others {theirs}; {stats:?}");
    assert!(theirs >= 50, "each contender's wait-mode calls run");
    assert_eq!(stats.rows, (mine + theirs) as i64);
    assert_eq!(stats.conflicting_overlaps, 0, "{stats:?}");
    assert!(
        wait_until_unlocked(&admin, &[LockKey::named(key).id()], SETTLE)
            .await
            .is_empty()
    );
}
