//! The in-process lock table.
//!
//! PostgreSQL session locks are re-entrant per session, so two tasks of this
//! process that share a lock session would both be "granted" the same key.
//! This table makes them exclude each other first, without a round trip: a
//! key is at most once in flight to the server and at most once held on it
//! by this process; shared holders of this process share one server lock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;

use crate::session::Session;
use crate::{KeyId, Mode};

enum Entry {
    /// A try-lock for this key is in flight to the server.
    Acquiring { mode: Mode, changed: Arc<Notify> },
    /// This process holds the key on `session`, for `holders` guards.
    Held {
        mode: Mode,
        holders: usize,
        session: Arc<Session>,
        /// The grant's fencing token, shared by the joined holders.
        token: Option<i64>,
        changed: Arc<Notify>,
    },
}

/// What [`Table::begin`] decided.
pub(crate) enum Begin {
    /// The caller reserved the key and must ask the server.
    Reserved,
    /// The caller joined a shared lock this process already holds (with
    /// that grant's fencing token).
    Joined(Arc<Session>, Option<i64>),
    /// Busy in this process; the future resolves when that changes.
    Busy(OwnedNotified),
    /// A shared try-lock is in flight; wait for its outcome, then try again.
    Pending(OwnedNotified),
}

#[derive(Default)]
pub(crate) struct Table {
    entries: Mutex<HashMap<KeyId, Entry>>,
}

fn enabled(n: &Arc<Notify>) -> OwnedNotified {
    // Created under the table's mutex: it receives every notify_waiters()
    // that happens after this point, even before it is first polled.
    n.clone().notified_owned()
}

impl Table {
    fn lock(&self) -> MutexGuard<'_, HashMap<KeyId, Entry>> {
        // Every change below is a single insert/remove/assignment: a panic
        // elsewhere can't leave the map inconsistent.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn begin(&self, id: KeyId, mode: Mode) -> Begin {
        let mut t = self.lock();
        match t.get_mut(&id) {
            None => {
                t.insert(
                    id,
                    Entry::Acquiring {
                        mode,
                        changed: Arc::new(Notify::new()),
                    },
                );
                Begin::Reserved
            }
            Some(Entry::Acquiring {
                mode: Mode::Shared,
                changed,
            }) if mode == Mode::Shared => Begin::Pending(enabled(changed)),
            Some(Entry::Acquiring { changed, .. }) => Begin::Busy(enabled(changed)),
            Some(Entry::Held {
                mode: Mode::Shared,
                holders,
                session,
                token,
                ..
            }) if mode == Mode::Shared && !session.is_dead() => {
                *holders += 1;
                Begin::Joined(session.clone(), *token)
            }
            Some(Entry::Held { changed, .. }) => Begin::Busy(enabled(changed)),
        }
    }

    /// The server granted a reserved key.
    pub(crate) fn granted(&self, id: KeyId, session: Arc<Session>, token: Option<i64>) {
        let mut t = self.lock();
        if let Some(entry) = t.get_mut(&id) {
            if let Entry::Acquiring { mode, changed } = entry {
                let changed = changed.clone();
                *entry = Entry::Held {
                    mode: *mode,
                    holders: 1,
                    session,
                    token,
                    changed: changed.clone(),
                };
                changed.notify_waiters();
            }
        }
    }

    /// A reservation ended without a grant.
    pub(crate) fn abandon(&self, id: KeyId) {
        let mut t = self.lock();
        if let Some(Entry::Acquiring { changed, .. }) = t.get(&id) {
            changed.notify_waiters();
            t.remove(&id);
        }
    }

    /// One holder let go. Returns the session to unlock the key on when it
    /// was the last holder in this process, after running `last` on it while
    /// the table is still locked: the unlock is queued before anyone of this
    /// process can take the key again (and so before any unlock that a
    /// failed try-lock of that key may queue; see `dispatch::finish`).
    pub(crate) fn release_with(
        &self,
        id: KeyId,
        last: impl FnOnce(&Arc<Session>),
    ) -> Option<Arc<Session>> {
        let mut t = self.lock();
        match t.get_mut(&id) {
            Some(Entry::Held { holders, .. }) if *holders > 1 => {
                *holders -= 1;
                None
            }
            Some(Entry::Held { .. }) => match t.remove(&id) {
                Some(Entry::Held {
                    session, changed, ..
                }) => {
                    last(&session);
                    changed.notify_waiters();
                    Some(session)
                }
                _ => None,
            },
            _ => None,
        }
    }

    /// How many keys this process holds or is acquiring.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}
