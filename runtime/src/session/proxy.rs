//! Refusing transaction-pooling proxies at configuration time.
//!
//! Session advisory locks belong to a server session (a backend). A proxy
//! that hands one backend to several clients, one transaction or statement
//! at a time (pgbouncer in `pool_mode = transaction` or `statement`, pgdog,
//! and the like), breaks them: a second client that lands on the backend of
//! an idle holder is granted the same key (re-entrantly), and a holder's
//! unlock may run on another backend, leaving the lock held for good.
//!
//! # What is detected
//!
//! Right after the first lock session connects, two short-lived probe
//! connections with the same settings ask `SELECT pg_backend_pid()` five
//! times each, alternately (ten one-statement transactions, one round trip
//! each, as simple queries that leave no prepared statement on a backend).
//! On a direct connection, or through a pooler in session mode, every client
//! keeps one backend of its own for its whole life, so the pids of the three
//! live clients (the lock session and both probes) are all different and
//! each client always sees the same one. The entry is refused with
//! [`Error::TransactionPooler`] if that does not hold: a probe lands on the
//! lock session's backend, both probes share one, or a probe's backend
//! changes between its statements. Each of these proves that backends are
//! shared, so there is no false alarm (pids are unique among live backends).
//!
//! With nothing else using the pooler, this always catches it: pgbouncer by
//! default reuses the most recently released backend (the idle lock
//! session's, then the first probe's), and with `server_round_robin = 1` a
//! probe's statements go to different backends. Besides, a lock session
//! whose freshly prepared statements vanish while it is set up (SQLSTATE
//! 26000: the pooler moved it to another backend, as pgbouncer does in
//! transaction mode unless it tracks prepared statements itself,
//! `max_prepared_statements`, 1.21 on) is refused the same way, in
//! [`crate::session`].
//!
//! # What is not detected
//!
//! Sharing is only seen if it happens while the probe runs. Behind a busy
//! transaction pooler other clients take the backends the probes release,
//! so a probe may, by chance, land each time on a backend that none of the
//! three clients used before and keep it for all its statements. With
//! pgbouncer 1.18 and 2 to 8 other clients sending statements without
//! pause, the probe alone with six statements caught 450 of 450 tries
//! (with four it missed 8 of 450), yet a CI run once saw it miss 1 of 10
//! under load: it now sends ten, and each lock session checks its own
//! server process too (below), ten times since a CI run saw another miss
//! with one check (with four, 50 runs of the pgbouncer test still saw one
//! miss in 500 busy configurations). The probe
//! runs once, at [`Locker::connect`](crate::Locker): a pooler whose mode is
//! changed later is noticed only by sessions opened after that: each lock
//! session also checks, at the end of its set-up, that its server process is
//! still the one it started on (a busy transaction pooler moves it).
//!
//! The probe costs two extra connections for a moment, at configuration
//! time only, bounded by the connect timeout. With the lock session that is
//! [`CONNECTIONS_AT_ONCE`] = 3 server connections at once; behind a pooler
//! in session mode whose pool is smaller (pgbouncer's `default_pool_size =
//! 2`), the second probe waits for a server connection that never comes
//! free: that is [`Error::PoolExhausted`], naming the pool size as the
//! likely cause. The same two connections then run the exclusion self-test
//! ([`crate::session::trust`]).

use tokio_postgres::{Client, SimpleQueryMessage};

use crate::config::Settings;
use crate::error::LockScope;
use crate::pg::connect::{connect_client_at, Target};
use crate::session::trust::Scopes;
use crate::Error;

/// How many `SELECT pg_backend_pid()` the probes send, alternately.
const PROBE_STATEMENTS: usize = 10;

/// The connections an entry holds at once while it is probed: its first
/// lock session and the two probes (the fencing table's connection, if
/// any, is closed before). Configuring through a pooler in session mode
/// needs that many server connections free.
pub(crate) const CONNECTIONS_AT_ONCE: usize = 3;

/// Fails with [`Error::TransactionPooler`] if the entry's connections share
/// server sessions (see the module's documentation), given the backend pid
/// (`pg_backend_pid()`) of its first lock session, which must be connected
/// and idle. A probe that can't connect is [`Error::Connect`]; the whole
/// probe is bounded by the connect timeout: a probe still unanswered then,
/// although the lock session was answered at once, is
/// [`Error::PoolExhausted`] (most likely a session-mode pooler without
/// [`CONNECTIONS_AT_ONCE`] server connections for the entry).
///
/// Then, on the same two probe connections, the exclusion self-test
/// ([`crate::session::trust`]) of both scopes: [`Error::FakeAdvisoryLocks`]
/// if session-level locks fail it. What transaction-level locks did is
/// returned (`Some(seen)` if they failed): the entry's lock sessions don't
/// need them, its transaction-scope calls do.
pub(crate) async fn refuse_transaction_pooling(
    settings: &Settings,
    host: &Target,
    first_backend_pid: i32,
) -> Result<Option<String>, Error> {
    let target = settings.target();
    let after = settings.connect_timeout;
    let probed = tokio::time::timeout(after, probe(settings, host, first_backend_pid)).await;
    let (seen, verdict) = match probed {
        // The whole probe, or one probe's own connect (its start-up waits
        // for a server connection too, and its timer may fire first).
        Err(_) | Ok(Err(Error::ConnectTimeout { .. })) => {
            tracing::error!(pool = %settings.name, target = %target, lock_session = first_backend_pid, timeout_ms = after.as_millis() as u64, connections = CONNECTIONS_AT_ONCE, "advisory-locked: a probe connection got no answer while the lock session was open: a pooler whose pool is too small?");
            return Err(Error::PoolExhausted {
                target,
                connections: CONNECTIONS_AT_ONCE,
                after,
            });
        }
        Ok(Err(e)) => return Err(e),
        Ok(Ok(Probed::Shared(why, seen))) => {
            tracing::error!(pool = %settings.name, target = %target, lock_session = first_backend_pid, probes = ?seen, "advisory-locked: {why}: a transaction-pooling proxy; refused");
            return Err(Error::TransactionPooler { target });
        }
        Ok(Ok(Probed::Dedicated(seen, verdict))) => (seen, verdict),
    };
    tracing::debug!(pool = %settings.name, lock_session = first_backend_pid, probes = ?seen, "advisory-locked: backends are not shared between connections");
    crate::session::trust::report(settings, &verdict, LockScope::Session)?;
    // Logged (an error if it failed); the entry's transaction-scope calls
    // will be refused then.
    let _ = crate::session::trust::report(settings, &verdict, LockScope::Transaction);
    Ok(verdict.transaction)
}

/// What the probe connections saw.
enum Probed {
    /// Backends are shared: why, and the backend pids `(probe, pid)`.
    Shared(&'static str, Vec<(usize, i32)>),
    /// Each client has a backend of its own: the pids, and the self-test's
    /// verdict.
    Dedicated(Vec<(usize, i32)>, crate::session::trust::Verdict),
}

/// The backend pids the two probe connections (to the lock session's
/// host) saw, in order: `(probe, pid)`; if none is shared, the exclusion
/// self-test on them.
async fn probe(settings: &Settings, host: &Target, lock_session: i32) -> Result<Probed, Error> {
    let (a, b) = tokio::try_join!(
        connect_client_at(settings, host),
        connect_client_at(settings, host)
    )?;
    let probes = [&a, &b];
    let mut seen = Vec::with_capacity(PROBE_STATEMENTS);
    for i in 0..PROBE_STATEMENTS {
        let which = i % probes.len();
        let pid = backend_pid(probes[which])
            .await
            .map_err(|e| Error::Connect {
                target: host.describe(),
                source: Box::new(e),
            })?;
        if let Some(pid) = pid {
            seen.push((which, pid));
        }
    }
    if let Some(why) = shared_backend(lock_session, &seen) {
        return Ok(Probed::Shared(why, seen));
    }
    let verdict = crate::session::trust::exclusion(&a, &b, Scopes::BOTH)
        .await
        .map_err(|e| Error::Connect {
            target: host.describe(),
            source: Box::new(e),
        })?;
    Ok(Probed::Dedicated(seen, verdict))
}

/// `pg_backend_pid()` as a simple query: one round trip, one transaction,
/// no prepared statement left on a backend that a pooler may hand on.
/// (`None` if no row came back, which PostgreSQL never does.)
async fn backend_pid(client: &Client) -> Result<Option<i32>, tokio_postgres::Error> {
    let messages = client.simple_query(crate::pg::sql::BACKEND_PID).await?;
    Ok(messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => row.get(0).and_then(|v| v.parse().ok()),
        _ => None,
    }))
}

/// Why the observations show shared backends, or `None` if each client (the
/// lock session, probe 0, probe 1) kept one backend of its own.
fn shared_backend(lock_session: i32, seen: &[(usize, i32)]) -> Option<&'static str> {
    for (n, &(probe, pid)) in seen.iter().enumerate() {
        if pid == lock_session {
            return Some("a probe connection landed on the lock session's server backend");
        }
        for &(other, other_pid) in &seen[..n] {
            if other == probe && other_pid != pid {
                return Some("a probe connection's server backend changed between two statements");
            }
            if other != probe && other_pid == pid {
                return Some("two probe connections landed on the same server backend");
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::shared_backend;

    #[test]
    fn dedicated_backends_pass() {
        assert_eq!(
            shared_backend(10, &[(0, 11), (1, 12), (0, 11), (1, 12)]),
            None
        );
    }

    #[test]
    fn any_sharing_is_caught() {
        // The lock session's backend, handed to a probe.
        assert!(shared_backend(10, &[(0, 10), (1, 12)]).is_some());
        assert!(shared_backend(10, &[(0, 11), (1, 12), (0, 11), (1, 10)]).is_some());
        // Both probes on one backend.
        assert!(shared_backend(10, &[(0, 11), (1, 11)]).is_some());
        // A probe's backend changed.
        assert!(shared_backend(10, &[(0, 11), (1, 12), (0, 13), (1, 12)]).is_some());
    }
}
