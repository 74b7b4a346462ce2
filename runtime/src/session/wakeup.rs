//! Waking waiters in other processes: LISTEN/NOTIFY.
//!
//! One lock session per registry entry listens on [`CHANNEL`]: the first
//! slot's (every listening backend, and its client, is woken by every
//! notification, whatever the key). Releasing a lock that was taken in wait
//! mode sends `pg_notify(CHANNEL, key)` in the same statement as the unlock,
//! unless the key is held exclusively right after the unlock (a shared
//! try-lock, given back at once, tells): then a waiter blocked on the server
//! (see [`crate::server::waiting`]) got it, and a woken waiter would find it busy.
//! The listening session that receives it wakes this process's waiters for
//! that key, which then try again at once instead of at their next backoff
//! tick. If the listening session dies, a waiter reconnects it. Polling with
//! backoff stays as the fallback for releases that notify nobody (a crashed
//! holder, a skip-mode holder, psql) and for notifications sent while no
//! session listened.

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;

use crate::key::KeyMap;
use crate::KeyId;

/// The notification channel of the listening lock sessions.
pub(crate) const CHANNEL: &str = "advisory_locked";

/// The payload of a key: `"<i64>"` or `"<i32>:<i32>"`, as the unlock
/// statements build it.
pub(crate) fn parse_payload(payload: &str) -> Option<KeyId> {
    match payload.split_once(':') {
        Some((a, b)) => Some(KeyId::Pair(a.parse().ok()?, b.parse().ok()?)),
        None => Some(KeyId::Int(payload.parse().ok()?)),
    }
}

/// This process's waiters for keys held in other sessions, per registry entry.
#[derive(Default)]
pub(crate) struct Waiters {
    keys: Mutex<KeyMap<Arc<Notify>>>,
}

impl Waiters {
    fn lock(&self) -> MutexGuard<'_, KeyMap<Arc<Notify>>> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A future that resolves at the next notification for `id`. Created
    /// before the try-lock it follows, so a release right after that
    /// try-lock can't be missed.
    pub(crate) fn subscribe(&self, id: KeyId) -> OwnedNotified {
        let notify = self.lock().entry(id).or_default().clone();
        notify.notified_owned()
    }

    /// A notification a lock session received: wakes the waiters of its
    /// key if it is one of ours.
    pub(crate) fn notified(&self, channel: &str, payload: &str) {
        if channel == CHANNEL {
            if let Some(key) = parse_payload(payload) {
                self.wake(key);
            }
        }
    }

    /// Wakes every waiter for `id`.
    pub(crate) fn wake(&self, id: KeyId) {
        if let Some(notify) = self.lock().remove(&id) {
            notify.notify_waiters();
        }
    }

    /// Forgets `id` if no waiter is left for it.
    pub(crate) fn forget(&self, id: KeyId) {
        let mut keys = self.lock();
        if keys.get(&id).is_some_and(|n| Arc::strong_count(n) == 1) {
            keys.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads() {
        assert_eq!(parse_payload("-42"), Some(KeyId::Int(-42)));
        assert_eq!(parse_payload("7:-1"), Some(KeyId::Pair(7, -1)));
        assert_eq!(parse_payload("x"), None);
        assert_eq!(parse_payload("1:2:3"), None);
    }
}
