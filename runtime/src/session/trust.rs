//! The exclusion self-test: the crate checks that the server's advisory
//! locks exclude before it trusts them (docs/design.md, "Trusting the
//! server").
//!
//! A server that speaks PostgreSQL may still emulate advisory locks: a
//! session-level `pg_try_advisory_lock` that always answers `true` (as
//! CockroachDB's has long done), or a proxy that hands one server session to
//! several clients. Such a server would grant one key to two holders, with no
//! error. So, on two connections `a` and `b` to the server, with a random
//! key per scope:
//!
//! 1. `a` takes the key (must be granted: the key is random, so free);
//! 2. `b` tries it while `a` holds it (must be refused);
//! 3. `a` releases it (must answer that it held it);
//! 4. `b` tries it again (must be granted), and releases it.
//!
//! Session scope uses `pg_try_advisory_lock` / `pg_advisory_unlock`;
//! transaction scope uses `pg_try_advisory_xact_lock` inside `BEGIN …
//! ROLLBACK` (`a`'s transaction stays open across steps 1 to 3). The two
//! scopes are judged independently; when both are tested, their statements
//! share the same four round trips (each step's statements are pipelined),
//! and a session-scope statement never runs inside the test's transaction.
//! Every statement is unnamed and schema-qualified
//! ([`crate::pg::sql`]), so nothing is left on a server session.
//!
//! Used at configuration (on the two probe connections of
//! [`crate::session::proxy`], or for a transaction-scope-only entry on its
//! check connection and one more) and when a lock session is replaced (the
//! fresh session itself and one probe connection, before the session serves).

use std::hash::{BuildHasher, Hasher};

use tokio_postgres::types::Type;
use tokio_postgres::Client;

use crate::config::Settings;
use crate::error::LockScope;
use crate::pg::connect::Target;
use crate::pg::sql;
use crate::Error;

/// Which scopes to test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scopes {
    pub(crate) session: bool,
    pub(crate) transaction: bool,
}

impl Scopes {
    pub(crate) const SESSION: Scopes = Scopes {
        session: true,
        transaction: false,
    };
    pub(crate) const TRANSACTION: Scopes = Scopes {
        session: false,
        transaction: true,
    };
    pub(crate) const BOTH: Scopes = Scopes {
        session: true,
        transaction: true,
    };
}

/// What the test saw, per scope: `None` if the scope passed (or was not
/// tested), else what failed.
#[derive(Debug, Default, Clone)]
pub(crate) struct Verdict {
    pub(crate) session: Option<String>,
    pub(crate) transaction: Option<String>,
    /// How long the test took (four round trips), for the log.
    pub(crate) took: std::time::Duration,
}

impl Verdict {
    /// What the test saw for `scope`, if it failed.
    pub(crate) fn failed(&self, scope: LockScope) -> Option<&str> {
        match scope {
            LockScope::Session => self.session.as_deref(),
            LockScope::Transaction => self.transaction.as_deref(),
        }
    }
}

/// One answer: a boolean, or the statement's error.
type Seen = Result<bool, tokio_postgres::Error>;

/// The answers of one scope, in the order of the steps above; `None`: the
/// scope was not tested.
#[derive(Default)]
struct Answers {
    taken: Option<Seen>,
    refused: Option<Seen>,
    released: Option<Seen>,
    retaken: Option<Seen>,
    /// Session scope only: `b`'s release in step 4.
    given_back: Option<Seen>,
}

/// Runs the self-test on two connections to the server (each idle, outside
/// any transaction). An error that ends a connection is returned as such
/// (the caller reports it as a connection problem); a statement the server
/// refuses makes its scope fail.
pub(crate) async fn exclusion(
    a: &Client,
    b: &Client,
    scopes: Scopes,
) -> Result<Verdict, tokio_postgres::Error> {
    // Boxed: its statements' futures make it large (about 6 KB), and it
    // runs once per entry or reconnect, inside futures that live long.
    Box::pin(exclusion_unboxed(a, b, scopes)).await
}

async fn exclusion_unboxed(
    a: &Client,
    b: &Client,
    scopes: Scopes,
) -> Result<Verdict, tokio_postgres::Error> {
    let start = std::time::Instant::now();
    let (ks, kx) = (random_key(), random_key());
    let mut s = Answers::default();
    let mut x = Answers::default();
    // 1. `a` takes both keys; its transaction stays open.
    let (taken, xt) = tokio::join!(
        maybe(scopes.session, try_lock(a, sql::TEST_TRY_LOCK, ks)),
        maybe(scopes.transaction, begin_try(a, kx, false)),
    );
    (s.taken, x.taken) = (taken, xt);
    // 2. `b` must be refused both.
    let (refused, xr) = tokio::join!(
        maybe(scopes.session, try_lock(b, sql::TEST_TRY_LOCK, ks)),
        maybe(scopes.transaction, begin_try(b, kx, true)),
    );
    (s.refused, x.refused) = (refused, xr);
    // 3. `a` ends its transaction, then releases the session key.
    let (rolled_back, released) = tokio::join!(
        maybe(scopes.transaction, rollback(a)),
        maybe(scopes.session, try_lock(a, sql::TEST_UNLOCK, ks)),
    );
    (x.released, s.released) = (rolled_back, released);
    // 4. `b` must get both now (and gives them back).
    let (retaken, xr) = tokio::join!(
        maybe(scopes.session, try_and_unlock(b, ks)),
        maybe(scopes.transaction, begin_try(b, kx, true)),
    );
    if let Some(r) = retaken {
        let (got, back) = match r {
            Ok((got, back)) => (Ok(got), Ok(back)),
            Err(e) => (Err(e), Ok(true)),
        };
        (s.retaken, s.given_back) = (Some(got), Some(back));
    }
    x.retaken = xr;
    Ok(Verdict {
        session: judge(s, ks, LockScope::Session)?,
        transaction: judge(x, kx, LockScope::Transaction)?,
        took: start.elapsed(),
    })
}

/// Runs `f` if `on`.
async fn maybe<T>(on: bool, f: impl std::future::Future<Output = T>) -> Option<T> {
    if on {
        Some(f.await)
    } else {
        None
    }
}

/// One `(boolean)` statement with the key as `$1`.
async fn try_lock(client: &Client, sql: &str, key: i64) -> Seen {
    client
        .query_typed_one(sql, &[(&key, Type::INT8)])
        .await
        .and_then(|row| row.try_get(0))
}

/// `BEGIN` and the transaction-level try-lock, pipelined; with `rollback`,
/// the `ROLLBACK` too (the transaction only tries). A failed `BEGIN` or
/// `ROLLBACK` fails the answer.
async fn begin_try(client: &Client, key: i64, rollback: bool) -> Seen {
    let (begin, got, end) = tokio::join!(
        client.batch_execute(sql::BEGIN),
        try_lock(client, sql::TEST_XACT_TRY_LOCK, key),
        maybe(rollback, client.batch_execute(sql::ROLLBACK)),
    );
    match (begin, end) {
        (Err(e), _) | (_, Some(Err(e))) => Err(e),
        _ => got,
    }
}

/// `ROLLBACK`: `true` once answered (ending the transaction is its release).
async fn rollback(client: &Client) -> Seen {
    client.batch_execute(sql::ROLLBACK).await.map(|()| true)
}

/// Step 4 of session scope: `(granted, released)`.
async fn try_and_unlock(client: &Client, key: i64) -> Result<(bool, bool), tokio_postgres::Error> {
    let row = client
        .query_typed_one(sql::TEST_TRY_AND_UNLOCK, &[(&key, Type::INT8)])
        .await?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}

/// The first answer of a scope that is not what exclusion requires, as
/// text; an error that ends a connection is returned.
fn judge(
    answers: Answers,
    key: i64,
    scope: LockScope,
) -> Result<Option<String>, tokio_postgres::Error> {
    let (try_fn, unlock_fn) = match scope {
        LockScope::Session => ("pg_try_advisory_lock", "pg_advisory_unlock"),
        LockScope::Transaction => ("pg_try_advisory_xact_lock", "ROLLBACK"),
    };
    let try_k = format!("{try_fn}({key})");
    let steps = [
        (
            answers.taken,
            true,
            format!("{try_k} was refused on a free random key"),
        ),
        (
            answers.refused,
            false,
            format!("{try_k} was granted on a second connection while the first held it"),
        ),
        (
            answers.released,
            true,
            format!("{unlock_fn}({key}) answered false on the connection that held it"),
        ),
        (
            answers.retaken,
            true,
            format!("{try_k} was refused on a second connection after the first released it"),
        ),
        (
            answers.given_back,
            true,
            format!("{unlock_fn}({key}) answered false right after {try_k} granted it"),
        ),
    ];
    for (answer, expected, seen) in steps {
        match answer {
            None => {}
            Some(Ok(got)) if got == expected => {}
            Some(Ok(_)) => return Ok(Some(seen)),
            Some(Err(e)) if crate::pg::connect::ends_session(&e) => return Err(e),
            Some(Err(e)) => {
                return Ok(Some(format!(
                    "{try_k} or its release failed: {}",
                    crate::error::cause(&e)
                )))
            }
        }
    }
    Ok(None)
}

/// The session-scope self-test with a lock session being set up (`session`,
/// still spoken to through tokio-postgres, first) and one probe connection
/// to its host (`target`), closed after. [`Error::FakeAdvisoryLocks`] if it
/// fails; [`Error::Connect`] if the probe can't connect or a connection
/// ends.
pub(crate) async fn with_probe(
    settings: &Settings,
    session: &Client,
    target: &Target,
) -> Result<(), Error> {
    let probe = crate::pg::connect::connect_client_at(settings, target).await?;
    let verdict = exclusion(session, &probe, Scopes::SESSION)
        .await
        .map_err(|source| Error::Connect {
            target: target.describe(),
            source: Box::new(source),
        })?;
    report(settings, &verdict, LockScope::Session)
}

/// Logs the verdict of a tested `scope` (debug if it passed, error if not)
/// and turns a failure into [`Error::FakeAdvisoryLocks`].
pub(crate) fn report(
    settings: &Settings,
    verdict: &Verdict,
    scope: LockScope,
) -> Result<(), Error> {
    match verdict.failed(scope) {
        None => {
            let took_us = verdict.took.as_micros() as u64;
            tracing::debug!(pool = %settings.name, scope = %scope, took_us, "advisory-locked: exclusion self-test passed");
            Ok(())
        }
        Some(seen) => {
            let e = Error::FakeAdvisoryLocks {
                target: settings.target(),
                scope,
                seen: seen.to_owned(),
            };
            tracing::error!(pool = %settings.name, scope = %scope, error = %e, "advisory-locked: exclusion self-test failed");
            Err(e)
        }
    }
}

/// A key no one else uses (64 random bits from the standard library's
/// per-process random keys and the clock; not cryptographic).
pub(crate) fn random_key() -> i64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::test_server::client;

    /// PostgreSQL's locks pass, both scopes, with their statements pipelined.
    #[tokio::test]
    async fn real_locks_pass() {
        let (a, b) = (client().await, client().await);
        let verdict = exclusion(&a, &b, Scopes::BOTH).await.unwrap();
        assert_eq!((verdict.session, verdict.transaction), (None, None));
        // Nothing is left held, and no transaction is left open.
        for c in [&a, &b] {
            let row = c
                .query_one(
                    "SELECT count(*) FROM pg_catalog.pg_locks WHERE locktype = 'advisory' \
                     AND pid = pg_catalog.pg_backend_pid()",
                    &[],
                )
                .await
                .unwrap();
            assert_eq!(row.get::<_, i64>(0), 0);
            // A statement that starts its own transaction: none was open.
            // (A simple query: one message, one statement start.)
            let rows = c
                .simple_query("SELECT pg_catalog.now() = pg_catalog.statement_timestamp()")
                .await
                .unwrap();
            let started = rows.iter().any(|m| {
                matches!(m, tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("t"))
            });
            assert!(started, "a transaction was left open");
        }
    }

    /// One server session seen as two (what a transaction-pooling proxy
    /// does): its locks are re-entrant, so the second "connection" is
    /// granted the key the first holds, in both scopes.
    #[tokio::test]
    async fn one_session_twice_fails_both_scopes() {
        let a = client().await;
        let verdict = exclusion(&a, &a, Scopes::BOTH).await.unwrap();
        for (scope, seen) in [
            (LockScope::Session, verdict.session.as_deref()),
            (LockScope::Transaction, verdict.transaction.as_deref()),
        ] {
            let seen = seen.unwrap_or_else(|| panic!("{scope} passed"));
            assert!(
                seen.contains("was granted on a second connection while the first held it"),
                "{scope}: {seen}"
            );
        }
        let verdict = exclusion(&a, &a, Scopes::TRANSACTION).await.unwrap();
        assert!(verdict.session.is_none() && verdict.transaction.is_some());
    }
}
