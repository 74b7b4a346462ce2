//! The tool's queries: who holds a key, waiting for it, terminating its
//! holders. Connections come from `advisory_locked::status::connect`, the
//! crate's own transport (TLS, multi-host URLs, standbys refused).

use std::path::PathBuf;
use std::time::Duration;

use advisory_locked::status::LockAge;
use advisory_locked::{KeyId, LockConfig, LockKey};
use serde_json::{json, Value};
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use crate::keys::lock_columns;
use crate::{sql, Failure};

/// `application_name` of the tool's connections unless the URL sets one.
pub const APPLICATION_NAME: &str = "advisory-locked-cli";

/// Where to connect: `--url` / `DATABASE_URL`, `--tls-ca`.
pub struct Target {
    pub url: Option<String>,
    pub tls_ca: Option<PathBuf>,
}

impl Target {
    /// The configuration, without connecting: a missing or bad URL, or an
    /// unreadable CA file, is a usage error.
    pub fn config(&self) -> Result<LockConfig, Failure> {
        let url =
            match self.url.as_deref().map(str::trim) {
                Some(url) if !url.is_empty() => url,
                _ => return Err(Failure::Usage(
                    "no database: pass --url postgres://user@host:5432/dbname or set DATABASE_URL"
                        .to_owned(),
                )),
            };
        // from_url checks the URL (and names no password in its message).
        LockConfig::from_url(url).map_err(|e| Failure::Usage(e.to_string()))?;
        let mut pg: tokio_postgres::Config = url
            .parse()
            .map_err(|_| Failure::Usage("the database URL can't be parsed".to_owned()))?;
        if pg.get_application_name().is_none() {
            pg.application_name(APPLICATION_NAME);
        }
        let config = LockConfig::new(pg);
        match &self.tls_ca {
            None => Ok(config),
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| Failure::Usage(format!("--tls-ca {}: {e}", path.display())))?;
                config
                    .tls_root_certificates_pem(&pem)
                    .map_err(|e| Failure::Usage(format!("--tls-ca {}: {e}", path.display())))
            }
        }
    }

    /// A connection of the tool's own.
    pub async fn connect(&self) -> Result<Client, Failure> {
        let config = self.config()?;
        advisory_locked::status::connect(&config)
            .await
            .map_err(|e| Failure::Error(e.to_string()))
    }
}

fn query_failed(what: &str, e: &tokio_postgres::Error) -> Failure {
    let detail = match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => e.to_string(),
    };
    Failure::Error(format!("{what}: {detail}"))
}

/// One process that holds or awaits a key.
#[derive(Debug)]
pub struct Process {
    pub pid: Option<i32>,
    pub shared: bool,
    pub granted: bool,
    pub application_name: Option<String>,
    pub state: Option<String>,
    pub user: Option<String>,
    /// `host:port`, `hostname (host):port`, or `local` (a Unix socket).
    pub client: Option<String>,
    pub age: LockAge,
}

fn seconds(s: Option<f64>) -> Option<Duration> {
    s.map(|s| Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::MAX))
}

/// The processes holding (first) or awaiting `key`.
pub async fn who(client: &Client, key: &LockKey) -> Result<Vec<Process>, Failure> {
    let (classid, objid, objsubid) = lock_columns(key.id());
    let rows = client
        .query(sql::WHO, &[&classid, &objid, &objsubid])
        .await
        .map_err(|e| query_failed("the pg_locks query failed", &e))?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let granted: bool = r.get(2);
        let pid: Option<i32> = r.get(0);
        let addr: Option<String> = r.get(6);
        let hostname: Option<String> = r.get(7);
        let port: Option<i32> = r.get(8);
        let client = match (addr, port) {
            (Some(addr), Some(port)) if port >= 0 => Some(match hostname {
                Some(h) => format!("{h} ({addr}):{port}"),
                None => format!("{addr}:{port}"),
            }),
            // A Unix socket: no address, port -1.
            (None, Some(-1)) => Some("local".to_owned()),
            _ => None,
        };
        let (backend, xact) = (seconds(r.get(9)), seconds(r.get(10)));
        let age = match (granted, backend, xact) {
            (false, _, _) => LockAge::Waiting {
                waited: seconds(r.get(11)),
            },
            (true, Some(session), Some(transaction)) => LockAge::InTransaction {
                transaction,
                session,
            },
            (true, Some(at_most), None) => LockAge::Session { at_most },
            (true, None, _) => LockAge::Unknown,
        };
        out.push(Process {
            pid,
            shared: r.get::<_, &str>(1) == "ShareLock",
            granted,
            application_name: r.get(3),
            state: r.get(4),
            user: r.get(5),
            client,
            age,
        });
    }
    Ok(out)
}

impl Process {
    /// The row of `who`'s table.
    pub fn cells(&self) -> Vec<String> {
        let dash = || "-".to_owned();
        vec![
            if self.granted { "holder" } else { "waiting" }.to_owned(),
            self.pid.map_or_else(dash, |p| p.to_string()),
            if self.shared { "shared" } else { "exclusive" }.to_owned(),
            self.application_name
                .clone()
                .filter(|a| !a.is_empty())
                .unwrap_or_else(dash),
            self.client.clone().unwrap_or_else(dash),
            self.user.clone().unwrap_or_else(dash),
            self.state.clone().unwrap_or_else(dash),
            self.age.to_string(),
        ]
    }

    /// The object of `who --json`.
    pub fn json(&self) -> Value {
        json!({
            "pid": self.pid,
            "mode": if self.shared { "shared" } else { "exclusive" },
            "granted": self.granted,
            "application_name": self.application_name,
            "client": self.client,
            "user": self.user,
            "state": self.state,
            "age": self.age.to_string(),
            "age_at_most_ms": self.age.at_most().map(|d| d.as_millis() as u64),
        })
    }
}

/// Waits until `key` can be taken (exclusive, or `shared`) and lets it go
/// at once: a transaction-level lock in a transaction of its own, so the
/// tool holds the key only for the instant between the grant and the
/// commit. `lock_timeout` bounds the wait on the server:
/// [`Failure::Timeout`] when it runs out. `waiter` gets the server process
/// that waits, for [`cancel`].
pub async fn wait(
    client: &mut Client,
    key: &LockKey,
    shared: bool,
    timeout: Duration,
    waiter: &std::cell::Cell<Option<i32>>,
) -> Result<(), Failure> {
    let tx = client
        .transaction()
        .await
        .map_err(|e| query_failed("BEGIN failed", &e))?;
    let lock_timeout = format!("{}ms", timeout.as_millis());
    let row = tx
        .query_one(sql::WAIT_SETUP, &[&lock_timeout])
        .await
        .map_err(|e| query_failed("setting lock_timeout failed", &e))?;
    waiter.set(Some(row.get(0)));
    let waited = match key.id() {
        KeyId::Int(k) => {
            let text = if shared {
                sql::WAIT_INT_SHARED
            } else {
                sql::WAIT_INT
            };
            tx.execute(text, &[&k]).await
        }
        KeyId::Pair(a, b) => {
            let text = if shared {
                sql::WAIT_PAIR_SHARED
            } else {
                sql::WAIT_PAIR
            };
            tx.execute(text, &[&a, &b]).await
        }
    };
    match waited {
        Ok(_) => tx
            .commit()
            .await
            .map_err(|e| query_failed("COMMIT failed", &e)),
        Err(e) if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => Err(Failure::Timeout(
            format!("{key} is still held after {}", crate::show(timeout)),
        )),
        Err(e) => Err(query_failed("waiting for the lock failed", &e)),
    }
}

/// How long `release` lets each terminated process take to exit
/// (PostgreSQL 14 and later wait for it).
const EXIT_WAIT_MS: i64 = 5_000;

/// Terminates those of `pids` that still hold `key`; for each, whether it
/// was signalled (and, from PostgreSQL 14, exited within 5 s).
pub async fn terminate(
    client: &Client,
    key: &LockKey,
    pids: &[i32],
) -> Result<Vec<(i32, bool)>, Failure> {
    let version: i32 = client
        .query_one(sql::SERVER_VERSION, &[])
        .await
        .map_err(|e| query_failed("reading server_version_num failed", &e))?
        .get(0);
    let text = if version >= 140_000 {
        sql::TERMINATE
    } else {
        sql::TERMINATE_NO_WAIT
    };
    let (classid, objid, objsubid) = lock_columns(key.id());
    let rows = client
        .query(text, &[&classid, &objid, &objsubid, &pids, &EXIT_WAIT_MS])
        .await
        .map_err(|e| query_failed("pg_terminate_backend failed", &e))?;
    Ok(rows
        .iter()
        .map(|r| (r.get::<_, i32>(0), r.get::<_, bool>(1)))
        .collect())
}

/// Cancels the wait of server process `pid` on `key`, if it still waits
/// for it, from a connection of its own; best effort.
pub async fn cancel(target: &Target, pid: i32, key: &LockKey) {
    let (classid, objid, objsubid) = lock_columns(key.id());
    if let Ok(client) = target.connect().await {
        let _ = client
            .execute(sql::CANCEL, &[&pid, &classid, &objid, &objsubid])
            .await;
    }
}
