//! Configuration values: where the lock sessions connect, how many there
//! are, and what happens on loss. No I/O here: [`LockConfig::connect`] is in
//! `locker.rs`, [`LockConfig::install`] and the registry in `registry.rs`.

use std::time::Duration;

use crate::Error;

/// The registry entry that `#[advisory_locked]` uses without `pool = "…"`.
pub const DEFAULT_POOL: &str = "default";

/// The lock sessions per registry entry unless set with [`LockConfig::sessions`].
pub const DEFAULT_SESSIONS: usize = 2;

/// The wait sessions per registry entry unless set with
/// [`LockConfig::wait_sessions`].
pub const DEFAULT_WAIT_SESSIONS: usize = 2;

/// The connect timeout unless set with [`LockConfig::connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How soon a lost lock session is noticed unless set with
/// [`LockConfig::loss_detection`].
pub const DEFAULT_LOSS_DETECTION: Duration = Duration::from_secs(1);

/// More wait sessions than this is a configuration mistake (each is a
/// connection to the server).
const MAX_WAIT_SESSIONS: usize = 10_000;

/// The transaction connections per registry entry unless set with
/// [`LockConfig::transaction_connections`].
pub(crate) const DEFAULT_TRANSACTION_CONNECTIONS: usize = 10;

/// What a body does when its lock is lost while it runs; set per registry
/// entry with [`LockConfig::on_lost`](crate::LockConfig::on_lost) or per
/// function with `on_lost = "abort"` / `on_lost = "continue"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum OnLost {
    /// The default: the body's future is dropped at its next await point and
    /// the call returns [`Error::LockLost`](crate::Error::LockLost). Nothing
    /// the body does after the loss is known can overlap another holder's
    /// body, except the synchronous code it runs before that await.
    #[default]
    Abort,
    /// The body keeps running; it can check [`current_lock`](crate::current_lock) (or its
    /// guard) to see whether the lock still stands, and the call returns the
    /// body's result. For bodies that must not stop half-way and can check
    /// or fence their own effects.
    Continue,
}

/// Settings of one registry entry, fixed once it is installed.
#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) name: String,
    pub(crate) pg: tokio_postgres::Config,
    pub(crate) sessions: usize,
    /// At most this many wait sessions (see [`crate::server::waiting`]); 0: none.
    pub(crate) wait_sessions: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) loss_detection: Duration,
    pub(crate) on_lost: OnLost,
    /// Every grant takes a fencing token (see [`crate::server::fence`]).
    pub(crate) fencing: bool,
    /// At most this many plain connections for transaction-scope calls.
    pub(crate) transaction_connections: usize,
    /// No lock sessions, no pooler probe: transaction scope only.
    pub(crate) transaction_scope_only: bool,
    /// What the exclusion self-test saw of the server's transaction-level
    /// locks, if they failed it at configuration (a session entry installs
    /// anyway; its transaction-scope calls are refused with
    /// [`Error::FakeAdvisoryLocks`]). Set by the connect, never by the user.
    pub(crate) untrusted_transaction_locks: Option<String>,
    /// The TLS connector of [`LockConfig::tls_config`], if any.
    #[cfg(feature = "tls-rustls")]
    pub(crate) tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
}

impl Settings {
    /// `host:port/dbname`, for messages. Never contains the password.
    pub(crate) fn target(&self) -> String {
        use tokio_postgres::config::Host;
        let host = match self.pg.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            #[cfg(unix)]
            Some(Host::Unix(p)) => p.display().to_string(),
            // (`hostaddr` alone; a configuration with neither is refused.)
            None => match self.pg.get_hostaddrs().first() {
                Some(addr) => addr.to_string(),
                None => "(no host)".to_owned(),
            },
        };
        let port = self.pg.get_ports().first().copied().unwrap_or(5432);
        let db = self
            .pg
            .get_dbname()
            .or(self.pg.get_user())
            .unwrap_or("postgres");
        format!("{host}:{port}/{db}")
    }

    /// True if a TLS connector is configured.
    #[cfg(feature = "tls-rustls")]
    pub(crate) fn has_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// True if a TLS connector is configured.
    #[cfg(not(feature = "tls-rustls"))]
    pub(crate) fn has_tls(&self) -> bool {
        false
    }
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("name", &self.name)
            .field("target", &self.target())
            .field("sessions", &self.sessions)
            .field("wait_sessions", &self.wait_sessions)
            .field("connect_timeout", &self.connect_timeout)
            .field("loss_detection", &self.loss_detection)
            .field("on_lost", &self.on_lost)
            .field("fencing", &self.fencing)
            .field("transaction_connections", &self.transaction_connections)
            .field("transaction_scope_only", &self.transaction_scope_only)
            .field("tls", &self.has_tls())
            .finish()
    }
}

/// How to connect one registry entry; build it, then [`install`](Self::install) it.
///
/// ```no_run
/// use std::time::Duration;
/// use advisory_locked::LockConfig;
///
/// # async fn setup() -> Result<(), advisory_locked::Error> {
/// // The default entry, used by `#[advisory_locked(key = "…")]`:
/// LockConfig::from_url("postgres://app@db.internal/app")?
///     .sessions(2)
///     .connect_timeout(Duration::from_secs(3))
///     .install()
///     .await?;
///
/// // A second database, used by `#[advisory_locked(key = "…", pool = "billing")]`:
/// LockConfig::from_env()?.name("billing").install().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct LockConfig {
    settings: Settings,
}

impl LockConfig {
    /// From a `tokio_postgres::Config`.
    pub fn new(pg: tokio_postgres::Config) -> Self {
        let mut pg = pg;
        // No application_name set here: `connect` sets one naming the entry
        // and the program unless the user gave one (`application_name()`).
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
        }
        LockConfig {
            settings: Settings {
                name: DEFAULT_POOL.to_owned(),
                pg,
                sessions: DEFAULT_SESSIONS,
                wait_sessions: DEFAULT_WAIT_SESSIONS,
                connect_timeout: DEFAULT_CONNECT_TIMEOUT,
                loss_detection: DEFAULT_LOSS_DETECTION,
                on_lost: OnLost::Abort,
                fencing: false,
                transaction_connections: DEFAULT_TRANSACTION_CONNECTIONS,
                transaction_scope_only: false,
                untrusted_transaction_locks: None,
                #[cfg(feature = "tls-rustls")]
                tls: None,
            },
        }
    }

    /// From a connection URL or key-value string
    /// (`postgres://user:password@host:port/dbname`, `host=… user=…`).
    ///
    /// A string that can't be parsed, or that names no server (an empty
    /// string, `postgres:///app`, `user=app` without `host` or `hostaddr`),
    /// is [`Error::InvalidConfig`]: there is no default host. A Unix socket
    /// directory is a host (`host=/var/run/postgresql`,
    /// `postgres://app@%2Fvar%2Frun%2Fpostgresql/app`). The message never
    /// repeats the string, which may hold a password.
    pub fn from_url(url: &str) -> Result<Self, Error> {
        let pg = url
            .parse::<tokio_postgres::Config>()
            .map_err(|e| Error::InvalidConfig {
                reason: crate::error::cause(&e),
            })?;
        check_hosts(&pg)?;
        Ok(Self::new(pg))
    }

    /// From the `DATABASE_URL` environment variable, as
    /// [`from_url`](Self::from_url): unset, empty or naming no server is
    /// [`Error::InvalidConfig`].
    pub fn from_env() -> Result<Self, Error> {
        match std::env::var("DATABASE_URL") {
            Ok(url) if url.trim().is_empty() => Err(Error::InvalidConfig {
                reason: "the DATABASE_URL environment variable is empty; set it to a connection URL such as postgres://user@host:5432/dbname".to_owned(),
            }),
            Ok(url) => Self::from_url(&url),
            Err(_) => Err(Error::InvalidConfig {
                reason: "the DATABASE_URL environment variable is not set (or not unicode)"
                    .to_owned(),
            }),
        }
    }

    /// The registry entry's name (default [`DEFAULT_POOL`]), chosen in the
    /// attribute with `pool = "name"`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.settings.name = name.into();
        self
    }

    /// How many long-lived lock sessions (connections) this entry opens at
    /// most; each serves many locks at once. Default [`DEFAULT_SESSIONS`].
    ///
    /// # Connections
    ///
    /// An entry connects to the server with its lock sessions (the first at
    /// [`install`](Self::install), the others when first needed), its wait
    /// sessions ([`wait_sessions`](Self::wait_sessions), when first needed),
    /// the connections of transaction-scope calls
    /// ([`transaction_connections`](Self::transaction_connections)), and, at
    /// `install`, for a moment, two probe connections next to the first lock
    /// session. Through a pooler in session mode each of these holds a server
    /// connection for its whole life, so the pooler's pool for the database
    /// and user (pgbouncer: `default_pool_size` or the database's
    /// `pool_size`, and `max_db_connections`, `max_user_connections`) must
    /// have room for:
    ///
    /// - **3** to install: with fewer, a probe waits for a server connection
    ///   that never comes free, and `install` fails after the connect
    ///   timeout with [`Error::PoolExhausted`];
    /// - `sessions` + `wait_sessions` (+ `transaction_connections` if the
    ///   entry serves transaction scope) to use every one of them; a lock
    ///   session that can't get one fails to connect and the live ones
    ///   serve meanwhile.
    ///
    /// Plus what other clients of the pooler use.
    pub fn sessions(mut self, n: usize) -> Self {
        self.settings.sessions = n;
        self
    }

    /// How many wait sessions (connections) this entry opens at most, when
    /// first needed; 0 turns them off. Default [`DEFAULT_WAIT_SESSIONS`].
    ///
    /// A wait-mode call ([`Locker::lock`](crate::Locker::lock), `wait = "…"`)
    /// whose key is held by another process borrows an idle wait session
    /// and waits on the server there (`pg_advisory_lock`, in slices bounded
    /// by `lock_timeout`), so that it gets the lock as soon as the holder
    /// releases it, in one step. The lock is then held on that session, which
    /// serves no other wait until it is released. With every wait session
    /// busy (or none), a call waits as without them: it tries again when the
    /// holder's release notifies, or with backoff. Entries with fencing
    /// tokens don't use them (the token is taken in the try-lock statement).
    /// At most 10 000.
    pub fn wait_sessions(mut self, n: usize) -> Self {
        self.settings.wait_sessions = n;
        self
    }

    /// How long a connection attempt may take, start-up query included.
    /// Default [`DEFAULT_CONNECT_TIMEOUT`].
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.settings.connect_timeout = timeout;
        self.settings.pg.connect_timeout(timeout);
        self
    }

    /// How soon the loss of a lock session must be noticed (default
    /// [`DEFAULT_LOSS_DETECTION`], 1 s). Every session sends a trivial
    /// statement when idle for a quarter of this, and is declared lost when
    /// any statement stays unanswered for three quarters of it; holders of
    /// its locks are then told (see the loss policy). At least 20 ms.
    pub fn loss_detection(mut self, bound: Duration) -> Self {
        self.settings.loss_detection = bound;
        self
    }

    /// What an annotated body does when its lock is lost while it runs,
    /// unless its attribute says `on_lost = "…"` (default
    /// [`OnLost::Abort`](OnLost::Abort)).
    pub fn on_lost(mut self, policy: OnLost) -> Self {
        self.settings.on_lost = policy;
        self
    }

    /// Gives every grant of this entry a fencing token: a number that
    /// strictly increases with every grant of a key, across processes,
    /// lock losses and server restarts, read in the body with
    /// [`LockState::fencing_token`](crate::LockState::fencing_token) (or
    /// [`LockGuard::fencing_token`](crate::LockGuard::fencing_token)).
    /// Pass it to the store the body writes to, which keeps the largest token
    /// it has seen per resource and refuses writes with a smaller one: a
    /// holder that lost its lock (and may not know it yet) is then refused.
    ///
    /// The token is taken in the same statement as the lock. It is kept in
    /// the table `advisory_locked_fence` (created at configuration if
    /// missing: the role needs CREATE on the schema once, then INSERT and
    /// UPDATE on the table), and each grant commits one row update, so a
    /// fenced lock costs a durable write (a WAL flush) on the server.
    /// Needs PostgreSQL 12 or later. Default off.
    ///
    /// ```no_run
    /// use advisory_locked::{advisory_locked, LockConfig};
    ///
    /// #[advisory_locked(key = "ledger:export")]
    /// async fn export() {
    ///     let token = advisory_locked::current_lock().and_then(|l| l.fencing_token());
    ///     // UPDATE exports SET ..., token = $token WHERE id = ... AND token < $token
    ///     # let _ = token;
    /// }
    ///
    /// # async fn setup() -> Result<(), advisory_locked::Error> {
    /// LockConfig::from_env()?.fencing_tokens(true).install().await?;
    /// # Ok(()) }
    /// ```
    pub fn fencing_tokens(mut self, on: bool) -> Self {
        self.settings.fencing = on;
        self
    }

    /// At most this many plain connections for transaction-scope calls
    /// (`#[advisory_locked(…, transaction = tx)]`), opened when first
    /// needed and kept for reuse (default 10). Each running
    /// transaction-scope body, and each wait-mode call waiting for its
    /// lock, holds one; further calls wait for one to come free. These
    /// connections are separate from the lock sessions.
    pub fn transaction_connections(mut self, n: usize) -> Self {
        self.settings.transaction_connections = n;
        self
    }

    /// Configures the entry for transaction scope only: no lock sessions
    /// and no check for a transaction-pooling proxy, so that it works behind
    /// pgbouncer in `pool_mode = transaction` (transaction-level advisory
    /// locks live and die with one transaction, which such a proxy keeps on
    /// one server session). [`connect`](Self::connect) opens one plain
    /// connection to check the server (reachable, credentials, not a
    /// standby), then closes it.
    ///
    /// On such an entry only `#[advisory_locked(…, transaction = tx)]` calls
    /// work; session-scope calls ([`Locker::try_lock`](crate::Locker::try_lock), [`Locker::lock`](crate::Locker::lock),
    /// the attribute without `transaction = …`) fail with
    /// [`Error::TransactionScopeOnly`].
    ///
    /// ```no_run
    /// use advisory_locked::LockConfig;
    ///
    /// # async fn setup() -> Result<(), advisory_locked::Error> {
    /// // Through pgbouncer in transaction pooling mode:
    /// LockConfig::from_url("postgres://app@pgbouncer.internal:6432/app")?
    ///     .name("billing")
    ///     .transaction_scope_only()
    ///     .install()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn transaction_scope_only(mut self) -> Self {
        self.settings.transaction_scope_only = true;
        self
    }

    /// Connects the lock sessions with TLS, trusting the certificates in
    /// `pem`: one or more PEM `CERTIFICATE` blocks, each a certificate
    /// authority or a self-signed server certificate. The server's
    /// certificate must be issued for the host name (or IP address) of the
    /// URL. Uses rustls with the `ring` crypto provider, TLS 1.2 and 1.3.
    /// Replaces an earlier TLS configuration. (Feature `tls-rustls`.)
    ///
    /// The URL's `sslmode` applies: `prefer` (the default) uses TLS when the
    /// server offers it and a plain connection when it does not, `require`
    /// refuses a plain connection, `disable` never uses TLS. A certificate
    /// that can't be verified fails the connection in every mode.
    ///
    /// PEM without a certificate, or one that can't be parsed, is
    /// [`Error::InvalidConfig`].
    ///
    /// ```no_run
    /// use advisory_locked::LockConfig;
    ///
    /// # async fn setup() -> Result<(), advisory_locked::Error> {
    /// let ca = std::fs::read("/etc/ssl/db-ca.pem").expect("CA certificate");
    /// LockConfig::from_url("postgres://app@db.internal/app?sslmode=require")?
    ///     .tls_root_certificates_pem(&ca)?
    ///     .install()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "tls-rustls")]
    pub fn tls_root_certificates_pem(self, pem: &[u8]) -> Result<Self, Error> {
        use rustls::pki_types::{pem::PemObject, CertificateDer};
        let invalid = |reason: String| Error::InvalidConfig { reason };
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert =
                cert.map_err(|e| invalid(format!("cannot read the PEM certificates: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| invalid(format!("unusable root certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(invalid(
                "no certificate (-----BEGIN CERTIFICATE-----) in the PEM given to tls_root_certificates_pem"
                    .to_owned(),
            ));
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(format!("TLS configuration: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(self.tls_config(config))
    }

    /// Connects the lock sessions with TLS, with this rustls client
    /// configuration (its roots, client certificate, crypto provider, ...).
    /// The URL's `sslmode` applies as with
    /// [`tls_root_certificates_pem`](Self::tls_root_certificates_pem).
    /// Replaces an earlier TLS configuration. (Feature `tls-rustls`; the
    /// `rustls` crate is re-exported as `advisory_locked::rustls`.)
    #[cfg(feature = "tls-rustls")]
    pub fn tls_config(mut self, config: rustls::ClientConfig) -> Self {
        self.settings.tls = Some(tokio_postgres_rustls::MakeRustlsConnect::new(config));
        self
    }

    fn validate(&self) -> Result<(), Error> {
        let invalid = |reason: &str| {
            Err(Error::InvalidConfig {
                reason: reason.to_owned(),
            })
        };
        if self.settings.name.is_empty() {
            return invalid("the registry entry's name is empty");
        }
        check_hosts(&self.settings.pg)?;
        if self.settings.sessions == 0 {
            return invalid("sessions must be at least 1");
        }
        if self.settings.wait_sessions > MAX_WAIT_SESSIONS {
            return invalid("wait_sessions must be at most 10000");
        }
        if self.settings.transaction_connections == 0 {
            return invalid("transaction_connections must be at least 1");
        }
        if self.settings.connect_timeout.is_zero() {
            return invalid("connect_timeout must be greater than zero");
        }
        if self.settings.loss_detection < Duration::from_millis(20) {
            return invalid("loss_detection must be at least 20 ms");
        }
        if self.settings.pg.get_ssl_mode() == tokio_postgres::config::SslMode::Require
            && !self.settings.has_tls()
        {
            #[cfg(feature = "tls-rustls")]
            return invalid("sslmode=require, but no TLS is configured: call LockConfig::tls_root_certificates_pem or LockConfig::tls_config");
            #[cfg(not(feature = "tls-rustls"))]
            return invalid("sslmode=require needs TLS: enable the tls-rustls feature of advisory-locked and call LockConfig::tls_root_certificates_pem or LockConfig::tls_config");
        }
        Ok(())
    }

    /// True if configured with [`transaction_scope_only`](Self::transaction_scope_only).
    pub(crate) fn is_transaction_scope_only(&self) -> bool {
        self.settings.transaction_scope_only
    }

    /// The checked settings, with the default `application_name`.
    pub(crate) fn into_settings(mut self) -> Result<Settings, Error> {
        self.validate()?;
        if self.settings.pg.get_application_name().is_none() {
            let app = application_name(&self.settings.name);
            self.settings.pg.application_name(&app);
        }
        Ok(self.settings)
    }

    /// The settings, for other modules of the crate (e.g. `status`).
    pub(crate) fn settings(&self) -> &Settings {
        &self.settings
    }
}

/// [`Error::InvalidConfig`] unless `pg` names at least one server (a `host`,
/// a TCP name or a Unix socket directory, or a `hostaddr`) and its lists of
/// hosts, addresses and ports fit together, as a connection will need: an
/// empty string parses to a configuration without any, which would only fail
/// later, at the first connection, with a target that was never tried.
fn check_hosts(pg: &tokio_postgres::Config) -> Result<(), Error> {
    servers_reason(pg).map_or(Ok(()), |reason| Err(Error::InvalidConfig { reason }))
}

/// Why `pg` can't be connected to, as the connect path reads it (see
/// [`check_hosts`]; `pg/connect.rs` asks this too), or `None`.
pub(crate) fn servers_reason(pg: &tokio_postgres::Config) -> Option<String> {
    use tokio_postgres::config::TargetSessionAttrs;
    let (hosts, addrs, ports) = (
        pg.get_hosts().len(),
        pg.get_hostaddrs().len(),
        pg.get_ports().len(),
    );
    let servers = hosts.max(addrs);
    Some(
        if pg.get_target_session_attrs() == TargetSessionAttrs::ReadOnly {
            "target_session_attrs=read-only: advisory locks must be taken on the primary (a standby's coordinate nothing); use read-write or any".to_owned()
        } else if servers == 0 {
            "the connection string names no server: give a host (postgres://user@host:5432/dbname, or host=… in key-value form; a Unix socket directory such as host=/var/run/postgresql counts) or a hostaddr".to_owned()
        } else if hosts != 0 && addrs != 0 && hosts != addrs {
            format!("the connection string names {hosts} hosts but {addrs} hostaddrs: give one hostaddr per host, or none")
        } else if ports > 1 && ports != servers {
            format!("the connection string names {servers} hosts but {ports} ports: give one port for all, or one per host")
        } else {
            return None;
        },
    )
}

/// The `application_name` of lock sessions unless the user set one:
/// `advisory-locked:<entry> <program>[<pid>]`, printable ASCII (anything else
/// becomes `?`), at most 63 bytes (PostgreSQL's limit), shortening the
/// program name, then the entry's name, so that the pid stays.
pub(crate) fn application_name(pool: &str) -> String {
    const MAX: usize = 63;
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| if c.is_ascii_graphic() { c } else { '?' })
            .collect()
    };
    let exe = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "?".to_owned());
    let mut pool = clean(pool);
    let mut exe = clean(&exe);
    let pid = format!("[{}]", std::process::id());
    let fixed = "advisory-locked:".len() + 1 + pid.len();
    pool.truncate(MAX.saturating_sub(fixed + 1).min(pool.len()));
    exe.truncate(MAX.saturating_sub(fixed + pool.len()).min(exe.len()));
    format!("advisory-locked:{pool} {exe}{pid}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A string naming no server is refused when read, not at the first
    /// connection; every form of naming one is accepted.
    #[test]
    fn a_connection_string_must_name_a_server() {
        for url in [
            "",
            "   ",
            "postgres://",
            "postgres:///app",
            "postgresql://app@/app",
            "user=app dbname=app",
            "port=5432",
        ] {
            match LockConfig::from_url(url) {
                Err(Error::InvalidConfig { reason }) => {
                    assert!(reason.contains("no server"), "{url:?}: {reason}")
                }
                other => panic!("{url:?}: expected InvalidConfig, got {other:?}"),
            }
        }
        for url in [
            "host=/var/run/postgresql user=app",
            "postgres://app@%2Fvar%2Frun%2Fpostgresql/app",
            "hostaddr=127.0.0.1 user=app",
            "postgres://app@db.internal:6432/app",
            "host=a,b port=5432",
            "host=a,b port=1,2 hostaddr=127.0.0.1,127.0.0.2",
        ] {
            let cfg = LockConfig::from_url(url).unwrap_or_else(|e| panic!("{url:?}: {e:?}"));
            assert!(cfg.validate().is_ok(), "{url:?}");
        }
        assert_eq!(
            LockConfig::from_url("hostaddr=127.0.0.2 port=6000 dbname=x")
                .unwrap()
                .settings()
                .target(),
            "127.0.0.2:6000/x"
        );
        for (url, says) in [
            ("host=a,b hostaddr=127.0.0.1", "hostaddr"),
            ("host=a,b port=1,2,3", "ports"),
            ("host=a target_session_attrs=read-only", "primary"),
        ] {
            match LockConfig::from_url(url) {
                Err(Error::InvalidConfig { reason }) => assert!(reason.contains(says), "{reason}"),
                other => panic!("{url:?}: {other:?}"),
            }
        }
        // Built from a driver config with no host: refused at connect.
        let empty = LockConfig::new(tokio_postgres::Config::new());
        assert!(matches!(
            empty.into_settings(),
            Err(Error::InvalidConfig { .. })
        ));
    }
}
