//! The public face of a registry entry: [`Locker`] and the guards of held
//! locks, served by one server ([`crate::server`]) or by a quorum of
//! independent servers ([`crate::quorum`]).

use std::pin::pin;
use std::time::Duration;

use crate::config::{LockConfig, Settings};
use crate::local::lanes::Tenure;
use crate::quorum::{QuorumConfig, QuorumGuard, QuorumLocker};
use crate::server::{Granted, ServerGuard, ServerLocker};
use crate::{Error, LockKey, Mode, Stats};

impl LockConfig {
    /// Connects a [`Locker`] that is not put in the registry (for manual use
    /// and tests). One session is connected now so that a bad URL, wrong
    /// credentials, an unreachable server or a standby fail here.
    pub async fn connect(self) -> Result<Locker, Error> {
        // Boxed, as every connect: the caller's future (often `main`'s)
        // keeps only a pointer to the connect's state.
        Box::pin(self.connect_unboxed()).await
    }

    async fn connect_unboxed(self) -> Result<Locker, Error> {
        let settings = self.into_settings()?;
        if settings.transaction_scope_only {
            crate::transaction::check_server(&settings).await?;
        }
        ServerLocker::connect(settings)
            .await
            .map(Locker::from_server)
    }
}

impl QuorumConfig {
    /// Connects a quorum [`Locker`] that is not put in the registry.
    ///
    /// Every member is connected at once; members that can't be reached are
    /// connected later, on use. Fails with [`Error::QuorumUnavailable`] if
    /// fewer than a majority can be reached now, and at once for a member
    /// that is misconfigured (bad settings, a standby, a transaction pooler).
    pub async fn connect(self) -> Result<Locker, Error> {
        Box::pin(self.connect_quorum())
            .await
            .map(Locker::from_quorum)
    }
}

/// The lock machinery of one registry entry: a few long-lived lock sessions
/// serving many locks, and an in-process table so that tasks of this process
/// exclude each other. Cheap to clone.
///
/// An entry configured with [`QuorumConfig`](crate::QuorumConfig) locks on
/// a majority of independent servers; the API is the same.
///
/// Annotated functions use the entry installed in the registry; a `Locker`
/// can also be used directly, for locks that span more than one function:
///
/// ```no_run
/// use advisory_locked::{LockConfig, LockKey, Mode};
///
/// # async fn demo() -> Result<(), advisory_locked::Error> {
/// let locker = LockConfig::from_env()?.connect().await?;
/// if let Some(guard) = locker.try_lock(LockKey::named("report:daily"), Mode::Exclusive).await? {
///     // ... the work ...
///     guard.release().await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Locker {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Server(ServerLocker),
    Quorum(QuorumLocker),
}

impl std::fmt::Debug for Locker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.backend {
            Backend::Server(s) => s.fmt(f),
            Backend::Quorum(q) => q.fmt(f),
        }
    }
}

impl Locker {
    pub(crate) fn from_server(server: ServerLocker) -> Locker {
        Locker {
            backend: Backend::Server(server),
        }
    }

    pub(crate) fn from_quorum(quorum: QuorumLocker) -> Locker {
        Locker {
            backend: Backend::Quorum(quorum),
        }
    }

    /// The entry's settings (for a quorum: its name and policy, with the
    /// first member's connection settings).
    pub(crate) fn settings(&self) -> &Settings {
        match &self.backend {
            Backend::Server(s) => s.settings(),
            Backend::Quorum(q) => q.settings(),
        }
    }

    /// [`Error::TransactionScopeOnly`] on an entry without lock sessions.
    fn refuse_if_transaction_scope_only(&self) -> Result<(), Error> {
        if self.settings().transaction_scope_only {
            return Err(Error::TransactionScopeOnly {
                pool: self.name().to_owned(),
            });
        }
        Ok(())
    }

    /// Counters of this entry since it was configured (for a quorum: summed
    /// over its members).
    pub fn stats(&self) -> Stats {
        match &self.backend {
            Backend::Server(s) => s.stats(),
            Backend::Quorum(q) => q.stats(),
        }
    }

    /// The registry entry's name.
    pub fn name(&self) -> &str {
        &self.settings().name
    }

    /// How many independent servers this entry locks on: 1, or the size of
    /// its quorum.
    pub fn servers(&self) -> usize {
        match &self.backend {
            Backend::Server(_) => 1,
            Backend::Quorum(q) => q.members(),
        }
    }

    /// Takes the lock if it is free; `Ok(None)` if it is busy, here or in
    /// another process. A key busy in this process costs no round trip.
    /// A key whose name holds NUL is [`Error::InvalidKey`] (see [`LockKey`]).
    ///
    /// Runs in a span `advisory_locked.acquire` and is counted in the
    /// metrics (feature `metrics`), as the guide's "Metrics and traces" says.
    pub async fn try_lock(&self, key: LockKey, mode: Mode) -> Result<Option<LockGuard>, Error> {
        // As `try_lock_as`, inlined: one future less to nest and move.
        let call = self.call(crate::meter::label_of(&key), mode);
        let span = call.acquire_span(&key, false);
        let clock = crate::meter::Clock::start();
        let granted = &mut None;
        let acquiring = pin!(self.try_lock_unmetered(key, mode, false, Tenure::Open, granted));
        let result = crate::meter::in_span(&span, acquiring).await;
        call.try_locked(result, &span, clock)
    }

    /// [`try_lock`](Self::try_lock) whose release, with `notify`, wakes
    /// waiters in other processes (as a lock taken by [`lock`](Self::lock)
    /// does).
    pub(crate) async fn try_lock_notify(
        &self,
        key: LockKey,
        mode: Mode,
        notify: bool,
    ) -> Result<Option<LockGuard>, Error> {
        let label = crate::meter::label_of(&key);
        self.try_lock_as(key, mode, notify, Tenure::Open, label, &mut None)
            .await
    }

    /// [`try_lock_notify`](Self::try_lock_notify) with a routing hint
    /// (see [`Tenure`]) and the metrics' `key` label `label` (an annotated
    /// call's key as written); the granting session and token go to
    /// `granted` (see [`Granted`]).
    pub(crate) async fn try_lock_as(
        &self,
        key: LockKey,
        mode: Mode,
        notify: bool,
        tenure: Tenure,
        label: &str,
        granted: &mut Granted,
    ) -> Result<Option<LockGuard>, Error> {
        let call = self.call(label, mode);
        let span = call.acquire_span(&key, false);
        let clock = crate::meter::Clock::start();
        let acquiring = pin!(self.try_lock_unmetered(key, mode, notify, tenure, granted));
        let result = crate::meter::in_span(&span, acquiring).await;
        call.try_locked(result, &span, clock)
    }

    /// A lock call on this entry, as the metrics and spans see it.
    fn call<'a>(&'a self, label: &'a str, mode: Mode) -> crate::meter::Call<'a> {
        crate::meter::Call {
            entry: self.name(),
            key: label,
            mode,
        }
    }

    async fn try_lock_unmetered(
        &self,
        key: LockKey,
        mode: Mode,
        notify: bool,
        tenure: Tenure,
        granted: &mut Granted,
    ) -> Result<Option<LockGuard>, Error> {
        key.check()?;
        self.refuse_if_transaction_scope_only()?;
        match &self.backend {
            Backend::Server(s) => Ok(s
                .try_lock(key, mode, notify, tenure, granted)
                .await?
                .map(LockGuard::server)),
            // Boxed: the quorum's (larger) future stays out of every
            // call's future and stack frame (debug builds nest deeply).
            Backend::Quorum(q) => Ok(crate::boxed::boxed(|| q.try_lock(key, mode, notify))
                .await?
                .map(LockGuard::quorum)),
        }
    }

    /// Waits for the lock, at most `timeout` (`None`: as long as it takes).
    ///
    /// Waiting never blocks a lock session. A key busy in this process is
    /// awaited in memory. A key held by another process is awaited on the
    /// server, on a wait session if one is free (see
    /// [`LockConfig::wait_sessions`](crate::LockConfig::wait_sessions));
    /// otherwise it is tried again when
    /// its holder's release notifies (a lock taken with `lock` notifies
    /// waiters in other processes when it is released, in the same
    /// statement as the unlock), and in any case with backoff (2 ms doubling
    /// to 250 ms, with jitter), which covers releases that notify nobody (a
    /// crashed holder, a skip-mode holder). An expired wait is
    /// [`Error::WaitTimeout`]; a key whose name holds NUL,
    /// [`Error::InvalidKey`] (see [`LockKey`]).
    ///
    /// Runs in a span `advisory_locked.acquire` and is counted in the
    /// metrics (feature `metrics`), as the guide's "Metrics and traces" says.
    pub async fn lock(
        &self,
        key: LockKey,
        mode: Mode,
        timeout: Option<Duration>,
    ) -> Result<LockGuard, Error> {
        let label = crate::meter::label_of(&key);
        self.lock_as(key, mode, timeout, Tenure::Open, label).await
    }

    /// [`lock`](Self::lock) with a routing hint (see [`Tenure`]) and the
    /// metrics' `key` label `label`.
    pub(crate) async fn lock_as(
        &self,
        key: LockKey,
        mode: Mode,
        timeout: Option<Duration>,
        tenure: Tenure,
        label: &str,
    ) -> Result<LockGuard, Error> {
        let call = self.call(label, mode);
        let span = call.acquire_span(&key, true);
        let clock = crate::meter::Clock::start();
        let acquiring = pin!(self.lock_unmetered(key, mode, timeout, tenure));
        let result = crate::meter::in_span(&span, acquiring).await;
        match result {
            Ok(mut guard) => {
                guard.meter(&call, &span, clock);
                Ok(guard)
            }
            Err(e) => {
                call.failed(&span, clock, &e);
                Err(e)
            }
        }
    }

    async fn lock_unmetered(
        &self,
        key: LockKey,
        mode: Mode,
        timeout: Option<Duration>,
        tenure: Tenure,
    ) -> Result<LockGuard, Error> {
        key.check()?;
        self.refuse_if_transaction_scope_only()?;
        match &self.backend {
            Backend::Server(s) => s
                .lock(key, mode, timeout, tenure)
                .await
                .map(LockGuard::server),
            Backend::Quorum(q) => crate::boxed::boxed(|| q.lock(key, mode, timeout))
                .await
                .map(LockGuard::quorum),
        }
    }
}

impl crate::meter::Call<'_> {
    /// A try-lock's result, counted in the metrics and recorded in `span`.
    fn try_locked(
        &self,
        result: Result<Option<LockGuard>, Error>,
        span: &tracing::Span,
        clock: crate::meter::Clock,
    ) -> Result<Option<LockGuard>, Error> {
        match result {
            Ok(Some(mut guard)) => {
                guard.meter(self, span, clock);
                Ok(Some(guard))
            }
            Ok(None) => {
                self.skipped(span);
                Ok(None)
            }
            Err(e) => {
                self.failed(span, clock, &e);
                Err(e)
            }
        }
    }
}

/// A held lock. Dropping it releases the lock (the unlock is sent in the
/// background); [`release`](Self::release) does the same and waits for the
/// server's answer.
#[must_use = "the lock is released when the guard is dropped"]
pub struct LockGuard {
    /// Dropped first: sees whether the lock was lost before it is released.
    holding: crate::meter::Holding,
    held: Held,
}

/// The guard of one server's lock, or (boxed: rare, and much larger) of a
/// quorum's.
enum Held {
    Server(ServerGuard),
    Quorum(Box<QuorumGuard>),
}

impl std::fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockGuard")
            .field("key", self.key())
            .field("mode", &self.mode())
            .field("held", &self.is_held())
            .field("fencing_token", &self.fencing_token())
            .finish()
    }
}

impl LockGuard {
    fn server(guard: ServerGuard) -> LockGuard {
        LockGuard {
            holding: Default::default(),
            held: Held::Server(guard),
        }
    }

    fn quorum(guard: QuorumGuard) -> LockGuard {
        LockGuard {
            holding: Default::default(),
            held: Held::Quorum(Box::new(guard)),
        }
    }

    /// Counted as granted in the metrics; the hold is measured from now
    /// until the guard ends. (In place: a guard is not small.)
    fn meter(
        &mut self,
        call: &crate::meter::Call<'_>,
        span: &tracing::Span,
        clock: crate::meter::Clock,
    ) {
        let waited = match &self.held {
            Held::Server(g) => g.waited,
            Held::Quorum(g) => g.waited,
        };
        self.holding = call.granted(span, clock, waited, || {
            let state = self.state();
            Box::new(move || !state.is_held())
        });
    }

    /// The key held.
    pub fn key(&self) -> &LockKey {
        match &self.held {
            Held::Server(g) => g.key(),
            Held::Quorum(g) => g.key(),
        }
    }

    /// The mode held.
    pub fn mode(&self) -> Mode {
        match &self.held {
            Held::Server(g) => g.mode(),
            Held::Quorum(g) => g.mode(),
        }
    }

    /// The server's process id of the session holding the lock (as in
    /// `pg_locks.pid`); under a quorum, that of the first granting member.
    pub fn backend_pid(&self) -> i32 {
        match &self.held {
            Held::Server(g) => g.backend_pid(),
            Held::Quorum(g) => g.backend_pid(),
        }
    }

    /// False once the session holding the lock is known to have ended: the
    /// server has then released the lock, and another process may hold it.
    /// Under a quorum: once fewer than a majority of the granting members'
    /// sessions live.
    pub fn is_held(&self) -> bool {
        self.state().is_held()
    }

    /// The grant's fencing token, if the entry has fencing tokens
    /// ([`LockConfig::fencing_tokens`](crate::LockConfig::fencing_tokens)).
    pub fn fencing_token(&self) -> Option<i64> {
        match &self.held {
            Held::Server(g) => g.fencing_token(),
            Held::Quorum(g) => g.fencing_token(),
        }
    }

    /// The lock as [`current_lock`](crate::current_lock) shows it.
    pub fn state(&self) -> crate::LockState {
        match &self.held {
            Held::Server(g) => g.state(),
            Held::Quorum(g) => g.state(),
        }
    }

    /// [`state`](Self::state), from what the try-lock that took the lock
    /// left in `granted` if it did (no look-up in the table).
    pub(crate) fn state_granted(&self, granted: Granted) -> crate::LockState {
        match granted {
            Some((session, token)) => crate::LockState::new(
                self.key().clone(),
                crate::server::loss::Holder::Session(session),
                token,
            ),
            None => self.state(),
        }
    }

    /// Resolves when the lock is lost (its session ended; under a quorum,
    /// its majority).
    pub fn lost(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.state().lost()
    }

    /// Releases the lock and waits for the server to confirm.
    ///
    /// [`Error::LockLost`] if the session had ended (the server released the
    /// lock already). If the server says the session did not hold the lock,
    /// the session's lock state can't be trusted: it is closed (freeing
    /// whatever it held) and this is [`Error::LockLost`] too. Under a
    /// quorum, every member is released, and this is `Ok` if a majority
    /// confirmed.
    pub async fn release(self) -> Result<(), Error> {
        // The hold ends here (the metrics see it before the unlock).
        self.holding.end();
        match self.held {
            Held::Server(g) => g.release().await,
            Held::Quorum(g) => g.release().await,
        }
    }
}

#[cfg(test)]
mod size_tests {
    /// A guard is kept inline by its holder: one per held lock (the
    /// bench's P4 counts it). Without the `metrics` feature, its key (32
    /// bytes), its locker and four flags; the quorum variant is boxed.
    #[test]
    fn a_guard_stays_small() {
        let extra = if cfg!(feature = "metrics") { 8 } else { 0 };
        assert_eq!(std::mem::size_of::<super::LockGuard>(), 48 + extra);
        assert_eq!(std::mem::size_of::<crate::server::ServerGuard>(), 48);
    }
}

#[cfg(test)]
mod future_size_tests {
    use crate::{LockConfig, QuorumConfig};

    fn config() -> LockConfig {
        LockConfig::from_url("postgres://app@localhost/app").expect("a valid URL")
    }

    /// Connecting is boxed inside: the future a caller awaits (often
    /// `main`'s, or a task that lives as long as the process) holds the
    /// settings and a pointer, not the connect's state (16 KB for
    /// `connect` and 33 KB for `install` before it was boxed; each poll of
    /// the caller touched a stack frame of that size).
    #[test]
    fn connecting_futures_stay_small() {
        let sizes = [
            (
                "LockConfig::connect",
                std::mem::size_of_val(&config().connect()),
            ),
            (
                "LockConfig::install",
                std::mem::size_of_val(&config().install()),
            ),
            (
                "QuorumConfig::connect",
                std::mem::size_of_val(&QuorumConfig::new([config(), config(), config()]).connect()),
            ),
        ];
        for (what, size) in sizes {
            assert!(size <= 1024, "{what}: a {size}-byte future");
        }
    }
}
