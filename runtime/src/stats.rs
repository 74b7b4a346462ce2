//! Counters of a registry entry, for metrics and for benchmarks that must
//! show how many statements a lock costs.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// What one registry entry has done since it was configured. Read it with
/// [`Locker::stats`](crate::Locker::stats).
///
/// ```no_run
/// # async fn demo() -> Result<(), advisory_locked::Error> {
/// let stats = advisory_locked::locker("default")?.stats();
/// println!("{} statements for {} grants", stats.statements, stats.granted);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Statements sent to the server on lock sessions (one statement may
    /// carry many lock requests).
    pub statements: u64,
    /// Try-lock requests sent to the server.
    pub lock_requests: u64,
    /// Unlock requests sent to the server.
    pub unlock_requests: u64,
    /// Locks granted by the server.
    pub granted: u64,
    /// Try-locks the server answered "busy" (held by another session).
    pub busy: u64,
    /// Unlocks the server confirmed.
    pub released: u64,
    /// Requests answered "busy" in this process, without a round trip.
    pub local_busy: u64,
    /// Shared requests that joined a shared lock this process already
    /// held, without a round trip.
    pub local_joined: u64,
    /// Lock sessions and wait sessions (connections) opened, the first
    /// included.
    pub sessions_opened: u64,
    /// Lock sessions and wait sessions that ended: closed by this process,
    /// ended on the server (a terminated backend, a restart) or cut. With
    /// `sessions_opened`, how many are open; a count that keeps growing
    /// means sessions are being lost, and with them their locks.
    pub sessions_ended: u64,
    /// Heartbeats sent on idle sessions (not counted in `statements`).
    pub heartbeats: u64,
    /// Waits sent to the server on wait sessions (one per `lock_timeout`
    /// slice; see [`LockConfig::wait_sessions`](crate::LockConfig::wait_sessions)).
    pub server_waits: u64,
    /// Keys this process holds or is acquiring right now.
    pub keys: u64,
}

impl Stats {
    /// Field by field sums (a quorum's members).
    pub(crate) fn plus(&self, o: &Stats) -> Stats {
        Stats {
            statements: self.statements + o.statements,
            lock_requests: self.lock_requests + o.lock_requests,
            unlock_requests: self.unlock_requests + o.unlock_requests,
            granted: self.granted + o.granted,
            busy: self.busy + o.busy,
            released: self.released + o.released,
            local_busy: self.local_busy + o.local_busy,
            local_joined: self.local_joined + o.local_joined,
            sessions_opened: self.sessions_opened + o.sessions_opened,
            sessions_ended: self.sessions_ended + o.sessions_ended,
            heartbeats: self.heartbeats + o.heartbeats,
            server_waits: self.server_waits + o.server_waits,
            keys: self.keys + o.keys,
        }
    }
}

#[derive(Debug)]
pub(crate) struct Counters {
    pub(crate) statements: AtomicU64,
    pub(crate) lock_requests: AtomicU64,
    pub(crate) unlock_requests: AtomicU64,
    pub(crate) granted: AtomicU64,
    pub(crate) busy: AtomicU64,
    pub(crate) released: AtomicU64,
    pub(crate) local_busy: AtomicU64,
    pub(crate) local_joined: AtomicU64,
    pub(crate) sessions_opened: AtomicU64,
    pub(crate) sessions_ended: AtomicU64,
    pub(crate) heartbeats: AtomicU64,
    pub(crate) server_waits: AtomicU64,
    /// The entry's metric handles (feature `metrics`; empty without it).
    pub(crate) metrics: crate::meter::EntryMetrics,
}

impl Counters {
    /// The counters of registry entry `entry`.
    pub(crate) fn new(entry: &str) -> Counters {
        Counters {
            statements: AtomicU64::default(),
            lock_requests: AtomicU64::default(),
            unlock_requests: AtomicU64::default(),
            granted: AtomicU64::default(),
            busy: AtomicU64::default(),
            released: AtomicU64::default(),
            local_busy: AtomicU64::default(),
            local_joined: AtomicU64::default(),
            sessions_opened: AtomicU64::default(),
            sessions_ended: AtomicU64::default(),
            heartbeats: AtomicU64::default(),
            server_waits: AtomicU64::default(),
            metrics: crate::meter::EntryMetrics::new(entry),
        }
    }

    /// A statement sent on a lock session.
    #[inline]
    pub(crate) fn statement(&self) {
        Self::add(&self.statements, 1);
        self.metrics.statements(1);
    }

    /// A lock or wait session opened (and [`session_ended`](Self::session_ended)
    /// when it ends).
    pub(crate) fn session_opened(&self) {
        Self::add(&self.sessions_opened, 1);
        self.metrics.session_opened();
    }

    /// A lock or wait session ended (its dispatcher is done).
    pub(crate) fn session_ended(&self) {
        Self::add(&self.sessions_ended, 1);
        self.metrics.session_closed();
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub(crate) fn snapshot(&self, keys: usize) -> Stats {
        Stats {
            statements: self.statements.load(Relaxed),
            lock_requests: self.lock_requests.load(Relaxed),
            unlock_requests: self.unlock_requests.load(Relaxed),
            granted: self.granted.load(Relaxed),
            busy: self.busy.load(Relaxed),
            released: self.released.load(Relaxed),
            local_busy: self.local_busy.load(Relaxed),
            local_joined: self.local_joined.load(Relaxed),
            sessions_opened: self.sessions_opened.load(Relaxed),
            sessions_ended: self.sessions_ended.load(Relaxed),
            heartbeats: self.heartbeats.load(Relaxed),
            server_waits: self.server_waits.load(Relaxed),
            keys: keys as u64,
        }
    }
}
