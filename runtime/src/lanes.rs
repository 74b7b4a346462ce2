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
//!
//! So long-held locks gather in few sessions, and short ones run on a
//! session that holds (almost) nothing: their latency does not grow with
//! the locks held elsewhere in the process.
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

/// A session holding this many locks takes no more cold keys while another
/// session holds fewer.
pub(crate) const PACK_LIMIT: usize = 4096;

/// A session's load as routing sees it: `None` if the slot has no live
/// session (it connects on use).
pub(crate) type Load = Option<usize>;

/// True if a session with `load` locks is worth leaving for one with
/// `lightest`: it is more than twice as heavy, and by more than 16 locks
/// (a few dozen locks cost the server little).
pub(crate) fn much_heavier(load: usize, lightest: usize) -> bool {
    load > 2 * lightest + 16
}

/// The slot for a hot key: the lightest, a live one among equals.
pub(crate) fn lightest(loads: &[Load]) -> usize {
    (0..loads.len())
        .min_by_key(|&i| (loads[i].unwrap_or(0), loads[i].is_none()))
        .unwrap_or(0)
}

/// The slot for a cold key: the fullest live session below [`PACK_LIMIT`]
/// (the first among equals); else a slot without a session (it connects);
/// else the lightest.
pub(crate) fn packed(loads: &[Load]) -> usize {
    let below = (0..loads.len())
        .filter(|&i| loads[i].is_some_and(|n| n < PACK_LIMIT))
        .max_by_key(|&i| (loads[i], std::cmp::Reverse(i)));
    below
        .or_else(|| loads.iter().position(Option::is_none))
        .unwrap_or_else(|| lightest(loads))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cold_keys_pack_hot_keys_spread() {
        // Fresh: everything starts on the first slot.
        assert_eq!(packed(&[None, None]), 0);
        assert_eq!(lightest(&[None, None]), 0);
        assert_eq!(packed(&[Some(0), None]), 0);
        // Cold keys fill the fullest session below the limit.
        assert_eq!(packed(&[Some(10), Some(300), Some(0), None]), 1);
        assert_eq!(packed(&[Some(PACK_LIMIT), Some(300), Some(0)]), 1);
        // All full: a new session, else the lightest.
        assert_eq!(packed(&[Some(PACK_LIMIT), None]), 1);
        assert_eq!(packed(&[Some(PACK_LIMIT + 5), Some(PACK_LIMIT + 1)]), 1);
        // Hot keys go to the lightest, a live one among equals.
        assert_eq!(lightest(&[Some(100), None]), 1);
        assert_eq!(lightest(&[None, Some(0)]), 1);
        assert_eq!(lightest(&[Some(4096), Some(4096), Some(1808), Some(0)]), 3);
    }

    #[test]
    fn a_key_moves_only_for_a_much_lighter_session() {
        assert!(!much_heavier(16, 0));
        assert!(much_heavier(17, 0));
        assert!(!much_heavier(70, 30));
        assert!(much_heavier(1808, 0));
    }
}
