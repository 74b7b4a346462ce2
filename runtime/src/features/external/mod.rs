//! Bring your own connection: advisory locks on the application's own
//! tokio-postgres, sqlx or deadpool-postgres connection or transaction.
//!
//! The rest of this crate locks on sessions it opens itself. A service that
//! already holds a sqlx `PgPool`, a deadpool-postgres pool or a
//! tokio-postgres `Client` often wants the lock *in its own transaction*,
//! so that its writes and the lock end together: whoever takes the key
//! next sees the writes committed, or none of them. This module does that,
//! with the same keys ([`LockKey`]: the same hashing, `pg_locks` shows the
//! same numbers), the same modes and the same skip/wait/timeout outcomes as
//! the rest of the crate, on any type implementing [`AdvisoryExecutor`]:
//!
//! | type | feature | [`AdvisoryTransaction`] |
//! |---|---|---|
//! | `tokio_postgres::Transaction<'_>` | always | yes |
//! | `tokio_postgres::Client` | always | no |
//! | `sqlx::Transaction<'_, Postgres>` (`PgTransaction`) | `sqlx` | yes |
//! | `sqlx::PgConnection`, `sqlx::pool::PoolConnection<Postgres>` | `sqlx` | no |
//! | `deadpool_postgres::Transaction<'_>` | `deadpool-postgres` | yes |
//! | `deadpool_postgres::Object` (`deadpool_postgres::Client`) | `deadpool-postgres` | no |
//! | `&mut T` of any of them | | no |
//!
//! # Transaction-level locks: [`try_lock_xact`], [`lock_xact`]
//!
//! `pg_try_advisory_xact_lock` / `pg_advisory_xact_lock` (`_shared` for
//! [`Mode::Shared`]) in the caller's transaction. Nothing is unlocked:
//! PostgreSQL releases the lock when the transaction commits or rolls back
//! (or its connection ends), together with the transaction's writes. They
//! take an [`AdvisoryTransaction`] only, so that a lock cannot be taken by
//! mistake on a connection outside a transaction block (there it would end
//! with its own statement). They work behind pgbouncer in transaction
//! pooling mode, where session-level locks don't.
//!
//! ```no_run
//! # #[cfg(feature = "sqlx")]
//! # async fn demo(pool: sqlx::PgPool, id: i64) -> Result<(), Box<dyn std::error::Error>> {
//! use advisory_locked::external::{lock_xact, try_lock_xact};
//! use advisory_locked::{LockKey, Mode};
//! use std::time::Duration;
//!
//! let mut tx = pool.begin().await?;
//! let key = LockKey::named(format!("invoice:{id}"));
//! if try_lock_xact(&mut tx, key.clone(), Mode::Exclusive).await? {
//!     sqlx::query("UPDATE invoices SET billed = true WHERE id = $1")
//!         .bind(id)
//!         .execute(&mut *tx)
//!         .await?;
//!     tx.commit().await?; // the write and the end of the lock, together
//! }
//! // Or wait at most 5 s for it (Err(Error::WaitTimeout) after that):
//! let mut tx = pool.begin().await?;
//! lock_xact(&mut tx, key, Mode::Exclusive, Some(Duration::from_secs(5))).await?;
//! # Ok(()) }
//! ```
//!
//! The wait sets the lock timeout for the wait only (`set_config('lock_timeout',
//! …, true)`, then the caller's own value again, all in one statement); the
//! caller's `statement_timeout`, if any, still applies (it ends the wait
//! with [`Error::Query`], SQLSTATE 57014). As any failed statement does, a
//! wait that times out ([`Error::WaitTimeout`]) or fails leaves the caller's
//! transaction aborted: roll it back.
//!
//! # Session-level locks: [`try_lock_session`], [`lock_session`]
//!
//! `pg_try_advisory_lock` / `pg_advisory_lock` on a connection, held until
//! unlocked: the [`SessionLock`] guard owns the connection (or a `&mut` of
//! it), gives access to it while the lock is held, and
//! [`SessionLock::release`] unlocks and gives the connection back.
//!
//! **A pool does not know about the lock.** A pooled connection that goes
//! back to its pool still holding a session lock keeps holding it, for
//! whoever borrows the connection next, until it is unlocked there or the
//! connection closes; nobody else can take the key meanwhile (deadpool's
//! `RecyclingMethod::Clean` runs `DISCARD ALL`, which does release it;
//! sqlx's pool and deadpool's default `Fast` recycling don't). So:
//!
//! - call [`SessionLock::release`] (and await it) before the connection goes
//!   back to its pool; if the unlock fails, the connection is closed (taken
//!   out of its pool), not returned, and the error is returned;
//! - a guard dropped without `release`, when it owns the connection
//!   (`PoolConnection`, `deadpool_postgres::Object`, `Client`,
//!   `PgConnection`), unlocks in a task spawned on the current Tokio
//!   runtime, and only then lets the connection go (back to its pool); if
//!   there is no runtime or the unlock fails, it closes the connection
//!   instead (the server then releases the lock) and logs it;
//! - a guard dropped without `release` that only *borrows* the connection
//!   (`&mut T`) cannot do either: it logs an error (`tracing`, target
//!   `advisory_locked`) naming the key, and the lock stays held by that
//!   connection. Release such guards explicitly.
//!
//! Session-level locks need a connection that is the same server session
//! from one statement to the next: not through pgbouncer in transaction
//! pooling mode (use transaction-level locks there).
//!
//! # With the attribute
//!
//! `#[advisory_locked(key = "…", on = tx)]` takes the transaction-level
//! lock in the fn's argument `tx` (an [`AdvisoryTransaction`], or a `&mut`
//! of one) before the body runs; see the crate's documentation of the
//! attribute. (`transaction = tx` is different: the crate opens the
//! transaction itself, on its own connection.)

mod guard;
pub(crate) mod macro_support;
#[cfg(feature = "sqlx")]
mod sqlx;
mod tokio_pg;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::error::SqlState;

use crate::error::QueryError;
use crate::pg::sql::{self, External, Form};
use crate::{Error, LockKey, Mode};

pub use guard::SessionLock;

/// A boxed, `Send` future, as [`AdvisoryExecutor::query_bool`] returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A connection or transaction of a PostgreSQL client library that this
/// crate's lock statements can run on. Implemented for the types listed in
/// the [module documentation](self); implement it for a wrapper of your own
/// by forwarding to one of them.
pub trait AdvisoryExecutor: Send {
    /// Runs `statement` (its [`sql`](LockStatement::sql) with its
    /// [`params`](LockStatement::params), typed as they say, preferably as
    /// an unnamed statement) and returns the one `boolean` column of its
    /// one row.
    fn query_bool<'a>(
        &'a mut self,
        statement: &'a LockStatement,
    ) -> BoxFuture<'a, Result<bool, QueryError>>;

    /// What a [`SessionLock`] dropped without [`release`](SessionLock::release)
    /// does with its connection, which still holds the lock: `unlock` is
    /// the statement that releases it. The default (for borrowed
    /// connections, which cannot be moved into a task) logs an error: the
    /// lock stays held by this connection. Owned connections unlock in a
    /// spawned task, or close the connection.
    fn drop_with_lock(self, unlock: LockStatement, key: &LockKey)
    where
        Self: Sized,
    {
        let _ = unlock;
        tracing::error!(key = %key.name(), id = %key.id(), "advisory-locked: a SessionLock on a borrowed connection was dropped without release(): the session lock stays held by that connection until it is unlocked or closed");
    }
}

/// An open transaction: where transaction-level locks ([`try_lock_xact`],
/// [`lock_xact`], `#[advisory_locked(on = …)]`) can be taken.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a transaction that an advisory lock can be taken in",
    label = "not an open transaction",
    note = "transaction-level locks end with their transaction: pass a `&mut` of `sqlx::Transaction<'_, Postgres>`, `tokio_postgres::Transaction<'_>` or `deadpool_postgres::Transaction<'_>` (see `advisory_locked::external`)",
    note = "for a lock on a connection, use `advisory_locked::external::lock_session`"
)]
pub trait AdvisoryTransaction: AdvisoryExecutor {}

impl<T: AdvisoryExecutor + ?Sized> AdvisoryExecutor for &mut T {
    fn query_bool<'a>(
        &'a mut self,
        statement: &'a LockStatement,
    ) -> BoxFuture<'a, Result<bool, QueryError>> {
        (**self).query_bool(statement)
    }
}

/// One of this crate's lock statements, with its parameters.
#[derive(Debug, Clone)]
pub struct LockStatement {
    sql: &'static str,
    params: Vec<Param>,
}

/// A parameter of a [`LockStatement`], with its PostgreSQL type.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Param {
    /// `bigint` (`int8`).
    Int8(i64),
    /// `integer` (`int4`).
    Int4(i32),
    /// `text`.
    Text(String),
}

impl LockStatement {
    fn new(what: External, mode: Mode, key: &LockKey, timeout: Option<&str>) -> LockStatement {
        let id = key.id();
        let mut params = Vec::with_capacity(3);
        if let Some(timeout) = timeout {
            params.push(Param::Text(timeout.to_owned()));
        }
        match id {
            crate::KeyId::Int(k) => params.push(Param::Int8(k)),
            crate::KeyId::Pair(a, b) => params.extend([Param::Int4(a), Param::Int4(b)]),
        }
        LockStatement {
            sql: sql::external(what, mode, Form::of(id)),
            params,
        }
    }

    /// The SQL text (every function `pg_catalog`-qualified).
    pub fn sql(&self) -> &'static str {
        self.sql
    }

    /// The parameters, `$1` first.
    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// The unlock of a session lock.
    pub(crate) fn unlock(mode: Mode, key: &LockKey) -> LockStatement {
        LockStatement::new(External::Unlock, mode, key, None)
    }
}

/// Takes the transaction-level lock of `key` in `tx` if it is free:
/// `Ok(true)` if granted (held until `tx` ends), `Ok(false)` if another
/// session or transaction holds it (nothing waits, and `tx` is unchanged).
/// A key whose name holds NUL is [`Error::InvalidKey`]; a failed statement,
/// [`Error::Query`].
pub async fn try_lock_xact<T: AdvisoryTransaction + ?Sized>(
    tx: &mut T,
    key: LockKey,
    mode: Mode,
) -> Result<bool, Error> {
    key.check()?;
    let statement = LockStatement::new(External::TryXact, mode, &key, None);
    run(tx, &statement, &key, None).await
}

/// Waits for the transaction-level lock of `key` in `tx`, at most `timeout`
/// (`None`: as long as it takes), then holds it until `tx` ends. An expired
/// wait is [`Error::WaitTimeout`], and leaves `tx` aborted (roll it back).
pub async fn lock_xact<T: AdvisoryTransaction + ?Sized>(
    tx: &mut T,
    key: LockKey,
    mode: Mode,
    timeout: Option<Duration>,
) -> Result<(), Error> {
    key.check()?;
    wait(tx, External::WaitXact, mode, &key, timeout).await
}

/// Takes the session-level lock of `key` on `conn` if it is free: the guard
/// holding `conn`, or `Ok(None)` if the key is busy (`conn` is dropped
/// then: pass `&mut conn` to keep it). Release the guard before the
/// connection goes back to a pool (see the [module documentation](self)).
pub async fn try_lock_session<C: AdvisoryExecutor>(
    mut conn: C,
    key: LockKey,
    mode: Mode,
) -> Result<Option<SessionLock<C>>, Error> {
    key.check()?;
    let statement = LockStatement::new(External::TrySession, mode, &key, None);
    match run(&mut conn, &statement, &key, None).await? {
        true => Ok(Some(SessionLock::new(conn, key, mode))),
        false => Ok(None),
    }
}

/// Waits for the session-level lock of `key` on `conn`, at most `timeout`
/// (`None`: as long as it takes): the guard holding `conn`, or
/// [`Error::WaitTimeout`].
pub async fn lock_session<C: AdvisoryExecutor>(
    mut conn: C,
    key: LockKey,
    mode: Mode,
    timeout: Option<Duration>,
) -> Result<SessionLock<C>, Error> {
    key.check()?;
    wait(&mut conn, External::WaitSession, mode, &key, timeout).await?;
    Ok(SessionLock::new(conn, key, mode))
}

/// A waiting lock statement under the lock timeout of `timeout`.
async fn wait<E: AdvisoryExecutor + ?Sized>(
    conn: &mut E,
    what: External,
    mode: Mode,
    key: &LockKey,
    timeout: Option<Duration>,
) -> Result<(), Error> {
    // Whole milliseconds, at least 1 (`0` is no limit).
    let setting = match timeout {
        Some(t) => format!("{}ms", t.as_millis().clamp(1, i32::MAX as u128)),
        None => "0".to_owned(),
    };
    let statement = LockStatement::new(what, mode, key, Some(&setting));
    let start = Instant::now();
    run(conn, &statement, key, Some(start)).await.map(drop)
}

/// Runs a statement; SQLSTATE 55P03 (lock_not_available) of a wait that
/// started at `wait_start` is [`Error::WaitTimeout`].
async fn run<E: AdvisoryExecutor + ?Sized>(
    conn: &mut E,
    statement: &LockStatement,
    key: &LockKey,
    wait_start: Option<Instant>,
) -> Result<bool, Error> {
    match conn.query_bool(statement).await {
        Ok(value) => {
            tracing::debug!(key = %key.name(), id = %key.id(), granted = value, "advisory-locked: {}", statement.sql);
            Ok(value)
        }
        Err(e) => match (e.code(), wait_start) {
            (Some(code), Some(start)) if *code == SqlState::LOCK_NOT_AVAILABLE => {
                Err(Error::WaitTimeout {
                    key: key.name().to_owned(),
                    waited: start.elapsed(),
                })
            }
            _ => {
                tracing::warn!(key = %key.name(), error = %crate::error::cause(&e), "advisory-locked: lock statement on the caller's connection failed");
                Err(Error::Query {
                    key: key.name().to_owned(),
                    source: Arc::new(e),
                })
            }
        },
    }
}
