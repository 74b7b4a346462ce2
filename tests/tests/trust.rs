//! Trusting the server (issue 16; docs/design.md, "Trusting the server").
//!
//! - A role whose `search_path` puts a schema of shims before `pg_catalog`
//!   (functions named like the advisory-lock functions that answer `true`):
//!   the crate's statements still call the real functions, so two lockers of
//!   that role never both hold a key, and `pg_locks` shows the real lock.
//! - Servers whose advisory locks are not real, simulated on a throwaway
//!   server whose `pg_catalog` functions are replaced by shims (as a
//!   superuser may do there): session-level shims only (what CockroachDB's
//!   session-level `pg_try_advisory_lock` does), transaction-level shims
//!   only, both. The exclusion self-test refuses each scope that fails, with
//!   `Error::FakeAdvisoryLocks`, and only that scope.
//! - A lock session that replaces a dead one runs the self-test again.

use std::time::Duration;

use advisory_locked::__private::run_tx_skip;
use advisory_locked::{Error, LockConfig, LockKey, LockScope, Locker, Mode, Outcome};
use advisory_locked_tests::transaction::{pool_name, spec};
use advisory_locked_tests::{
    advisory_locks, db_url, raw_connect, terminate_backend, unique, unique_ident, TempDatabase,
    ThrowawayServer,
};
use tokio_postgres::Client;

/// The advisory-lock functions and their shims: `(name, arguments,
/// returns, body)`. Each in both key forms.
fn shims(
    session: bool,
    transaction: bool,
) -> Vec<(String, &'static str, &'static str, &'static str)> {
    let mut names: Vec<(&str, &str, &str)> = Vec::new();
    if session {
        names.extend([
            ("pg_try_advisory_lock", "boolean", "SELECT true"),
            ("pg_try_advisory_lock_shared", "boolean", "SELECT true"),
            ("pg_advisory_unlock", "boolean", "SELECT true"),
            ("pg_advisory_unlock_shared", "boolean", "SELECT true"),
            ("pg_advisory_lock", "void", "SELECT"),
            ("pg_advisory_lock_shared", "void", "SELECT"),
        ]);
    }
    if transaction {
        names.extend([
            ("pg_try_advisory_xact_lock", "boolean", "SELECT true"),
            ("pg_try_advisory_xact_lock_shared", "boolean", "SELECT true"),
            ("pg_advisory_xact_lock", "void", "SELECT"),
            ("pg_advisory_xact_lock_shared", "void", "SELECT"),
        ]);
    }
    let mut out = Vec::new();
    for (name, returns, body) in names {
        for args in ["bigint", "integer, integer"] {
            out.push((name.to_owned(), args, returns, body));
        }
    }
    out
}

/// `CREATE FUNCTION {schema}.{name}({args}) …` for each shim.
fn create_shims(schema: &str, shims: &[(String, &str, &str, &str)]) -> String {
    shims
        .iter()
        .map(|(name, args, returns, body)| {
            format!(
                "CREATE FUNCTION {schema}.{name}({args}) RETURNS {returns} \
                 LANGUAGE sql VOLATILE AS $${body}$$;\n"
            )
        })
        .collect()
}

/// `count(*)` of granted advisory locks of `key` held by `pid`.
async fn real_locks(admin: &Client, key: &LockKey, pid: i32) -> usize {
    advisory_locks(admin, &[key.id()])
        .await
        .iter()
        .filter(|l| l.pid == pid && l.granted)
        .count()
}

// ---- the shadowing role ----------------------------------------------------------------

/// A login role of this test run whose `search_path` is `{schema},
/// pg_catalog` in a database of its own, where `{schema}` holds shims of
/// every advisory-lock function (and of `pg_backend_pid` and
/// `pg_is_in_recovery`, which the set-up calls). Dropped with the database.
struct ShadowingRole {
    db: Option<TempDatabase>,
    role: String,
}

impl ShadowingRole {
    async fn create(admin: &Client) -> ShadowingRole {
        let db = TempDatabase::create(admin, "trust_shadow").await;
        let role = unique_ident("trust_role");
        let owner = raw_connect(&db.url()).await;
        let mut sql = format!(
            "CREATE ROLE {role} LOGIN; CREATE SCHEMA myschema; \
             GRANT USAGE ON SCHEMA myschema TO {role}; \
             ALTER ROLE {role} IN DATABASE {} SET search_path = myschema, pg_catalog;\n",
            db.name
        );
        sql += &create_shims("myschema", &shims(true, true));
        sql += "CREATE FUNCTION myschema.pg_backend_pid() RETURNS integer LANGUAGE sql AS $$SELECT 1$$;\n";
        sql += "CREATE FUNCTION myschema.pg_is_in_recovery() RETURNS boolean LANGUAGE sql AS $$SELECT true$$;\n";
        owner.batch_execute(&sql).await.expect("the shims");
        ShadowingRole { db: Some(db), role }
    }

    /// A URL of the database as the role.
    fn url(&self) -> String {
        let db = self.db.as_ref().expect("the database");
        db.url()
            .replacen("postgres@", &format!("{}@", self.role), 1)
    }
}

impl Drop for ShadowingRole {
    fn drop(&mut self) {
        // The database first (it ends the role's connections), then the role.
        drop(self.db.take());
        let sql = format!("DROP ROLE IF EXISTS {}", self.role);
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let (client, conn) = tokio_postgres::connect(&db_url(), tokio_postgres::NoTls)
                    .await
                    .ok()?;
                tokio::spawn(conn);
                client.batch_execute(&sql).await.ok()
            })
        })
        .join();
    }
}

/// Before the crate qualified its calls (commit f8cb36b and earlier), both
/// lockers of such a role got `Some(guard)` and `pg_locks` showed nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadowing_search_path_never_makes_two_holders() {
    let admin = raw_connect(&db_url()).await;
    let role = ShadowingRole::create(&admin).await;
    let url = role.url();
    let checker = raw_connect(&role.db.as_ref().unwrap().url()).await;

    // The shims are reached by unqualified calls of this role: two
    // connections both "hold" one key, and the server holds nothing.
    let (x, y) = (raw_connect(&url).await, raw_connect(&url).await);
    let k = advisory_locked::key_hash(&unique("trust-shadow-raw"));
    for c in [&x, &y] {
        let row = c
            .query_one("SELECT pg_try_advisory_lock($1), pg_backend_pid()", &[&k])
            .await
            .unwrap();
        assert!(row.get::<_, bool>(0), "the shim answers true");
        assert_eq!(row.get::<_, i32>(1), 1, "the pg_backend_pid shim");
    }
    let raw = advisory_locks(&checker, &[advisory_locked::KeyId::Int(k)]).await;
    assert!(raw.is_empty(), "the shims take no lock: {raw:?}");
    drop((x, y));

    let connect = || async {
        LockConfig::from_url(&url)
            .unwrap()
            .name(unique("trust-shadow"))
            .sessions(1)
            .connect()
            .await
            .unwrap_or_else(|e| panic!("a locker of the shadowing role: {e}"))
    };
    let (a, b) = (connect().await, connect().await);
    let key = LockKey::named(unique("trust-shadow"));
    let (ga, gb) = tokio::join!(
        a.try_lock(key.clone(), Mode::Exclusive),
        b.try_lock(key.clone(), Mode::Exclusive)
    );
    let (ga, gb) = (ga.unwrap(), gb.unwrap());
    assert!(
        ga.is_some() != gb.is_some(),
        "exactly one holder: a {ga:?}, b {gb:?}"
    );
    let guard = ga.or(gb).unwrap();
    assert_eq!(
        real_locks(&checker, &key, guard.backend_pid()).await,
        1,
        "pg_locks shows the holder's real lock"
    );
    guard.release().await.unwrap();
    assert!(advisory_locks(&checker, &[key.id()]).await.is_empty());
    drop((a, b));
}

/// The same role through transaction scope: the real transaction-level lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadowing_search_path_keeps_transaction_locks_real() {
    let admin = raw_connect(&db_url()).await;
    let role = ShadowingRole::create(&admin).await;
    let pool = pool_name("trust-shadow-tx");
    LockConfig::from_url(&role.url())
        .unwrap()
        .name(pool)
        .transaction_scope_only()
        .install()
        .await
        .unwrap_or_else(|e| panic!("a transaction-scope entry of the shadowing role: {e}"));
    let key = LockKey::named(unique("trust-shadow-tx"));
    let checker = raw_connect(&role.db.as_ref().unwrap().url()).await;
    let (checker, key2) = (&checker, key.clone());
    let outcome = run_tx_skip(spec(pool, Mode::Exclusive), key, |tx| async move {
        let pid = tx.backend_pid();
        let held = real_locks(checker, &key2, pid).await;
        // The other try fails while this transaction holds the key.
        let other = run_tx_skip(spec(pool, Mode::Exclusive), key2.clone(), |_tx| async {
            Ok::<(), ()>(())
        })
        .await;
        Ok::<_, ()>((held, other.map(|o| o.is_ran())))
    })
    .await
    .unwrap();
    let Outcome::Ran(Ok((held, other))) = outcome else {
        panic!("the free key was skipped");
    };
    assert_eq!(held, 1, "pg_locks shows the transaction's real lock");
    assert!(!other.unwrap(), "a second transaction got the key");
}

// ---- simulated engines: pg_catalog's own functions replaced ---------------------------

/// Replaces the `pg_catalog` advisory-lock functions of the chosen scopes,
/// in database `postgres` of a throwaway server, with shims that always
/// grant (the real ones renamed to `real_…`): what
/// `pg_catalog.pg_try_advisory_lock` resolves to is then the shim, as on an
/// engine that emulates advisory locks. (A superuser may create functions
/// in `pg_catalog`; the shared test server is never altered.)
async fn install_shims(server: &ThrowawayServer, session: bool, transaction: bool) {
    let admin = raw_connect(&server.url("postgres")).await;
    let shims = shims(session, transaction);
    let mut sql = String::new();
    for (name, args, _, _) in &shims {
        sql += &format!("ALTER FUNCTION pg_catalog.{name}({args}) RENAME TO real_{name};\n");
    }
    sql += &create_shims("pg_catalog", &shims);
    admin.batch_execute(&sql).await.expect("the shims");
    // They are reached: two "holders" of one key, nothing in pg_locks.
    let check = raw_connect(&server.url("postgres")).await;
    let q = if session {
        "SELECT pg_catalog.pg_try_advisory_lock(7)"
    } else {
        "BEGIN; SELECT pg_catalog.pg_try_advisory_xact_lock(7)"
    };
    for c in [&admin, &check] {
        let rows = c.simple_query(q).await.unwrap();
        assert!(rows.iter().any(|m| matches!(m,
            tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("t"))));
    }
    let held = advisory_locks(&admin, &[advisory_locked::KeyId::Int(7)]).await;
    assert!(held.is_empty(), "{held:?}");
}

async fn session_entry(server: &ThrowawayServer) -> Result<Locker, Error> {
    LockConfig::from_url(&server.url("postgres"))
        .unwrap()
        .name(unique("trust-session"))
        .sessions(1)
        .connect()
        .await
}

/// Installs a transaction-scope-only entry (registry: the transaction path
/// looks its entry up there).
async fn transaction_entry(server: &ThrowawayServer) -> Result<&'static str, Error> {
    let pool = pool_name("trust-tx");
    LockConfig::from_url(&server.url("postgres"))
        .unwrap()
        .name(pool)
        .transaction_scope_only()
        .install()
        .await
        .map(|_| pool)
}

/// A transaction-scope call on `pool`: whether it ran, and the real locks
/// of its key that `pg_locks` showed for its transaction meanwhile.
async fn transaction_call(server: &ThrowawayServer, pool: &'static str) -> Result<usize, Error> {
    let checker = raw_connect(&server.url("postgres")).await;
    let key = LockKey::named(unique("trust-tx-call"));
    let key2 = key.clone();
    let checker = &checker;
    let outcome = run_tx_skip(spec(pool, Mode::Exclusive), key, |tx| async move {
        Ok::<_, ()>(real_locks(checker, &key2, tx.backend_pid()).await)
    })
    .await?;
    match outcome {
        Outcome::Ran(held) => Ok(held.unwrap()),
        Outcome::Skipped => panic!("a free key was skipped"),
    }
}

fn assert_refused<T: std::fmt::Debug>(result: Result<T, Error>, want: LockScope) {
    match result {
        Err(Error::FakeAdvisoryLocks { scope, seen, .. }) if scope == want => {
            assert!(
                seen.contains("was granted on a second connection while the first held it"),
                "{seen}"
            );
        }
        other => panic!("expected FakeAdvisoryLocks of {want}, got {other:?}"),
    }
}

/// CockroachDB-like: session-level locks always granted, transaction-level
/// ones real. Session entries are refused; transaction-scope-only ones work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_level_shims_refuse_session_entries_only() {
    let server = ThrowawayServer::start();
    install_shims(&server, true, false).await;
    let refused = session_entry(&server).await;
    if let Err(e) = &refused {
        println!("{e}");
    }
    assert_refused(refused, LockScope::Session);
    let pool = transaction_entry(&server).await.unwrap();
    assert_eq!(transaction_call(&server, pool).await.unwrap(), 1);
}

/// Transaction-level locks always granted, session-level ones real: session
/// entries install and lock for real; transaction scope is refused (at
/// install for a transaction-scope-only entry, per call on a session entry).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_level_shims_refuse_transaction_scope_only() {
    let server = ThrowawayServer::start();
    install_shims(&server, false, true).await;
    assert_refused(transaction_entry(&server).await, LockScope::Transaction);

    let pool = pool_name("trust-session-tx");
    let locker = LockConfig::from_url(&server.url("postgres"))
        .unwrap()
        .name(pool)
        .sessions(1)
        .install()
        .await
        .unwrap();
    let key = LockKey::named(unique("trust-xshim"));
    let guard = locker
        .try_lock(key.clone(), Mode::Exclusive)
        .await
        .unwrap()
        .expect("a free key");
    let admin = raw_connect(&server.url("postgres")).await;
    assert_eq!(real_locks(&admin, &key, guard.backend_pid()).await, 1);
    guard.release().await.unwrap();
    assert_refused(
        transaction_call(&server, pool).await,
        LockScope::Transaction,
    );
}

/// Both scopes emulated: both kinds of entry are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shims_of_both_scopes_refuse_every_entry() {
    let server = ThrowawayServer::start();
    install_shims(&server, true, true).await;
    assert_refused(session_entry(&server).await, LockScope::Session);
    assert_refused(transaction_entry(&server).await, LockScope::Transaction);
}

/// A lock session that replaces a dead one is tested again before it
/// serves: shims installed after configuration are caught then, and no
/// lock is granted through them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_lock_session_is_tested_again() {
    let server = ThrowawayServer::start();
    let locker = session_entry(&server).await.unwrap();
    let key = LockKey::named(unique("trust-replace"));
    let guard = locker
        .try_lock(key.clone(), Mode::Exclusive)
        .await
        .unwrap()
        .expect("a free key");
    let pid = guard.backend_pid();
    guard.release().await.unwrap();

    install_shims(&server, true, false).await;
    let admin = raw_connect(&server.url("postgres")).await;
    assert!(terminate_backend(&admin, pid).await);
    // The dead session is noticed at once or by the next request; either
    // way the replacement is refused, and nothing is granted.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut refused = None;
    for _ in 0..50 {
        match locker.try_lock(key.clone(), Mode::Exclusive).await {
            Ok(Some(g)) => panic!("granted through the shims: {g:?}"),
            Ok(None) => panic!("a free key was busy"),
            Err(e @ Error::FakeAdvisoryLocks { .. }) => {
                refused = Some(e);
                break;
            }
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("{e}"),
        }
    }
    let refused = refused.expect("the replacement session was refused within 10 s");
    println!("{refused}");
    assert_refused(Err::<(), _>(refused), LockScope::Session);
}
