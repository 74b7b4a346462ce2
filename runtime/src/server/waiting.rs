//! Waiting on the server: wait sessions.
//!
//! A wait-mode call whose try-lock found the key held by another process
//! borrows an idle *wait session* and sends `pg_advisory_lock[_shared]`
//! there, which the server grants the moment the holder releases: one step,
//! where the notify/backoff path of [`crate::server`] needs the holder's
//! notification to reach this process and then one more try-lock.
//!
//! - A key this process found held by another process lately is
//!   *contended*: the next wait-mode call for it sends the wait
//!   at once, without a try-lock first, on the wait session the key was
//!   held on if that one is idle (right after the unlock queued there).
//!   That saves a round trip, and the wait joins the server's queue at
//!   once: with a try-lock first, a process that releases and takes the key
//!   again quickly could take it back in the window between the waiter's
//!   busy try-lock and its wait. The wait tries the lock first and answers
//!   whether it had to wait: a free key is granted at once (held on the
//!   wait session, as after any wait). Once 4 waits in a row have found it
//!   free ([`crate::local::table::CONTENDED`]) the key is no longer contended: its
//!   next call takes the try-lock path again and leaves the wait sessions
//!   to waits. (A key handed back and forth is often free the moment a wait
//!   arrives: one free wait is no sign that it is no longer contended.)
//!   With no wait session idle, the call takes the try-lock path.
//! - A wait session is a [`Session`] like the lock sessions (its own
//!   dispatcher, heartbeat and loss detection; named alike), but it serves
//!   one wait at a time and does not `LISTEN`. It is lent only while it holds
//!   no lock and has no wait in flight: anything queued behind a blocking
//!   statement (an unlock above all) would wait for it.
//! - Each wait is bounded on the server by `lock_timeout`, set in the same
//!   statement: at most the caller's remaining time, and at most half the
//!   dispatcher's answer timeout ([`Liveness`]), which closes a session whose
//!   statement stays unanswered that long. A wait that ends with
//!   `lock_timeout` (SQLSTATE 55P03) is sent again until the caller's
//!   deadline. Any failed wait may have been granted just before its error
//!   (session locks survive errors, and the server can grant the lock just
//!   as the timeout fires): the dispatcher then queues an unlock that
//!   releases the key only if the session holds it.
//! - The lock granted is held on the wait session until released, as on any
//!   session: the guard's unlock goes there, and loss is detected there. A
//!   caller dropped while waiting leaves a grant nobody takes, which the
//!   dispatcher gives back (see [`crate::session::dispatch::Grant`]).
//! - Wait sessions open when first needed, at most
//!   [`LockConfig::wait_sessions`](crate::LockConfig::wait_sessions), and are
//!   replaced when they die. With none free (or one failing to open), the
//!   call waits as without them.
//! - The unlock of a lock held on a wait session travels on that session,
//!   while a later lock of the same key from this process goes to a lock
//!   session (a wait session is never a key's home, see [`crate::local::lanes`]).
//!   So that it can't overtake the unlock (and find its own process's lock
//!   busy), it waits for the unlock's answer first.
//!
//! Entries with fencing tokens don't use wait sessions: their token is taken
//! in the try-lock statement, together with the grant.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::time::Instant as TokioInstant;

use crate::config::Settings;
use crate::session::dispatch::{Answer, Grant, Liveness, RequestError};
use crate::session::wakeup::Waiters;
use crate::session::{Role, Session};
use crate::stats::Counters;
use crate::{Error, LockKey, Mode};

/// The longest single wait (see [`Liveness::longest_wait`]): a wait of
/// this length runs under its wait session's own `lock_timeout`.
fn longest_slice(settings: &Settings) -> Duration {
    Liveness::within(settings.loss_detection).longest_wait()
}

/// How a wait on a wait session ended.
pub(crate) enum Waited {
    /// Granted on this session; the caller keeps or drops the grant.
    Granted(Arc<Session>, Grant),
    /// The caller's deadline passed.
    TimedOut,
    /// The wait session ended while waiting: try again (the key may be free).
    Again,
    /// No wait session is free (or can be opened now): wait without one.
    Unavailable,
}

/// The wait sessions of one registry entry (of one server).
pub(crate) struct WaitPool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    settings: Settings,
    counters: Arc<Counters>,
    waiters: Arc<Waiters>,
    longest: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    sessions: Vec<Arc<Session>>,
    /// Connects under way.
    connecting: usize,
    /// Failures in a row (failed connects, sessions that ended while
    /// waiting), and when the next connect may be tried.
    failures: u32,
    next_connect: Option<Instant>,
}

impl WaitPool {
    pub(crate) fn new(
        settings: &Settings,
        counters: &Arc<Counters>,
        waiters: &Arc<Waiters>,
    ) -> WaitPool {
        WaitPool {
            inner: Arc::new(PoolInner {
                settings: settings.clone(),
                counters: counters.clone(),
                waiters: waiters.clone(),
                longest: longest_slice(settings),
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// False when the entry has none (`wait_sessions(0)`) or uses fencing
    /// tokens.
    pub(crate) fn enabled(&self) -> bool {
        let s = &self.inner.settings;
        s.wait_sessions > 0 && !s.fencing && !s.transaction_scope_only
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits on the server for `key` (reserved in the caller's table), in
    /// slices, until it is granted or `deadline` passes; on `prefer` (where
    /// this process held the key last) if it is idle.
    pub(crate) async fn wait(
        &self,
        key: &LockKey,
        mode: Mode,
        deadline: Option<TokioInstant>,
        mut prefer: Option<Arc<Session>>,
    ) -> Result<Waited, Error> {
        let id = key.id();
        loop {
            let preferred = prefer
                .take()
                .filter(|s| !s.is_dead() && s.is_wait() && s.lend());
            let session = match preferred {
                Some(s) => s,
                None => match self.lend(deadline).await? {
                    Some(s) => s,
                    None => return Ok(Waited::Unavailable),
                },
            };
            let slice = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(TokioInstant::now());
                    if left < Duration::from_millis(1) {
                        session.unlend();
                        return Ok(Waited::TimedOut);
                    }
                    left.min(self.inner.longest)
                }
                None => self.inner.longest,
            };
            let millis = crate::session::dispatch::wait_millis(slice);
            Counters::add(&self.inner.counters.server_waits, 1);
            tracing::debug!(pool = %self.inner.settings.name, key = %key.name(), session = session.id(), lock_timeout_ms = millis, "advisory-locked: waiting on the server");
            let cancel = CancelOnDrop {
                lend: session.lend_number(),
                session: Some(session.clone()),
                settings: &self.inner.settings,
            };
            let busy = self.inner.counters.metrics.wait_session_busy();
            let answer = session.wait(id, mode, millis).await;
            busy.end();
            cancel.disarm();
            match answer {
                Ok(Answer::Granted(grant)) => {
                    self.state().failures = 0;
                    return Ok(Waited::Granted(session, grant));
                }
                // Not sent by a blocking wait (the session is lendable again).
                Ok(_) => return Ok(Waited::Unavailable),
                Err(RequestError::Db(e))
                    if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) =>
                {
                    // lock_timeout: this slice is over.
                    self.state().failures = 0;
                    if deadline.is_some_and(|d| TokioInstant::now() >= d) {
                        return Ok(Waited::TimedOut);
                    }
                }
                Err(RequestError::Db(source)) => {
                    tracing::warn!(pool = %self.inner.settings.name, key = %key.name(), error = %crate::error::cause(&source), "advisory-locked: a wait on the server failed");
                    return Err(Error::Query {
                        key: key.name().to_owned(),
                        source,
                    });
                }
                Err(RequestError::Ended) => {
                    // It may not know yet: replaced at the next lend.
                    session.kill();
                    tracing::info!(pool = %self.inner.settings.name, key = %key.name(), session = session.id(), "advisory-locked: wait session ended while waiting; trying again");
                    self.failed();
                    return Ok(Waited::Again);
                }
            }
        }
    }

    /// An idle wait session, lent for one wait; a new one if none is idle
    /// and fewer than the maximum are open; `None` if none can be had now.
    async fn lend(&self, deadline: Option<TokioInstant>) -> Result<Option<Arc<Session>>, Error> {
        loop {
            {
                let mut state = self.state();
                state.sessions.retain(|s| !s.is_dead());
                if let Some(s) = state.sessions.iter().find(|s| s.lend()) {
                    return Ok(Some(s.clone()));
                }
                let open = state.sessions.len() + state.connecting;
                let backing_off = state.next_connect.is_some_and(|t| Instant::now() < t);
                if open >= self.inner.settings.wait_sessions || backing_off {
                    return Ok(None);
                }
                state.connecting += 1;
            }
            // In a task of its own: a connect finishes (and its session
            // joins the pool) even if this caller is dropped.
            let pool = WaitPool {
                inner: self.inner.clone(),
            };
            let connecting = tokio::spawn(async move { pool.connect().await });
            let connected = match deadline {
                Some(d) => match tokio::time::timeout_at(d, connecting).await {
                    Ok(joined) => joined,
                    Err(_) => return Ok(None),
                },
                None => connecting.await,
            };
            match connected {
                // Lend it unless another caller was quicker (then look again).
                Ok(Some(session)) => {
                    if session.lend() {
                        return Ok(Some(session));
                    }
                }
                Ok(None) => return Ok(None),
                // Only if the runtime is shutting down.
                Err(_) => return Ok(None),
            }
        }
    }

    /// Opens a wait session and adds it to the pool (idle).
    async fn connect(&self) -> Option<Arc<Session>> {
        let inner = &self.inner;
        let result =
            Session::connect_as(Role::Wait, &inner.settings, &inner.counters, &inner.waiters).await;
        let mut state = self.state();
        state.connecting -= 1;
        match result {
            Ok(session) => {
                tracing::debug!(pool = %inner.settings.name, session = session.id(), backend_pid = session.backend_pid, "advisory-locked: wait session opened");
                state.next_connect = None;
                state.sessions.push(session.clone());
                Some(session)
            }
            Err(e) => {
                drop(state);
                let retry_in = self.failed();
                tracing::warn!(pool = %inner.settings.name, error = %crate::error::cause(&e), retry_in_ms = retry_in.as_millis() as u64,
                    "advisory-locked: cannot open a wait session; waiting without one until the next attempt");
                None
            }
        }
    }

    /// Records a failure: no connect before the backoff has passed.
    fn failed(&self) -> Duration {
        let mut state = self.state();
        state.failures = state.failures.saturating_add(1);
        let wait = crate::backoff::reconnect(state.failures);
        state.next_connect = Some(Instant::now() + wait);
        wait
    }
}

/// Cancels a wait on the server if the caller goes away while it is
/// blocked there, so that the wait session is free at once instead of at
/// the end of its `lock_timeout` slice (see [`Session::cancel_wait`]). The
/// dispatcher then handles the cancelled wait as any failed one (an unlock
/// if the session holds the key).
struct CancelOnDrop<'a> {
    session: Option<Arc<Session>>,
    lend: u64,
    settings: &'a Settings,
}

impl CancelOnDrop<'_> {
    fn disarm(mut self) {
        self.session = None;
    }
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            session.cancel_wait(self.lend, self.settings);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wait statements (then the checked unlocks) for
    /// exclusive/shared × bigint/pair keys, in that order.
    fn wait_and_unlock_sql() -> Vec<String> {
        use crate::pg::sql::{Action, Form, Request, Statement};
        [Action::Wait, Action::CheckedUnlock]
            .into_iter()
            .flat_map(|action| {
                [Form::Int8, Form::Pair].into_iter().flat_map(move |form| {
                    [Mode::Exclusive, Mode::Shared]
                        .map(|mode| Statement::One(Request { action, mode, form }).sql())
                })
            })
            .collect()
    }

    /// Every wait statement and every unlock after a failed wait, on the
    /// real server, each key form and mode: a wait takes a free key at once;
    /// a busy one ends with lock_timeout (55P03) after about that long; the
    /// unlock releases a held key (true) and answers false, without a
    /// warning, for one not held.
    #[tokio::test]
    async fn wait_statements_on_the_server() {
        use crate::pg::test_server::{backend_pid, client, TestKey};
        let (waiter, holder) = (client().await, client().await);
        let waiter_pid = backend_pid(&waiter).await;
        let sql = wait_and_unlock_sql();
        let base = (i64::from(std::process::id()) << 24) | (1 << 62);
        let pair = TestKey::Pair(std::process::id() as i32, -7);
        let ms: i64 = 150;
        for (i, shared) in [(0, false), (1, true), (2, false), (3, true)] {
            let wait = waiter.prepare(&sql[i]).await.unwrap();
            let unlock = waiter.prepare(&sql[i + 4]).await.unwrap();
            let key = if i < 2 {
                TestKey::Int(base + i as i64)
            } else {
                pair
            };
            let what = format!("{i} shared={shared}");
            // Free: granted at once (1).
            let unlocked = || async {
                key.query(&waiter, &unlock, &[])
                    .await
                    .unwrap()
                    .get::<_, bool>(0)
            };
            let row = key.query(&waiter, &wait, &[&ms]).await.unwrap();
            assert_eq!(row.get::<_, i32>(0), 1, "{what}");
            assert!(unlocked().await, "{what}");
            // Busy, then released once the server shows it waiting:
            // granted after waiting (2).
            let sessions = (&waiter, waiter_pid, &holder);
            granted_after_waiting(key, sessions, &wait, &[&10_000_i64], &what).await;
            assert!(unlocked().await, "{what}");
            // Not held: false.
            assert!(!unlocked().await, "{what}");
            // Busy (held exclusively by another session): lock_timeout.
            times_out(key, (&waiter, &holder), &wait, &[&ms], &what).await;
            // The timeout lasted for the wait's statement only.
            let after = lock_timeout_of(&waiter).await;
            assert_eq!(after, "0", "{what}: lock_timeout left set after a wait");
        }
    }

    /// Frees every advisory lock of the session it runs on.
    const FREE: &str = "SELECT pg_advisory_unlock_all()";

    /// `wait` on `key`, held by `holder`, is granted once the server shows
    /// the waiter waiting and the holder frees it: answer 2.
    async fn granted_after_waiting(
        key: crate::pg::test_server::TestKey,
        (waiter, waiter_pid, holder): (&tokio_postgres::Client, i32, &tokio_postgres::Client),
        wait: &tokio_postgres::Statement,
        more: &[&(dyn tokio_postgres::types::ToSql + Sync)],
        what: &str,
    ) {
        use crate::pg::test_server::until_waiting;
        holder.batch_execute(&key.take_sql(false)).await.unwrap();
        let mut waiting = Box::pin(key.query(waiter, wait, more));
        until_waiting(holder, waiter_pid, &mut waiting, what).await;
        holder.batch_execute(FREE).await.unwrap();
        assert_eq!(waiting.await.unwrap().get::<_, i32>(0), 2, "{what}");
    }

    /// `wait` on `key`, held by `holder` (exclusively), ends with
    /// lock_timeout (55P03) after about its 150 ms; the holder frees it.
    async fn times_out(
        key: crate::pg::test_server::TestKey,
        (waiter, holder): (&tokio_postgres::Client, &tokio_postgres::Client),
        wait: &tokio_postgres::Statement,
        more: &[&(dyn tokio_postgres::types::ToSql + Sync)],
        what: &str,
    ) {
        holder.batch_execute(&key.take_sql(false)).await.unwrap();
        let started = Instant::now();
        let err = key
            .query(waiter, wait, more)
            .await
            .expect_err("busy key granted");
        let took = started.elapsed();
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE),
            "{what}: {err}"
        );
        assert!(
            took >= Duration::from_millis(140) && took < Duration::from_secs(2),
            "{what}: {took:?}"
        );
        holder.batch_execute(FREE).await.unwrap();
    }

    /// The session's `lock_timeout`, as `SHOW` says it.
    async fn lock_timeout_of(client: &tokio_postgres::Client) -> String {
        client
            .query_one("SHOW lock_timeout", &[])
            .await
            .unwrap()
            .get(0)
    }

    /// The waits bounded by the session's own `lock_timeout`, as a wait
    /// session sets it: granted at once (1) or after waiting (2); a busy
    /// key ends with lock_timeout (55P03) after about that long; the
    /// setting stays.
    #[tokio::test]
    async fn standing_wait_statements_on_the_server() {
        use crate::pg::sql::{Action, Form, Request, Statement};
        use crate::pg::test_server::{backend_pid, client, TestKey};
        let (waiter, holder) = (client().await, client().await);
        let waiter_pid = backend_pid(&waiter).await;
        let ms = 150;
        waiter
            .batch_execute(&crate::pg::sql::standing_lock_timeout(ms))
            .await
            .unwrap();
        let base = (i64::from(std::process::id()) << 24) | (1 << 61);
        let pair = TestKey::Pair(std::process::id() as i32, -9);
        for (i, (form, mode)) in [
            (Form::Int8, Mode::Exclusive),
            (Form::Int8, Mode::Shared),
            (Form::Pair, Mode::Exclusive),
            (Form::Pair, Mode::Shared),
        ]
        .into_iter()
        .enumerate()
        {
            let action = Action::WaitStanding;
            let sql = Statement::One(Request { action, mode, form }).sql();
            assert!(!sql.contains("set_config"), "{sql}");
            let wait = waiter.prepare(&sql).await.unwrap();
            let key = match form {
                Form::Int8 => TestKey::Int(base + i as i64),
                Form::Pair => pair,
            };
            let what = format!("{form:?} {mode:?}");
            let row = key.query(&waiter, &wait, &[]).await.unwrap();
            assert_eq!(row.get::<_, i32>(0), 1, "{what}");
            waiter.batch_execute(FREE).await.unwrap();
            let sessions = (&waiter, waiter_pid, &holder);
            granted_after_waiting(key, sessions, &wait, &[], &what).await;
            waiter.batch_execute(FREE).await.unwrap();
            times_out(key, (&waiter, &holder), &wait, &[], &what).await;
        }
        assert_eq!(lock_timeout_of(&waiter).await, "150ms");
    }

    /// A wait session's own `lock_timeout` does not reach the commit of an
    /// unlock that notifies: that commit queues for the server's
    /// notification lock, held here by another session's commit for up to
    /// 100 ms (`commit_delay` sleeps between taking that lock and flushing
    /// the commit; a superuser setting), five times the session's
    /// `lock_timeout`. The unlock succeeds, and it did wait for the lock.
    #[tokio::test]
    async fn a_notifying_unlock_commits_past_the_sessions_lock_timeout() {
        use crate::pg::sql::{Action, Form, Request, Statement};
        use crate::pg::test_server::{backend_pid, client, TestKey};
        let (session, notifier, observer) = (client().await, client().await, client().await);
        let notifier_pid = backend_pid(&notifier).await;
        session
            .batch_execute(&crate::pg::sql::standing_lock_timeout(20))
            .await
            .unwrap();
        let request = Request {
            action: Action::UnlockNotify,
            mode: Mode::Exclusive,
            form: Form::Int8,
        };
        let unlock = session
            .prepare(&Statement::One(request).sql())
            .await
            .unwrap();
        let key = TestKey::Int((i64::from(std::process::id()) << 24) | (1 << 60));
        session.batch_execute(&key.take_sql(false)).await.unwrap();
        notifier
            .batch_execute(
                "SET commit_delay = 100000; SET commit_siblings = 0; BEGIN; \
                 SELECT pg_logical_emit_message(true, 'advisory-locked-test', ''); \
                 NOTIFY advisory_locked_test",
            )
            .await
            .expect("commit_delay needs a superuser");
        let commit = tokio::spawn(async move { notifier.batch_execute("COMMIT").await });
        // Until the notifier's commit holds the notification lock (bounded).
        let holds = "SELECT EXISTS (SELECT FROM pg_locks WHERE locktype = 'object' \
                     AND classid = 'pg_database'::regclass AND objid = 0 AND granted AND pid = $1)";
        let mut polls = 0;
        while !observer
            .query_one(holds, &[&notifier_pid])
            .await
            .unwrap()
            .get::<_, bool>(0)
        {
            polls += 1;
            assert!(polls < 10_000, "the notifier's commit never took the lock");
            tokio::task::yield_now().await;
        }
        let started = Instant::now();
        let row = key.query(&session, &unlock, &[]).await;
        let took = started.elapsed();
        assert!(row.expect("the notifying unlock failed").get::<_, bool>(0));
        assert!(
            took >= Duration::from_millis(20),
            "the unlock did not queue for the notification lock: {took:?}"
        );
        commit.await.unwrap().unwrap();
        let after = lock_timeout_of(&session).await;
        assert_eq!(after, "20ms", "the session's own lock_timeout changed");
    }
}
