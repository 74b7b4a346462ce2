//! Which advisory locks are held or awaited in a database, by whom, and for
//! how long: `pg_locks` joined with `pg_stat_activity`, keys decoded and
//! named from the program's annotated fns (see [`crate::features::names`]).
//!
//! ```no_run
//! use advisory_locked::{status, LockConfig};
//!
//! # async fn show() -> Result<(), advisory_locked::Error> {
//! let config = LockConfig::from_url("postgres://postgres@127.0.0.1:5432/postgres")?;
//! let mut locks = status::held_locks(&config).await?;
//! status::fill_names(&mut locks, &["tenant:7"]); // names only known at run time
//! print!("{}", status::format_table(&locks));
//! # Ok(()) }
//! ```
//!
//! The repository's `status` example prints this table from the command line:
//! `cargo run --example status -p advisory-locked-tests -- --name tenant:7`.
//!
//! # How long a lock has been held
//!
//! PostgreSQL records when a wait began (`pg_locks.waitstart`, PostgreSQL 14
//! and later) but not when a lock was granted, and `pg_locks` does not tell a
//! session-level lock (`pg_advisory_lock`) from a transaction-level one
//! (`pg_advisory_xact_lock`). What can be said honestly is in [`LockAge`]:
//! an exact wait time; for a holder outside any transaction (so the lock is
//! session-level), an upper bound, the age of its connection; for a holder
//! inside a transaction, the exact age of that transaction (the most a
//! transaction-level lock can be held) and the connection's age (the most a
//! session-level lock can be held).

use std::fmt;
use std::time::Duration;

use crate::{Error, KeyId, LockConfig, Mode};

/// One advisory lock of the database, held or awaited by one server process.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct HeldLock {
    /// The key, decoded from `pg_locks` (`classid`, `objid`, `objsubid`).
    pub key: KeyId,
    /// The key's name, if an annotated fn of this program declares it
    /// ([`crate::features::names::name_of`]) or [`fill_names`] was given it.
    pub name: Option<String>,
    /// `ExclusiveLock` is [`Mode::Exclusive`], `ShareLock` [`Mode::Shared`].
    pub mode: Mode,
    /// True if held, false while the process waits for it.
    pub granted: bool,
    /// The server process (`pg_backend_pid()` of the holder's session);
    /// `None` for a prepared transaction.
    pub pid: Option<i32>,
    /// The holder's `application_name` (lock sessions of this crate are
    /// named `advisory-locked:<entry> <program>[<pid>]`); `None` if not
    /// visible (another user's session, without `pg_read_all_stats`).
    pub application_name: Option<String>,
    /// The holder's `pg_stat_activity.state` (`idle`, `active`,
    /// `idle in transaction`, ...), if visible.
    pub state: Option<String>,
    /// How long it has been held or awaited, as far as PostgreSQL tells.
    pub age: LockAge,
}

/// How long a lock has been held or awaited: exact where PostgreSQL records
/// it, an upper bound where it does not (see the [module docs](self)).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LockAge {
    /// Not granted yet: waiting for exactly this long (`now - waitstart`);
    /// `None` in the moment after the wait began, before the server records
    /// it, or before PostgreSQL 14.
    Waiting {
        /// The exact wait so far.
        waited: Option<Duration>,
    },
    /// Granted to a process outside any transaction, so a session-level
    /// lock (a transaction-level one ends with its transaction): held **at
    /// most** this long, the age of the process's connection
    /// (`backend_start`); PostgreSQL records no grant time.
    Session {
        /// Upper bound: the connection's age.
        at_most: Duration,
    },
    /// Granted to a process inside a transaction (an explicit one, or the
    /// implicit one of a statement that runs right now): a
    /// transaction-level lock is held at most `transaction` (the exact age
    /// of that transaction, `xact_start`), a session-level lock at most
    /// `session` (the connection's age); `pg_locks` does not say which it is.
    InTransaction {
        /// The transaction's exact age.
        transaction: Duration,
        /// The connection's age.
        session: Duration,
    },
    /// The holder's times are not visible (another user's session without
    /// `pg_read_all_stats`, or a prepared transaction).
    Unknown,
}

impl LockAge {
    /// The longest the lock can have been held or awaited (exact for a
    /// waiter), if known.
    pub fn at_most(&self) -> Option<Duration> {
        match *self {
            LockAge::Waiting { waited } => waited,
            LockAge::Session { at_most } => Some(at_most),
            LockAge::InTransaction { session, .. } => Some(session),
            LockAge::Unknown => None,
        }
    }
}

impl fmt::Display for LockAge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            LockAge::Waiting { waited: Some(d) } => write!(f, "{}", short(d)),
            LockAge::Waiting { waited: None } => f.write_str("just now"),
            LockAge::Session { at_most } => write!(f, "<= {} (session)", short(at_most)),
            LockAge::InTransaction {
                transaction,
                session,
            } => write!(
                f,
                "in xact {}, session <= {}",
                short(transaction),
                short(session)
            ),
            LockAge::Unknown => f.write_str("?"),
        }
    }
}

/// `850ms`, `12.3s`, `5m03s`, `2h05m`.
fn short(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1_000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", d.as_secs_f64())
    } else if ms < 3_600_000 {
        format!("{}m{:02}s", ms / 60_000, (ms / 1_000) % 60)
    } else {
        format!("{}h{:02}m", ms / 3_600_000, (ms / 60_000) % 60)
    }
}

fn seconds(s: Option<f64>) -> Option<Duration> {
    s.map(|s| Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::MAX))
}

/// The advisory locks held or awaited in the database of `config`, seen
/// from a connection of its own (with `config`'s transport, TLS included,
/// and the `application_name` `advisory-locked-status`, unless `config`
/// sets one). Granted locks first, then by key.
///
/// Fails with [`Error::Connect`] / [`Error::ConnectTimeout`] if the server
/// can't be reached, [`Error::Query`] if the query fails.
///
/// ```no_run
/// # async fn show() -> Result<(), advisory_locked::Error> {
/// let config = advisory_locked::LockConfig::from_env()?;
/// for lock in advisory_locked::status::held_locks(&config).await? {
///     println!("{} held by pid {:?} for {}", lock.key, lock.pid, lock.age);
/// }
/// # Ok(()) }
/// ```
pub async fn held_locks(config: &LockConfig) -> Result<Vec<HeldLock>, Error> {
    let client = connect(config).await?;
    let target = config.settings().target();
    let rows = client.query(crate::pg::sql::STATUS, &[]).await.map_err(|e| {
        tracing::warn!(target = %target, error = %crate::error::cause(&e), "advisory-locked: the pg_locks status query failed");
        Error::Query {
            key: "(status: pg_locks)".to_owned(),
            source: std::sync::Arc::new(crate::QueryError::from(&e)),
        }
    })?;
    let mut locks = Vec::with_capacity(rows.len());
    for r in &rows {
        let classid = r.get::<_, i64>(1) as u32;
        let objid = r.get::<_, i64>(2) as u32;
        let key = match r.get::<_, i16>(3) {
            1 => KeyId::Int(((u64::from(classid) << 32) | u64::from(objid)) as i64),
            2 => KeyId::Pair(classid as i32, objid as i32),
            other => {
                tracing::warn!(
                    objsubid = other,
                    "advisory-locked: an advisory lock with an unknown objsubid; skipped"
                );
                continue;
            }
        };
        let mode = match r.get::<_, &str>(4) {
            "ShareLock" => Mode::Shared,
            _ => Mode::Exclusive,
        };
        let granted: bool = r.get(5);
        let backend = seconds(r.get(8));
        let xact = seconds(r.get(9));
        let age = match (granted, backend, xact) {
            (false, _, _) => LockAge::Waiting {
                waited: seconds(r.get(10)),
            },
            (true, Some(session), Some(transaction)) => LockAge::InTransaction {
                transaction,
                session,
            },
            (true, Some(at_most), None) => LockAge::Session { at_most },
            (true, None, _) => LockAge::Unknown,
        };
        locks.push(HeldLock {
            key,
            name: crate::features::names::name_of(key).map(str::to_owned),
            mode,
            granted,
            pid: r.get(0),
            application_name: r.get(6),
            state: r.get(7),
            age,
        });
    }
    Ok(locks)
}

/// A plain connection to the database of `config`, for an operator's own
/// queries about locks (the `advisory-locked` command line tool uses it):
/// the same transport as the lock sessions (TLS, multi-host URLs, standbys
/// refused), the `application_name` `advisory-locked-status` unless
/// `config` sets one, and at most `config`'s connect timeout per host.
/// [`held_locks`] queries through one of these. The connection closes when
/// the client is dropped; it needs a Tokio runtime.
///
/// Fails with [`Error::Connect`] / [`Error::ConnectTimeout`] (or
/// [`Error::Standby`] for a hot standby) if no server can be used.
pub async fn connect(config: &LockConfig) -> Result<tokio_postgres::Client, Error> {
    let mut settings = config.settings().clone();
    if settings.pg.get_application_name().is_none() {
        settings.pg.application_name("advisory-locked-status");
    }
    let target = settings.target();
    let after = settings.connect_timeout;
    match tokio::time::timeout(
        after * crate::pg::connect::attempts(&settings),
        crate::pg::connect::connect_client(&settings),
    )
    .await
    {
        Ok(result) => Ok(result?.0),
        Err(_) => Err(Error::ConnectTimeout { target, after }),
    }
}

/// Names the locks that have no name yet from `names` (key names known only
/// at run time, e.g. instances of a template `tenant:{id}` such as
/// `"tenant:7"`): each is hashed as a string key ([`crate::key_hash`]).
pub fn fill_names<S: AsRef<str>>(locks: &mut [HeldLock], names: &[S]) {
    for lock in locks.iter_mut().filter(|l| l.name.is_none()) {
        lock.name = names
            .iter()
            .map(AsRef::as_ref)
            .find(|n| KeyId::Int(crate::key_hash(n)) == lock.key)
            .map(str::to_owned);
    }
}

/// The locks as a text table, one line per lock plus a header; `(none)`
/// if there are none.
///
/// ```text
/// KEY                  NAME          MODE       STATE    PID    APPLICATION                          FOR
/// 754907581750802352   report:daily  exclusive  held     41234  advisory-locked:default app[812]     <= 5m03s (session)
/// 754907581750802352   report:daily  exclusive  waiting  41240  psql                                 2.4s
/// ```
pub fn format_table(locks: &[HeldLock]) -> String {
    if locks.is_empty() {
        return "(no advisory locks held or awaited)\n".to_owned();
    }
    let header = ["KEY", "NAME", "MODE", "STATE", "PID", "APPLICATION", "FOR"];
    let rows: Vec<[String; 7]> = locks
        .iter()
        .map(|l| {
            [
                l.key.to_string(),
                l.name.clone().unwrap_or_else(|| "-".to_owned()),
                match l.mode {
                    Mode::Exclusive => "exclusive".to_owned(),
                    Mode::Shared => "shared".to_owned(),
                },
                if l.granted { "held" } else { "waiting" }.to_owned(),
                l.pid.map_or_else(|| "-".to_owned(), |p| p.to_string()),
                l.application_name
                    .clone()
                    .filter(|a| !a.is_empty())
                    .unwrap_or_else(|| "-".to_owned()),
                l.age.to_string(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&header);
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        line(&cells);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_and_ages() {
        let lock = |granted, age| HeldLock {
            key: KeyId::Int(754907581750802352),
            name: None,
            mode: Mode::Shared,
            granted,
            pid: Some(41),
            application_name: Some("advisory-locked:default app[1]".to_owned()),
            state: Some("idle".to_owned()),
            age,
        };
        let mut locks = vec![
            lock(
                true,
                LockAge::Session {
                    at_most: Duration::from_secs(303),
                },
            ),
            lock(
                false,
                LockAge::Waiting {
                    waited: Some(Duration::from_millis(2_400)),
                },
            ),
        ];
        fill_names(&mut locks, &["other", "report:daily"]);
        assert_eq!(locks[0].name.as_deref(), Some("report:daily"));
        let table = format_table(&locks);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(lines[0].starts_with("KEY "), "{table}");
        assert!(lines[1].contains("report:daily"), "{table}");
        assert!(lines[1].contains("shared"), "{table}");
        assert!(lines[1].ends_with("<= 5m03s (session)"), "{table}");
        assert!(lines[2].contains("waiting"), "{table}");
        assert!(lines[2].ends_with("2.4s"), "{table}");
        assert_eq!(
            LockAge::InTransaction {
                transaction: Duration::from_millis(5),
                session: Duration::from_secs(7200),
            }
            .at_most(),
            Some(Duration::from_secs(7200))
        );
        assert_eq!(format_table(&[]), "(no advisory locks held or awaited)\n");
    }
}
