//! Leader election: one process of the fleet leads while its lock session
//! lives; the others keep campaigning and take over when it goes.
//!
//! A campaign is a task that tries the key (an ordinary exclusive advisory
//! lock) every retry interval until it gets it, then leads until the lock is
//! lost, [`Leader::resign`] is called or the [`Leader`] is dropped. Every
//! change is published on a `tokio::sync::watch` channel and logged.
//!
//! **Takeover bound.** A follower notices a free key at its next try, at
//! most one retry interval ([`Campaign::retry_interval`], default
//! [`DEFAULT_CAMPAIGN_RETRY`]) after the server has freed it, plus one round
//! trip. The server frees the key when the leader's session ends: at once
//! when the leader process exits or is killed (its OS closes the socket),
//! within about 4 s when its host vanishes (the sessions' TCP keepalive), at
//! once on `pg_terminate_backend` or a resignation. Releases do not notify
//! followers here: the retry interval decides.
//!
//! **At most one leader.** The key is an exclusive lock, so at most one
//! session holds it. A leader reports that it stepped down
//! ([`Leadership::Follower`]) *before* it releases on resignation, so the
//! reports of two processes never overlap then; when its session is lost
//! instead, the server may hand the key to another process before the old
//! leader has noticed (within the lock-loss detection bound,
//! [`LockConfig::loss_detection`](crate::LockConfig::loss_detection)). Work
//! that must never overlap has to check the lock or fence its effects.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{oneshot, watch};

use crate::{Error, LockGuard, LockKey, Locker, Mode};

/// How often a follower tries the key by default: a takeover comes at most
/// this long after the server frees the key (plus one round trip).
pub const DEFAULT_CAMPAIGN_RETRY: Duration = Duration::from_millis(500);

/// One process's view of the leadership, as [`Leader::watch`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leadership {
    /// Not leading (campaigning, or stopped).
    Follower,
    /// This process leads.
    Leader {
        /// When this term began (this host's clock).
        since: SystemTime,
        /// The server's process id of the session holding the key (as in
        /// `pg_locks.pid`).
        backend_pid: i32,
        /// This campaign's term number: 1 for its first leadership, then
        /// one more each time it leads again.
        term: u64,
    },
}

impl Leadership {
    /// True for [`Leadership::Leader`].
    pub fn is_leader(&self) -> bool {
        matches!(self, Leadership::Leader { .. })
    }
}

/// The settings of a campaign; [`start`](Self::start) it on a [`Locker`].
///
/// ```no_run
/// use std::time::Duration;
/// use advisory_locked::{Campaign, LockKey};
///
/// # async fn demo() -> Result<(), advisory_locked::Error> {
/// let locker = advisory_locked::locker("default")?;
/// // Take over within ~200 ms of the key being freed (5 tries a second while following):
/// let leader = Campaign::new(LockKey::named("fleet:leader"))
///     .retry_interval(Duration::from_millis(200))
///     .start(&locker);
/// # drop(leader);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Campaign {
    key: LockKey,
    retry: Duration,
}

impl Campaign {
    /// A campaign for `key` with the default retry interval.
    pub fn new(key: LockKey) -> Campaign {
        Campaign {
            key,
            retry: DEFAULT_CAMPAIGN_RETRY,
        }
    }

    /// How often a follower tries the key: each pause is a random 50-100 %
    /// of `every` (so that followers spread), so a free key is taken at most
    /// `every` after it was freed. One try-lock per try. At least 1 ms.
    pub fn retry_interval(mut self, every: Duration) -> Campaign {
        self.retry = every.max(Duration::from_millis(1));
        self
    }

    /// Starts campaigning in a task of the current Tokio runtime (call it
    /// from within one, as `tokio::spawn`).
    pub fn start(self, locker: &Locker) -> Leader {
        let tx = watch::Sender::new(Leadership::Follower);
        let shared = Arc::new(Shared {
            state: tx,
            stopped: AtomicBool::new(false),
        });
        let (stop_tx, stop_rx) = oneshot::channel();
        tracing::info!(pool = %locker.name(), key = %self.key.name(), retry_ms = self.retry.as_millis() as u64, "advisory-locked: campaigning for leadership");
        tokio::spawn(campaign(
            locker.clone(),
            self.key.clone(),
            self.retry,
            shared.clone(),
            stop_rx,
        ));
        Leader {
            key: self.key,
            pool: locker.name().to_owned(),
            shared,
            stop: Some(stop_tx),
        }
    }
}

/// A running campaign for leadership of a key across the fleet.
///
/// ```no_run
/// use advisory_locked::{Leader, LockKey};
///
/// # async fn work_as_leader() {}
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let locker = advisory_locked::locker("default")?;
/// let leader = Leader::campaign(&locker, LockKey::named("fleet:leader"));
/// let mut state = leader.watch();
/// loop {
///     state.wait_for(|s| s.is_leader()).await?;
///     tokio::select! {
///         // Stepped down (lock lost): stop leading, campaign goes on.
///         _ = state.wait_for(|s| !s.is_leader()) => {}
///         () = work_as_leader() => break,
///     }
/// }
/// leader.resign().await?; // hand over now (dropping it does too, in the background)
/// # Ok(()) }
/// ```
pub struct Leader {
    key: LockKey,
    pool: String,
    shared: Arc<Shared>,
    /// Dropped (or sent a reply channel) to stop the campaign.
    stop: Option<oneshot::Sender<oneshot::Sender<Result<(), Error>>>>,
}

/// What the campaign task and its [`Leader`] share.
struct Shared {
    state: watch::Sender<Leadership>,
    /// Set when the campaign is stopped: from then on the task publishes
    /// nothing, so a stepped-down report can't be overwritten.
    stopped: AtomicBool,
}

impl Shared {
    /// Publishes a new state unless the campaign was stopped.
    fn publish(&self, new: Leadership) -> bool {
        self.state.send_if_modified(|s| {
            if self.stopped.load(Ordering::SeqCst) || *s == new {
                false
            } else {
                *s = new;
                true
            }
        })
    }

    /// Stops publishing and reports [`Leadership::Follower`]: before the key
    /// is released, so that no other process can lead while this one still
    /// says it does.
    fn stop(&self) -> bool {
        self.stopped.store(true, Ordering::SeqCst);
        self.state.send_replace(Leadership::Follower).is_leader()
    }
}

impl std::fmt::Debug for Leader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leader")
            .field("pool", &self.pool)
            .field("key", &self.key)
            .field("state", &self.state())
            .finish()
    }
}

impl Leader {
    /// Starts campaigning for `key` with the default settings
    /// ([`Campaign::new`]); see [`Campaign`] to tune the retry interval.
    pub fn campaign(locker: &Locker, key: LockKey) -> Leader {
        Campaign::new(key).start(locker)
    }

    /// The key campaigned for.
    pub fn key(&self) -> &LockKey {
        &self.key
    }

    /// True while this process leads.
    pub fn is_leader(&self) -> bool {
        self.state().is_leader()
    }

    /// The current state.
    pub fn state(&self) -> Leadership {
        *self.shared.state.borrow()
    }

    /// A receiver of every change of [`state`](Self::state).
    pub fn watch(&self) -> watch::Receiver<Leadership> {
        self.shared.state.subscribe()
    }

    /// Stops campaigning and, if leading, reports [`Leadership::Follower`]
    /// and then releases the key, waiting for the server to confirm; a
    /// follower takes over at its next try. [`Error::LockLost`] if the
    /// lock's session had just ended.
    pub async fn resign(mut self) -> Result<(), Error> {
        let Some(stop) = self.stop.take() else {
            return Ok(());
        };
        self.shared.stop();
        let (reply_tx, reply_rx) = oneshot::channel();
        if stop.send(reply_tx).is_err() {
            // The task has ended already (its runtime shut down).
            return Ok(());
        }
        reply_rx.await.unwrap_or(Ok(()))
    }
}

impl Drop for Leader {
    /// Stops campaigning: reports [`Leadership::Follower`] at once; the key
    /// is released in the background.
    fn drop(&mut self) {
        if self.stop.take().is_some() && self.shared.stop() {
            tracing::info!(pool = %self.pool, key = %self.key.name(), "advisory-locked: leader dropped; stepped down");
        }
    }
}

/// A random pause in `every / 2 ..= every`.
fn pause(every: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    let half = every / 2;
    let extra = h.finish() % (half.as_micros() as u64 + 1);
    half + Duration::from_micros(extra)
}

/// The campaign's stop request: answered with the outcome of the resignation.
type Stop = oneshot::Receiver<oneshot::Sender<Result<(), Error>>>;

/// The campaign task.
async fn campaign(
    locker: Locker,
    key: LockKey,
    retry: Duration,
    shared: Arc<Shared>,
    mut stop: Stop,
) {
    let pool = locker.name().to_owned();
    let mut term = 0u64;
    loop {
        // Follower: try the key every retry interval.
        let Some(guard) = follow(&locker, &key, retry, &mut stop).await else {
            return;
        };
        term += 1;
        let backend_pid = guard.backend_pid();
        if !shared.publish(Leadership::Leader {
            since: SystemTime::now(),
            backend_pid,
            term,
        }) {
            // Stopped between the grant and now: give the key back.
            drop(guard);
            continue;
        }
        tracing::info!(pool = %pool, key = %key.name(), backend_pid, term, "advisory-locked: became leader");

        // Leader: until the lock is lost or the campaign is stopped.
        let lost = guard.lost();
        tokio::select! {
            biased;
            reply = &mut stop => {
                // `Leader::resign` or drop has reported Follower already.
                let result = guard.release().await;
                tracing::info!(pool = %pool, key = %key.name(), term, "advisory-locked: resigned leadership");
                if let Ok(reply) = reply {
                    let _ = reply.send(result);
                }
                return;
            }
            () = lost => {
                shared.publish(Leadership::Follower);
                tracing::warn!(pool = %pool, key = %key.name(), backend_pid, term, "advisory-locked: leadership lost (the lock's session ended); campaigning again");
                drop(guard);
            }
        }
    }
}

/// Tries the key every retry interval until it is granted (`Some`) or the
/// campaign is stopped (`None`, the stop answered).
async fn follow(
    locker: &Locker,
    key: &LockKey,
    retry: Duration,
    stop: &mut Stop,
) -> Option<LockGuard> {
    let pool = locker.name();
    let stopped = |reply: Result<oneshot::Sender<Result<(), Error>>, _>| {
        if let Ok(reply) = reply {
            let _ = reply.send(Ok(()));
        }
        tracing::debug!(pool = %pool, key = %key.name(), "advisory-locked: campaign stopped");
    };
    // Logged once per run of failures (an outage fails every try).
    let mut failing = false;
    loop {
        let attempt = tokio::select! {
            biased;
            reply = &mut *stop => {
                stopped(reply);
                return None;
            }
            attempt = locker.try_lock(key.clone(), Mode::Exclusive) => attempt,
        };
        match attempt {
            Ok(Some(guard)) => return Some(guard),
            Ok(None) => failing = false,
            Err(e) => {
                if !failing {
                    tracing::warn!(pool = %pool, key = %key.name(), error = %crate::error::cause(&e), "advisory-locked: campaign try failed; retrying");
                }
                failing = true;
            }
        }
        tokio::select! {
            biased;
            reply = &mut *stop => {
                stopped(reply);
                return None;
            }
            () = tokio::time::sleep(pause(retry)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_stay_within_half_to_full() {
        let every = Duration::from_millis(200);
        let pauses: Vec<Duration> = (0..200).map(|_| pause(every)).collect();
        assert!(pauses.iter().all(|p| *p >= every / 2 && *p <= every));
        let distinct: std::collections::HashSet<_> = pauses.iter().collect();
        assert!(distinct.len() > 100, "pauses are spread");
    }

    #[test]
    fn leadership_states() {
        assert!(!Leadership::Follower.is_leader());
        assert!(Leadership::Leader {
            since: SystemTime::now(),
            backend_pid: 1,
            term: 1
        }
        .is_leader());
    }
}
