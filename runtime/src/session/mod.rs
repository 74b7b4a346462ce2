//! One lock session: a long-lived connection that serves many locks.
//!
//! A session is a connection plus its dispatcher ([`crate::session::dispatch`]),
//! which coalesces the requests of many tasks into few statements. The
//! connection task reports the session's death through a watch channel, so
//! holders can learn that their locks are gone.

#[cfg(feature = "bench-internals")]
pub(crate) mod bare;
pub(crate) mod dispatch;
pub(crate) mod proxy;
pub(crate) mod reply;
pub(crate) mod trust;
pub(crate) mod wakeup;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch, Notify};
use tokio_postgres::{AsyncMessage, Connection};

use crate::config::Settings;
use crate::pg::connect::{drive, Canceller, Connected};
use crate::pg::wire::{Transport, Wire};
use crate::session::dispatch::{Kind, Op, Reply, RequestError, Statements};
use crate::session::wakeup::Waiters;

use crate::pg::sql;
use crate::stats::Counters;
use crate::{Error, KeyId, Mode};

static NEXT_SESSION_ID: AtomicU64 = AtomicU64::new(1);

/// How often a new session checks, one round trip each, that its server
/// process has not changed (a transaction-pooling proxy; see `set_up`).
/// Connect time only: about a millisecond in all on loopback.
const PID_CHECKS: usize = 10;

/// What a session is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// A lock session that also listens for releases that wake waiters
    /// (see [`crate::session::wakeup`]): an entry's first slot.
    Listening,
    /// A lock session: try-locks and unlocks of many keys, pipelined.
    Lock,
    /// A wait session (see [`crate::server::waiting`]): one blocking wait at a time,
    /// then the lock it got.
    Wait,
}

/// A wait session's state: what it may be lent for (see [`crate::server::waiting`]).
const IDLE: u8 = 0;
/// A blocking wait is queued or on the wire.
const WAITING: u8 = 1;
/// It holds the lock its wait got, until the unlock is queued.
const HOLDING: u8 = 2;

/// What the session handle and its dispatcher share.
pub(crate) struct Shared {
    /// A number for logs, unique in this process.
    pub(crate) id: u64,
    /// Becomes true (or its sender is dropped) when the connection ends.
    dead: watch::Receiver<bool>,
    /// Set by [`Shared::kill`]: dead from that moment, before the aborted
    /// connection task has actually gone.
    killed: AtomicBool,
    /// Set when the session's task ends, however it ends (see [`Ended`]):
    /// what [`Shared::is_dead`] reads on every lock, one atomic load where
    /// the watch channel would take its lock.
    ended: AtomicBool,
    /// Wakes the session's task to close the connection (with `killed`
    /// set). A waker, not a `Notify`: the task checks it at every wake-up,
    /// and registering a waker is far cheaper than a `Notify` waiter.
    killer: futures_util::task::AtomicWaker,
    pub(crate) counters: Arc<Counters>,
    /// A wait session's state ([`IDLE`], [`WAITING`], [`HOLDING`]); always
    /// idle on a lock session.
    lending: AtomicU8,
    /// The table's unlocks answered so far, in queue order (see
    /// [`crate::local::lanes`]).
    unlocks_done: AtomicU64,
    /// Wakes callers waiting for an unlock to be answered.
    unlock_progress: Notify,
    /// Counts the lends of a wait session (see [`Session::cancel_wait`]).
    lends: AtomicU64,
    /// Cancel requests being sent: no new lend until they are done, so that
    /// a cancel meant for one wait can't hit the next.
    cancels: AtomicU32,
}

impl Shared {
    /// True once the connection has ended (or is known to be unusable).
    pub(crate) fn is_dead(&self) -> bool {
        self.killed.load(Ordering::Acquire) || self.ended.load(Ordering::Acquire)
    }

    /// Closes the connection at once: the server then frees every lock the
    /// session held. Used when the session's lock state can't be trusted.
    pub(crate) fn kill(&self) {
        self.killed.store(true, Ordering::Release);
        // If the task is busy, it sees `killed` at its next turn.
        self.killer.wake();
        self.unlock_progress.notify_waiters();
    }

    /// Ready if [`Shared::kill`] was called, without registering a waker.
    pub(crate) fn killed_now(&self) -> std::task::Poll<()> {
        if self.killed.load(Ordering::Acquire) {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    }

    /// Ready once [`Shared::kill`] was called; registers the session task
    /// to be woken by it.
    pub(crate) fn poll_killed(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        self.killer.register(cx.waker());
        self.killed_now()
    }

    /// The dispatcher has the answers to `n` more of the table's unlocks.
    pub(crate) fn unlocks_answered(&self, n: u64) {
        self.unlocks_done.fetch_add(n, Ordering::Release);
        self.unlock_progress.notify_waiters();
    }

    /// Lends an idle wait session for one blocking wait; false if it is
    /// waiting or holding a lock.
    pub(crate) fn lend(&self) -> bool {
        if self
            .lending
            .compare_exchange(IDLE, WAITING, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return false;
        }
        self.lends.fetch_add(1, Ordering::SeqCst);
        if self.cancels.load(Ordering::SeqCst) > 0 {
            // A cancel request for the last wait may still be on its way.
            self.lending.store(IDLE, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// The blocking wait was granted: the session holds that lock.
    pub(crate) fn holding(&self) {
        self.lending.store(HOLDING, Ordering::Release);
    }

    /// Nothing is held or awaited on this session any more, except unlocks
    /// already queued (which any later request follows).
    pub(crate) fn unlocked(&self) {
        self.lending.store(IDLE, Ordering::Release);
    }
}

pub(crate) struct Session {
    shared: Arc<Shared>,
    /// The server's process id for this session (`pg_backend_pid()`).
    pub(crate) backend_pid: i32,
    /// Cancels the statement running on the session (a blocked wait).
    pub(crate) canceller: Canceller,
    ops: mpsc::UnboundedSender<Op>,
    /// Locks of this process on this session: held, or asked for and not
    /// yet answered (see [`crate::local::lanes`]).
    load: AtomicUsize,
    /// The most `load` has been (see [`crate::local::lanes::Lane::peak`]).
    peak: AtomicUsize,
    /// The table's unlocks queued so far; the n-th is answered once
    /// `Shared::unlocks_done` reaches n.
    unlocks_queued: AtomicU64,
    role: Role,
    /// Set once the session was chosen for retirement (see
    /// [`Session::retirable`]): it is tried once.
    retiring: AtomicBool,
}

/// A session whose load once reached this many locks is replaced when it is
/// empty again: PostgreSQL's backend-local lock table never shrinks, and
/// every statement's end walks it (see [`crate::local::lanes`]).
pub(crate) const RETIRE_PEAK: usize = 1024;

impl Session {
    /// Connects, prepares the lock statements and refuses standby servers,
    /// all within the configured connect timeout.
    pub(crate) async fn connect(
        settings: &Settings,
        counters: &Arc<Counters>,
        waiters: &Arc<Waiters>,
    ) -> Result<Arc<Session>, Error> {
        Self::connect_as(Role::Listening, settings, counters, waiters).await
    }

    /// [`Session::connect`] for a session of `role`: the connection
    /// ([`crate::pg::connect`]: the first host that is a primary), the
    /// set-up through tokio-postgres, the hand-over of the socket to the
    /// dispatcher, and the dispatcher's task.
    pub(crate) async fn connect_as(
        role: Role,
        settings: &Settings,
        counters: &Arc<Counters>,
        waiters: &Arc<Waiters>,
    ) -> Result<Arc<Session>, Error> {
        Self::connect_checked(role, settings, counters, waiters, false).await
    }

    /// [`Session::connect_as`]; with `verify`, the fresh session and one
    /// probe connection to its host also run the session-scope exclusion
    /// self-test ([`crate::session::trust`]) before the session serves: for
    /// a session that replaces one that died (the server may not be the one
    /// checked at configuration). Within the connect timeout too.
    pub(crate) async fn connect_checked(
        role: Role,
        settings: &Settings,
        counters: &Arc<Counters>,
        waiters: &Arc<Waiters>,
        verify: bool,
    ) -> Result<Arc<Session>, Error> {
        let opened = open(role, settings, waiters, verify).await?;
        tracing::debug!(pool = %settings.name, session = opened.id, backend_pid = opened.backend_pid, role = ?role, "advisory-locked: lock session connected");
        counters.session_opened();
        Ok(Self::start(opened, settings, counters, waiters))
    }

    /// Starts the dispatcher's task on an opened session.
    fn start(
        opened: Opened,
        settings: &Settings,
        counters: &Arc<Counters>,
        waiters: &Arc<Waiters>,
    ) -> Arc<Session> {
        let Opened {
            id,
            role,
            statements,
            wire,
            backend_pid,
            canceller,
        } = opened;
        let (dead_tx, dead) = watch::channel(false);
        let shared = Arc::new(Shared {
            id,
            dead,
            killed: AtomicBool::new(false),
            ended: AtomicBool::new(false),
            killer: futures_util::task::AtomicWaker::new(),
            counters: counters.clone(),
            lending: AtomicU8::new(IDLE),
            lends: AtomicU64::new(0),
            cancels: AtomicU32::new(0),
            unlocks_done: AtomicU64::new(0),
            unlock_progress: Notify::new(),
        });
        let (ops, rx) = mpsc::unbounded_channel();
        let session = crate::session::dispatch::Dispatcher {
            wire,
            statements,
            ops: rx,
            weak: ops.downgrade(),
            shared: shared.clone(),
            waiters: waiters.clone(),
            liveness: crate::session::dispatch::Liveness::within(settings.loss_detection),
        };
        let pool = settings.name.clone();
        // One task drives both the dispatcher and the connection: a request
        // goes from its caller to the socket, and its answer back, with no
        // other task in between.
        let ended = Ended(shared.clone());
        tokio::spawn(async move {
            // Marks the session ended when this future is dropped: at its
            // end, or if the task is aborted or panics.
            let ended = ended;
            match session.run().await {
                Ok(()) => {
                    tracing::debug!(pool = %pool, session = id, "advisory-locked: lock session closed")
                }
                Err(e) => {
                    tracing::warn!(pool = %pool, session = id, error = %crate::error::cause(&*e), "advisory-locked: lock session ended")
                }
            }
            drop(ended);
            let _ = dead_tx.send(true);
        });
        Arc::new(Session {
            shared,
            backend_pid,
            canceller,
            ops,
            load: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            unlocks_queued: AtomicU64::new(0),
            role,
            retiring: AtomicBool::new(false),
        })
    }

    /// A number for logs, unique in this process.
    pub(crate) fn id(&self) -> u64 {
        self.shared.id
    }

    /// True once the connection has ended (or is known to be unusable).
    pub(crate) fn is_dead(&self) -> bool {
        self.shared.is_dead() || self.ops.is_closed()
    }

    /// Resolves when the connection ends.
    pub(crate) fn closed(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut dead = self.shared.dead.clone();
        async move {
            // An error means the connection task is gone: dead as well.
            let _ = dead.wait_for(|d| *d).await;
        }
    }

    /// `pg_try_advisory_lock[_shared]`. The request is queued at once; if
    /// the returned future is dropped before the answer, a grant is given
    /// back (see [`crate::session::dispatch::Grant`]).
    /// With `fenced`, the grant carries the key's next fencing token (see
    /// [`crate::server::fence`]).
    pub(crate) fn try_lock(
        &self,
        key: KeyId,
        mode: Mode,
        fenced: bool,
    ) -> impl Future<Output = Reply> + Send + 'static {
        let kind = if fenced { Kind::FencedLock } else { Kind::Lock };
        self.request(kind, key, mode)
    }

    /// Raises the fencing token of a key this session holds to at least
    /// `floor`; answers [`Answer::Raised`](crate::session::dispatch::Answer::Raised).
    pub(crate) fn raise(
        &self,
        key: KeyId,
        floor: i64,
    ) -> impl Future<Output = Reply> + Send + 'static {
        self.request(Kind::Raise(floor), key, Mode::Exclusive)
    }

    /// `pg_advisory_unlock[_shared]` of a lock the in-process table held,
    /// answered. Called under the table's lock (see
    /// [`crate::local::table::Table::release_with`]); the number of this unlock is
    /// then [`Session::unlocks_queued`].
    pub(crate) fn unlock(
        &self,
        key: KeyId,
        mode: Mode,
        notify: bool,
    ) -> impl Future<Output = Reply> + Send + 'static {
        let (tx, rx) = reply::channel();
        let queued = self.queue_unlock(Op::new(unlock_kind(notify), key, mode, Some(tx)));
        Self::answer(queued, rx)
    }

    /// `pg_advisory_unlock[_shared]` without waiting: the dispatcher checks
    /// the answer (and closes the session if the lock was not held). As
    /// [`Session::unlock`] otherwise.
    pub(crate) fn unlock_later(&self, key: KeyId, mode: Mode, notify: bool) {
        self.queue_unlock(Op::new(unlock_kind(notify), key, mode, None));
    }

    fn queue_unlock(&self, op: Op) -> bool {
        self.unlocks_queued.fetch_add(1, Ordering::Relaxed);
        self.release_load();
        let queued = self.ops.send(op.tracked()).is_ok();
        // A wait session holds one lock at most: queued, it is given back.
        self.shared.unlocked();
        queued
    }

    /// How many of the table's unlocks have been queued on this session.
    pub(crate) fn unlocks_queued(&self) -> u64 {
        self.unlocks_queued.load(Ordering::Relaxed)
    }

    /// True while the table's unlock number `n` is queued or on the wire
    /// (a lock of that key on another session could overtake it).
    pub(crate) fn unlock_pending(&self, n: u64) -> bool {
        !self.is_dead() && self.shared.unlocks_done.load(Ordering::Acquire) < n
    }

    /// Resolves once the table's unlock number `n` is answered, or the
    /// session has ended.
    pub(crate) async fn unlock_answered(&self, n: u64) {
        let closed = self.closed();
        tokio::pin!(closed);
        loop {
            let progress = self.shared.unlock_progress.notified();
            tokio::pin!(progress);
            progress.as_mut().enable();
            if !self.unlock_pending(n) {
                return;
            }
            tokio::select! {
                () = progress => {}
                () = &mut closed => return,
            }
        }
    }

    /// This process's locks on this session, held or asked for.
    pub(crate) fn load(&self) -> usize {
        self.load.load(Ordering::Relaxed)
    }

    /// True, once, for a live lock session that once held at least
    /// [`RETIRE_PEAK`] locks and now holds none, with every unlock
    /// answered: time to replace it with a fresh one.
    pub(crate) fn retirable(&self) -> bool {
        self.role != Role::Wait
            && self.load() == 0
            && self.peak.load(Ordering::Relaxed) >= RETIRE_PEAK
            && !self.unlock_pending(self.unlocks_queued())
            && !self.is_dead()
            && !self.retiring.swap(true, Ordering::Relaxed)
    }

    /// True once the session was chosen for retirement: new locks go
    /// elsewhere (it is no key's home any more).
    pub(crate) fn is_retired(&self) -> bool {
        self.retiring.load(Ordering::Relaxed)
    }

    /// Resolves once this process holds nothing on the session and every
    /// unlock sent there is answered, or the session has ended.
    pub(crate) async fn until_empty(&self) {
        loop {
            // Created before the check: an answer in between still wakes it.
            let progress = self.shared.unlock_progress.notified();
            let empty = self.load() == 0 && !self.unlock_pending(self.unlocks_queued());
            if empty || self.is_dead() {
                return;
            }
            tokio::select! {
                () = progress => {}
                () = self.closed() => return,
            }
        }
    }

    /// The session's role.
    pub(crate) fn role(&self) -> Role {
        self.role
    }

    /// The most [`Session::load`] has been (at least the load now).
    pub(crate) fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed).max(self.load())
    }

    /// A try-lock is about to be sent here: counted in [`Session::load`]
    /// until it is answered busy (or fails), or, if granted, until its
    /// unlock is queued. The returned ticket uncounts it when dropped
    /// unless [`LoadTicket::granted`] is called.
    pub(crate) fn routed(&self) -> LoadTicket<'_> {
        let n = self.load.fetch_add(1, Ordering::Relaxed) + 1;
        if n > self.peak.load(Ordering::Relaxed) {
            self.peak.fetch_max(n, Ordering::Relaxed);
        }
        LoadTicket {
            session: self,
            counted: true,
        }
    }

    fn release_load(&self) {
        let _ = self
            .load
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// True for a wait session (see [`crate::server::waiting`]): a try-lock never
    /// goes there, only a wait.
    pub(crate) fn is_wait(&self) -> bool {
        self.role == Role::Wait
    }

    /// Lends this wait session for one blocking wait (see [`Shared::lend`]).
    pub(crate) fn lend(&self) -> bool {
        !self.is_dead() && self.shared.lend()
    }

    /// Which lend of this wait session the current one is (read right after
    /// [`Session::lend`]).
    pub(crate) fn lend_number(&self) -> u64 {
        self.shared.lends.load(Ordering::SeqCst)
    }

    /// Cancels the blocking wait of lend `lend` if it is still waiting on
    /// the server (a CancelRequest with the session's backend key data);
    /// returns false if it is not (answered, or the session lent again).
    /// Until the cancel request is done, the session is lent to no other
    /// wait: a cancel that reaches the server late can then only hit this
    /// wait, the unlock that gives back its grant (which closes the session
    /// if it fails), or nothing (PostgreSQL ignores a cancel while idle).
    pub(crate) fn cancel_wait(self: &Arc<Self>, lend: u64, settings: &Settings) -> bool {
        let shared = &self.shared;
        shared.cancels.fetch_add(1, Ordering::SeqCst);
        let still = shared.lending.load(Ordering::SeqCst) == WAITING
            && shared.lends.load(Ordering::SeqCst) == lend
            && !self.is_dead();
        let runtime = tokio::runtime::Handle::try_current();
        let (true, Ok(runtime)) = (still, runtime) else {
            shared.cancels.fetch_sub(1, Ordering::SeqCst);
            return false;
        };
        let (session, settings) = (self.clone(), settings.clone());
        runtime.spawn(async move {
            tracing::debug!(pool = %settings.name, session = session.id(), "advisory-locked: caller gone; cancelling its wait on the server");
            if let Err(e) = session.canceller.cancel(&settings).await {
                tracing::debug!(pool = %settings.name, session = session.id(), error = %e, "advisory-locked: cancel request failed; the wait ends with its lock_timeout");
            }
            session.shared.cancels.fetch_sub(1, Ordering::SeqCst);
        });
        true
    }

    /// Gives back a lent wait session whose wait was never queued.
    pub(crate) fn unlend(&self) {
        self.shared.unlocked();
    }

    /// `pg_advisory_lock[_shared]` with `lock_timeout` = `millis`, on a wait
    /// session lent for it ([`Session::lend`]). Granted, or an error
    /// (SQLSTATE 55P03 when the time is up). If the returned future is
    /// dropped before the answer, a grant is given back.
    pub(crate) fn wait(
        &self,
        key: KeyId,
        mode: Mode,
        millis: i64,
    ) -> impl Future<Output = Reply> + Send + 'static {
        self.request(Kind::Wait(millis), key, mode)
    }

    fn request(
        &self,
        kind: Kind,
        key: KeyId,
        mode: Mode,
    ) -> impl Future<Output = Reply> + Send + 'static {
        let (tx, rx) = reply::channel();
        let queued = self.ops.send(Op::new(kind, key, mode, Some(tx))).is_ok();
        Self::answer(queued, rx)
    }

    async fn answer(queued: bool, rx: reply::Receiver<Reply>) -> Reply {
        if !queued {
            return Err(RequestError::Ended);
        }
        rx.await.unwrap_or(Err(RequestError::Ended))
    }

    /// See [`Shared::kill`].
    pub(crate) fn kill(&self) {
        self.shared.kill();
    }
}

/// Marks a session ended when dropped (see [`Shared::is_dead`]).
struct Ended(Arc<Shared>);

impl Drop for Ended {
    fn drop(&mut self) {
        self.0.ended.store(true, Ordering::Release);
        self.0.counters.session_ended();
    }
}

/// A try-lock counted in its session's [`Session::load`] (see
/// [`Session::routed`]).
pub(crate) struct LoadTicket<'a> {
    session: &'a Session,
    counted: bool,
}

impl LoadTicket<'_> {
    /// Granted: the lock stays counted until its unlock is queued.
    pub(crate) fn granted(mut self) {
        self.counted = false;
    }
}

impl Drop for LoadTicket<'_> {
    fn drop(&mut self) {
        if self.counted {
            self.session.release_load();
        }
    }
}

/// A session's connection after its set-up, before its task starts.
pub(crate) struct Opened {
    id: u64,
    role: Role,
    statements: Statements,
    wire: Wire<Transport>,
    backend_pid: i32,
    canceller: Canceller,
}

/// A session's connection ([`crate::pg::connect`]: the first host that
/// is a primary), its set-up through tokio-postgres, with `verify` the
/// exclusion self-test (see [`Session::connect_checked`]), and the
/// hand-over of the socket; all within the configured connect timeout.
pub(crate) async fn open(
    role: Role,
    settings: &Settings,
    waiters: &Arc<Waiters>,
    verify: bool,
) -> Result<Opened, Error> {
    let mut connected = crate::pg::connect::connect(settings).await?;
    let target = format!(
        "{}/{}",
        connected.target.describe(),
        settings
            .pg
            .get_dbname()
            .or(settings.pg.get_user())
            .unwrap_or("postgres")
    );
    let after = settings.connect_timeout;
    let id = NEXT_SESSION_ID.fetch_add(1, Ordering::Relaxed);
    let longest = dispatch::Liveness::within(settings.loss_detection).longest_wait();
    let standing = (role == Role::Wait).then(|| dispatch::wait_millis(longest));
    let statements = Statements::new(id, settings.fencing, standing);
    let setting_up = async {
        let backend_pid = set_up(&mut connected, settings, waiters, &statements, &target).await?;
        if verify {
            let test = trust::with_probe(settings, &connected.client, &connected.target);
            drive(
                &mut connected.connection,
                &mut |ch, p| waiters.notified(ch, p),
                test,
            )
            .await
            .map_err(|e| setup_error(settings, &target, e))??;
        }
        let canceller = Canceller {
            token: connected.client.cancel_token(),
            target: connected.target.clone(),
        };
        let wire = hand_over(connected, waiters, role, &target).await?;
        Ok::<_, Error>((backend_pid, wire, canceller))
    };
    // Boxed: the set-up's futures (tokio-postgres' statements, the probe
    // of a pooler) are large, and every future that opens a session (a
    // `connect`, an `install`, a reconnect task) would carry them inline.
    let setting_up = Box::pin(setting_up);
    let (backend_pid, wire, canceller) = match tokio::time::timeout(after, setting_up).await {
        Ok(result) => result?,
        Err(_) => return Err(Error::ConnectTimeout { target, after }),
    };
    Ok(Opened {
        id,
        role,
        statements,
        wire,
        backend_pid,
        canceller,
    })
}

/// An error of the set-up: a statement that vanished or was there already
/// means a pooler moved the connection to another server session, or
/// handed over one that served another client (see
/// [`crate::session::proxy`]).
fn setup_error(settings: &Settings, target: &str, source: tokio_postgres::Error) -> Error {
    use tokio_postgres::error::SqlState;
    if source.code() == Some(&SqlState::INVALID_SQL_STATEMENT_NAME)
        || source.code() == Some(&SqlState::DUPLICATE_PSTATEMENT)
    {
        tracing::error!(pool = %settings.name, target = %target, error = %crate::error::cause(&source), "advisory-locked: a prepared statement vanished, or was there already, while the session was set up: a transaction-pooling proxy; refused");
        return Error::TransactionPooler {
            target: target.to_owned(),
        };
    }
    Error::Connect {
        target: target.to_owned(),
        source: Box::new(source),
    }
}

/// The set-up, all pipelined, with the connection driven alongside
/// (`join!` polls in order, so the requests go out in this order); then
/// [`same_backend`]. Returns the session's server process id.
async fn set_up(
    c: &mut Connected,
    settings: &Settings,
    waiters: &Waiters,
    statements: &Statements,
    target: &str,
) -> Result<i32, Error> {
    let err = |e| setup_error(settings, target, e);
    let mut prepare = statements.prepare_sql();
    prepare.extend(statements.standing_sql());
    let client = &c.client;
    let work = async {
        tokio::join!(
            client.batch_execute(sql::NO_STATEMENT_TIMEOUT),
            client.query_one(sql::BACKEND_PID, &[]),
            futures_util::future::try_join_all(prepare.iter().map(|sql| client.batch_execute(sql))),
            client.batch_execute(sql::SESSION_SETUP),
        )
    };
    let (no_timeout, pid, prepared, setup) = drive(
        &mut c.connection,
        &mut |ch, p| waiters.notified(ch, p),
        work,
    )
    .await
    .map_err(err)?;
    no_timeout.map_err(err)?;
    let backend_pid: i32 = pid.map_err(err)?.get(0);
    prepared.map_err(err)?;
    setup.map_err(err)?;
    same_backend(c, settings, waiters, backend_pid, target).await?;
    Ok(backend_pid)
}

/// Still the same server session after the set-up's statements, and at
/// each of several more, each a transaction of its own? A
/// transaction-pooling proxy moves a busy client between backends (see
/// [`crate::session::proxy`]; this catches it when the pooler is busy,
/// where the probe connections may not). Each check is one more chance for
/// a move to show: with one check, a CI run saw a busy pgbouncer accepted
/// in 1 of 10 configurations.
async fn same_backend(
    c: &mut Connected,
    settings: &Settings,
    waiters: &Waiters,
    backend_pid: i32,
    target: &str,
) -> Result<(), Error> {
    let err = |e| setup_error(settings, target, e);
    let pid = backend_pid.to_string();
    for _ in 0..PID_CHECKS {
        let work = c.client.simple_query(sql::BACKEND_PID);
        let again = drive(
            &mut c.connection,
            &mut |ch, p| waiters.notified(ch, p),
            work,
        )
        .await
        .map_err(err)?
        .map_err(err)?;
        let same = again.iter().any(|m| {
            matches!(m, tokio_postgres::SimpleQueryMessage::Row(row) if row.get(0) == Some(pid.as_str()))
        });
        if !same {
            tracing::error!(pool = %settings.name, target = %target, "advisory-locked: the lock session's server process changed between statements: a transaction-pooling proxy; refused");
            return Err(Error::TransactionPooler {
                target: target.to_owned(),
            });
        }
    }
    Ok(())
}

/// Takes the socket back from tokio-postgres and checks that the stream is
/// where the dispatcher expects it: whatever the driver had read or could
/// read now is handled first (notifications, notices), then a Sync must be
/// answered by exactly one ReadyForQuery, idle, with nothing before it but
/// asynchronous messages. A listening session then `LISTEN`s, on the wire.
async fn hand_over(
    mut c: Connected,
    waiters: &Waiters,
    role: Role,
    target: &str,
) -> Result<Wire<Transport>, Error> {
    let unavailable = |cause: String| Error::Unavailable {
        target: target.to_owned(),
        retry_in: std::time::Duration::ZERO,
        cause,
    };
    drain(&mut c.connection, waiters).map_err(|e| unavailable(crate::error::cause(&e)))?;
    // Let go without being polled again, so that the driver sends nothing,
    // not even its goodbye.
    drop(c.client);
    drop(c.connection);
    let Some(transport) = c.handover.take() else {
        return Err(unavailable(
            "the lock session's socket could not be taken back after its set-up".to_owned(),
        ));
    };
    let mut wire = Wire::new(transport);
    let mut on_notify = |ch: &str, p: &str| waiters.notified(ch, p);
    wire.sync_idle(&mut on_notify).await.map_err(|e| {
        unavailable(format!(
            "the stream was not idle at the hand-over: {}",
            crate::error::cause(&e)
        ))
    })?;
    if role == Role::Listening {
        // Listen for releases that wake waiters (see [`crate::session::wakeup`]).
        wire.simple(sql::LISTEN)
            .map_err(|e| unavailable(crate::error::cause(&e)))?;
        wire.answer()
            .await
            .map_err(|e| unavailable(format!("LISTEN failed: {}", crate::error::cause(&*e))))?;
    }
    Ok(wire)
}

/// Handles every message the driver has buffered or can read without
/// waiting; an error if the connection ended.
fn drain<S, T>(
    connection: &mut Connection<S, T>,
    waiters: &Waiters,
) -> Result<(), tokio_postgres::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    let waker = futures_util::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    for _ in 0..1024 {
        match connection.poll_message(&mut cx) {
            std::task::Poll::Ready(Some(Ok(AsyncMessage::Notification(n)))) => {
                waiters.notified(n.channel(), n.payload())
            }
            std::task::Poll::Ready(Some(Ok(_))) => {}
            std::task::Poll::Ready(Some(Err(e))) => return Err(e),
            std::task::Poll::Ready(None) => break,
            std::task::Poll::Pending => return Ok(()),
        }
    }
    Ok(())
}

fn unlock_kind(notify: bool) -> Kind {
    if notify {
        Kind::UnlockNotify
    } else {
        Kind::Unlock
    }
}
