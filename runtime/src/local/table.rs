//! The in-process lock table.
//!
//! PostgreSQL session locks are re-entrant per session, so two tasks of this
//! process that share a lock session would both be "granted" the same key.
//! This table makes them exclude each other first, without a round trip: a
//! key is at most once in flight to the server and at most once held on it
//! by this process; shared holders of this process share one server lock.

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;

use crate::key::KeyMap;
use crate::session::Session;
use crate::{KeyId, Mode};

enum Entry {
    /// A try-lock for this key is in flight to the server, or (`waiting`)
    /// a wait on a wait session, which may last long (see
    /// [`crate::server::waiting`]).
    Acquiring {
        mode: Mode,
        waiting: bool,
        changed: Changed,
    },
    /// This process holds the key on `session`, for `holders` guards.
    Held {
        mode: Mode,
        holders: usize,
        session: Arc<Session>,
        /// The grant's fencing token, shared by the joined holders.
        token: Option<i64>,
        /// How contended the key is (see [`Recent::contended`]).
        contended: u8,
        changed: Changed,
    },
}

/// A key this process released lately: the session it was held on, and
/// the number of its unlock there (see [`crate::local::lanes`]).
#[derive(Clone)]
pub(crate) struct Recent {
    pub(crate) session: Arc<Session>,
    pub(crate) unlock: u64,
    /// Above 0: the key was found held by another process lately (set to
    /// [`CONTENDED`] then, one less at each wait that finds it free), and
    /// the next wait-mode call waits on the server at once (see
    /// [`crate::server::waiting`]).
    pub(crate) contended: u8,
}

/// How many waits in a row must find a key free before it is no longer
/// contended (see [`Recent::contended`]): a key handed back and forth is
/// often free at the moment a wait arrives, and should not drop back to
/// the try-lock path at the first such wait.
pub(crate) const CONTENDED: u8 = 4;

/// Released keys remembered at most (more while their unlocks are pending).
const RECENT_KEYS: usize = 4096;

/// What [`Table::begin`] decided.
pub(crate) enum Begin {
    /// The caller reserved the key and must ask the server; with where it
    /// was held last if this process released it lately.
    Reserved(Option<Recent>),
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
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    entries: KeyMap<Entry>,
    /// Keys released lately and not granted since.
    recent: KeyMap<Recent>,
    /// `recent` is trimmed when it grows past this.
    recent_limit: usize,
}

impl State {
    fn remember(&mut self, id: KeyId, session: &Arc<Session>, contended: u8) {
        let unlock = session.unlocks_queued();
        self.recent.insert(
            id,
            Recent {
                session: session.clone(),
                unlock,
                contended,
            },
        );
        if self.recent.len() > self.recent_limit.max(RECENT_KEYS) {
            // Only keys whose unlock is still on its way must be kept.
            self.recent
                .retain(|_, r| r.session.unlock_pending(r.unlock));
            self.recent_limit = 2 * self.recent.len();
        }
    }
}

/// Wakes the tasks waiting for an entry to change; created by the first
/// of them (most keys are never waited for).
type Changed = Option<Arc<Notify>>;

fn enabled(n: &mut Changed) -> OwnedNotified {
    // Created under the table's mutex: it receives every notify_waiters()
    // that happens after this point, even before it is first polled.
    n.get_or_insert_with(Default::default)
        .clone()
        .notified_owned()
}

fn wake(changed: Changed) {
    if let Some(n) = changed {
        n.notify_waiters();
    }
}

impl Table {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every change below is a single insert/remove/assignment: a panic
        // elsewhere can't leave the maps inconsistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn begin(&self, id: KeyId, mode: Mode) -> Begin {
        self.begin_as(id, mode, false)
    }

    /// [`Table::begin`] for a wait on the server: while it lasts, a shared
    /// try-lock of this process finds the key busy instead of waiting for
    /// the outcome.
    pub(crate) fn begin_wait(&self, id: KeyId, mode: Mode) -> Begin {
        self.begin_as(id, mode, true)
    }

    fn begin_as(&self, id: KeyId, mode: Mode, waiting: bool) -> Begin {
        let mut state = self.lock();
        let State {
            entries, recent, ..
        } = &mut *state;
        match entries.get_mut(&id) {
            None => {
                entries.insert(
                    id,
                    Entry::Acquiring {
                        mode,
                        waiting,
                        changed: None,
                    },
                );
                // Kept until granted: a try-lock that is dropped or
                // refused leaves the hint for the next one.
                Begin::Reserved(recent.get(&id).cloned())
            }
            Some(Entry::Acquiring {
                mode: Mode::Shared,
                waiting: false,
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
    pub(crate) fn granted(
        &self,
        id: KeyId,
        session: Arc<Session>,
        token: Option<i64>,
        contended: u8,
    ) {
        let mut t = self.lock();
        t.recent.remove(&id);
        if let Some(entry) = t.entries.get_mut(&id) {
            if let Entry::Acquiring { mode, changed, .. } = entry {
                let changed = changed.take();
                *entry = Entry::Held {
                    mode: *mode,
                    holders: 1,
                    session,
                    token,
                    contended,
                    changed: None,
                };
                wake(changed);
            }
        }
    }

    /// A reservation ended without a grant.
    pub(crate) fn abandon(&self, id: KeyId) {
        let mut t = self.lock();
        if let Some(Entry::Acquiring { changed, .. }) = t.entries.get_mut(&id) {
            wake(changed.take());
            t.entries.remove(&id);
        }
    }

    /// One holder let go. Returns the session to unlock the key on when it
    /// was the last holder in this process, after running `last` on it while
    /// the table is still locked: the unlock is queued before anyone of this
    /// process can take the key again (and so before any unlock that a
    /// failed try-lock of that key may queue; see `dispatch::finish`).
    /// `last` must queue the unlock with [`Session::unlock`] or
    /// [`Session::unlock_later`]: the key is remembered with that unlock's
    /// number (see [`Recent`]).
    pub(crate) fn release_with(
        &self,
        id: KeyId,
        last: impl FnOnce(&Arc<Session>),
    ) -> Option<Arc<Session>> {
        let mut t = self.lock();
        match t.entries.get_mut(&id) {
            Some(Entry::Held { holders, .. }) if *holders > 1 => {
                *holders -= 1;
                None
            }
            Some(Entry::Held { .. }) => match t.entries.remove(&id) {
                Some(Entry::Held {
                    session,
                    changed,
                    contended,
                    ..
                }) => {
                    last(&session);
                    t.remember(id, &session, contended);
                    wake(changed);
                    Some(session)
                }
                _ => None,
            },
            _ => None,
        }
    }

    /// How many keys this process holds or is acquiring.
    pub(crate) fn len(&self) -> usize {
        self.lock().entries.len()
    }
}
