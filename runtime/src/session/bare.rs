//! A lock session without its dispatcher, for the bench only (feature
//! `bench-internals`): the crate's own protocol path, its codec
//! ([`crate::pg::protocol`]) and its wire ([`crate::pg::wire`]), sending the
//! statement a sequence of uncontended calls sends most (the last call's
//! unlock and this call's try-lock, [`Statement::Pair`]) from the caller's
//! task. Set against tokio-postgres sending the same prepared statement, it
//! measures what the own protocol path costs or saves per call.

use std::sync::Arc;

use crate::config::Settings;
use crate::pg::protocol::Param;
use crate::pg::sql::{Action, Statement};
use crate::session::wakeup::Waiters;
use crate::session::{open, Opened, Role};
use crate::Error;

/// An opened lock session, driven by its caller.
pub(crate) struct Bare {
    opened: Opened,
}

impl Bare {
    /// Connects and sets up a lock session as the crate does, then hands
    /// its socket over to the caller instead of a dispatcher.
    pub(crate) async fn open(settings: &Settings) -> Result<Bare, Error> {
        let waiters = Arc::new(Waiters::default());
        let opened = open(Role::Lock, settings, &waiters, false).await?;
        Ok(Bare { opened })
    }

    /// The session's server process id.
    pub(crate) fn backend_pid(&self) -> i32 {
        self.opened.backend_pid
    }

    /// Unlocks `unlock` and tries `lock` (both exclusive, `bigint` keys) in
    /// one statement: whether `unlock` was held, whether `lock` was granted.
    pub(crate) async fn unlock_and_try_lock(
        &mut self,
        unlock: i64,
        lock: i64,
    ) -> Result<(bool, bool), Error> {
        let pair = Statement::Pair(Action::Unlock, Action::TryLock);
        let o = &mut self.opened;
        o.wire.execute(
            o.statements.name(pair),
            &[Param::I64(unlock), Param::I64(lock)],
        );
        let values = o.wire.answer().await.map_err(|source| Error::Query {
            key: lock.to_string(),
            source,
        })?;
        match values[..] {
            [Some(was_held), Some(granted)] => Ok((was_held == 1, granted == 1)),
            _ => Err(Error::Query {
                key: lock.to_string(),
                source: Arc::new(crate::QueryError::Protocol(format!(
                    "unexpected answer {values:?}"
                ))),
            }),
        }
    }
}
