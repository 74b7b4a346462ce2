//! The lock machinery of one server: its lock sessions, its in-process
//! table, and the guards of held locks. [`crate::ServerLocker`] serves a
//! registry entry with one of these, or with several (a quorum).

pub(crate) mod fence;
pub(crate) mod loss;
pub(crate) mod waiting;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex as AsyncMutex;

use crate::config::Settings;
use crate::local::lanes::{Lane, Tenure};
use crate::local::table::{Begin, Recent, Table};
use crate::session::dispatch::{Answer, RequestError};
use crate::session::wakeup::Waiters;
use crate::session::Session;
use crate::stats::{Counters, Stats};
use crate::{Error, KeyId, LockKey, Mode};

/// The lock machinery of one server: a few long-lived lock sessions
/// serving many locks, and an in-process table so that tasks of this process
/// exclude each other. Cheap to clone. The public face is
/// [`crate::Locker`].
#[derive(Clone)]
pub(crate) struct ServerLocker {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    /// The lock sessions; which one a new lock goes to is chosen by
    /// [`crate::local::lanes`].
    slots: Vec<Slot>,
    table: Table,
    counters: Arc<Counters>,
    waiters: Arc<Waiters>,
    /// The fencing table is known to exist (entries with fencing tokens).
    fence_ready: std::sync::atomic::AtomicBool,
    /// The transaction-pooler probe has passed (see [`crate::session::proxy`]).
    probed: std::sync::atomic::AtomicBool,
    /// Sessions that wait on the server (see [`crate::server::waiting`]).
    waits: crate::server::waiting::WaitPool,
}

impl std::fmt::Debug for ServerLocker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerLocker")
            .field("settings", &self.inner.settings)
            .field("local_keys", &self.inner.table.len())
            .finish()
    }
}

/// One wait-mode call of [`ServerLocker::lock`].
struct WaitCall {
    key: LockKey,
    mode: Mode,
    tenure: Tenure,
    start: Instant,
    deadline: Option<tokio::time::Instant>,
    /// Rounds that found the key busy (for the backoff).
    attempt: u32,
    /// Whether a wait on the server without a try-lock first was tried.
    waited_at_once: bool,
}

impl WaitCall {
    fn timed_out(&self) -> Error {
        Error::WaitTimeout {
            key: self.key.name().to_owned(),
            waited: self.start.elapsed(),
        }
    }

    fn log_waited(&self, pool: &str) {
        if self.attempt > 0 {
            tracing::debug!(pool = %pool, key = %self.key.name(), waited_ms = self.start.elapsed().as_millis() as u64, "advisory-locked: waited");
        }
    }
}

impl ServerLocker {
    pub(crate) async fn connect(mut settings: Settings) -> Result<ServerLocker, Error> {
        let counters = Arc::new(Counters::new(&settings.name));
        let waiters = Arc::new(Waiters::default());
        if settings.transaction_scope_only {
            // No lock sessions (see LockConfig::transaction_scope_only);
            // the public face checked the server and refuses session-scope
            // calls.
            return Ok(Self::with_first(settings, counters, waiters, None));
        }
        if settings.fencing {
            crate::server::fence::ensure_table(&settings).await?;
        }
        let first = Session::connect(&settings, &counters, &waiters).await?;
        // Also the exclusion self-test of both scopes (crate::session::trust):
        // failed session-level locks refuse the entry; failed
        // transaction-level ones only its transaction-scope calls.
        settings.untrusted_transaction_locks = crate::session::proxy::refuse_transaction_pooling(
            &settings,
            &first.canceller.target,
            first.backend_pid,
        )
        .await?;
        let locker = Self::with_first(settings, counters, waiters, Some(first));
        locker
            .inner
            .fence_ready
            .store(true, std::sync::atomic::Ordering::Release);
        locker
            .inner
            .probed
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(locker)
    }

    /// A locker whose sessions connect on first use (a quorum member that
    /// was unreachable at configuration).
    pub(crate) fn unconnected(settings: Settings) -> ServerLocker {
        let counters = Arc::new(Counters::new(&settings.name));
        let waiters = Arc::new(Waiters::default());
        Self::with_first(settings, counters, waiters, None)
    }

    fn with_first(
        settings: Settings,
        counters: Arc<Counters>,
        waiters: Arc<Waiters>,
        first: Option<Arc<Session>>,
    ) -> ServerLocker {
        let slots = (0..settings.sessions)
            .map(|i| Slot {
                current: std::sync::Mutex::new(if i == 0 { first.clone() } else { None }),
                connecting: AsyncMutex::new(()),
                outage: std::sync::Mutex::new(None),
            })
            .collect();
        let waits = crate::server::waiting::WaitPool::new(&settings, &counters, &waiters);
        ServerLocker {
            inner: Arc::new(Inner {
                waits,
                settings,
                slots,
                table: Table::default(),
                counters,
                waiters,
                fence_ready: std::sync::atomic::AtomicBool::new(false),
                probed: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// Subscribes to the next release of `id` in another process that
    /// notifies (see [`crate::session::wakeup`]).
    pub(crate) fn woken(
        &self,
        id: KeyId,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.keep_listening();
        self.inner.waiters.subscribe(id)
    }

    /// Forgets the wait entry of `id` when no waiter is left.
    pub(crate) fn forget_waiter(&self, id: KeyId) {
        self.inner.waiters.forget(id);
    }

    pub(crate) fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// Counters since configuration.
    pub(crate) fn stats(&self) -> Stats {
        self.inner.counters.snapshot(self.inner.table.len())
    }

    /// The registry entry's name.
    pub(crate) fn name(&self) -> &str {
        &self.inner.settings.name
    }

    /// The slot a new lock goes to, or (`Err`) the key's home session (see
    /// [`crate::local::lanes`]), after waiting for any unlock of the key
    /// still on its way where that matters.
    async fn route(&self, recent: Option<&Recent>, tenure: Tenure) -> Result<usize, Arc<Session>> {
        let (index, wait) = self.choose(recent, tenure)?;
        if let (Some(r), true) = (recent, wait) {
            // Boxed: rarely needed, and its future would otherwise be
            // nested in every lock call's (and moved with it).
            crate::boxed::boxed(|| r.session.unlock_answered(r.unlock)).await;
        }
        Ok(index)
    }

    /// [`route`](Self::route)'s choice: the slot, and whether the last
    /// unlock of the key (`recent`) must be answered first; or the key's
    /// home session.
    fn choose(
        &self,
        recent: Option<&Recent>,
        tenure: Tenure,
    ) -> Result<(usize, bool), Arc<Session>> {
        let slots = &self.inner.slots;
        if slots.len() == 1 {
            // The only other home a key can have is a wait session.
            return Ok((0, recent.is_some_and(|r| r.session.is_wait())));
        }
        let mut buf = [None; 8];
        let mut heap = Vec::new();
        let loads: &mut [crate::local::lanes::Load] = if slots.len() <= buf.len() {
            &mut buf[..slots.len()]
        } else {
            heap.resize(slots.len(), None);
            &mut heap
        };
        for (load, slot) in loads.iter_mut().zip(slots) {
            *load = slot.load();
        }
        let r = match recent {
            None if tenure == Tenure::Scoped => {
                return Ok((crate::local::lanes::lightest(loads), false))
            }
            None => return Ok((crate::local::lanes::packed(loads), false)),
            Some(r) => r,
        };
        let light = crate::local::lanes::lightest(loads);
        let least = crate::local::lanes::weight(loads[light]);
        let home = &r.session;
        // A wait session is never a home: a try-lock there
        // could queue behind a blocking wait (crate::server::waiting).
        if !home.is_dead()
            && !home.is_wait()
            && !home.is_retired()
            && !crate::local::lanes::much_heavier(
                crate::local::lanes::weight(Some(Lane::of(home))),
                least,
            )
        {
            return Err(home.clone());
        }
        // Moving to a lighter session: not before the last unlock is
        // answered, or this lock could overtake it.
        Ok((light, home.unlock_pending(r.unlock)))
    }

    /// The live session for a new lock of a key (see [`crate::local::lanes`]),
    /// connecting a fresh one if the chosen slot's session died. `recent`:
    /// where this process held the key last, if it released it lately.
    async fn session_for(
        &self,
        recent: Option<&Recent>,
        tenure: Tenure,
    ) -> Result<Arc<Session>, Error> {
        let slots = &self.inner.slots;
        let index = match self.route(recent, tenure).await {
            Ok(index) => index,
            Err(home) => return Ok(home),
        };
        if let Some(s) = slots[index].live() {
            if s.retirable() {
                self.retire(index, &s);
            }
            return Ok(s);
        }
        // Connecting runs in a task of its own: it finishes (and its session
        // serves the next caller) even if this caller is dropped, and its
        // deep set-up future is not nested in the caller's.
        match self.spawn_reconnect(index).await {
            Ok(Ok(session)) => Ok(session),
            Ok(Err(e)) => {
                // This slot can't connect (backing off, say at the server's
                // max_connections); another live session serves meanwhile.
                // Any session will do: the choice above waited for any
                // unlock of this key still on its way.
                let live = slots.iter().filter_map(Slot::live).min_by_key(|s| s.load());
                match live {
                    Some(session) => {
                        tracing::debug!(pool = %self.name(), slot = index, error = %crate::error::cause(&e), "advisory-locked: a lock session can't connect; using another");
                        Ok(session)
                    }
                    None => Err(e),
                }
            }
            // Only if the runtime is shutting down.
            Err(_) => Err(Error::Unavailable {
                target: self.inner.settings.target(),
                retry_in: Duration::ZERO,
                cause: "the runtime is shutting down".to_owned(),
            }),
        }
    }

    /// [`reconnect`](Self::reconnect) in a task of its own. Not inlined:
    /// the task's future, deep and rarely built, would otherwise be built
    /// in (and size) the stack frame of every lock call's `poll`.
    #[inline(never)]
    fn spawn_reconnect(
        &self,
        index: usize,
    ) -> tokio::task::JoinHandle<Result<Arc<Session>, Error>> {
        let locker = self.clone();
        tokio::spawn(async move { locker.reconnect(index).await })
    }

    /// Replaces slot `index`'s session `old`, which once held thousands of
    /// locks and now holds none (see [`Session::retirable`]), with a fresh
    /// one, in the background: `old` serves until the fresh one is in the
    /// slot, and is closed once what was routed to it before is released
    /// (it is no key's home meanwhile).
    /// Not inlined, as [`spawn_reconnect`](Self::spawn_reconnect).
    #[inline(never)]
    fn retire(&self, index: usize, old: &Arc<Session>) {
        let (locker, old) = (self.clone(), old.clone());
        tokio::spawn(async move {
            let inner = &locker.inner;
            let fresh = Session::connect_checked(
                old.role(),
                &inner.settings,
                &inner.counters,
                &inner.waiters,
                true,
            )
            .await;
            let fresh = match fresh {
                Ok(fresh) => fresh,
                Err(e) => {
                    tracing::debug!(pool = %locker.name(), session = old.id(), error = %crate::error::cause(&e), "advisory-locked: could not replace a bloated lock session; keeping it");
                    return;
                }
            };
            let swapped = {
                let mut current = inner.slots[index].guard();
                let still = current.as_ref().is_some_and(|s| Arc::ptr_eq(s, &old));
                if still {
                    *current = Some(fresh.clone());
                }
                still
            };
            if !swapped {
                fresh.kill();
                return;
            }
            tracing::info!(pool = %locker.name(), old = old.id(), new = fresh.id(), peak = old.peak(), "advisory-locked: retired an empty lock session that once held many locks");
            // Whatever was routed to it before the swap ends first.
            old.until_empty().await;
            old.kill();
        });
    }

    /// Opens a fresh session for slot `index` unless another caller just
    /// did, or the slot is backing off after a failure.
    async fn reconnect(&self, index: usize) -> Result<Arc<Session>, Error> {
        let slot = &self.inner.slots[index];
        // One connect at a time per slot; who waited here finds it done (or
        // failed, below).
        let _connecting = slot.connecting.lock().await;
        if let Some(s) = slot.live() {
            return Ok(s);
        }
        // During an outage, fail fast until the next attempt is due.
        if let Some(e) = slot.backing_off(&self.inner.settings) {
            return Err(e);
        }
        if let Some(dead) = slot.take() {
            tracing::info!(pool = %self.name(), session = dead.id(), "advisory-locked: replacing a dead lock session");
        }
        let settings = &self.inner.settings;
        let ready = &self.inner.fence_ready;
        if settings.fencing && !ready.load(std::sync::atomic::Ordering::Acquire) {
            // A quorum member first reached now.
            if let Err(e) = crate::server::fence::ensure_table(settings).await {
                slot.failed(&e);
                return Err(e);
            }
            ready.store(true, std::sync::atomic::Ordering::Release);
        }
        // One session listens (see crate::session::wakeup): the first slot's.
        let role = if index == 0 {
            crate::session::Role::Listening
        } else {
            crate::session::Role::Lock
        };
        // A replacement is checked again, with the exclusion self-test
        // (crate::session::trust): the server behind the address may have
        // changed. (The first session of a locker not probed yet gets the
        // probe below, which runs the self-test too.)
        let probed = &self.inner.probed;
        let verify = probed.load(std::sync::atomic::Ordering::Acquire);
        match Session::connect_checked(
            role,
            &self.inner.settings,
            &self.inner.counters,
            &self.inner.waiters,
            verify,
        )
        .await
        {
            Ok(fresh) => {
                if !verify {
                    // The first session of a locker that was not connected
                    // at configuration (a quorum member): the same check
                    // for a transaction-pooling proxy as at configuration.
                    if let Err(e) = crate::session::proxy::refuse_transaction_pooling(
                        settings,
                        &fresh.canceller.target,
                        fresh.backend_pid,
                    )
                    .await
                    {
                        fresh.kill();
                        slot.failed(&e);
                        return Err(e);
                    }
                    probed.store(true, std::sync::atomic::Ordering::Release);
                }
                slot.set(fresh.clone());
                Ok(fresh)
            }
            Err(e) => {
                let retry_in = slot.failed(&e);
                tracing::warn!(pool = %self.name(), error = %crate::error::cause(&e), retry_in_ms = retry_in.as_millis() as u64,
                    "advisory-locked: cannot open a lock session; failing fast until the next attempt");
                Err(e)
            }
        }
    }

    /// Takes the lock if it is free; `Ok(None)` if it is busy, here or in
    /// another process. A key busy in this process costs no round trip.
    /// With `notify`, its release wakes waiters in other processes.
    pub(crate) async fn try_lock(
        &self,
        key: LockKey,
        mode: Mode,
        notify: bool,
        tenure: Tenure,
        granted: &mut Granted,
    ) -> Result<Option<ServerGuard>, Error> {
        loop {
            match self.inner.table.begin(key.id(), mode) {
                Begin::Reserved(recent) => {
                    let got = self
                        .ask_server(&key, mode, notify, recent, tenure, granted)
                        .await?;
                    if got.is_none() {
                        tracing::debug!(pool = %self.name(), key = %key.name(), "advisory-locked: skipped (busy in another session)");
                    }
                    return Ok(got);
                }
                Begin::Joined(session) => return Ok(Some(self.joined(key, mode, session, notify))),
                Begin::Busy(_) => {
                    Counters::add(&self.inner.counters.local_busy, 1);
                    tracing::debug!(pool = %self.name(), key = %key.name(), "advisory-locked: skipped (busy in this process)");
                    return Ok(None);
                }
                // Shared behind an in-flight shared try-lock: one round trip.
                Begin::Pending(changed) => changed.await,
            }
        }
    }

    /// Waits for the lock, at most `timeout` (`None`: as long as it takes).
    ///
    /// Waiting never blocks a lock session. A key busy in this process is
    /// awaited in memory. A key held by another process is awaited on the
    /// server, on a wait session if one is free (see
    /// [`LockConfig::wait_sessions`](crate::LockConfig::wait_sessions);
    /// a key last got that way is awaited there at once, see
    /// [`crate::server::waiting`]);
    /// otherwise it is tried again when
    /// its holder's release notifies (a lock taken with `lock` notifies
    /// waiters in other processes when it is released, in the same
    /// statement as the unlock), and in any case with backoff (2 ms doubling
    /// to 250 ms, with jitter), which covers releases that notify nobody (a
    /// crashed holder, a skip-mode holder). An expired wait is
    /// [`Error::WaitTimeout`].
    pub(crate) async fn lock(
        &self,
        key: LockKey,
        mode: Mode,
        timeout: Option<Duration>,
        tenure: Tenure,
    ) -> Result<ServerGuard, Error> {
        let start = Instant::now();
        let mut call = WaitCall {
            deadline: timeout.map(|t| tokio::time::Instant::from_std(start) + t),
            start,
            key,
            mode,
            tenure,
            attempt: 0,
            waited_at_once: false,
        };
        let id = call.key.id();
        let _forget = ForgetWaiter(&self.inner.waiters, id);
        let mut guard = self.lock_rounds(&mut call).await?;
        guard.waited |= call.attempt > 0;
        Ok(guard)
    }

    /// The rounds of [`ServerLocker::lock`] until it is granted or times out.
    async fn lock_rounds(&self, call: &mut WaitCall) -> Result<ServerGuard, Error> {
        let (id, mode) = (call.key.id(), call.mode);
        loop {
            match self.inner.table.begin(id, mode) {
                Begin::Reserved(recent) => {
                    if let Some(guard) = self.lock_reserved(call, recent).await? {
                        return Ok(guard);
                    }
                }
                Begin::Joined(session) => {
                    return Ok(self.joined(call.key.clone(), mode, session, true))
                }
                Begin::Busy(changed) | Begin::Pending(changed) => {
                    Counters::add(&self.inner.counters.local_busy, 1);
                    call.attempt = call.attempt.max(1);
                    match call.deadline {
                        Some(d) => {
                            if tokio::time::timeout_at(d, changed).await.is_err() {
                                return Err(call.timed_out());
                            }
                        }
                        None => changed.await,
                    }
                }
            }
        }
    }

    /// One round of [`ServerLocker::lock`] for a key reserved in the table:
    /// the guard, or `None` to go round again.
    async fn lock_reserved(
        &self,
        call: &mut WaitCall,
        recent: Option<Recent>,
    ) -> Result<Option<ServerGuard>, Error> {
        let (key, mode) = (&call.key, call.mode);
        // Subscribed before the try-lock: a release right after it wakes
        // this waiter.
        let woken = self.inner.waiters.subscribe(key.id());
        // A key this process found held by another process lately is
        // contended: wait on the server at once, queued behind the other
        // processes' waits, instead of a try-lock first (a round trip
        // longer, and a window in which this process, just releasing,
        // takes the key again before a waiter's wait reaches the server).
        let contended = recent.as_ref().filter(|r| r.contended > 0);
        if !call.waited_at_once && self.inner.waits.enabled() && contended.is_some() {
            call.waited_at_once = true;
            let home = contended.map(|r| r.session.clone());
            // One less if this wait finds the key free.
            let if_free = contended.map_or(0, |r| r.contended - 1);
            self.inner.table.abandon(key.id());
            return match self
                .wait_on_server(key, mode, call.deadline, home, if_free)
                .await?
            {
                WaitedHere::Got(guard) => Ok(Some(guard)),
                WaitedHere::TimedOut => Err(call.timed_out()),
                // No wait session free: a try-lock first.
                WaitedHere::Again | WaitedHere::Fallback => Ok(None),
            };
        }
        if let Some(guard) = self
            .ask_server(key, mode, true, recent, call.tenure, &mut None)
            .await?
        {
            call.log_waited(self.name());
            return Ok(Some(guard));
        }
        // Busy in another session: wait on the server, on a wait session if
        // one is free (see crate::server::waiting).
        let waited = self
            .wait_on_server(
                key,
                mode,
                call.deadline,
                None,
                crate::local::table::CONTENDED,
            )
            .await?;
        match waited {
            WaitedHere::Got(guard) => {
                call.attempt = call.attempt.max(1);
                call.log_waited(self.name());
                return Ok(Some(guard));
            }
            WaitedHere::TimedOut => return Err(call.timed_out()),
            WaitedHere::Again => return Ok(None),
            WaitedHere::Fallback => self.keep_listening(),
        }
        self.pause(call, woken).await
    }

    /// Waits for the key's release to notify, or the backoff, bounded by
    /// the deadline; at the deadline, one last try.
    async fn pause(
        &self,
        call: &mut WaitCall,
        woken: impl std::future::Future<Output = ()>,
    ) -> Result<Option<ServerGuard>, Error> {
        let pause = tokio::time::Instant::now() + crate::backoff::retry_busy(call.attempt);
        call.attempt += 1;
        let until = match call.deadline {
            Some(d) if d <= pause => d,
            _ => pause,
        };
        tokio::select! {
            () = woken => {}
            () = tokio::time::sleep_until(until) => {}
        }
        if call
            .deadline
            .is_none_or(|d| tokio::time::Instant::now() < d)
        {
            return Ok(None);
        }
        // One last try at the deadline.
        let (key, mode) = (&call.key, call.mode);
        match self.inner.table.begin(key.id(), mode) {
            Begin::Reserved(recent) => {
                if let Some(guard) = self
                    .ask_server(key, mode, true, recent, call.tenure, &mut None)
                    .await?
                {
                    return Ok(Some(guard));
                }
            }
            // Joining counted this caller as a holder: it holds the lock
            // now (and its guard releases it).
            Begin::Joined(session) => {
                return Ok(Some(self.joined(key.clone(), mode, session, true)))
            }
            Begin::Busy(_) | Begin::Pending(_) => {}
        }
        Err(call.timed_out())
    }

    /// The guard of a lock this caller joined in the in-process table
    /// (shared with the holders there, or handed over by one).
    fn joined(&self, key: LockKey, mode: Mode, session: Arc<Session>, notify: bool) -> ServerGuard {
        Counters::add(&self.inner.counters.local_joined, 1);
        self.guard(key, mode, &session, notify)
    }

    /// Sends one try-lock for a key reserved in the table.
    ///
    /// If the caller is dropped while the request is on the wire, the
    /// reservation is dropped with it and the session's dispatcher gives a
    /// grant that nobody takes back to the server.
    async fn ask_server(
        &self,
        key: &LockKey,
        mode: Mode,
        notify: bool,
        recent: Option<Recent>,
        tenure: Tenure,
        granted: &mut Granted,
    ) -> Result<Option<ServerGuard>, Error> {
        let mut reservation = Reservation {
            locker: self.clone(),
            id: key.id(),
            armed: true,
        };
        let result = self.try_on_server(key, mode, recent, tenure).await;
        match result {
            Ok(Some((session, token))) => {
                reservation.armed = false;
                self.inner
                    .table
                    .granted(key.id(), session.clone(), token, 0);
                let guard = self.guard(key.clone(), mode, &session, notify);
                *granted = Some((session, token));
                Ok(Some(guard))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                tracing::warn!(pool = %self.name(), key = %key.name(), error = %crate::error::cause(&e), "advisory-locked: lock failed");
                Err(e)
            }
        }
    }

    /// Waits for a key found busy on the server on a wait session (see
    /// [`crate::server::waiting`]), after reserving it in the table again.
    async fn wait_on_server(
        &self,
        key: &LockKey,
        mode: Mode,
        deadline: Option<tokio::time::Instant>,
        prefer: Option<Arc<Session>>,
        if_free: u8,
    ) -> Result<WaitedHere, Error> {
        use crate::server::waiting::Waited;
        if !self.inner.waits.enabled() {
            return Ok(WaitedHere::Fallback);
        }
        match self.inner.table.begin_wait(key.id(), mode) {
            // Where this process held it last does not matter here: a wait
            // on the server waits for any unlock still on its way.
            Begin::Reserved(_) => {}
            Begin::Joined(session) => {
                return Ok(WaitedHere::Got(self.joined(
                    key.clone(),
                    mode,
                    session,
                    true,
                )))
            }
            // Busy in this process now: awaited in memory.
            Begin::Busy(_) | Begin::Pending(_) => return Ok(WaitedHere::Again),
        }
        let mut reservation = Reservation {
            locker: self.clone(),
            id: key.id(),
            armed: true,
        };
        Ok(
            match self.inner.waits.wait(key, mode, deadline, prefer).await? {
                Waited::Granted(session, grant) => {
                    // Fully contended if the wait found the key held;
                    // else what the caller says (see Recent::contended).
                    let contended = if grant.blocked {
                        crate::local::table::CONTENDED
                    } else {
                        if_free
                    };
                    let blocked = grant.blocked;
                    grant.keep();
                    reservation.armed = false;
                    self.inner
                        .table
                        .granted(key.id(), session.clone(), None, contended);
                    let mut guard = self.guard(key.clone(), mode, &session, true);
                    guard.waited = blocked;
                    WaitedHere::Got(guard)
                }
                Waited::TimedOut => WaitedHere::TimedOut,
                Waited::Again => WaitedHere::Again,
                Waited::Unavailable => WaitedHere::Fallback,
            },
        )
    }

    /// Reconnects the listening session (the first slot's, see
    /// [`crate::session::wakeup`]) in the background if it died, so that a waiter on
    /// the notify path is woken again even if no key of that slot is used.
    fn keep_listening(&self) {
        if self.inner.slots.first().is_some_and(|s| s.live().is_none()) {
            let locker = self.clone();
            // Failures back off (and are logged) as for any slot.
            tokio::spawn(async move {
                let _ = locker.reconnect(0).await;
            });
        }
    }

    /// The session that granted the lock (and the grant's fencing token),
    /// or `None` if it is busy.
    async fn try_on_server(
        &self,
        key: &LockKey,
        mode: Mode,
        recent: Option<Recent>,
        tenure: Tenure,
    ) -> Result<Option<(Arc<Session>, Option<i64>)>, Error> {
        let fenced = self.inner.settings.fencing;
        // A session that died unnoticed fails the request: then one more try
        // on a fresh session.
        let mut retried = false;
        loop {
            let session = self.session_for(recent.as_ref(), tenure).await?;
            let ticket = session.routed();
            let error = match session.try_lock(key.id(), mode, fenced).await {
                Ok(Answer::Granted(grant)) => {
                    let token = grant.token;
                    grant.keep();
                    ticket.granted();
                    return Ok(Some((session, token)));
                }
                Ok(Answer::Busy | Answer::Unlocked(_) | Answer::Raised(_)) => return Ok(None),
                Err(RequestError::Db(source)) => {
                    return Err(Error::Query {
                        key: key.name().to_owned(),
                        source,
                    })
                }
                Err(RequestError::Ended) => Error::SessionEnded {
                    key: key.name().to_owned(),
                },
            };
            if retried {
                return Err(error);
            }
            // The error may arrive before the connection task has ended:
            // mark the session dead so that it is replaced.
            session.kill();
            tracing::info!(pool = %self.name(), key = %key.name(), session = session.id(), "advisory-locked: lock session ended during a try-lock; retrying on a fresh one");
            retried = true;
        }
    }

    fn guard(&self, key: LockKey, mode: Mode, session: &Session, notify: bool) -> ServerGuard {
        tracing::debug!(pool = %self.name(), key = %key.name(), id = %key.id(), mode = mode.as_str(), session = session.id(), "advisory-locked: acquired");
        // The session (and the grant's fencing token) stay in the table's
        // entry (see ServerGuard::held).
        ServerGuard {
            locker: self.clone(),
            key,
            mode,
            notify,
            done: false,
            waited: false,
        }
    }
}

/// The session that granted a try-lock and the grant's fencing token, for
/// a caller that wants the lock's [`LockState`](crate::LockState) at once
/// ([`ServerGuard::state`] reads them from the table). Left `None` for a
/// lock joined in this process.
pub(crate) type Granted = Option<(Arc<Session>, Option<i64>)>;

/// One of an entry's lock sessions, replaced when it dies.
struct Slot {
    current: std::sync::Mutex<Option<Arc<Session>>>,
    connecting: AsyncMutex<()>,
    /// The last failed connect: calls fail fast until the next attempt.
    outage: std::sync::Mutex<Option<Outage>>,
}

/// A slot's failed connects in a row (see [`crate::backoff::reconnect`]).
struct Outage {
    attempts: u32,
    next_attempt: Instant,
    cause: String,
}

impl Slot {
    fn guard(&self) -> std::sync::MutexGuard<'_, Option<Arc<Session>>> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn live(&self) -> Option<Arc<Session>> {
        self.guard().as_ref().filter(|s| !s.is_dead()).cloned()
    }

    /// The live session's [`Session::load`] (without taking a reference).
    fn load(&self) -> crate::local::lanes::Load {
        self.guard()
            .as_ref()
            .filter(|s| !s.is_dead())
            .map(|s| Lane::of(s.as_ref()))
    }

    fn take(&self) -> Option<Arc<Session>> {
        self.guard().take()
    }

    fn set(&self, session: Arc<Session>) {
        *self.guard() = Some(session);
        *self.outage() = None;
    }

    fn outage(&self) -> std::sync::MutexGuard<'_, Option<Outage>> {
        self.outage.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `Error::Unavailable` while the last connect failed and the next
    /// attempt is not yet due.
    fn backing_off(&self, settings: &Settings) -> Option<Error> {
        let outage = self.outage();
        let o = outage.as_ref()?;
        let now = Instant::now();
        (now < o.next_attempt).then(|| Error::Unavailable {
            target: settings.target(),
            retry_in: o.next_attempt - now,
            cause: o.cause.clone(),
        })
    }

    /// Records a failed connect; returns the wait before the next attempt.
    fn failed(&self, e: &Error) -> Duration {
        let mut outage = self.outage();
        let attempts = outage.as_ref().map_or(0, |o| o.attempts) + 1;
        let wait = crate::backoff::reconnect(attempts);
        *outage = Some(Outage {
            attempts,
            next_attempt: Instant::now() + wait,
            cause: crate::error::cause(e),
        });
        wait
    }
}

/// How [`ServerLocker::wait_on_server`] ended.
enum WaitedHere {
    Got(ServerGuard),
    TimedOut,
    /// Try again from the start.
    Again,
    /// Wait as without wait sessions.
    Fallback,
}

/// Forgets a key's waiter entry when a wait ends, if no other waiter is left.
struct ForgetWaiter<'a>(&'a Waiters, KeyId);

impl Drop for ForgetWaiter<'_> {
    fn drop(&mut self) {
        self.0.forget(self.1);
    }
}

/// A key reserved in the table while its try-lock is in flight; dropping it
/// without a grant frees the key for other tasks.
struct Reservation {
    locker: ServerLocker,
    id: KeyId,
    armed: bool,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.armed {
            self.locker.inner.table.abandon(self.id);
        }
    }
}

/// A lock held on one server. Dropping it releases the lock (the unlock
/// is sent in the background). The public face is [`crate::LockGuard`].
#[must_use = "the lock is released when the guard is dropped"]
///
/// Kept small (a [`crate::LockGuard`] is one, inline): the session holding
/// the lock and the grant's fencing token are read from the key's entry in
/// the in-process table, which lives as long as its guards do.
pub(crate) struct ServerGuard {
    locker: ServerLocker,
    key: LockKey,
    mode: Mode,
    /// Taken in wait mode: its release wakes waiters in other processes.
    notify: bool,
    done: bool,
    /// Granted to a wait-mode call that found the key busy first (for the
    /// metrics and the acquire span).
    pub(crate) waited: bool,
}

impl std::fmt::Debug for ServerGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerGuard")
            .field("pool", &self.locker.name())
            .field("key", &self.key)
            .field("mode", &self.mode)
            .field("held", &self.is_held())
            .finish()
    }
}

impl ServerGuard {
    /// The key held.
    pub(crate) fn key(&self) -> &LockKey {
        &self.key
    }

    /// The mode held.
    pub(crate) fn mode(&self) -> Mode {
        self.mode
    }

    /// The session holding the lock and the grant's fencing token, from the
    /// key's entry in the table (`None` only once this guard let go).
    fn held(&self) -> Option<(Arc<Session>, Option<i64>)> {
        self.locker.inner.table.holder(self.key.id())
    }

    /// The server's process id of the session holding the lock (as in
    /// `pg_locks.pid`).
    pub(crate) fn backend_pid(&self) -> i32 {
        self.held().map_or(0, |(s, _)| s.backend_pid)
    }

    /// False once the session holding the lock is known to have ended: the
    /// server has then released the lock, and another process may hold it.
    pub(crate) fn is_held(&self) -> bool {
        self.held().is_some_and(|(s, _)| !s.is_dead())
    }

    /// The lock as [`current_lock`](crate::current_lock) shows it.
    pub(crate) fn state(&self) -> crate::LockState {
        use crate::server::loss::Holder;
        let (holder, token) = match self.held() {
            Some((session, token)) => (Holder::Session(session), token),
            None => (Holder::Released, None),
        };
        crate::LockState::new(self.key.clone(), holder, token)
    }

    /// The grant's fencing token (entries with fencing only).
    pub(crate) fn fencing_token(&self) -> Option<i64> {
        self.held().and_then(|(_, token)| token)
    }

    /// The session holding the lock.
    pub(crate) fn session(&self) -> Option<Arc<Session>> {
        self.held().map(|(s, _)| s)
    }

    /// Releases the lock and waits for the server to confirm.
    ///
    /// [`Error::LockLost`] if the session had ended (the server released the
    /// lock already). If the server says the session did not hold the lock,
    /// the session's lock state can't be trusted: it is closed (freeing
    /// whatever it held) and this is [`Error::LockLost`] too.
    pub(crate) async fn release(mut self) -> Result<(), Error> {
        self.done = true;
        // Queued under the table's lock, as in drop.
        let (id, mode, notify) = (self.key.id(), self.mode, self.notify);
        let mut answer = None;
        let released = self.locker.inner.table.release_with(id, |session| {
            answer = Some(session.unlock(id, mode, notify));
        });
        let (Some(_session), Some(answer)) = (released, answer) else {
            // Other holders of a shared lock in this process keep it.
            return if self.is_held() {
                Ok(())
            } else {
                Err(self.lost_error())
            };
        };
        // The dispatcher logs and closes the session on a false or failed
        // unlock; here it only decides the answer.
        match answer.await {
            Ok(Answer::Unlocked(true)) => {
                tracing::debug!(pool = %self.locker.name(), key = %self.key.name(), mode = self.mode.as_str(), "advisory-locked: released");
                Ok(())
            }
            Ok(_) | Err(_) => Err(self.lost_error()),
        }
    }

    fn lost_error(&self) -> Error {
        Error::LockLost {
            key: self.key.name().to_owned(),
        }
    }
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // The unlock is queued under the table's lock (see release_with).
        let (id, mode, notify) = (self.key.id(), self.mode, self.notify);
        let Some(session) = self
            .locker
            .inner
            .table
            .release_with(id, |session| session.unlock_later(id, mode, notify))
        else {
            return;
        };
        if session.is_dead() {
            // The server released everything the session held.
            tracing::debug!(pool = %self.locker.name(), key = %self.key.name(), "advisory-locked: released (session already ended)");
            return;
        }
        // Queued, not awaited: the dispatcher sends it at once (or with the
        // next statement) and checks the answer. A new lock of this key from
        // this process stays on this session until the unlock is answered
        // (see crate::local::lanes), so it can't overtake it on another session.
        tracing::debug!(pool = %self.locker.name(), key = %self.key.name(), mode = self.mode.as_str(), "advisory-locked: released");
    }
}
