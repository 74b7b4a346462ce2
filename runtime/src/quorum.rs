//! Locks over several independent servers: a lock is held when a majority
//! of them granted it.
//!
//! Advisory locks of one server coordinate nothing with another server. A
//! quorum entry makes a fleet whose workers talk to different databases
//! exclude each other all the same: every acquisition asks every member at
//! once (one round trip of latency), keeps the lock if a majority
//! (`n / 2 + 1`) granted it, and gives the partial grants back otherwise.
//! Two majorities of one set always share a member, and a member grants a
//! key to one session at a time, so two holders can't both have a majority.
//! No clock is involved: a member holds a lock exactly as long as the
//! session that took it lives, whatever the time says (unlike Redlock,
//! whose locks expire by time and so depend on bounded clock drift and
//! pauses).
//!
//! Losing members while holding: the lock stands while a majority of the
//! granting members' sessions live; when fewer are left it is lost, and the
//! loss policy applies. Members that are down make calls fail with
//! [`Error::QuorumUnavailable`] once fewer than a majority can answer.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use futures_util::stream::{FuturesUnordered, StreamExt};

/// How long the members that have not answered get, once a majority has
/// granted: as long again as the majority took, within these bounds.
const GRACE_MIN: Duration = Duration::from_millis(25);
const GRACE_MAX: Duration = Duration::from_millis(250);

use crate::config::Settings;
use crate::local::lanes::Tenure;
use crate::server::loss::Holder;
use crate::server::{ServerGuard, ServerLocker};
use crate::session::dispatch::Answer;
use crate::{Error, KeyId, LockConfig, LockKey, Mode, OnLost, Stats};

/// A registry entry made of several independent PostgreSQL servers
/// (normally 3 or 5): a lock is held when a majority granted it.
///
/// ```no_run
/// use advisory_locked::{advisory_locked, QuorumConfig};
///
/// #[advisory_locked(key = "billing:close-month", pool = "fleet")]
/// async fn close_month() {}
///
/// # async fn setup() -> Result<(), advisory_locked::Error> {
/// QuorumConfig::from_urls([
///     "postgres://app@db-a.internal/app",
///     "postgres://app@db-b.internal/app",
///     "postgres://app@db-c.internal/app",
/// ])?
/// .name("fleet")
/// .install()
/// .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct QuorumConfig {
    name: String,
    members: Vec<LockConfig>,
    on_lost: OnLost,
    fencing: bool,
}

impl QuorumConfig {
    /// A quorum of these servers, each configured as for a single-server
    /// entry (sessions, timeouts, TLS, ...; their names and policies are
    /// replaced by the quorum's).
    pub fn new(members: impl IntoIterator<Item = LockConfig>) -> QuorumConfig {
        QuorumConfig {
            name: crate::config::DEFAULT_POOL.to_owned(),
            members: members.into_iter().collect(),
            on_lost: OnLost::default(),
            fencing: false,
        }
    }

    /// A quorum of the servers at these URLs.
    pub fn from_urls<I, S>(urls: I) -> Result<QuorumConfig, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let members = urls
            .into_iter()
            .map(|u| LockConfig::from_url(u.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(QuorumConfig::new(members))
    }

    /// The registry entry's name (default [`DEFAULT_POOL`](crate::config::DEFAULT_POOL)).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The loss policy of annotated bodies (see [`LockConfig::on_lost`]).
    pub fn on_lost(mut self, policy: OnLost) -> Self {
        self.on_lost = policy;
        self
    }

    /// Fencing tokens under the quorum (see [`LockConfig::fencing_tokens`]):
    /// each member keeps its own counter; a grant takes the largest token of
    /// its granting members and raises the members that lagged (one more
    /// statement, only when they disagree), so that a majority stores it.
    pub fn fencing_tokens(mut self, on: bool) -> Self {
        self.fencing = on;
        self
    }

    /// The registry entry's name.
    pub(crate) fn entry_name(&self) -> &str {
        &self.name
    }

    /// Connects every member; see [`QuorumConfig::connect`].
    pub(crate) async fn connect_quorum(self) -> Result<QuorumLocker, Error> {
        if self.name.is_empty() {
            return Err(Error::InvalidConfig {
                reason: "the registry entry's name is empty".to_owned(),
            });
        }
        if self.members.is_empty() {
            return Err(Error::InvalidConfig {
                reason: "a quorum needs at least one server".to_owned(),
            });
        }
        let servers = self.members.len();
        let needed = servers / 2 + 1;
        let mut settings = Vec::with_capacity(servers);
        for (i, member) in self.members.into_iter().enumerate() {
            if member.is_transaction_scope_only() {
                return Err(Error::InvalidConfig {
                    reason: format!(
                        "quorum member {i} is configured for transaction scope only: a quorum takes session locks on every member (and a transaction-pooling proxy would break them)"
                    ),
                });
            }
            let s = member
                .name(format!("{}[{i}]", self.name))
                .on_lost(self.on_lost)
                .fencing_tokens(self.fencing)
                .into_settings()?;
            settings.push(s);
        }
        let tries = join_all(settings.iter().cloned().map(ServerLocker::connect)).await;
        let mut members = Vec::with_capacity(servers);
        let mut causes = Vec::new();
        for (s, result) in settings.iter().zip(tries) {
            match result {
                Ok(m) => members.push(m),
                Err(e) if e.is_transient() => {
                    tracing::warn!(pool = %self.name, member = %s.name, error = %crate::error::cause(&e), "advisory-locked: quorum member unreachable; it will be connected on use");
                    causes.push(format!("{}: {}", s.target(), crate::error::cause(&e)));
                    members.push(ServerLocker::unconnected(s.clone()));
                }
                Err(e) => return Err(e),
            }
        }
        let reachable = servers - causes.len();
        if reachable < needed {
            return Err(Error::QuorumUnavailable {
                key: None,
                servers,
                needed,
                reachable,
                causes: causes.join("; "),
            });
        }
        let mut quorum_settings = settings[0].clone();
        quorum_settings.name = self.name;
        quorum_settings.on_lost = self.on_lost;
        quorum_settings.fencing = self.fencing;
        tracing::info!(pool = %quorum_settings.name, servers, needed, reachable, "advisory-locked: quorum connected");
        Ok(QuorumLocker {
            inner: Arc::new(Inner {
                settings: quorum_settings,
                members,
                needed,
                local: Default::default(),
            }),
        })
    }
}

/// The machinery of a quorum entry: one [`ServerLocker`] per member.
#[derive(Clone)]
pub(crate) struct QuorumLocker {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    members: Vec<ServerLocker>,
    needed: usize,
    /// Exclusive requests of this process queue here first, one per key at
    /// a time on the servers: tasks of one process hand the key over in
    /// memory instead of racing each other for a majority.
    local: std::sync::Mutex<HashMap<KeyId, Arc<tokio::sync::Mutex<()>>>>,
}

impl Inner {
    fn local(&self, id: KeyId) -> Arc<tokio::sync::Mutex<()>> {
        let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
        local.entry(id).or_default().clone()
    }

    /// Forgets the queue of `id` if nobody holds or awaits it (only the
    /// map's handle is left).
    fn forget_idle(&self, id: KeyId) {
        let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
        if local.get(&id).is_some_and(|m| Arc::strong_count(m) == 1) {
            local.remove(&id);
        }
    }
}

impl std::fmt::Debug for QuorumLocker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuorumLocker")
            .field("name", &self.inner.settings.name)
            .field("members", &self.inner.members)
            .field("needed", &self.inner.needed)
            .finish()
    }
}

impl QuorumLocker {
    pub(crate) fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    pub(crate) fn members(&self) -> usize {
        self.inner.members.len()
    }

    pub(crate) fn stats(&self) -> Stats {
        self.inner
            .members
            .iter()
            .map(ServerLocker::stats)
            .fold(Stats::default(), |a, b| a.plus(&b))
    }

    fn name(&self) -> &str {
        &self.inner.settings.name
    }

    /// Asks every member at once; `Some` if a majority granted. An
    /// exclusive key held or being taken by another task of this process is
    /// busy without a round trip.
    pub(crate) async fn try_lock(
        &self,
        key: LockKey,
        mode: Mode,
        notify: bool,
    ) -> Result<Option<QuorumGuard>, Error> {
        let local = match mode {
            Mode::Exclusive => match self.inner.local(key.id()).try_lock_owned() {
                Ok(turn) => Some(turn),
                Err(_) => {
                    self.inner.forget_idle(key.id());
                    return Ok(None);
                }
            },
            Mode::Shared => None,
        };
        self.ask(key, mode, notify, local).await
    }

    async fn ask(
        &self,
        key: LockKey,
        mode: Mode,
        notify: bool,
        local: Option<tokio::sync::OwnedMutexGuard<()>>,
    ) -> Result<Option<QuorumGuard>, Error> {
        let inner = &self.inner;
        let (granted, causes) = self.gather(&key, mode, notify).await;
        if granted.len() >= inner.needed {
            let token = if inner.settings.fencing {
                self.fence(&key, &granted).await?
            } else {
                None
            };
            tracing::debug!(pool = %self.name(), key = %key.name(), granted = granted.len(), servers = inner.members.len(), "advisory-locked: quorum acquired");
            return Ok(Some(QuorumGuard {
                key,
                mode,
                needed: inner.needed,
                token,
                guards: granted,
                local: local.map(|turn| LocalTurn {
                    quorum: self.clone(),
                    turn: Some(turn),
                }),
                waited: false,
            }));
        }
        // Short of a majority: the partial grants go back (dropping a guard
        // queues its unlock).
        let partial = granted.len();
        drop(granted);
        // Members whose asks were dropped count as reachable: the call
        // fails closed only when enough members failed outright.
        let servers = inner.members.len();
        let reachable = servers - causes.len();
        if reachable < inner.needed {
            tracing::warn!(pool = %self.name(), key = %key.name(), reachable, needed = inner.needed, "advisory-locked: too few quorum members answered; failing closed");
            return Err(Error::QuorumUnavailable {
                key: Some(key.name().to_owned()),
                servers,
                needed: inner.needed,
                reachable,
                causes: causes.join("; "),
            });
        }
        tracing::debug!(pool = %self.name(), key = %key.name(), partial, needed = inner.needed, "advisory-locked: quorum busy; partial grants given back");
        Ok(None)
    }

    /// Asks every member at once; returns the grants and the failures
    /// (`target: error`) once a majority is in plus a grace, or once a
    /// majority is out of reach.
    async fn gather(
        &self,
        key: &LockKey,
        mode: Mode,
        notify: bool,
    ) -> (Vec<ServerGuard>, Vec<String>) {
        let inner = &self.inner;
        let mut asks: FuturesUnordered<_> = inner
            .members
            .iter()
            .map(|m| {
                // Quorum keys are packed as any key of unknown tenure.
                let key = key.clone();
                async move {
                    let granted = &mut None;
                    (
                        m,
                        m.try_lock(key, mode, notify, Tenure::Open, granted).await,
                    )
                }
            })
            .collect();
        let mut granted = Vec::new();
        let mut causes = Vec::new();
        let started = Instant::now();
        let mut grace: Option<tokio::time::Instant> = None;
        loop {
            let next = match grace {
                None => asks.next().await,
                // A majority is in: the rest get as long again as that took
                // (25 to 250 ms) to join, so that a healthy quorum holds the
                // lock on every member (and keeps it when one of them goes),
                // while a member that does not answer (a silent network, a
                // connect that hangs) delays a call by that grace at most.
                Some(until) => match tokio::time::timeout_at(until, asks.next()).await {
                    Ok(next) => next,
                    Err(_) => break,
                },
            };
            let Some((member, answer)) = next else { break };
            match answer {
                Ok(Some(guard)) => granted.push(guard),
                Ok(None) => {}
                Err(e) => causes.push(format!(
                    "{}: {}",
                    member.settings().target(),
                    crate::error::cause(&e)
                )),
            }
            if granted.len() >= inner.needed && grace.is_none() {
                let took = started.elapsed().clamp(GRACE_MIN, GRACE_MAX);
                grace = Some(tokio::time::Instant::now() + took);
            }
            if granted.len() + asks.len() < inner.needed {
                // A majority is out of reach.
                break;
            }
        }
        // Asks still out are dropped: a grant that arrives for one later is
        // given back by its session.
        (granted, causes)
    }

    /// The grant's fencing token: the largest of the granting members',
    /// after raising the members that lagged so that a majority stores it.
    async fn fence(&self, key: &LockKey, granted: &[ServerGuard]) -> Result<Option<i64>, Error> {
        let needed = self.inner.needed;
        let Some(top) = granted.iter().filter_map(ServerGuard::fencing_token).max() else {
            // Every fenced grant carries a token; none here is a broken
            // invariant, reported rather than made up.
            tracing::error!(pool = %self.name(), key = %key.name(), "advisory-locked: no granting quorum member returned a fencing token");
            return Ok(None);
        };
        let at_top = granted
            .iter()
            .filter(|g| g.fencing_token() == Some(top))
            .count();
        if at_top >= needed {
            return Ok(Some(top));
        }
        let raises = granted
            .iter()
            .filter(|g| g.fencing_token() != Some(top))
            .filter_map(ServerGuard::session)
            .map(|s| s.raise(key.id(), top));
        let raised = join_all(raises)
            .await
            .into_iter()
            .filter(|r| matches!(r, Ok(Answer::Raised(Some(t))) if *t >= top))
            .count();
        tracing::debug!(pool = %self.name(), key = %key.name(), token = top, at_top, raised, "advisory-locked: quorum fencing token raised on lagging members");
        if at_top + raised >= needed {
            Ok(Some(top))
        } else {
            Err(Error::QuorumUnavailable {
                key: Some(key.name().to_owned()),
                servers: self.inner.members.len(),
                needed,
                reachable: at_top + raised,
                causes: "the fencing token could not be stored on a majority".to_owned(),
            })
        }
    }

    /// This process's turn on an exclusive key, waited for until `deadline`.
    async fn local_turn(
        &self,
        id: KeyId,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<tokio::sync::OwnedMutexGuard<()>, ()> {
        let queue = self.inner.local(id).lock_owned();
        match deadline {
            Some(d) => match tokio::time::timeout_at(d, queue).await {
                Ok(turn) => Ok(turn),
                Err(_) => {
                    self.inner.forget_idle(id);
                    Err(())
                }
            },
            None => Ok(queue.await),
        }
    }

    /// Waits for a majority: tries, then waits for a release on any member
    /// (notified) or the next backoff step (2 ms doubling to 250 ms, with
    /// jitter), until `timeout`.
    pub(crate) async fn lock(
        &self,
        key: LockKey,
        mode: Mode,
        timeout: Option<Duration>,
    ) -> Result<QuorumGuard, Error> {
        let start = Instant::now();
        let deadline = timeout.map(|t| tokio::time::Instant::from_std(start) + t);
        let id = key.id();
        let timed_out = || Error::WaitTimeout {
            key: key.name().to_owned(),
            waited: start.elapsed(),
        };
        // Tasks of this process queue in memory (exclusive mode).
        let mut local = None;
        if mode == Mode::Exclusive {
            local = Some(
                self.local_turn(id, deadline)
                    .await
                    .map_err(|()| timed_out())?,
            );
        }
        let _forget = ForgetWaiters(&self.inner.members, id);
        let mut attempt = 0;
        loop {
            let woken: Vec<_> = self
                .inner
                .members
                .iter()
                .map(|m| Box::pin(m.woken(id)))
                .collect();
            let turn = local.take();
            let had_turn = turn.is_some();
            match self.ask(key.clone(), mode, true, turn).await {
                Ok(Some(mut guard)) => {
                    guard.waited = attempt > 0;
                    return Ok(guard);
                }
                Ok(None) => {}
                Err(e) => return Err(e),
            }
            if had_turn {
                // The turn went into the dropped attempt; take it again.
                local = Some(
                    self.local_turn(id, deadline)
                        .await
                        .map_err(|()| timed_out())?,
                );
            }
            let now = tokio::time::Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return Err(timed_out());
            }
            let pause = now + crate::backoff::retry_busy(attempt);
            attempt += 1;
            let until = match deadline {
                Some(d) if d <= pause => d,
                _ => pause,
            };
            tokio::select! {
                _ = futures_util::future::select_all(woken) => {}
                () = tokio::time::sleep_until(until) => {}
            }
        }
    }
}

/// Forgets the members' wait entries of a key when a wait ends.
struct ForgetWaiters<'a>(&'a [ServerLocker], crate::KeyId);

impl Drop for ForgetWaiters<'_> {
    fn drop(&mut self) {
        for m in self.0 {
            m.forget_waiter(self.1);
        }
    }
}

/// A lock held on a majority of a quorum's members.
pub(crate) struct QuorumGuard {
    key: LockKey,
    mode: Mode,
    needed: usize,
    token: Option<i64>,
    /// Dropping them releases the lock on every granting member.
    guards: Vec<ServerGuard>,
    /// This process's turn on the key (exclusive mode), given up after the
    /// members' unlocks are queued (fields drop in order).
    local: Option<LocalTurn>,
    /// Granted to a wait-mode call after a busy round (for the metrics).
    pub(crate) waited: bool,
}

/// A task's turn on an exclusive key in this process.
struct LocalTurn {
    quorum: QuorumLocker,
    turn: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for LocalTurn {
    fn drop(&mut self) {
        let Some(turn) = self.turn.take() else { return };
        let mutex = tokio::sync::OwnedMutexGuard::mutex(&turn).clone();
        drop(turn);
        // Forget the key's queue when nobody else uses it (the map's and
        // this handle are the only ones left).
        let mut local = self
            .quorum
            .inner
            .local
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if Arc::strong_count(&mutex) == 2 {
            local.retain(|_, m| !Arc::ptr_eq(m, &mutex));
        }
    }
}

impl QuorumGuard {
    pub(crate) fn key(&self) -> &LockKey {
        &self.key
    }

    pub(crate) fn mode(&self) -> Mode {
        self.mode
    }

    pub(crate) fn backend_pid(&self) -> i32 {
        self.guards.first().map_or(0, ServerGuard::backend_pid)
    }

    pub(crate) fn fencing_token(&self) -> Option<i64> {
        self.token
    }

    pub(crate) fn state(&self) -> crate::LockState {
        let sessions: Arc<[_]> = self
            .guards
            .iter()
            .filter_map(ServerGuard::session)
            .collect();
        crate::LockState::new(
            self.key.clone(),
            Holder::Quorum {
                sessions,
                needed: self.needed,
            },
            self.token,
        )
    }

    /// Releases on every granting member; `Ok` if a majority confirmed.
    pub(crate) async fn release(self) -> Result<(), Error> {
        let QuorumGuard {
            key,
            needed,
            guards,
            local,
            ..
        } = self;
        let confirmed = join_all(guards.into_iter().map(ServerGuard::release))
            .await
            .into_iter()
            .filter(Result::is_ok)
            .count();
        drop(local);
        if confirmed >= needed {
            Ok(())
        } else {
            Err(Error::LockLost {
                key: key.name().to_owned(),
            })
        }
    }
}
