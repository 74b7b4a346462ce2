//! [`AdvisoryExecutor`] for sqlx (feature `sqlx`). Statements are not
//! persistent (`.persistent(false)`: the unnamed statement, not cached), so
//! that nothing named is left on a server session that a
//! transaction-pooling proxy hands to another client.

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnection, PgDatabaseError, PgSeverity};
use sqlx::Postgres;

use super::{AdvisoryExecutor, AdvisoryTransaction, BoxFuture, LockStatement, Param};
use crate::error::QueryError;
use crate::LockKey;

/// Runs a statement on a connection, for its one boolean.
async fn query_bool(
    conn: &mut PgConnection,
    statement: &LockStatement,
) -> Result<bool, QueryError> {
    let mut query = sqlx::query_scalar::<Postgres, bool>(statement.sql()).persistent(false);
    for param in statement.params() {
        query = match param {
            Param::Int8(v) => query.bind(*v),
            Param::Int4(v) => query.bind(*v),
            Param::Text(v) => query.bind(v.clone()),
        };
    }
    query.fetch_one(conn).await.map_err(|e| query_error(&e))
}

/// sqlx's error in the crate's shape (the server's fields kept).
fn query_error(e: &sqlx::Error) -> QueryError {
    match e {
        sqlx::Error::Database(db) => match db.try_downcast_ref::<PgDatabaseError>() {
            Some(pg) => server_error(
                severity(pg.severity()),
                pg.code(),
                pg.message(),
                pg.detail(),
                pg.hint(),
            ),
            None => server_error(
                "ERROR",
                db.code().as_deref().unwrap_or("XX000"),
                db.message(),
                None,
                None,
            ),
        },
        sqlx::Error::Io(io) => QueryError::Io(std::io::Error::new(io.kind(), io.to_string())),
        sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => QueryError::Closed,
        other => QueryError::Protocol(other.to_string()),
    }
}

fn severity(s: PgSeverity) -> &'static str {
    match s {
        PgSeverity::Panic => "PANIC",
        PgSeverity::Fatal => "FATAL",
        PgSeverity::Error => "ERROR",
        PgSeverity::Warning => "WARNING",
        PgSeverity::Notice => "NOTICE",
        PgSeverity::Debug => "DEBUG",
        PgSeverity::Info => "INFO",
        PgSeverity::Log => "LOG",
    }
}

impl AdvisoryExecutor for PgConnection {
    fn query_bool<'a>(
        &'a mut self,
        statement: &'a LockStatement,
    ) -> BoxFuture<'a, Result<bool, QueryError>> {
        Box::pin(query_bool(self, statement))
    }

    /// Unlocks in a spawned task; dropping the connection (closing it)
    /// when that fails or there is no runtime.
    fn drop_with_lock(self, unlock: LockStatement, key: &LockKey) {
        super::guard::unlock_in_background(self, unlock, key, drop);
    }
}

impl AdvisoryExecutor for PoolConnection<Postgres> {
    fn query_bool<'a>(
        &'a mut self,
        statement: &'a LockStatement,
    ) -> BoxFuture<'a, Result<bool, QueryError>> {
        Box::pin(query_bool(self, statement))
    }

    /// Unlocks in a spawned task, then the connection goes back to its
    /// pool; when that fails or there is no runtime, it is detached from
    /// the pool and closed.
    fn drop_with_lock(self, unlock: LockStatement, key: &LockKey) {
        super::guard::unlock_in_background(self, unlock, key, |conn| drop(conn.detach()));
    }
}

impl AdvisoryExecutor for sqlx::Transaction<'_, Postgres> {
    fn query_bool<'a>(
        &'a mut self,
        statement: &'a LockStatement,
    ) -> BoxFuture<'a, Result<bool, QueryError>> {
        Box::pin(query_bool(self, statement))
    }
}

impl AdvisoryTransaction for sqlx::Transaction<'_, Postgres> {}

/// A server error in the crate's shape, from a driver's fields.
fn server_error(
    severity: &str,
    code: &str,
    message: &str,
    detail: Option<&str>,
    hint: Option<&str>,
) -> QueryError {
    QueryError::Server(crate::ServerError {
        severity: severity.to_owned(),
        code: tokio_postgres::error::SqlState::from_code(code),
        message: message.to_owned(),
        more: Some(Box::new(crate::error::MoreFields {
            detail: detail.map(str::to_owned),
            hint: hint.map(str::to_owned),
            position: None,
            context: None,
        })),
    })
}
