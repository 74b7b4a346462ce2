//! Which lock session a new lock goes to: "lanes".
//!
//! PostgreSQL makes every statement of a session cost more the more locks
//! the session holds (at each statement's end, `LockReleaseAll` walks all
//! of them): on this project's test machine a `SELECT 1` takes 18 µs on a
//! session holding nothing, 90 µs with 2,500 advisory locks, 537 µs with
//! 10,000. Spreading locks evenly over the sessions makes every call pay
//! for all of them. Instead:
//!
//! - A key this process has not released lately (a *cold* key: often one
//!   taken to be held for long) is packed into the fullest session that
//!   holds fewer than [`PACK_LIMIT`] locks.
//! - A key released lately (a *hot* key: locked and released again and
//!   again) goes to the lightest session, and stays on its session while
//!   that is not much heavier than the lightest ([`much_heavier`]).
//!   "Heavy", for a hot key, is the most locks the session has held at once
//!   ([`Lane::peak`]) once that passes [`PEAK_IGNORED`], not only what it
//!   holds now: a server process that once
//!   held many locks stays slower after releasing them, because its
//!   backend-local lock table never shrinks and is scanned at the end of
//!   every statement (`LockReleaseAll` walks all its buckets). Measured on
//!   this project's test machine (PostgreSQL 15): a `SELECT 1` on a backend
//!   that held 100 / 4,096 / 10,000 locks and released them all takes 20.5
//!   / 25.1 / 31.8 µs, against 20.5 on a fresh one (p10 over 5,400 calls).
//! - Cold keys pack into sessions that have held many locks before, among
//!   sessions holding as many now, which keeps the others fresh.
//! - A key taken by an annotated fn is released when the fn's body ends
//!   ([`Tenure::Scoped`]): even the first time, it goes to the lightest
//!   session, as a hot key does.
//!
//! So long-held locks gather in few sessions, and short ones run on a
//! session that holds (almost) nothing and never held much: their latency
//! does not grow with the locks held elsewhere in the process, now or
//! before.
//!
//! Order: a key released on one session and taken again by this process on
//! another could reach the server before the unlock, and be refused. So
//! while its unlock is unanswered, a key stays on its session; if that
//! session is much heavier than the lightest, the new lock first waits for
//! the unlock's answer (once; the key is then at home on a light session).
//! Routing never risks two holders either way: the server excludes
//! sessions from each other.
//!
//! Not covered: a try-lock dropped while on the wire whose grant the
//! dispatcher then gives back. That unlock is not numbered; a new lock of
//! the key from this process normally takes the same route (same hint, same
//! loads), but if the loads changed enough to route it elsewhere it can
//! find the key busy with that unlock still queued: a spurious "busy", never
//! a second holder.

/// How long a new lock is expected to be held, as routing sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tenure {
    /// Unknown: a key not released lately may be held long, and is packed
    /// ([`packed`]).
    Open,
    /// Released when the call that took it ends (an annotated fn's body):
    /// a key not released lately goes to the lightest session ([`lightest`]),
    /// as a hot key does, instead of the fullest one. Its statement then
    /// does not pay for the long-held locks packed elsewhere.
    Scoped,
}

/// A session holding this many locks takes no more cold keys while another
/// session holds fewer.
pub(crate) const PACK_LIMIT: usize = 4096;

/// A live session's load as routing sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Lane {
    /// This process's locks on the session now (held, or asked for).
    pub(crate) locks: usize,
    /// The most it has had at once (at least `locks`).
    pub(crate) peak: usize,
}

impl Lane {
    /// A live session's load now and its peak.
    pub(crate) fn of(session: &crate::session::Session) -> Lane {
        Lane {
            locks: session.load(),
            peak: session.peak(),
        }
    }

    #[cfg(test)]
    fn new(locks: usize, peak: usize) -> Lane {
        Lane { locks, peak }
    }
}

/// A slot's load: `None` if it has no live session (it connects on use).
pub(crate) type Load = Option<Lane>;

/// True if a session of weight `load` is worth leaving for one of weight
/// `lightest` (see [`weight`]): it is more than twice as heavy,
/// and by more than 16 locks (a few dozen locks cost the server little).
pub(crate) fn much_heavier(load: usize, lightest: usize) -> bool {
    load > 2 * lightest + 16
}

/// A session whose peak is at most this counts by the locks it has now:
/// below it, what a bigger backend-local lock table costs the server is
/// within the noise (about 1 µs per 1,000 locks of peak).
pub(crate) const PEAK_IGNORED: usize = 512;

/// A hot key's weight of a slot: the locks its session has now, or its
/// peak once that is above [`PEAK_IGNORED`]; 0 for a slot that would
/// connect a fresh one.
pub(crate) fn weight(load: Load) -> usize {
    load.map_or(0, |l| {
        if l.peak > PEAK_IGNORED {
            l.peak
        } else {
            l.locks
        }
    })
}

/// The slot for a hot key: the least [`weight`], then the fewest locks now,
/// a live one among equals.
pub(crate) fn lightest(loads: &[Load]) -> usize {
    (0..loads.len())
        .min_by_key(|&i| {
            let l = loads[i];
            (weight(l), l.map_or(0, |l| l.locks), l.is_none())
        })
        .unwrap_or(0)
}

/// The slot for a cold key: the fullest live session below [`PACK_LIMIT`]
/// (among equals, the one with the highest peak, then the first); else a
/// slot without a session (it connects); else the lightest.
pub(crate) fn packed(loads: &[Load]) -> usize {
    let below = (0..loads.len())
        .filter(|&i| loads[i].is_some_and(|l| l.locks < PACK_LIMIT))
        .max_by_key(|&i| {
            let l = loads[i].unwrap_or_default();
            (l.locks, l.peak, std::cmp::Reverse(i))
        });
    below
        .or_else(|| loads.iter().position(Option::is_none))
        .unwrap_or_else(|| {
            (0..loads.len())
                .min_by_key(|&i| loads[i].map_or(0, |l| l.locks))
                .unwrap_or(0)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now(locks: usize) -> Load {
        Some(Lane::new(locks, locks))
    }

    #[test]
    fn cold_keys_pack_hot_keys_spread() {
        // Fresh: everything starts on the first slot.
        assert_eq!(packed(&[None, None]), 0);
        assert_eq!(lightest(&[None, None]), 0);
        assert_eq!(packed(&[now(0), None]), 0);
        // Cold keys fill the fullest session below the limit.
        assert_eq!(packed(&[now(10), now(300), now(0), None]), 1);
        assert_eq!(packed(&[now(PACK_LIMIT), now(300), now(0)]), 1);
        // All full: a new session, else the one holding fewest.
        assert_eq!(packed(&[now(PACK_LIMIT), None]), 1);
        assert_eq!(packed(&[now(PACK_LIMIT + 5), now(PACK_LIMIT + 1)]), 1);
        // Hot keys go to the lightest, a live one among equals.
        assert_eq!(lightest(&[now(100), None]), 1);
        assert_eq!(lightest(&[None, now(0)]), 1);
        assert_eq!(lightest(&[now(4096), now(4096), now(1808), now(0)]), 3);
    }

    #[test]
    fn hot_keys_avoid_sessions_that_held_many_locks_and_cold_keys_fill_them() {
        // Slots 0 and 1 held 4,096 locks each and released them; 2 never
        // held more than 3.
        let loads = [
            Some(Lane::new(0, 4096)),
            Some(Lane::new(0, 4096)),
            Some(Lane::new(1, 3)),
            None,
        ];
        // A hot key goes to a session that never held much, not to an
        // empty one that did: here a fresh one (as for one holding 1).
        assert_eq!(lightest(&loads), 3);
        assert_eq!(lightest(&loads[..3]), 2);
        assert!(much_heavier(weight(loads[0]), weight(loads[2])));
        // Cold keys pack into the fullest, then into one that held many.
        assert_eq!(packed(&loads), 2);
        let empty = [
            Some(Lane::new(0, 3)),
            Some(Lane::new(0, 4096)),
            Some(Lane::new(0, 10)),
        ];
        assert_eq!(packed(&empty), 1);
        assert_eq!(lightest(&empty), 0);
        // A fresh slot beats an empty session that held many, not one
        // that held a few (a live one among equals).
        assert_eq!(lightest(&[Some(Lane::new(0, 600)), None]), 1);
        assert_eq!(lightest(&[Some(Lane::new(0, 50)), None]), 0);
        // Small peaks count as what is held now.
        assert_eq!(weight(Some(Lane::new(3, PEAK_IGNORED))), 3);
        assert_eq!(
            weight(Some(Lane::new(3, PEAK_IGNORED + 1))),
            PEAK_IGNORED + 1
        );
        assert_eq!(
            lightest(&[Some(Lane::new(5, 300)), Some(Lane::new(9, 9))]),
            0
        );
    }

    #[test]
    fn a_key_moves_only_for_a_much_lighter_session() {
        assert!(!much_heavier(16, 0));
        assert!(much_heavier(17, 0));
        assert!(!much_heavier(70, 30));
        assert!(much_heavier(1808, 0));
    }
}
