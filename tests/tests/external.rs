//! Bring your own connection (`advisory_locked::external`, the attribute's
//! `on = tx`): locks on the application's own sqlx, deadpool-postgres and
//! tokio-postgres connections and transactions, with real pools of both
//! libraries against the real server, directly and behind a real pgbouncer
//! in transaction pooling mode.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use advisory_locked::external::{lock_session, lock_xact, try_lock_session, try_lock_xact};
use advisory_locked::{advisory_locked, Error, KeyId, LockConfig, LockKey, Mode, Outcome};
use advisory_locked_tests::{
    advisory_locks, db_url, raw_connect, unique, wait_until_unlocked, AdvisoryLock, Pgbouncer,
    ScratchTable,
};
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};
use sqlx::Connection;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls};

const EXCL: Mode = Mode::Exclusive;
const LIMIT: Duration = Duration::from_secs(10);

async fn sqlx_pool(url: &str, size: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(size)
        .acquire_timeout(LIMIT)
        .connect(url)
        .await
        .expect("sqlx pool")
}

fn deadpool(url: &str, size: usize) -> deadpool_postgres::Pool {
    let config: tokio_postgres::Config = url.parse().expect("URL");
    let manager = deadpool_postgres::Manager::from_config(
        config,
        NoTls,
        deadpool_postgres::ManagerConfig {
            recycling_method: deadpool_postgres::RecyclingMethod::Fast,
        },
    );
    deadpool_postgres::Pool::builder(manager)
        .max_size(size)
        .build()
        .expect("deadpool pool")
}

async fn sqlx_pid(conn: &mut PgConnection) -> i32 {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(conn)
        .await
        .unwrap()
}

async fn pg_pid(client: &Client) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

/// The locks of `id`, as (pid, granted).
async fn holders(observer: &Client, id: KeyId) -> Vec<(i32, bool)> {
    let locks: Vec<AdvisoryLock> = advisory_locks(observer, &[id]).await;
    locks.iter().map(|l| (l.pid, l.granted)).collect()
}

/// Rows of `table` with this id, seen from outside the writer's transaction.
async fn rows(observer: &Client, table: &str, id: i64) -> i64 {
    let sql = format!("SELECT count(*) FROM {table} WHERE id = $1");
    observer.query_one(&sql, &[&id]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_locks_exclude_across_pools_and_libraries() {
    let url = db_url();
    let observer = raw_connect(&url).await;
    let (a, b, dp) = (
        sqlx_pool(&url, 2).await,
        sqlx_pool(&url, 2).await,
        deadpool(&url, 2),
    );
    let key = LockKey::named(unique("ext-exclude"));
    let id = key.id();

    let mut held = a.begin().await.unwrap();
    assert!(try_lock_xact(&mut held, key.clone(), EXCL).await.unwrap());
    let pid = sqlx_pid(&mut held).await;
    assert_eq!(holders(&observer, id).await, [(pid, true)]);

    // Another sqlx pool: busy, and its transaction is still usable.
    let mut other = b.begin().await.unwrap();
    assert!(!try_lock_xact(&mut other, key.clone(), EXCL).await.unwrap());
    assert!(!try_lock_xact(&mut other, key.clone(), Mode::Shared)
        .await
        .unwrap());
    assert!(sqlx_pid(&mut other).await > 0);
    other.rollback().await.unwrap();

    // deadpool-postgres and plain tokio-postgres: the same key, busy.
    let mut object = dp.get().await.unwrap();
    let mut tx = object.transaction().await.unwrap();
    assert!(!try_lock_xact(&mut tx, key.clone(), EXCL).await.unwrap());
    tx.rollback().await.unwrap();
    let mut client = raw_connect(&url).await;
    let tx = client.transaction().await.unwrap();
    let mut tx = tx;
    assert!(!try_lock_xact(&mut tx, key.clone(), EXCL).await.unwrap());
    tx.rollback().await.unwrap();

    // The crate's own sessions hash the key the same way.
    let locker = LockConfig::from_url(&url)
        .unwrap()
        .sessions(1)
        .connect()
        .await
        .unwrap();
    assert!(locker.try_lock(key.clone(), EXCL).await.unwrap().is_none());

    // The commit ends the lock, at once.
    held.commit().await.unwrap();
    assert_eq!(holders(&observer, id).await, []);
    let mut next = b.begin().await.unwrap();
    assert!(try_lock_xact(&mut next, key.clone(), EXCL).await.unwrap());
    next.rollback().await.unwrap();
    assert_eq!(holders(&observer, id).await, []);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_commit_and_roll_back_with_the_lock_sqlx() {
    let url = db_url();
    let observer = raw_connect(&url).await;
    let table = ScratchTable::create(&observer, "ext_sqlx", "(id bigint PRIMARY KEY)").await;
    let insert = format!("INSERT INTO {} VALUES ($1)", table.name);
    let pool = sqlx_pool(&url, 2).await;
    let key = LockKey::named(unique("ext-writes-sqlx"));
    for (row, commit) in [(1i64, true), (2, false)] {
        let mut tx = pool.begin().await.unwrap();
        lock_xact(&mut tx, key.clone(), EXCL, Some(LIMIT))
            .await
            .unwrap();
        sqlx::query(&insert)
            .bind(row)
            .execute(&mut *tx)
            .await
            .unwrap();
        let pid = sqlx_pid(&mut tx).await;
        assert_eq!(holders(&observer, key.id()).await, [(pid, true)]);
        assert_eq!(
            rows(&observer, &table.name, row).await,
            0,
            "visible before the end"
        );
        if commit {
            tx.commit().await.unwrap();
        } else {
            tx.rollback().await.unwrap();
        }
        assert_eq!(rows(&observer, &table.name, row).await, i64::from(commit));
        assert_eq!(
            holders(&observer, key.id()).await,
            [],
            "lock left after the end"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_commit_and_roll_back_with_the_lock_deadpool_and_tokio_postgres() {
    let url = db_url();
    let observer = raw_connect(&url).await;
    let table = ScratchTable::create(&observer, "ext_dp", "(id bigint PRIMARY KEY)").await;
    let insert = format!("INSERT INTO {} VALUES ($1)", table.name);
    let dp = deadpool(&url, 2);
    let mut client = raw_connect(&url).await;
    let key = LockKey::pair(7, std::process::id() as i32);
    for (row, commit) in [(1i64, true), (2, false)] {
        let mut object = dp.get().await.unwrap();
        let pid = pg_pid(&object).await;
        let mut tx = object.transaction().await.unwrap();
        assert!(try_lock_xact(&mut tx, key.clone(), EXCL).await.unwrap());
        tx.execute(&insert, &[&row]).await.unwrap();
        assert_eq!(holders(&observer, key.id()).await, [(pid, true)]);
        assert_eq!(rows(&observer, &table.name, row).await, 0);
        if commit {
            tx.commit().await.unwrap();
        } else {
            tx.rollback().await.unwrap();
        }
        assert_eq!(rows(&observer, &table.name, row).await, i64::from(commit));
        assert_eq!(holders(&observer, key.id()).await, []);
    }
    for (row, commit) in [(3i64, true), (4, false)] {
        let pid = pg_pid(&client).await;
        let mut tx = client.transaction().await.unwrap();
        lock_xact(&mut tx, key.clone(), Mode::Shared, None)
            .await
            .unwrap();
        tx.execute(&insert, &[&row]).await.unwrap();
        assert_eq!(holders(&observer, key.id()).await, [(pid, true)]);
        if commit {
            tx.commit().await.unwrap();
        } else {
            tx.rollback().await.unwrap();
        }
        assert_eq!(rows(&observer, &table.name, row).await, i64::from(commit));
        assert_eq!(holders(&observer, key.id()).await, []);
    }
}

/// Workers of two pools (sqlx and deadpool-postgres) increment one counter
/// by read-then-write under `lock_xact`: no update is lost, and no two
/// workers are ever inside at once.
async fn contend(url: &str, workers: usize, rounds: usize) {
    let observer = raw_connect(&db_url()).await;
    let table =
        ScratchTable::create(&observer, "ext_counter", "(id int PRIMARY KEY, n bigint)").await;
    observer
        .execute(&format!("INSERT INTO {} VALUES (1, 0)", table.name), &[])
        .await
        .unwrap();
    let key = LockKey::named(unique("ext-contend"));
    let (sp, dp) = (sqlx_pool(url, 2).await, deadpool(url, 2));
    let inside = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let enter = {
        let (inside, most) = (inside.clone(), most.clone());
        move || most.fetch_max(inside.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst)
    };
    let (read, write) = (
        format!("SELECT n FROM {} WHERE id = 1", table.name),
        format!("UPDATE {} SET n = $1 WHERE id = 1", table.name),
    );
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (sp, dp, key, enter, inside) = (
            sp.clone(),
            dp.clone(),
            key.clone(),
            enter.clone(),
            inside.clone(),
        );
        let (read, write) = (read.clone(), write.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..rounds {
                if w % 2 == 0 {
                    let mut tx = sp.begin().await.unwrap();
                    lock_xact(&mut tx, key.clone(), EXCL, Some(LIMIT))
                        .await
                        .unwrap();
                    enter();
                    // Unnamed statements: behind pgbouncer in transaction
                    // mode a named one may meet another client's namesake.
                    let n: i64 = sqlx::query_scalar(&read)
                        .persistent(false)
                        .fetch_one(&mut *tx)
                        .await
                        .unwrap();
                    sqlx::query(&write)
                        .persistent(false)
                        .bind(n + 1)
                        .execute(&mut *tx)
                        .await
                        .unwrap();
                    inside.fetch_sub(1, Ordering::SeqCst);
                    tx.commit().await.unwrap();
                } else {
                    let mut object = dp.get().await.unwrap();
                    let mut tx = object.transaction().await.unwrap();
                    lock_xact(&mut tx, key.clone(), EXCL, Some(LIMIT))
                        .await
                        .unwrap();
                    enter();
                    let n: i64 = tx.query_typed(&read, &[]).await.unwrap()[0].get(0);
                    let next = (&(n + 1) as &(dyn ToSql + Sync), Type::INT8);
                    tx.query_typed(&write, &[next]).await.unwrap();
                    inside.fetch_sub(1, Ordering::SeqCst);
                    tx.commit().await.unwrap();
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let n: i64 = observer.query_one(&read, &[]).await.unwrap().get(0);
    assert_eq!(n, (workers * rounds) as i64, "lost updates");
    assert_eq!(most.load(Ordering::SeqCst), 1);
    assert_eq!(holders(&observer, key.id()).await, []);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_transactions_exclude_across_pools() {
    contend(&db_url(), 4, 10).await;
}

/// Mutual exclusion across processes: three worker processes, each on its
/// own connection, lock the same key in their transactions
/// (`external::lock_xact`) and increment one counter by reading it and
/// writing it back; no update is lost, and no lock is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_locks_exclude_across_processes() {
    let observer = raw_connect(&db_url()).await;
    let table =
        ScratchTable::create(&observer, "ext_procs", "(id int PRIMARY KEY, n bigint)").await;
    observer
        .execute(&format!("INSERT INTO {} VALUES (1, 0)", table.name), &[])
        .await
        .unwrap();
    let key = unique("ext-procs");
    let (workers, rounds) = (3, 1000);
    let args = (0..workers)
        .map(|_| {
            vec![
                db_url(),
                table.name.clone(),
                key.clone(),
                rounds.to_string(),
            ]
        })
        .collect();
    advisory_locked_tests::workers::run_processes(
        env!("CARGO_BIN_EXE_external_worker"),
        args,
        Duration::from_secs(120),
    )
    .await;
    let n: i64 = observer
        .query_one(&format!("SELECT n FROM {} WHERE id = 1", table.name), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        n,
        (workers * rounds) as i64,
        "lost updates across processes"
    );
    assert_eq!(holders(&observer, LockKey::named(key).id()).await, []);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_times_out_and_keeps_the_callers_lock_timeout() {
    let url = db_url();
    let observer = raw_connect(&url).await;
    let key = LockKey::named(unique("ext-timeout"));
    let mut holder = raw_connect(&url).await;
    let holding = holder.transaction().await.unwrap();
    let mut holding = holding;
    assert!(try_lock_xact(&mut holding, key.clone(), EXCL)
        .await
        .unwrap());

    let mut conn = PgConnection::connect(&url).await.unwrap();
    sqlx::query("SET lock_timeout = '7s'")
        .execute(&mut conn)
        .await
        .unwrap();
    let mut tx = conn.begin().await.unwrap();
    let timeout = Duration::from_millis(200);
    match lock_xact(&mut tx, key.clone(), EXCL, Some(timeout)).await {
        Err(Error::WaitTimeout { key: name, waited }) => {
            assert_eq!(name, key.name());
            assert!(waited >= timeout, "{waited:?}");
        }
        other => panic!("expected WaitTimeout, got {other:?}"),
    }
    tx.rollback().await.unwrap();

    // Without a limit: waits on the server until the holder commits.
    let waiter = {
        let (url, key) = (url.clone(), key.clone());
        tokio::spawn(async move {
            let mut conn = PgConnection::connect(&url).await.unwrap();
            sqlx::query("SET lock_timeout = '7s'")
                .execute(&mut conn)
                .await
                .unwrap();
            let mut tx = conn.begin().await.unwrap();
            lock_xact(&mut tx, key, EXCL, None).await.unwrap();
            let setting: String = sqlx::query_scalar("SHOW lock_timeout")
                .fetch_one(&mut *tx)
                .await
                .unwrap();
            tx.commit().await.unwrap();
            setting
        })
    };
    let start = std::time::Instant::now();
    while !holders(&observer, key.id())
        .await
        .iter()
        .any(|(_, granted)| !granted)
    {
        assert!(start.elapsed() < LIMIT, "the waiter never waited");
        tokio::task::yield_now().await;
    }
    holding.commit().await.unwrap();
    let setting = tokio::time::timeout(LIMIT, waiter).await.unwrap().unwrap();
    assert_eq!(setting, "7s", "the caller's lock_timeout was not put back");
    assert_eq!(holders(&observer, key.id()).await, []);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_locks_on_pooled_connections() {
    let url = db_url();
    let observer = raw_connect(&url).await;
    let key = LockKey::named(unique("ext-session"));
    let id = key.id();
    let pool = sqlx_pool(&url, 1).await; // one connection: the same one comes back
    let dp = deadpool(&url, 1);

    let mut guard = try_lock_session(pool.acquire().await.unwrap(), key.clone(), EXCL)
        .await
        .unwrap()
        .expect("free");
    let pid = sqlx_pid(&mut guard).await;
    assert_eq!(holders(&observer, id).await, [(pid, true)]);
    let mut object = dp.get().await.unwrap();
    assert!(try_lock_session(&mut object, key.clone(), EXCL)
        .await
        .unwrap()
        .is_none());
    let conn = guard.release().await.unwrap();
    assert_eq!(holders(&observer, id).await, []);
    drop(conn);

    // Dropped without release: unlocked in the background, and only then
    // back in the pool (whose one connection the next acquire waits for).
    let guard = lock_session(
        pool.acquire().await.unwrap(),
        key.clone(),
        EXCL,
        Some(LIMIT),
    )
    .await
    .unwrap();
    drop(guard);
    let mut conn = tokio::time::timeout(LIMIT, pool.acquire())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sqlx_pid(&mut conn).await, pid, "not the pooled connection");
    assert_eq!(holders(&observer, id).await, []);

    // A deadpool Object, dropped: the same.
    let guard = try_lock_session(object, key.clone(), EXCL)
        .await
        .unwrap()
        .expect("free");
    let dp_pid = pg_pid(&guard).await;
    assert_eq!(holders(&observer, id).await, [(dp_pid, true)]);
    drop(guard);
    assert_eq!(wait_until_unlocked(&observer, &[id], LIMIT).await, []);

    // A borrowed connection can't be unlocked on drop: the lock stays (and
    // an error is logged) until the caller unlocks it.
    let guard = try_lock_session(&mut *conn, key.clone(), EXCL)
        .await
        .unwrap()
        .expect("free");
    drop(guard);
    assert_eq!(holders(&observer, id).await, [(pid, true)]);
    let unlocked: bool = sqlx::query_scalar("SELECT pg_advisory_unlock($1)")
        .bind(match id {
            KeyId::Int(k) => k,
            KeyId::Pair(..) => unreachable!(),
        })
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert!(unlocked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_session_locks_on_clients() {
    let url = db_url();
    let observer = raw_connect(&url).await;
    let key = LockKey::pair(-3, std::process::id() as i32);
    let (mut c1, mut c2, mut c3) = (
        raw_connect(&url).await,
        raw_connect(&url).await,
        raw_connect(&url).await,
    );
    let g1 = lock_session(&mut c1, key.clone(), Mode::Shared, None)
        .await
        .unwrap();
    let g2 = try_lock_session(&mut c2, key.clone(), Mode::Shared)
        .await
        .unwrap()
        .expect("shared");
    assert_eq!(holders(&observer, key.id()).await.len(), 2);
    assert!(try_lock_session(&mut c3, key.clone(), EXCL)
        .await
        .unwrap()
        .is_none());
    let timeout = Duration::from_millis(100);
    assert!(matches!(
        lock_session(&mut c3, key.clone(), EXCL, Some(timeout)).await,
        Err(Error::WaitTimeout { .. })
    ));
    g1.release().await.unwrap();
    g2.release().await.unwrap();
    let g3 = try_lock_session(c3, key.clone(), EXCL)
        .await
        .unwrap()
        .expect("free");
    assert_eq!(g3.key(), &key);
    // An owned client, dropped: unlocked in the background.
    drop(g3);
    assert_eq!(wait_until_unlocked(&observer, &[key.id()], LIMIT).await, []);
    // A key with NUL is refused before anything is sent.
    let bad = LockKey::named("a\0b");
    assert!(matches!(
        try_lock_session(&mut c1, bad, EXCL).await,
        Err(Error::InvalidKey { .. })
    ));
}

#[advisory_locked(key = "ext-invoice:{id}", on = tx)]
async fn bill(tx: &mut sqlx::PgTransaction<'_>, table: &str, id: i64) -> Result<u64, sqlx::Error> {
    let sql = format!("INSERT INTO {table} VALUES ($1)");
    Ok(sqlx::query(&sql)
        .bind(id)
        .execute(&mut **tx)
        .await?
        .rows_affected())
}

#[advisory_locked(key = "ext-invoice:{id}", wait = "5s", on = tx)]
async fn bill_waiting(
    tx: &mut sqlx::PgTransaction<'_>,
    table: &str,
    id: i64,
) -> Result<u64, sqlx::Error> {
    let sql = format!("INSERT INTO {table} VALUES ($1)");
    Ok(sqlx::query(&sql)
        .bind(id)
        .execute(&mut **tx)
        .await?
        .rows_affected())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attribute_locks_in_the_callers_transaction() {
    let url = db_url();
    let observer = raw_connect(&url).await;
    let table = ScratchTable::create(&observer, "ext_attr", "(id bigint PRIMARY KEY)").await;
    let pool = sqlx_pool(&url, 2).await;
    let id = i64::from(std::process::id()) * 10;
    let key = LockKey::named(format!("ext-invoice:{id}"));

    // Held elsewhere: skipped, nothing written.
    let dp = deadpool(&url, 1);
    let mut object = dp.get().await.unwrap();
    let mut other = object.transaction().await.unwrap();
    assert!(try_lock_xact(&mut other, key.clone(), EXCL).await.unwrap());
    let mut tx = pool.begin().await.unwrap();
    assert!(matches!(
        bill(&mut tx, &table.name, id).await,
        Ok(Outcome::Skipped)
    ));
    tx.rollback().await.unwrap();
    other.rollback().await.unwrap();

    // Ran: the lock is held by the caller's transaction until it commits.
    let mut tx = pool.begin().await.unwrap();
    assert!(matches!(
        bill(&mut tx, &table.name, id).await,
        Ok(Outcome::Ran(Ok(1)))
    ));
    let pid = sqlx_pid(&mut tx).await;
    assert_eq!(holders(&observer, key.id()).await, [(pid, true)]);
    assert_eq!(rows(&observer, &table.name, id).await, 0);
    tx.commit().await.unwrap();
    assert_eq!(rows(&observer, &table.name, id).await, 1);
    assert_eq!(holders(&observer, key.id()).await, []);

    // Wait mode, rolled back: neither the row nor the lock stays.
    let id2 = id + 1;
    let key2 = LockKey::named(format!("ext-invoice:{id2}"));
    let mut tx = pool.begin().await.unwrap();
    assert_eq!(
        bill_waiting(&mut tx, &table.name, id2)
            .await
            .unwrap()
            .unwrap(),
        1
    );
    assert_eq!(holders(&observer, key2.id()).await.len(), 1);
    tx.rollback().await.unwrap();
    assert_eq!(rows(&observer, &table.name, id2).await, 0);
    assert_eq!(holders(&observer, key2.id()).await, []);
}

/// Behind pgbouncer in transaction pooling mode, transaction-level locks
/// still exclude, and end with their transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_locks_behind_pgbouncer_in_transaction_mode() {
    let bouncer = Pgbouncer::start(&["pool_mode = transaction", "default_pool_size = 4"]);
    let url = bouncer.url();
    let observer = raw_connect(&db_url()).await;
    let table = ScratchTable::create(&observer, "ext_bouncer", "(id bigint PRIMARY KEY)").await;
    let (sp, dp) = (sqlx_pool(&url, 2).await, deadpool(&url, 2));
    let key = LockKey::named(unique("ext-bouncer"));

    let mut tx = sp.begin().await.unwrap();
    assert!(try_lock_xact(&mut tx, key.clone(), EXCL).await.unwrap());
    sqlx::query(&format!("INSERT INTO {} VALUES (1)", table.name))
        .persistent(false)
        .execute(&mut *tx)
        .await
        .unwrap();
    let mut object = dp.get().await.unwrap();
    let mut other = object.transaction().await.unwrap();
    assert!(!try_lock_xact(&mut other, key.clone(), EXCL).await.unwrap());
    other.rollback().await.unwrap();
    assert_eq!(holders(&observer, key.id()).await.len(), 1);
    assert_eq!(rows(&observer, &table.name, 1).await, 0);
    tx.commit().await.unwrap();
    assert_eq!(rows(&observer, &table.name, 1).await, 1);
    assert_eq!(holders(&observer, key.id()).await, []);

    let mut other = object.transaction().await.unwrap();
    lock_xact(&mut other, key.clone(), EXCL, Some(LIMIT))
        .await
        .unwrap();
    other.commit().await.unwrap();
    assert_eq!(holders(&observer, key.id()).await, []);
    drop(object);

    contend(&url, 4, 5).await;
    drop(bouncer);
}
