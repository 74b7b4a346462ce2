//! [`SessionLock`]: a session-level lock held on a caller's connection.

use std::sync::Arc;

use super::{AdvisoryExecutor, LockStatement};
use crate::{Error, LockKey, Mode};

/// A session-level advisory lock held on a caller's connection (or a
/// `&mut` of it), from [`try_lock_session`](super::try_lock_session) or
/// [`lock_session`](super::lock_session). It dereferences to the
/// connection, for the statements run under the lock.
///
/// Release it with [`release`](Self::release) before the connection goes
/// back to a pool: a pool does not know about the lock. Dropped without
/// `release`, a guard that owns its connection unlocks in a spawned task
/// (or closes the connection); one that borrows it logs an error and the
/// lock stays held (see the [module documentation](super)).
#[must_use = "the lock stays held by the connection until released"]
pub struct SessionLock<C: AdvisoryExecutor> {
    /// `None` only after `release` took it.
    conn: Option<C>,
    key: LockKey,
    mode: Mode,
}

impl<C: AdvisoryExecutor> SessionLock<C> {
    pub(super) fn new(conn: C, key: LockKey, mode: Mode) -> SessionLock<C> {
        SessionLock {
            conn: Some(conn),
            key,
            mode,
        }
    }

    /// The key locked.
    pub fn key(&self) -> &LockKey {
        &self.key
    }

    /// The mode locked.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The connection (also reachable through `Deref`/`DerefMut`).
    pub fn connection(&mut self) -> &mut C {
        // Set from creation until `release` consumes the guard.
        self.conn
            .as_mut()
            .expect("SessionLock without its connection")
    }

    /// Unlocks, and gives the connection back. If the unlock statement
    /// fails, the connection is treated as a dropped guard's (an owned one
    /// is closed, not returned to its pool) and the error is returned. An
    /// unlock that finds the lock no longer held (something on the
    /// connection unlocked it, or `DISCARD ALL`) is logged as a warning.
    pub async fn release(mut self) -> Result<C, Error> {
        let unlock = LockStatement::unlock(self.mode, &self.key);
        let mut conn = self
            .conn
            .take()
            .expect("SessionLock without its connection");
        match conn.query_bool(&unlock).await {
            Ok(held) => {
                if !held {
                    tracing::warn!(key = %self.key.name(), "advisory-locked: released a session lock that the connection no longer held");
                }
                Ok(conn)
            }
            Err(e) => {
                tracing::warn!(key = %self.key.name(), error = %crate::error::cause(&e), "advisory-locked: unlock on the caller's connection failed");
                conn.drop_with_lock(unlock, &self.key);
                Err(Error::Query {
                    key: self.key.name().to_owned(),
                    source: Arc::new(e),
                })
            }
        }
    }
}

impl<C: AdvisoryExecutor> std::ops::Deref for SessionLock<C> {
    type Target = C;

    fn deref(&self) -> &C {
        self.conn
            .as_ref()
            .expect("SessionLock without its connection")
    }
}

impl<C: AdvisoryExecutor> std::ops::DerefMut for SessionLock<C> {
    fn deref_mut(&mut self) -> &mut C {
        self.connection()
    }
}

impl<C: AdvisoryExecutor> Drop for SessionLock<C> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            conn.drop_with_lock(LockStatement::unlock(self.mode, &self.key), &self.key);
        }
    }
}

impl<C: AdvisoryExecutor> std::fmt::Debug for SessionLock<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionLock")
            .field("key", &self.key)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

/// For owned connections dropped with their lock: unlocks in a task on the
/// current Tokio runtime, then drops the connection (back to its pool); if
/// the unlock fails or there is no runtime, `close` gets the connection
/// (it must close it, not return it to a pool).
pub(super) fn unlock_in_background<C, F>(conn: C, unlock: LockStatement, key: &LockKey, close: F)
where
    C: AdvisoryExecutor + 'static,
    F: FnOnce(C) + Send + 'static,
{
    let name = key.name().to_owned();
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::error!(key = %name, "advisory-locked: a SessionLock was dropped without release() outside a Tokio runtime: closing its connection (the server releases the lock)");
        close(conn);
        return;
    };
    tracing::debug!(key = %name, "advisory-locked: a SessionLock was dropped without release(): unlocking in the background");
    runtime.spawn(async move {
        let mut conn = conn;
        match conn.query_bool(&unlock).await {
            Ok(_) => drop(conn),
            Err(e) => {
                tracing::error!(key = %name, error = %crate::error::cause(&e), "advisory-locked: background unlock of a dropped SessionLock failed: closing its connection (the server releases the lock)");
                close(conn);
            }
        }
    });
}
