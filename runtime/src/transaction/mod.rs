//! Transaction scope: `#[advisory_locked(key = "…", transaction = tx)]`.
//!
//! The lock is a transaction-level advisory lock
//! (`pg_try_advisory_xact_lock` / `pg_advisory_xact_lock`, `_shared` for
//! [`Mode::Shared`]) of a transaction that the body runs its statements in:
//! the body's writes commit together with the end of the lock, so a holder
//! that gets the lock next sees them. PostgreSQL ends the lock with the
//! transaction (COMMIT, ROLLBACK, or the connection's end); nothing has to
//! be unlocked.
//!
//! # Connections
//!
//! Transaction scope does not use the entry's lock sessions (they hold
//! session locks of many keys): each call takes a plain connection from a
//! small pool of its own per registry entry (at most
//! [`LockConfig::transaction_connections`](crate::LockConfig::transaction_connections),
//! opened when first needed). A connection goes back to the pool only when
//! its transaction ended cleanly (its COMMIT or ROLLBACK was answered, and
//! the [`Transaction`] handle did not outlive the body); any other end
//! closes it, which makes the server roll back whatever it had begun.
//!
//! # Round trips
//!
//! Skip mode sends `BEGIN` and the try-lock together (one round trip); a
//! busy key's transaction is rolled back off the caller's path (the
//! connection is reused once that is answered). Wait mode sends `BEGIN`, a
//! transaction-local `lock_timeout` (the call's timeout; `0` = none for
//! `wait` without a timeout), the waiting `pg_advisory_xact_lock` and the
//! restore of the session's own `lock_timeout`/`statement_timeout`
//! together: the server does the waiting, and hands the lock to the next
//! waiter the moment its holder commits. The commit sends a check that the
//! transaction is still the one that took the lock and not aborted, and
//! `COMMIT`, together. All these statements are unnamed (simple queries or
//! `query_typed`), so nothing named is left on a server session that a
//! transaction-pooling proxy hands to another client.
//!
//! # Cancellation
//!
//! If the call's future is dropped at any await (waiting for the lock, in
//! the body, during the commit), its connection is never reused: a cancel
//! request is sent for whatever statement runs on it (a blocked lock wait
//! among them), bounded by the connect timeout, then the connection is
//! closed, and the server rolls the transaction back, releasing the lock.
//! A COMMIT already sent when the future is dropped may still take effect.
//! From PostgreSQL 14 on, each transaction also sets
//! `client_connection_check_interval` (1 s), so the server notices a client
//! that vanished (a crashed process) even while a statement or the lock
//! wait runs.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Client;

use crate::config::Settings;
use crate::error::LockScope;
use crate::pg::connect::Canceller;
use crate::pg::sql;
use crate::session::trust;
use crate::{Error, KeyId, LockKey, Mode, OnLost, Outcome};

/// The transaction a `transaction = tx` body runs in; the lock is a
/// transaction-level lock of it, so it is held until the transaction ends.
///
/// It dereferences to the connection's [`tokio_postgres::Client`]: run the
/// body's statements with it (`tx.execute(…)`, `tx.query(…)`,
/// `tx.query_typed(…)`, …). They are part of the transaction, which is
/// committed when the body returns `Ok(_)` (or `()`) and rolled back when it
/// returns `Err(_)` (see [`TransactionResult`]).
///
/// ```no_run
/// use advisory_locked::advisory_locked;
///
/// // (`tx` is the body's `advisory_locked::Transaction`.)
/// #[advisory_locked(key = "invoice:{id}", transaction = tx)]
/// async fn bill(id: i64) -> Result<u64, tokio_postgres::Error> {
///     // Committed together with the end of the lock:
///     tx.execute("UPDATE invoices SET billed = true WHERE id = $1", &[&id]).await
/// }
/// ```
///
/// Rules:
///
/// - Do not send `COMMIT`, `ROLLBACK` or `BEGIN` yourself: the transaction
///   (and with it the lock) would end early. This is noticed at the end (a
///   body that asked to commit then gets [`Error::Transaction`]), not
///   prevented.
/// - Do not let the handle outlive the body (e.g. by moving it into a task
///   that is not awaited): its connection is then closed instead of reused,
///   the transaction is rolled back, and a body that asked to commit gets
///   [`Error::Transaction`]. Statements sent through a leaked handle fail
///   once the connection is closed; they never run on a connection that
///   serves another call.
/// - Behind a transaction-pooling proxy, prefer unnamed statements
///   (`query_typed`, `simple_query`, `batch_execute`): a statement the body
///   prepares by name lives on a server session that the proxy hands to
///   other clients afterwards (tokio-postgres closes the statements it
///   prepares for `query(&str, …)` when done, within the transaction).
pub struct Transaction {
    client: Arc<Client>,
    key: LockKey,
    mode: Mode,
    backend_pid: i32,
}

impl Transaction {
    /// The key locked.
    pub fn key(&self) -> &LockKey {
        &self.key
    }

    /// The mode locked.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The server's process id of the transaction's session (as in
    /// `pg_locks.pid`), taken when the lock was granted.
    pub fn backend_pid(&self) -> i32 {
        self.backend_pid
    }

    /// The connection (also reachable through `Deref`).
    pub fn client(&self) -> &Client {
        &self.client
    }
}

impl std::ops::Deref for Transaction {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl std::fmt::Debug for Transaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction")
            .field("key", &self.key)
            .field("mode", &self.mode)
            .field("backend_pid", &self.backend_pid)
            .finish()
    }
}

/// What a transaction-scope body returns: whether to commit.
///
/// `Result<T, E>` commits on `Ok` and rolls back on `Err`; `()` commits.
///
/// ```
/// use advisory_locked::TransactionResult;
///
/// assert!(Ok::<u32, String>(1).commits());
/// assert!(!Err::<u32, String>("no".into()).commits());
/// assert!(().commits());
/// ```
pub trait TransactionResult {
    /// True to commit the body's transaction, false to roll it back.
    fn commits(&self) -> bool;
}

impl<T, E> TransactionResult for Result<T, E> {
    fn commits(&self) -> bool {
        self.is_ok()
    }
}

impl TransactionResult for () {
    fn commits(&self) -> bool {
        true
    }
}

// ---------------------------------------------------------------------------
// The pool of transaction connections, one per registry entry
// ---------------------------------------------------------------------------

static POOLS: LazyLock<Mutex<HashMap<String, Arc<Pool>>>> = LazyLock::new(Default::default);

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// A registry entry's transaction connections.
pub(crate) struct Pool {
    settings: Settings,
    /// Connections idle outside any transaction, ready for reuse.
    idle: Mutex<Vec<Conn>>,
    /// One permit per connection open or being opened.
    permits: Arc<Semaphore>,
}

impl Pool {
    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Conn>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The transaction connections of the registry entry `settings.name`
/// (created on first use).
pub(crate) fn pool_for(settings: &Settings) -> Arc<Pool> {
    let mut pools = POOLS.lock().unwrap_or_else(|p| p.into_inner());
    let pool = pools.entry(settings.name.clone()).or_insert_with(|| {
        Arc::new(Pool {
            permits: Arc::new(Semaphore::new(settings.transaction_connections)),
            settings: settings.clone(),
            idle: Mutex::new(Vec::new()),
        })
    });
    pool.clone()
}

/// One plain connection. Dropping it closes the connection at once, even
/// if a leaked [`Transaction`] still refers to its client.
struct Conn {
    id: u64,
    client: Arc<Client>,
    cancel: Canceller,
    /// Dropped: the connection's task drops the connection (closes the socket).
    _close: oneshot::Sender<()>,
    /// True (or the sender gone) once the connection has ended.
    ended: watch::Receiver<bool>,
}

impl Conn {
    fn is_dead(&self) -> bool {
        self.client.is_closed() || *self.ended.borrow() || self.ended.has_changed().is_err()
    }

    /// Resolves when the connection ends.
    fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut ended = self.ended.clone();
        async move {
            let _ = ended.wait_for(|e| *e).await;
        }
    }
}

/// Opens a connection with the entry's settings through the crate's one
/// connect path (the first host that is a primary, TLS included).
async fn open(settings: &Settings) -> Result<Conn, Error> {
    let connected = crate::pg::connect::connect(settings).await?;
    let id = NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed);
    let (close, closed) = oneshot::channel::<()>();
    let (ended_tx, ended) = watch::channel(false);
    let pool = settings.name.clone();
    let connection = connected.connection;
    tokio::spawn(async move {
        tokio::select! {
            result = connection => {
                if let Err(e) = result {
                    tracing::debug!(pool = %pool, connection = id, error = %e, "advisory-locked: transaction connection ended");
                }
            }
            // Sent or dropped: close (dropping the connection closes the socket).
            _ = closed => {}
        }
        let _ = ended_tx.send(true);
    });
    tracing::debug!(pool = %settings.name, connection = id, host = %connected.target.describe(), "advisory-locked: transaction connection opened");
    Ok(Conn {
        id,
        cancel: Canceller {
            token: connected.client.cancel_token(),
            target: connected.target,
        },
        client: Arc::new(connected.client),
        _close: close,
        ended,
    })
}

/// For [`LockConfig::transaction_scope_only`](crate::LockConfig::transaction_scope_only)
/// entries, at configuration time: one connection (then closed) shows that
/// the server is reachable, takes the credentials and is not a standby;
/// with one more to the same host (a probe, closed too), the
/// transaction-scope exclusion self-test ([`crate::session::trust`]):
/// [`Error::FakeAdvisoryLocks`] if it fails. The test is bounded by the
/// connect timeout ([`Error::ConnectTimeout`]: e.g. a proxy that gives the
/// entry a single server session, so that the second transaction waits for
/// the first).
pub(crate) async fn check_server(settings: &Settings) -> Result<(), Error> {
    let conn = open(settings).await?;
    let host = &conn.cancel.target;
    let probe = crate::pg::connect::connect_client_at(settings, host).await?;
    let after = settings.connect_timeout;
    let testing = trust::exclusion(&conn.client, &probe, trust::Scopes::TRANSACTION);
    let verdict = match tokio::time::timeout(after, testing).await {
        Ok(Ok(verdict)) => verdict,
        Ok(Err(source)) => {
            return Err(Error::Connect {
                target: host.describe(),
                source: Box::new(source),
            })
        }
        Err(_) => {
            return Err(Error::ConnectTimeout {
                target: settings.target(),
                after,
            })
        }
    };
    trust::report(settings, &verdict, LockScope::Transaction)?;
    tracing::debug!(pool = %settings.name, connection = conn.id, "advisory-locked: transaction-scope-only entry: server checked");
    Ok(())
}

/// [`Error::FakeAdvisoryLocks`] if the entry's transaction-level locks
/// failed the exclusion self-test at configuration (a session entry, which
/// installed for its session-level locks).
fn refuse_if_untrusted(settings: &Settings) -> Result<(), Error> {
    match &settings.untrusted_transaction_locks {
        None => Ok(()),
        Some(seen) => Err(Error::FakeAdvisoryLocks {
            target: settings.target(),
            scope: LockScope::Transaction,
            seen: seen.clone(),
        }),
    }
}

/// Sends a cancel request for whatever runs on `conn` (bounded by the
/// connect timeout), then closes it, then frees its pool slot.
fn discard(settings: &Settings, conn: Conn, permit: Option<OwnedSemaphorePermit>) {
    if conn.is_dead() {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        // No runtime to send a cancel request from: closing alone ends the
        // session (the server notices when its statement, if any, ends).
        return;
    };
    let settings = settings.clone();
    runtime.spawn(async move {
        // (Bounded by the connect timeout.)
        if let Err(e) = conn.cancel.cancel(&settings).await {
            tracing::debug!(pool = %settings.name, connection = conn.id, error = %e, "advisory-locked: cancel request failed; closing the transaction connection anyway");
        }
        tracing::debug!(pool = %settings.name, connection = conn.id, "advisory-locked: transaction connection closed (not reusable)");
        drop(conn);
        drop(permit);
    });
}

/// A connection taken from the pool for one call. Dropped, it goes back to
/// the pool if `reuse` was set (the transaction ended cleanly), else it is
/// discarded (see [`discard`]).
struct Lease {
    pool: Arc<Pool>,
    conn: Option<Conn>,
    permit: Option<OwnedSemaphorePermit>,
    /// Taken from the idle list (it may have died unnoticed).
    reused: bool,
    reuse: bool,
}

impl Lease {
    fn conn(&self) -> &Conn {
        // Set from creation to drop.
        self.conn.as_ref().expect("lease without a connection")
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        if self.reuse && !conn.is_dead() {
            // Back before the permit is freed: a waiter finds it.
            self.pool.idle().push(conn);
            return;
        }
        discard(&self.pool.settings, conn, self.permit.take());
    }
}

/// Takes a pool slot (waiting at most until `deadline`; `None` if it
/// passed), then an idle connection or a new one.
async fn lease(
    pool: &Arc<Pool>,
    deadline: Option<tokio::time::Instant>,
) -> Option<Result<Lease, Error>> {
    let acquire = pool.permits.clone().acquire_owned();
    let permit = match deadline {
        Some(d) => tokio::time::timeout_at(d, acquire).await.ok()?,
        None => acquire.await,
    }
    // The semaphore is never closed.
    .ok()?;
    let idle = loop {
        let Some(conn) = pool.idle().pop() else {
            break None;
        };
        if !conn.is_dead() {
            break Some(conn);
        }
    };
    let (conn, reused) = match idle {
        Some(conn) => (conn, true),
        None => match open(&pool.settings).await {
            Ok(conn) => (conn, false),
            Err(e) => return Some(Err(e)),
        },
    };
    Some(Ok(Lease {
        pool: pool.clone(),
        conn: Some(conn),
        permit: Some(permit),
        reused,
        reuse: false,
    }))
}

// ---------------------------------------------------------------------------
// The statements
// ---------------------------------------------------------------------------

/// What the lock statement found.
struct Locked {
    granted: bool,
    backend_pid: i32,
    started: SystemTime,
}

/// `BEGIN`, [timeouts], the lock statement, [restore], pipelined in one
/// round trip. `lock_timeout`: `None` for skip mode (try-lock), else the
/// wait's `lock_timeout` setting (`"0"`: no limit).
async fn begin_and_lock(
    client: &Client,
    key: KeyId,
    mode: Mode,
    lock_timeout: Option<&str>,
) -> Result<Locked, tokio_postgres::Error> {
    let wait = lock_timeout.is_some();
    let sql = if wait {
        sql::xact_wait_lock(mode, key)
    } else {
        sql::xact_try_lock(mode, key)
    };
    let (int, a, b) = key.parts();
    let params: Vec<(&(dyn ToSql + Sync), Type)> = match key {
        KeyId::Int(_) => vec![(&int, Type::INT8)],
        KeyId::Pair(..) => vec![(&a, Type::INT4), (&b, Type::INT4)],
    };
    let timeout = lock_timeout.unwrap_or("0");
    // join! polls in order: the requests are queued in this order, in the
    // same turn, and go out together.
    let (begin, set, lock, restore) = tokio::join!(
        client.batch_execute(sql::BEGIN),
        async {
            if wait {
                client
                    .query_typed(sql::XACT_SET_TIMEOUTS, &[(&timeout, Type::TEXT)])
                    .await
                    .map(drop)
            } else {
                Ok(())
            }
        },
        client.query_typed_one(sql, &params),
        async {
            if wait {
                client.batch_execute(sql::XACT_RESTORE_TIMEOUTS).await
            } else {
                Ok(())
            }
        },
    );
    begin?;
    set?;
    let row = lock?;
    restore?;
    Ok(Locked {
        granted: if wait { true } else { row.try_get(0)? },
        backend_pid: row.try_get(1)?,
        started: row.try_get(2)?,
    })
}

/// The wait's `lock_timeout` setting: what is left of the call's timeout,
/// in whole milliseconds, at least 1 (`0` would mean no limit).
fn lock_timeout_setting(left: Duration) -> String {
    format!("{}ms", left.as_millis().clamp(1, i32::MAX as u128))
}

// ---------------------------------------------------------------------------
// The calls
// ---------------------------------------------------------------------------

/// What a transaction-scope call does when the key is busy.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Busy {
    /// Skip the body.
    Skip,
    /// Wait for the lock, at most this long (`None`: as long as it takes).
    Wait(Option<Duration>),
}

/// One transaction-scope call: where, in which mode, and with which loss
/// policy (`None`: the entry's).
pub(crate) struct Call {
    pub(crate) pool: Arc<Pool>,
    pub(crate) mode: Mode,
    pub(crate) on_lost: Option<OnLost>,
}

/// Begins a transaction, takes the lock (or waits for it, as `busy` says),
/// runs the body with the transaction, and commits or rolls back.
pub(crate) async fn run<B, F>(
    call: Call,
    key: LockKey,
    busy: Busy,
    body: B,
) -> Result<Outcome<F::Output>, Error>
where
    B: FnOnce(Transaction) -> F,
    F: Future,
    F::Output: TransactionResult,
{
    refuse_if_untrusted(&call.pool.settings)?;
    let attempt = Attempt {
        start: Instant::now(),
        name: key.name().to_owned(),
        busy,
    };
    let Some((lease, locked)) = acquire(&call, &key, &attempt).await? else {
        return Ok(Outcome::Skipped);
    };
    let settings = &call.pool.settings;
    let name = attempt.name;
    tracing::debug!(pool = %settings.name, key = %name, id = %key.id(), mode = ?call.mode, backend_pid = locked.backend_pid, connection = lease.conn().id, "advisory-locked: acquired (transaction scope)");
    let policy = call.on_lost.unwrap_or(settings.on_lost);
    let tx = Transaction {
        client: lease.conn().client.clone(),
        key,
        mode: call.mode,
        backend_pid: locked.backend_pid,
    };
    let lost = lease.conn().lost();
    let body = body(tx);
    let value = match policy {
        OnLost::Abort => {
            tokio::select! {
                biased;
                () = lost => {
                    tracing::error!(pool = %settings.name, key = %name, "advisory-locked: the transaction's connection ended while the body ran (lock and transaction gone); the body was stopped");
                    return Err(Error::LockLost { key: name });
                }
                value = body => value,
            }
        }
        OnLost::Continue => body.await,
    };
    finish(lease, &name, locked.started, value)
        .await
        .map(Outcome::Ran)
}

/// One call's timing and busy behaviour.
struct Attempt {
    start: Instant,
    name: String,
    busy: Busy,
}

impl Attempt {
    fn timed_out(&self) -> Error {
        Error::WaitTimeout {
            key: self.name.clone(),
            waited: self.start.elapsed(),
        }
    }

    /// How long the call may wait for a free connection: its own timeout in
    /// wait mode; the connect timeout in skip mode.
    fn deadline(&self, settings: &Settings) -> Option<tokio::time::Instant> {
        let start = tokio::time::Instant::from_std(self.start);
        match self.busy {
            Busy::Wait(Some(t)) => Some(start + t),
            Busy::Wait(None) => None,
            Busy::Skip => Some(start + settings.connect_timeout),
        }
    }

    /// The `lock_timeout` setting of a wait (`"0"`: no limit); `None` in
    /// skip mode (a try-lock).
    fn lock_timeout(&self) -> Option<String> {
        match self.busy {
            Busy::Skip => None,
            Busy::Wait(Some(t)) => {
                Some(lock_timeout_setting(t.saturating_sub(self.start.elapsed())))
            }
            Busy::Wait(None) => Some("0".to_owned()),
        }
    }
}

/// A connection of the pool with the transaction begun and the lock
/// statement answered; `None` when a try-lock found the key busy (its
/// transaction is rolled back off the caller's path).
async fn acquire(
    call: &Call,
    key: &LockKey,
    attempt: &Attempt,
) -> Result<Option<(Lease, Locked)>, Error> {
    let settings = &call.pool.settings;
    let deadline = attempt.deadline(settings);
    let mut retried = false;
    loop {
        let lease = match lease(&call.pool, deadline).await {
            Some(result) => result?,
            None if matches!(attempt.busy, Busy::Wait(_)) => return Err(attempt.timed_out()),
            None => {
                return Err(Error::TransactionConnectionsBusy {
                    pool: settings.name.clone(),
                    connections: settings.transaction_connections,
                    waited: attempt.start.elapsed(),
                })
            }
        };
        match lock_once(call, key, attempt, &lease).await? {
            Ok(locked) if locked.granted => return Ok(Some((lease, locked))),
            Ok(_) => {
                tracing::debug!(pool = %settings.name, key = %attempt.name, "advisory-locked: skipped (transaction-scope lock busy)");
                tokio::spawn(end_transaction(lease, sql::ROLLBACK));
                return Ok(None);
            }
            Err(e)
                if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE)
                    && matches!(attempt.busy, Busy::Wait(_)) =>
            {
                tracing::debug!(pool = %settings.name, key = %attempt.name, waited_ms = attempt.start.elapsed().as_millis() as u64, "advisory-locked: transaction-scope wait timed out");
                end_transaction(lease, sql::ROLLBACK).await;
                return Err(attempt.timed_out());
            }
            Err(e) if lease.reused && !retried && crate::pg::connect::ends_session(&e) => {
                // A pooled connection that died while idle: once more on a
                // fresh one (nothing was begun on the server).
                tracing::info!(pool = %settings.name, key = %attempt.name, connection = lease.conn().id, "advisory-locked: idle transaction connection had ended; retrying on a fresh one");
                retried = true;
            }
            Err(e) => {
                tracing::warn!(pool = %settings.name, key = %attempt.name, error = %crate::error::cause(&e), "advisory-locked: transaction-scope lock failed");
                return Err(Error::Query {
                    key: attempt.name.clone(),
                    source: Arc::new(crate::QueryError::from(&e)),
                });
            }
        }
    }
}

/// `BEGIN` and the lock statement on a leased connection; with a
/// client-side bound too in wait mode, in case the server stops answering
/// (the server's lock_timeout plus the connect timeout).
async fn lock_once(
    call: &Call,
    key: &LockKey,
    attempt: &Attempt,
    lease: &Lease,
) -> Result<Result<Locked, tokio_postgres::Error>, Error> {
    let settings = &call.pool.settings;
    let lock_timeout = attempt.lock_timeout();
    let locking = begin_and_lock(
        &lease.conn().client,
        key.id(),
        call.mode,
        lock_timeout.as_deref(),
    );
    let Busy::Wait(Some(t)) = attempt.busy else {
        return Ok(locking.await);
    };
    let bound = t.saturating_sub(attempt.start.elapsed()) + settings.connect_timeout;
    match tokio::time::timeout(bound, locking).await {
        Ok(r) => Ok(r),
        Err(_) => {
            tracing::warn!(pool = %settings.name, key = %attempt.name, "advisory-locked: the server did not answer the lock wait; closing its transaction connection");
            Err(attempt.timed_out())
        }
    }
}

/// Commits (or rolls back) after the body; the lease goes back to the pool
/// only if that ended cleanly.
async fn finish<T: TransactionResult>(
    mut lease: Lease,
    key: &str,
    started: SystemTime,
    value: T,
) -> Result<T, Error> {
    let pool = lease.pool.settings.name.clone();
    let commits = value.commits();
    let client = lease.conn().client.clone();
    // The lease's own reference, and this one.
    if Arc::strong_count(&client) > 2 {
        tracing::warn!(pool = %pool, key = %key, "advisory-locked: the Transaction handle outlived the body; rolling back and closing its connection");
        drop(client);
        drop(lease); // closed: the server rolls back
        return if commits {
            Err(Error::Transaction {
                key: key.to_owned(),
                reason: "the Transaction handle outlived the body (moved into a task or stored), so the transaction was rolled back and its connection closed".to_owned(),
                source: None,
            })
        } else {
            Ok(value)
        };
    }
    if !commits {
        drop(client);
        end_transaction(lease, sql::ROLLBACK).await;
        tracing::debug!(pool = %pool, key = %key, "advisory-locked: rolled back (the body failed); lock released");
        return Ok(value);
    }
    if lease.conn().is_dead() {
        tracing::warn!(pool = %pool, key = %key, "advisory-locked: transaction did not commit: its connection had ended");
        return Err(Error::Transaction {
            key: key.to_owned(),
            reason: "its connection ended while the body ran, so the server rolled it back (and the lock was released then)".to_owned(),
            source: None,
        });
    }
    let check_params: [(&(dyn ToSql + Sync), Type); 1] = [(&started, Type::TIMESTAMPTZ)];
    let (check, commit) = tokio::join!(
        client.query_typed(sql::XACT_CHECK_BEFORE_COMMIT, &check_params),
        client.batch_execute(sql::COMMIT),
    );
    drop(client);
    let fail = |reason: &str, source: tokio_postgres::Error| {
        tracing::warn!(pool = %pool, key = %key, error = %crate::error::cause(&source), "advisory-locked: transaction did not commit: {reason}");
        Err(Error::Transaction {
            key: key.to_owned(),
            reason: reason.to_owned(),
            source: Some(Arc::new(source)),
        })
    };
    match (check, commit) {
        (Ok(_), Ok(())) => {
            lease.reuse = true;
            tracing::debug!(pool = %pool, key = %key, "advisory-locked: committed; lock released");
            Ok(value)
        }
        (_, Err(e)) => fail(
            "COMMIT failed (if the connection was lost, whether it took effect is unknown)",
            e,
        ),
        (Err(e), Ok(())) if e.code() == Some(&SqlState::IN_FAILED_SQL_TRANSACTION) => fail(
            "a statement of the body had failed, so PostgreSQL rolled the transaction back",
            e,
        ),
        (Err(e), Ok(())) if e.code() == Some(&SqlState::DIVISION_BY_ZERO) => fail(
            "the body ended the transaction itself (COMMIT or ROLLBACK through the Transaction), which released the lock early; what it ran after that was rolled back",
            e,
        ),
        (Err(e), Ok(())) => fail("the check before COMMIT failed, so it rolled back", e),
    }
}

/// Ends a transaction that the body did not commit; the connection is
/// reused only if the server answered.
async fn end_transaction(mut lease: Lease, sql: &'static str) {
    match lease.conn().client.batch_execute(sql).await {
        Ok(()) => lease.reuse = true,
        Err(e) => {
            tracing::warn!(pool = %lease.pool.settings.name, error = %crate::error::cause(&e), "advisory-locked: {sql} failed; closing the transaction connection");
        }
    }
}
