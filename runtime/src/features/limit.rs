//! Concurrency and rate limits across the fleet: `N` slots of one name.
//!
//! A limit of `N` on a key is `N` ordinary exclusive advisory locks, the
//! *slots* `"<name>#0"` … `"<name>#<N-1>"` (each hashed like any named key,
//! see [`Slots::slot_key`]). Holding any one slot admits a body, so at most
//! `N` bodies run at once across every process connected to the database.
//!
//! - **Skip** ([`Locker::try_lock_slot`]): the slots are tried one after the
//!   other, starting at a random one so that contenders spread over them;
//!   `None` when all `N` are busy.
//! - **Wait** ([`Locker::lock_slot`]): one such pass, then a wait for
//!   whichever slot frees first, with the [`Locker::lock`] machinery on each
//!   slot (a release notifies waiters, else backoff from 2 ms to 250 ms):
//!   no lock session is blocked.
//! - **Rate** ([`Slots::per`]): a slot stays held at least `per` from the
//!   moment it was taken, so at most `N` slots are taken in any window of
//!   length `per`. When the guard is dropped early, a background task keeps
//!   the slot until the period ends.

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};

use crate::{Error, LockGuard, LockKey, Locker, Mode};

/// `N` slots of one name across the fleet: at most `N` holders at once, or,
/// with [`per`](Self::per), at most `N` new holders in any window of that
/// length. Taken with [`Locker::try_lock_slot`] and [`Locker::lock_slot`];
/// the attribute's `limit = N` (and `per = "…"`) does the same.
///
/// The slots are the named keys `"<name>#<i>"` for `i` in `0..N`, where
/// `<name>` is the key's name ([`LockKey::name`]), also for keys made with
/// [`LockKey::int`] or [`LockKey::pair`] (whose names are `"42"` and
/// `"(7, 42)"`). In psql:
///
/// ```sql
/// -- the slots of "export" (limit 3) and who holds them:
/// SELECT s.slot, l.pid, a.application_name
/// FROM generate_series(0, 2) AS s(slot)
/// JOIN pg_locks l ON l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted
///  AND (l.classid::int8 << 32 | l.objid::int8) = hashtextextended('export#' || s.slot, 0)
/// JOIN pg_stat_activity a ON a.pid = l.pid;
/// ```
///
/// ```
/// use advisory_locked::{LockKey, Slots};
/// use std::time::Duration;
///
/// let exports = Slots::new(LockKey::named("export"), 3)?;
/// assert_eq!(exports.slot_key(2).name(), "export#2");
/// assert_eq!(exports.slot_key(2), LockKey::named("export#2"));
///
/// // At most 10 calls of the mail API per second, fleet-wide:
/// let mails = Slots::new(LockKey::named("mail-api"), 10)?.per(Duration::from_secs(1));
/// assert_eq!(mails.period(), Some(Duration::from_secs(1)));
/// # Ok::<(), advisory_locked::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slots {
    key: LockKey,
    count: u32,
    per: Option<Duration>,
}

impl Slots {
    /// The most slots one limit may have (the attribute's `limit = N`
    /// accepts the same, `1..=1024`): each slot is an advisory lock of its
    /// own, and a waiter tries every one of them.
    pub const MAX_COUNT: u32 = 1024;

    /// The longest rate period, 365 days (the attribute's `per = "…"` accepts
    /// the same, up to `"8760h"`).
    pub const MAX_PERIOD: Duration = Duration::from_secs(365 * 24 * 3600);

    /// `count` slots of `key`: [`Error::InvalidConfig`] unless `count` is
    /// in `1..=`[`MAX_COUNT`](Self::MAX_COUNT), [`Error::InvalidKey`] for a
    /// key the lock calls refuse (see [`LockKey`]).
    pub fn new(key: LockKey, count: u32) -> Result<Slots, Error> {
        let slots = Slots {
            key,
            count,
            per: None,
        };
        slots.check()?;
        Ok(slots)
    }

    /// The rate form: each slot stays held at least `period` from the moment
    /// it was taken (like ShedLock's `lockAtLeastFor`), so at most
    /// [`count`](Self::count) slots are taken in any window of length
    /// `period` across the fleet.
    ///
    /// The caller does not wait for the period: when its guard is dropped
    /// (or the body of a `limit = N, per = "…"` function returns) before the
    /// period has passed, a background task of this process keeps the slot
    /// until then. If the process dies first, the server frees the slot at
    /// once and the rate is not enforced for that slot in that period.
    ///
    /// `period` must be more than zero and at most
    /// [`MAX_PERIOD`](Self::MAX_PERIOD), as in the attribute; otherwise
    /// [`Locker::try_lock_slot`] and [`Locker::lock_slot`] fail with
    /// [`Error::InvalidConfig`] (this builder does not fail, so that it
    /// chains).
    pub fn per(mut self, period: Duration) -> Slots {
        self.per = Some(period);
        self
    }

    /// The key the slots are named after.
    pub fn key(&self) -> &LockKey {
        &self.key
    }

    /// How many slots.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The rate form's period, if any.
    pub fn period(&self) -> Option<Duration> {
        self.per
    }

    /// The key of slot `index`: `LockKey::named("<name>#<index>")`, i.e.
    /// `hashtextextended('<name>#<index>', 0)` in psql.
    pub fn slot_key(&self, index: u32) -> LockKey {
        LockKey::named(format!("{}#{index}", self.key.name()))
    }

    /// The bounds the attribute checks at compile time, for the limits
    /// built at run time (and for the attribute's, again): one rule for both.
    fn check(&self) -> Result<(), Error> {
        self.key.check()?;
        let name = self.key.name();
        let invalid = |reason: String| Err(Error::InvalidConfig { reason });
        if self.count == 0 {
            return invalid(format!("limit for {name:?} must be at least 1 slot"));
        }
        if self.count > Self::MAX_COUNT {
            return invalid(format!(
                "limit for {name:?} is {} slots, but at most {} are allowed: each slot is an advisory lock of its own, held on the lock sessions",
                self.count,
                Self::MAX_COUNT
            ));
        }
        match self.per {
            Some(per) if per.is_zero() => invalid(format!(
                "the rate period (per) of the limit for {name:?} is zero: give a positive period, or none to limit only how many run at once"
            )),
            Some(per) if per > Self::MAX_PERIOD => invalid(format!(
                "the rate period (per) of the limit for {name:?} is {per:?}; the longest is 8760h (365 days)"
            )),
            _ => Ok(()),
        }
    }

    /// The slot indexes in the order one pass tries them: all of them, from
    /// a random start, so that contenders spread over the slots.
    fn rotation(&self) -> impl Iterator<Item = u32> {
        let n = self.count;
        let first = (random() % u64::from(n)) as u32;
        (0..n).map(move |k| (first + k) % n)
    }
}

/// A random number from the standard library's per-process random keys
/// (no dependency; not cryptographic, only to spread contenders).
fn random() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

impl Locker {
    /// Takes a free slot of `slots` if there is one; `Ok(None)` if all are
    /// busy (in this process or others). Slots busy in this process cost no
    /// round trip; the others one try-lock each, one after the other from a
    /// random slot. A period out of bounds ([`Slots::per`]) is
    /// [`Error::InvalidConfig`].
    ///
    /// ```no_run
    /// use advisory_locked::{LockConfig, LockKey, Slots};
    ///
    /// # async fn demo() -> Result<(), advisory_locked::Error> {
    /// let locker = LockConfig::from_env()?.connect().await?;
    /// let exports = Slots::new(LockKey::named("export"), 3)?;
    /// match locker.try_lock_slot(&exports).await? {
    ///     Some(slot) => {
    ///         println!("export in slot {} of 3", slot.index());
    ///         // ... the work ...
    ///         slot.release().await?;
    ///     }
    ///     None => println!("3 exports run already; skipped"),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn try_lock_slot(&self, slots: &Slots) -> Result<Option<SlotGuard>, Error> {
        slots.check()?;
        for index in slots.rotation() {
            if let Some(guard) = self
                .try_lock(slots.slot_key(index), Mode::Exclusive)
                .await?
            {
                return Ok(Some(self.slot_guard(slots, index, guard)));
            }
        }
        tracing::debug!(pool = %self.name(), key = %slots.key.name(), slots = slots.count, "advisory-locked: all slots busy; skipped");
        Ok(None)
    }

    /// Waits for any slot of `slots`, at most `timeout` (`None`: as long as
    /// it takes); an expired wait is [`Error::WaitTimeout`] naming the key,
    /// a period out of bounds ([`Slots::per`]) [`Error::InvalidConfig`].
    ///
    /// First one pass as [`try_lock_slot`](Self::try_lock_slot); if all
    /// slots are busy, a wait on all of them at once, each as
    /// [`lock`](Self::lock) waits (woken by a release's notification, else
    /// retried with backoff up to 250 ms), and the first slot granted wins.
    /// No lock session is blocked; a waiter sends about 4 to 8 try-locks a
    /// second per slot while it waits (fewer when releases notify it), so
    /// keep `N` small (tens, not thousands). Waiters are not served in
    /// order of arrival. A slot taken here notifies waiters in other
    /// processes when it is released. When two slots free at the same moment a waiter may be
    /// granted both for a round trip; it gives the second back at once.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use advisory_locked::{LockConfig, LockKey, Slots};
    ///
    /// # async fn demo() -> Result<(), advisory_locked::Error> {
    /// let locker = LockConfig::from_env()?.connect().await?;
    /// // At most 5 calls to the partner API per second, fleet-wide:
    /// let api = Slots::new(LockKey::named("partner-api"), 5)?.per(Duration::from_secs(1));
    /// let slot = locker.lock_slot(&api, Some(Duration::from_secs(30))).await?;
    /// // ... call the API ...
    /// drop(slot); // kept in the background until 1 s after it was taken
    /// # Ok(()) }
    /// ```
    pub async fn lock_slot(
        &self,
        slots: &Slots,
        timeout: Option<Duration>,
    ) -> Result<SlotGuard, Error> {
        slots.check()?;
        let start = Instant::now();
        for index in slots.rotation() {
            if let Some(guard) = self
                .try_lock_notify(slots.slot_key(index), Mode::Exclusive, true)
                .await?
            {
                return Ok(self.slot_guard(slots, index, guard));
            }
        }
        let remaining = timeout.map(|t| t.saturating_sub(start.elapsed()));
        let mut waits: FuturesUnordered<_> = slots
            .rotation()
            .map(|index| {
                let key = slots.slot_key(index);
                async move { (index, self.lock(key, Mode::Exclusive, remaining).await) }
            })
            .collect();
        while let Some((index, result)) = waits.next().await {
            match result {
                Ok(guard) => {
                    // The other waits are dropped here: a grant in flight is
                    // given back by its session.
                    drop(waits);
                    tracing::debug!(pool = %self.name(), key = %slots.key.name(), slot = index, waited_ms = start.elapsed().as_millis() as u64, "advisory-locked: waited for a slot");
                    return Ok(self.slot_guard(slots, index, guard));
                }
                Err(Error::WaitTimeout { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Err(Error::WaitTimeout {
            key: slots.key.name().to_owned(),
            waited: start.elapsed(),
        })
    }

    fn slot_guard(&self, slots: &Slots, index: u32, guard: LockGuard) -> SlotGuard {
        let taken = tokio::time::Instant::now();
        tracing::debug!(pool = %self.name(), key = %slots.key.name(), slot = index, slots = slots.count, "advisory-locked: slot acquired");
        SlotGuard {
            guard: Some(guard),
            index,
            taken,
            until: slots.per.map(|per| taken + per),
            pool: self.name().to_owned(),
        }
    }
}

/// A held slot of [`Slots`]. Dropping it releases the slot, in the rate form
/// not before the period from [`taken`](Self::taken) has passed (a
/// background task keeps it until then).
#[must_use = "the slot is released when the guard is dropped"]
pub struct SlotGuard {
    /// `None` only after `release` took it.
    guard: Option<LockGuard>,
    index: u32,
    taken: tokio::time::Instant,
    until: Option<tokio::time::Instant>,
    pool: String,
}

impl std::fmt::Debug for SlotGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotGuard")
            .field("index", &self.index)
            .field("guard", &self.guard)
            .field("held_until", &self.until)
            .finish()
    }
}

impl SlotGuard {
    /// The slot's index, in `0..N`.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The lock of the slot (its key is `"<name>#<index>"`).
    pub fn guard(&self) -> &LockGuard {
        self.guard
            .as_ref()
            .expect("a SlotGuard holds its lock until release or drop")
    }

    /// The slot's key, `"<name>#<index>"`.
    pub fn key(&self) -> &LockKey {
        self.guard().key()
    }

    /// When the slot was taken.
    pub fn taken(&self) -> tokio::time::Instant {
        self.taken
    }

    /// Rate form: the slot is held at least until then.
    pub fn held_until(&self) -> Option<tokio::time::Instant> {
        self.until
    }

    /// The server's process id of the session holding the slot.
    pub fn backend_pid(&self) -> i32 {
        self.guard().backend_pid()
    }

    /// False once the session holding the slot is known to have ended.
    pub fn is_held(&self) -> bool {
        self.guard().is_held()
    }

    /// Resolves when the session holding the slot ends.
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        self.guard().lost()
    }

    /// Releases the slot and waits for the server to confirm, as
    /// [`LockGuard::release`]; in the rate form this first waits until
    /// [`held_until`](Self::held_until) (drop the guard instead to have a
    /// background task release it then).
    pub async fn release(mut self) -> Result<(), Error> {
        if let Some(until) = self.until {
            // The guard stays in `self` while this waits: if this future is
            // dropped meanwhile, `Drop` keeps the slot until `until`.
            let lost = self.guard().lost();
            tokio::select! {
                () = tokio::time::sleep_until(until) => {}
                () = lost => {}
            }
        }
        let guard = self.guard.take().expect("released once");
        guard.release().await
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let Some(guard) = self.guard.take() else {
            return;
        };
        let Some(until) = self.until else {
            return drop(guard);
        };
        if tokio::time::Instant::now() >= until || !guard.is_held() {
            return drop(guard);
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(pool = %self.pool, key = %guard.key().name(), "advisory-locked: rate slot dropped outside a Tokio runtime; released before its period ended");
            return drop(guard);
        };
        tracing::debug!(pool = %self.pool, key = %guard.key().name(), keep_ms = until.saturating_duration_since(tokio::time::Instant::now()).as_millis() as u64, "advisory-locked: rate slot kept until its period ends");
        runtime.spawn(async move {
            let lost = guard.lost();
            tokio::select! {
                () = tokio::time::sleep_until(until) => {}
                () = lost => {}
            }
            drop(guard);
        });
    }
}

/// The attribute's `limit = N` / `per = "…"` as [`Slots`]; limits take their
/// slots exclusively, so `shared` is refused.
pub(crate) fn slots_of(key: LockKey, limit: Limit, mode: Mode) -> Result<Slots, Error> {
    if mode == Mode::Shared {
        return Err(Error::InvalidConfig {
            reason: format!(
                "limit for {:?}: slots are taken exclusively; `shared` can't be combined with `limit`",
                key.name()
            ),
        });
    }
    let slots = Slots::new(key, limit.slots)?;
    Ok(match limit.per {
        Some(per) => slots.per(per),
        None => slots,
    })
}

/// `limit = N` and `per = "…"`.
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    /// At most this many bodies at once across the fleet (at least 1).
    pub slots: u32,
    /// Rate form: each slot is held at least this long from the body's
    /// start, so at most `slots` starts per `per`.
    pub per: Option<Duration>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_keys_and_rotation() {
        let s = Slots::new(LockKey::named("export"), 3).unwrap();
        assert_eq!(s.slot_key(0), LockKey::named("export#0"));
        assert_eq!(
            Slots::new(LockKey::int(42), 1).unwrap().slot_key(0).name(),
            "42#0"
        );
        for _ in 0..50 {
            let mut order: Vec<u32> = s.rotation().collect();
            assert_eq!(order.len(), 3);
            // Consecutive from the start, wrapping.
            for w in order.windows(2) {
                assert_eq!(w[1], (w[0] + 1) % 3);
            }
            order.sort();
            assert_eq!(order, vec![0, 1, 2]);
        }
        let firsts: std::collections::HashSet<u32> =
            (0..200).map(|_| s.rotation().next().unwrap()).collect();
        assert_eq!(firsts.len(), 3, "random starts cover every slot");
    }

    #[test]
    fn bad_limits_are_typed_errors() {
        assert!(matches!(
            Slots::new(LockKey::named("x"), 0),
            Err(Error::InvalidConfig { .. })
        ));
        let limit = Limit {
            slots: 2,
            per: None,
        };
        assert!(matches!(
            slots_of(LockKey::named("x"), limit, Mode::Shared),
            Err(Error::InvalidConfig { .. })
        ));
        let rate = Limit {
            slots: 2,
            per: Some(Duration::from_secs(1)),
        };
        let s = slots_of(LockKey::named("x"), rate, Mode::Exclusive).unwrap();
        assert_eq!((s.count(), s.period()), (2, Some(Duration::from_secs(1))));
    }

    /// The attribute's bounds, checked at run time: 1..=1024 slots, a
    /// period in (0, 365 days], a key the lock calls accept.
    #[test]
    fn the_attributes_bounds_hold_at_run_time() {
        let key = || LockKey::named("x");
        let ok = |s: &Slots| s.check().is_ok();
        assert!(ok(&Slots::new(key(), 1).unwrap()));
        assert!(ok(&Slots::new(key(), Slots::MAX_COUNT).unwrap()));
        for count in [Slots::MAX_COUNT + 1, u32::MAX] {
            match Slots::new(key(), count) {
                Err(Error::InvalidConfig { reason }) => {
                    assert!(reason.contains("1024"), "{reason}")
                }
                other => panic!("{count}: {other:?}"),
            }
        }
        let one = || Slots::new(key(), 1).unwrap();
        assert!(ok(&one().per(Duration::from_nanos(1))));
        assert!(ok(&one().per(Slots::MAX_PERIOD)));
        for per in [
            Duration::ZERO,
            Slots::MAX_PERIOD + Duration::from_nanos(1),
            Duration::MAX,
        ] {
            assert!(
                matches!(one().per(per).check(), Err(Error::InvalidConfig { .. })),
                "{per:?}"
            );
        }
        // The attribute's values go through the same check.
        let limit = |slots, per| Limit { slots, per };
        assert!(slots_of(key(), limit(1025, None), Mode::Exclusive).is_err());
        let zero = slots_of(key(), limit(2, Some(Duration::ZERO)), Mode::Exclusive).unwrap();
        assert!(zero.check().is_err());
        assert!(matches!(
            Slots::new(LockKey::named("a\0b"), 2),
            Err(Error::InvalidKey { .. })
        ));
    }
}
