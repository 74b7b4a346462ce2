//! The errors of the lock machinery.

use std::fmt;
use std::io;
use std::time::Duration;

use tokio_postgres::error::SqlState;

/// A failure of the lock machinery (never of the annotated body: the body's
/// own result is passed through untouched).
///
/// Every infrastructure problem is one of these values; none is a panic and
/// none is ever treated as "acquired".
///
/// As is the convention for Rust errors, an error's `Display` says what
/// failed and not why: the cause (the driver's, the socket's or the
/// server's error) is its [`source`](std::error::Error::source), so that an
/// error reporter (`anyhow`'s `{:#}`, `eyre`, a `tracing` error field that
/// walks the chain) shows each cause once. The server's own error, whatever
/// the variant it came in, is [`Error::server_error`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No registry entry of this name was configured before the call.
    #[error("advisory-locked: no lock registry named {pool:?} is configured; call advisory_locked::configure(...) (or LockConfig::install) at startup")]
    NotConfigured {
        /// The registry entry that was asked for.
        pool: String,
    },

    /// A registry entry of this name was already configured.
    #[error("advisory-locked: a lock registry named {pool:?} is already configured")]
    AlreadyConfigured {
        /// The registry entry that was configured twice.
        pool: String,
    },

    /// The connection settings could not be read (a bad URL, a missing
    /// environment variable, a zero session count, ...).
    #[error("advisory-locked: invalid configuration: {reason}")]
    InvalidConfig {
        /// What is wrong, without any password.
        reason: String,
    },

    /// A lock key that no lock can be taken on: a name containing NUL
    /// (`'\0'`). PostgreSQL text can't hold NUL, so no `hashtextextended`
    /// in psql can produce the number such a name hashes to: the lock could
    /// never be found (e.g. in `pg_locks`) by its name. Returned by the lock
    /// calls ([`Locker::try_lock`](crate::Locker::try_lock),
    /// [`Locker::lock`](crate::Locker::lock), slots, transaction scope, the
    /// attribute with a key template) before anything is sent; see
    /// [`LockKey::named`](crate::LockKey::named) and
    /// [`LockKey::try_named`](crate::LockKey::try_named).
    #[error("advisory-locked: invalid lock key {key:?}: {reason}")]
    InvalidKey {
        /// The key's name.
        key: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The server could not be reached or refused the connection (wrong
    /// credentials, unknown database, refused, ...).
    #[error("advisory-locked: cannot connect to {target}")]
    Connect {
        /// `host:port/dbname` of the server, without any password.
        target: String,
        /// The cause: the driver's error (a `tokio_postgres::Error`), or the
        /// socket's. A refusal by the server is also in the one shape of
        /// [`Error::server_error`].
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// Connecting took longer than the configured connect timeout.
    #[error("advisory-locked: connecting to {target} timed out after {after:?}")]
    ConnectTimeout {
        /// `host:port/dbname` of the server, without any password.
        target: String,
        /// The connect timeout that expired.
        after: Duration,
    },

    /// Configuring an entry opened its first lock session and then two
    /// short-lived probe connections (to check for a transaction-pooling
    /// proxy, see [`LockConfig::install`](crate::LockConfig::install)), and a
    /// probe got no answer within the connect timeout although the server
    /// answered the lock session at once: most likely a pooler in session
    /// mode whose pool for this database and user has fewer server
    /// connections than the `connections` held at that moment (pgbouncer's
    /// `default_pool_size` / `pool_size`, `max_db_connections`,
    /// `max_user_connections`), so that the probe waited for a server
    /// connection that never came free.
    #[error("advisory-locked: {target} gave a probe connection no answer within {after:?} while this entry held {connections} connections to it (its first lock session and the probes for a transaction pooler): most likely a pooler in session mode with fewer than {connections} server connections for this database and user (pgbouncer: default_pool_size, max_db_connections, max_user_connections); raise it to at least {connections}, plus what other clients use")]
    PoolExhausted {
        /// `host:port/dbname` of the server (the pooler), without any password.
        target: String,
        /// The connections the entry held to it at once.
        connections: usize,
        /// The connect timeout that expired.
        after: Duration,
    },

    /// The server is a hot standby (`pg_is_in_recovery()` is true): it grants
    /// advisory locks that coordinate nothing with the primary, so it is refused.
    #[error("advisory-locked: {target} is a standby server (pg_is_in_recovery() = true); its advisory locks coordinate nothing with the primary")]
    Standby {
        /// `host:port/dbname` of the server.
        target: String,
    },

    /// The connection goes through a proxy that hands one server session to
    /// several clients (pgbouncer in `pool_mode = transaction` or
    /// `statement`, and the like): session advisory locks would be granted
    /// to two holders at once and could stay held after their holder is
    /// gone, so it is refused (see docs/operations.md, pgbouncer).
    #[error("advisory-locked: {target} hands one server session to several clients (a transaction-pooling proxy such as pgbouncer in pool_mode = transaction): session advisory locks would not exclude anything there; connect the lock registry directly to PostgreSQL, or through a pooler in session mode")]
    TransactionPooler {
        /// `host:port/dbname` of the proxy, without any password.
        target: String,
    },

    /// The server's advisory locks of one scope do not exclude: the
    /// exclusion self-test (a random key taken on one connection must be
    /// refused on another, and be free again after its release) saw them
    /// granted twice, or not behave as locks at all. Engines that speak
    /// PostgreSQL but emulate advisory locks (CockroachDB's session-level
    /// `pg_try_advisory_lock` always answers `true`) are refused with this,
    /// for the scope that fails only: an entry configured with
    /// [`LockConfig::transaction_scope_only`](crate::LockConfig::transaction_scope_only)
    /// needs only transaction-level locks. Never transient. See "Trusting
    /// the server" in `docs/design.md`.
    #[error("advisory-locked: the {scope} advisory locks of {target} do not exclude: {seen}; refused{}", scope_hint(*.scope))]
    FakeAdvisoryLocks {
        /// `host:port/dbname` of the server, without any password.
        target: String,
        /// The scope whose locks failed the self-test.
        scope: LockScope,
        /// What the self-test saw.
        seen: String,
    },

    /// A wait-mode call did not get the lock within its timeout.
    #[error("advisory-locked: gave up waiting for lock {key:?} after {waited:?}")]
    WaitTimeout {
        /// The key's name.
        key: String,
        /// How long the call waited.
        waited: Duration,
    },

    /// The session that held the lock died while the body ran (server
    /// restart, `pg_terminate_backend`, network failure): PostgreSQL has
    /// released the lock, so the body was stopped at its next await point.
    #[error("advisory-locked: lock {key:?} was lost: its session to the server ended while the body ran")]
    LockLost {
        /// The key's name.
        key: String,
    },

    /// A statement on a lock session failed (the session died, a server
    /// timeout, out of lock memory, ...).
    #[error("advisory-locked: lock statement for {key:?} failed")]
    Query {
        /// The key's name.
        key: String,
        /// What failed (shared by the requests of one statement).
        #[source]
        source: std::sync::Arc<QueryError>,
    },

    /// The server could not be reached a moment ago: until the next
    /// reconnect attempt is due (backoff 50 ms doubling to 5 s, with
    /// jitter), calls fail at once with this instead of waiting.
    #[error("advisory-locked: {target} is unavailable (next attempt in {retry_in:?}): {cause}")]
    Unavailable {
        /// `host:port/dbname` of the server, without any password.
        target: String,
        /// When the next connect attempt is due.
        retry_in: Duration,
        /// The last connect error, as text.
        cause: String,
    },

    /// A quorum entry could not ask enough of its servers: fewer than a
    /// majority answered (the others are down, unreachable or failed), so
    /// nothing is held — the quorum fails closed.
    #[error("advisory-locked: {} needs a majority of {servers} servers ({needed}), but only {reachable} answered: {causes}", quorum_what(.key))]
    QuorumUnavailable {
        /// The key's name (`None` when configuring).
        key: Option<String>,
        /// The quorum's size.
        servers: usize,
        /// A majority of it.
        needed: usize,
        /// The servers that answered.
        reachable: usize,
        /// What the others failed with, one per server.
        causes: String,
    },

    /// The lock session ended before the server answered a request, twice
    /// in a row (the first time, the request is retried on a fresh session).
    #[error("advisory-locked: the lock session ended before the server answered for {key:?}")]
    SessionEnded {
        /// The key's name.
        key: String,
    },

    /// A transaction-scope call (`transaction = tx`) whose body asked to
    /// commit did not commit: `COMMIT` failed or its answer was lost (then
    /// whether it took effect is unknown), a statement of the body had
    /// failed (PostgreSQL then rolls the transaction back), the body ended
    /// the transaction itself, or the [`Transaction`](crate::Transaction)
    /// handle outlived the body (the transaction is then rolled back). The
    /// body's value is not returned.
    #[error("advisory-locked: the transaction of lock {key:?} did not commit: {reason}")]
    Transaction {
        /// The key's name.
        key: String,
        /// What happened.
        reason: String,
        /// The driver's error, if a statement failed.
        #[source]
        source: Option<std::sync::Arc<tokio_postgres::Error>>,
    },

    /// A session-scope call ([`Locker::try_lock`](crate::Locker::try_lock),
    /// [`Locker::lock`](crate::Locker::lock), the attribute without
    /// `transaction = …`) on a registry entry configured with
    /// [`LockConfig::transaction_scope_only`](crate::LockConfig::transaction_scope_only).
    #[error("advisory-locked: registry entry {pool:?} is configured for transaction scope only (LockConfig::transaction_scope_only, e.g. behind a transaction-pooling proxy): only #[advisory_locked(..., transaction = tx)] calls can use it, not session-scope locks")]
    TransactionScopeOnly {
        /// The registry entry.
        pool: String,
    },

    /// Every transaction connection of the entry stayed busy with other
    /// transaction-scope calls for the whole wait (see
    /// [`LockConfig::transaction_connections`](crate::LockConfig::transaction_connections)).
    #[error("advisory-locked: all {connections} transaction connections of registry entry {pool:?} stayed busy for {waited:?} (raise LockConfig::transaction_connections?)")]
    TransactionConnectionsBusy {
        /// The registry entry.
        pool: String,
        /// Its transaction connections.
        connections: usize,
        /// How long the call waited for one.
        waited: Duration,
    },
}

impl Error {
    /// True for errors that may go away by themselves (connection problems,
    /// timeouts, a lost session); false for configuration mistakes.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Connect { .. }
                | Error::ConnectTimeout { .. }
                | Error::PoolExhausted { .. }
                | Error::WaitTimeout { .. }
                | Error::LockLost { .. }
                | Error::Query { .. }
                | Error::SessionEnded { .. }
                | Error::Unavailable { .. }
                | Error::QuorumUnavailable { .. }
                | Error::TransactionConnectionsBusy { .. }
        )
    }
}

/// The two kinds of PostgreSQL advisory locks, which a server may support
/// independently (see [`Error::FakeAdvisoryLocks`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LockScope {
    /// Session-level locks (`pg_try_advisory_lock`), held until unlocked or
    /// the session ends: [`Locker`](crate::Locker) and the attribute
    /// without `transaction = …`.
    Session,
    /// Transaction-level locks (`pg_try_advisory_xact_lock`), held until
    /// the transaction ends: the attribute with `transaction = tx`.
    Transaction,
}

impl fmt::Display for LockScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LockScope::Session => "session-level",
            LockScope::Transaction => "transaction-level",
        })
    }
}

/// What to do about [`Error::FakeAdvisoryLocks`] of a scope.
fn scope_hint(scope: LockScope) -> &'static str {
    match scope {
        LockScope::Session => " (if its transaction-level locks are real, an entry configured with LockConfig::transaction_scope_only can use them)",
        LockScope::Transaction => " for transaction-scope calls (transaction = tx)",
    }
}

impl Error {
    /// The error the server sent, in one shape whatever the variant it came
    /// in: a refused connection ([`Error::Connect`], e.g. SQLSTATE 28P01 for
    /// a wrong password), a failed lock statement ([`Error::Query`], e.g.
    /// 53200 out of shared memory), a failed statement or `COMMIT` of a
    /// transaction-scope call ([`Error::Transaction`]). `None` if the server
    /// sent no error (a socket error, a timeout, a configuration mistake).
    ///
    /// ```
    /// # fn show(e: &advisory_locked::Error) {
    /// if let Some(server) = e.server_error() {
    ///     eprintln!("{} {}: {}", server.severity(), server.code().code(), server.message());
    ///     if let Some(hint) = server.hint() {
    ///         eprintln!("hint: {hint}");
    ///     }
    /// }
    /// # }
    /// ```
    pub fn server_error(&self) -> Option<ServerError> {
        server_error_in(std::error::Error::source(self)?)
    }
}

/// The first server error in `e`'s chain (`e` included).
fn server_error_in(e: &(dyn std::error::Error + 'static)) -> Option<ServerError> {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(found) = server_error_here(e) {
            return Some(found);
        }
        next = e.source();
    }
    None
}

/// `e` itself as a server error, if it is one (of this crate or the
/// driver's, also behind an `Arc`).
fn server_error_here(e: &(dyn std::error::Error + 'static)) -> Option<ServerError> {
    use std::sync::Arc;
    let query = e
        .downcast_ref::<QueryError>()
        .or_else(|| e.downcast_ref::<Arc<QueryError>>().map(|q| &**q));
    if let Some(q) = query {
        return q.as_server_error().cloned();
    }
    if let Some(s) = e.downcast_ref::<ServerError>() {
        return Some(s.clone());
    }
    let driver = e
        .downcast_ref::<tokio_postgres::Error>()
        .or_else(|| e.downcast_ref::<Arc<tokio_postgres::Error>>().map(|d| &**d));
    let db = match driver {
        Some(d) => d.as_db_error(),
        None => e.downcast_ref::<tokio_postgres::error::DbError>(),
    };
    db.map(ServerError::from)
}

fn quorum_what(key: &Option<String>) -> String {
    match key {
        Some(key) => format!("lock {key:?}"),
        None => "configuring the quorum".to_owned(),
    }
}

/// `Result<T, advisory_locked::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error and its causes as one line, each cause once (for logs and for
/// text kept in other errors): the texts of the chain joined by `": "`,
/// ending at the server's own error (its message, SQLSTATE, detail and
/// hint). Neither the driver nor the server repeats a password in these.
pub(crate) fn cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = String::new();
    let mut next = Some(e);
    while let Some(e) = next {
        if !text.is_empty() {
            text.push_str(": ");
        }
        if let Some(server) = server_error_here(e) {
            text.push_str(&server.to_string());
            break;
        }
        text.push_str(&e.to_string());
        next = e.source();
    }
    text
}

/// An error the server sent (an `ErrorResponse`), with every field a
/// client can act on, in one shape whichever connection it came on (see
/// [`Error::server_error`]).
#[derive(Debug, Clone)]
pub struct ServerError {
    pub(crate) severity: String,
    pub(crate) code: SqlState,
    pub(crate) message: String,
    /// The optional fields, boxed: most errors have none, and the error
    /// stays small.
    pub(crate) more: Option<Box<MoreFields>>,
}

/// The optional fields of a [`ServerError`].
#[derive(Debug, Clone, Default)]
pub(crate) struct MoreFields {
    pub(crate) detail: Option<String>,
    pub(crate) hint: Option<String>,
    pub(crate) position: Option<u32>,
    pub(crate) context: Option<String>,
}

impl Default for ServerError {
    fn default() -> Self {
        ServerError {
            severity: String::new(),
            code: SqlState::INTERNAL_ERROR,
            message: String::new(),
            more: None,
        }
    }
}

impl ServerError {
    /// `ERROR`, `FATAL`, `PANIC` (in English, whatever the server's locale).
    pub fn severity(&self) -> &str {
        &self.severity
    }

    /// The SQLSTATE.
    pub fn code(&self) -> &SqlState {
        &self.code
    }

    /// The server's primary message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The server's secondary message, if any.
    pub fn detail(&self) -> Option<&str> {
        self.more.as_ref()?.detail.as_deref()
    }

    /// The server's suggestion, if any.
    pub fn hint(&self) -> Option<&str> {
        self.more.as_ref()?.hint.as_deref()
    }

    /// Where in the statement's text the error is (1-based, in characters).
    pub fn position(&self) -> Option<u32> {
        self.more.as_ref()?.position
    }

    /// The call stack of the error (functions, PL/pgSQL lines), if any.
    pub fn context(&self) -> Option<&str> {
        self.more.as_ref()?.context.as_deref()
    }

    /// After FATAL or PANIC the server always closes the connection.
    pub fn ends_session(&self) -> bool {
        matches!(self.severity.as_str(), "FATAL" | "PANIC")
    }
}

impl fmt::Display for ServerError {
    /// `ERROR: <message> (SQLSTATE <code>)`, then `; DETAIL: …` and
    /// `; HINT: …` when the server sent them: one line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (severity, message) = (&self.severity, &self.message);
        write!(f, "{severity}: {message} (SQLSTATE {})", self.code.code())?;
        if let Some(detail) = self.detail() {
            write!(f, "; DETAIL: {detail}")?;
        }
        if let Some(hint) = self.hint() {
            write!(f, "; HINT: {hint}")?;
        }
        Ok(())
    }
}

impl From<&tokio_postgres::error::DbError> for ServerError {
    /// The driver's server error in this shape.
    fn from(db: &tokio_postgres::error::DbError) -> ServerError {
        use tokio_postgres::error::ErrorPosition;
        ServerError {
            severity: db.severity().to_owned(),
            code: db.code().clone(),
            message: db.message().to_owned(),
            more: Some(Box::new(MoreFields {
                detail: db.detail().map(str::to_owned),
                hint: db.hint().map(str::to_owned),
                position: match db.position() {
                    Some(ErrorPosition::Original(p)) => Some(*p),
                    Some(ErrorPosition::Internal { .. }) | None => None,
                },
                context: db.where_().map(str::to_owned),
            })),
        }
    }
}

impl std::error::Error for ServerError {}

/// What a request on a lock session's connection can fail with.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The server refused the statement.
    #[error("{0}")]
    Server(ServerError),
    /// The connection ended (or can no longer be used).
    #[error("the connection to the server is closed")]
    Closed,
    /// Reading or writing the socket failed (the cause is the source).
    #[error("reading or writing the connection failed")]
    Io(#[from] io::Error),
    /// The server sent something this client does not expect.
    #[error("protocol: {0}")]
    Protocol(String),
}

impl QueryError {
    /// The SQLSTATE, for an error the server sent.
    pub fn code(&self) -> Option<&SqlState> {
        match self {
            QueryError::Server(e) => Some(e.code()),
            _ => None,
        }
    }

    /// The server's error, if it sent one.
    pub fn as_server_error(&self) -> Option<&ServerError> {
        match self {
            QueryError::Server(e) => Some(e),
            _ => None,
        }
    }

    /// True if the session is gone: the connection ended, or the server sent
    /// FATAL or PANIC (e.g. `pg_terminate_backend`).
    pub(crate) fn ends_session(&self) -> bool {
        match self {
            QueryError::Server(e) => e.ends_session(),
            _ => true,
        }
    }
}

impl From<&tokio_postgres::Error> for QueryError {
    /// The driver's error in this type (for statements sent through
    /// tokio-postgres, such as those of transaction scope).
    fn from(e: &tokio_postgres::Error) -> QueryError {
        if let Some(db) = e.as_db_error() {
            return QueryError::Server(ServerError::from(db));
        }
        if e.is_closed() {
            return QueryError::Closed;
        }
        QueryError::Io(io::Error::other(cause(e)))
    }
}
