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

use crate::key::IdMap;
use crate::session::Session;
use crate::{KeyId, Mode};

/// A key of this process: being acquired (no session yet), or held.
///
/// Kept to 16 bytes (with an 8-byte key, a 24-byte bucket): the table holds
/// one per held key. What few keys need lives in side maps of [`State`]:
/// the wake-up of tasks waiting for the entry to change, and the fencing
/// token.
struct Entry {
    /// `None`: a try-lock for this key is in flight to the server, or
    /// (`waiting`) a wait on a wait session, which may last long (see
    /// [`crate::server::waiting`]). `Some`: this process holds the key on
    /// that session, for `holders` guards.
    session: Option<Arc<Session>>,
    holders: u32,
    mode: Mode,
    waiting: bool,
    /// How contended the key is (see [`Recent::contended`]).
    contended: u8,
    /// A task waits for this entry to change: its [`Notify`] is in
    /// [`State::changed`].
    watched: bool,
}

impl Entry {
    fn acquiring(mode: Mode, waiting: bool) -> Entry {
        Entry {
            session: None,
            holders: 0,
            mode,
            waiting,
            contended: 0,
            watched: false,
        }
    }
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
    /// The caller joined a shared lock this process already holds (its
    /// grant's fencing token stays in the table: see [`Table::holder`]).
    Joined(Arc<Session>),
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
    entries: IdMap<Entry>,
    /// Wakes the tasks waiting for an entry to change; created by the first
    /// of them (most keys are never waited for), dropped when it wakes them.
    changed: IdMap<Arc<Notify>>,
    /// The fencing tokens of held keys (entries with fencing tokens), shared
    /// by the joined holders.
    tokens: IdMap<i64>,
    /// Keys released lately and not granted since.
    recent: IdMap<Recent>,
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
            self.recent.retain(|r| r.session.unlock_pending(r.unlock));
            self.recent_limit = 2 * self.recent.len();
        }
    }

    /// A future that resolves when the entry of `id` changes. Created under
    /// the table's mutex: it receives every notify_waiters() that happens
    /// after this point, even before it is first polled.
    fn watch(&mut self, id: KeyId) -> OwnedNotified {
        if let Some(entry) = self.entries.get_mut(id) {
            entry.watched = true;
        }
        self.changed.get_or_default(id).clone().notified_owned()
    }

    /// Wakes the tasks waiting for the entry of `id` (`watched`) to change.
    fn wake(&mut self, id: KeyId, watched: bool) {
        if watched {
            if let Some(n) = self.changed.remove(id) {
                n.notify_waiters();
            }
        }
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
        let Some(entry) = state.entries.get_mut(id) else {
            state.entries.insert(id, Entry::acquiring(mode, waiting));
            // Kept until granted: a try-lock that is dropped or
            // refused leaves the hint for the next one.
            return Begin::Reserved(state.recent.get(id).cloned());
        };
        let shared = entry.mode == Mode::Shared && mode == Mode::Shared;
        match &entry.session {
            None if shared && !entry.waiting => Begin::Pending(state.watch(id)),
            None => Begin::Busy(state.watch(id)),
            Some(session) if shared && !session.is_dead() => {
                entry.holders += 1;
                Begin::Joined(session.clone())
            }
            Some(_) => Begin::Busy(state.watch(id)),
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
        t.recent.remove(id);
        let Some(entry) = t.entries.get_mut(id).filter(|e| e.session.is_none()) else {
            return;
        };
        entry.session = Some(session);
        entry.holders = 1;
        entry.contended = contended;
        let watched = std::mem::take(&mut entry.watched);
        if let Some(token) = token {
            t.tokens.insert(id, token);
        }
        t.wake(id, watched);
    }

    /// A reservation ended without a grant.
    pub(crate) fn abandon(&self, id: KeyId) {
        let mut t = self.lock();
        if t.entries.get(id).is_some_and(|e| e.session.is_none()) {
            if let Some(entry) = t.entries.remove(id) {
                t.wake(id, entry.watched);
            }
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
        let entry = t.entries.get_mut(id).filter(|e| e.session.is_some())?;
        if entry.holders > 1 {
            entry.holders -= 1;
            return None;
        }
        let entry = t.entries.remove(id)?;
        let session = entry.session?;
        if !t.tokens.is_empty() {
            t.tokens.remove(id);
        }
        last(&session);
        t.remember(id, &session, entry.contended);
        t.wake(id, entry.watched);
        Some(session)
    }

    /// The session holding `id` and its grant's fencing token, if this
    /// process holds it.
    pub(crate) fn holder(&self, id: KeyId) -> Option<(Arc<Session>, Option<i64>)> {
        let t = self.lock();
        let session = t.entries.get(id)?.session.clone()?;
        Some((session, t.tokens.get(id).copied()))
    }

    /// How many keys this process holds or is acquiring.
    pub(crate) fn len(&self) -> usize {
        self.lock().entries.len()
    }
}
