//! The dispatcher of one lock session: it turns the lock and unlock
//! requests of many tasks into as few statements as possible.
//!
//! Requests queue on a channel. The dispatcher sends what is queued at once:
//! one request as its own prepared statement, several as one statement that
//! takes or releases all of them in order (`unnest` over arrays: "group
//! commit" for locks). While up to [`MAX_IN_FLIGHT`] statements are on the
//! wire, new requests gather for the next one, so under load each round trip
//! carries many requests; when idle, a request goes out at once.
//!
//! Unlocks need no answer on the caller's path: the dispatcher checks the
//! answer itself, and a session whose lock state can't be trusted (an unlock
//! the server says was not held, a failed statement that carried several
//! requests or an unlock) is closed, which makes the server free everything
//! it held. A grant whose caller is gone is unlocked by the dispatcher, and
//! so is a single try-lock that failed (it may have been granted first).
//!
//! A wait session (see [`crate::server::waiting`]) also sends blocking waits
//! ([`Kind::Wait`]), each a statement of its own, bounded on the server by
//! `lock_timeout`.
//!
//! The same task drives the connection and the session's heartbeat (see
//! [`Liveness`]).

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::error::QueryError;
use crate::pg::sql::{Action, Form, Request, Statement, STATEMENTS};
use crate::pg::wire::{Param, Transport, Values, Wire};

use crate::session::reply;
use crate::session::wakeup::Waiters;
use crate::session::Shared;
use crate::stats::Counters;
use crate::{KeyId, Mode};

/// Statements on the wire at once, per session.
const MAX_IN_FLIGHT: usize = 2;
/// Requests in one statement at most.
const MAX_BATCH: usize = 512;
/// The largest emptied batch kept for reuse (see `Flight::recycle`).
const SPARE_CAPACITY: usize = 64;

/// What a request may fail with.
#[derive(Debug, Clone)]
pub(crate) enum RequestError {
    /// The statement failed on the server.
    Db(Arc<QueryError>),
    /// The session ended before the request was answered.
    Ended,
}

/// The server's answer to one request.
pub(crate) enum Answer {
    /// A try-lock was granted. Dropping the grant without
    /// [`Grant::keep`] gives the lock back.
    Granted(Grant),
    /// A try-lock found the key held by another session.
    Busy,
    /// An unlock: true if the session held the lock.
    Unlocked(bool),
    /// A fencing token raised to at least the asked floor: its value now
    /// (`None` only if the server answered NULL, which it never does).
    Raised(Option<i64>),
}

pub(crate) type Reply = Result<Answer, RequestError>;

/// A granted lock in transit from the dispatcher to its caller. If the
/// caller is gone by the time it arrives (dropped at any point, even with
/// the answer already in its channel), dropping the grant queues the unlock.
pub(crate) struct Grant {
    undo: Option<Op>,
    ops: mpsc::WeakUnboundedSender<Op>,
    /// The key's fencing token, for a fenced try-lock (see [`crate::server::fence`]).
    pub(crate) token: Option<i64>,
    /// A grant of a blocking wait: its wait session, lendable again once the
    /// grant is given back (see [`crate::server::waiting`]).
    lent: Option<Arc<Shared>>,
    /// A blocking wait's grant that had to wait: the key was held by
    /// another session when the wait arrived.
    pub(crate) blocked: bool,
}

impl Grant {
    /// The caller took the lock: nothing to give back.
    pub(crate) fn keep(mut self) {
        self.undo = None;
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        if let (Some(undo), Some(ops)) = (self.undo.take(), self.ops.upgrade()) {
            tracing::debug!(key = %undo.key, "advisory-locked: caller gone; releasing its grant");
            let _ = ops.send(undo);
            if let Some(shared) = &self.lent {
                // Queued before the session can be lent again.
                shared.unlocked();
            }
        }
        // With no sender left, the session is gone, and so are its locks.
    }
}

/// One request, as the dispatcher queues it.
pub(crate) struct Op {
    req: Request,
    key: KeyId,
    /// For a [`Kind::Raise`]: the floor; for a [`Kind::Wait`]: the
    /// `lock_timeout` in milliseconds.
    floor: i64,
    reply: Option<reply::Sender<Reply>>,
    /// An unlock sent when it is not known whether the lock was granted:
    /// "not held" is no error then.
    tolerant: bool,
    /// An unlock of a lock the in-process table held: counted in
    /// [`Shared::unlocks_done`] once answered (see [`crate::local::lanes`]).
    tracked: bool,
}

/// What a request asks of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Try to take the lock.
    Lock,
    /// Release the lock.
    Unlock,
    /// Release the lock and, if it was held, wake waiters in other
    /// processes (`pg_notify` on [`CHANNEL`](crate::session::wakeup::CHANNEL), in
    /// the same statement), unless the key is held exclusively right after
    /// the unlock (a waiter blocked on the server got it).
    UnlockNotify,
    /// Try to take the lock and, if granted, take the key's next fencing
    /// token in the same statement (see [`crate::server::fence`]).
    FencedLock,
    /// Raise the key's fencing token to at least this floor (a quorum
    /// member that lagged behind; the caller holds the lock).
    Raise(i64),
    /// Wait for the lock on the server (`pg_advisory_lock`), at most this
    /// many milliseconds (`lock_timeout`, set in the same statement). Only
    /// on wait sessions (see [`crate::server::waiting`]): the session is blocked
    /// until the answer.
    Wait(i64),
}

impl Op {
    pub(crate) fn new(
        kind: Kind,
        key: KeyId,
        mode: Mode,
        reply: Option<reply::Sender<Reply>>,
    ) -> Op {
        let (action, floor) = match kind {
            Kind::Lock => (Action::TryLock, 0),
            Kind::Unlock => (Action::Unlock, 0),
            Kind::UnlockNotify => (Action::UnlockNotify, 0),
            Kind::FencedLock => (Action::FencedTryLock, 0),
            Kind::Raise(floor) => (Action::Raise, floor),
            Kind::Wait(millis) => (Action::Wait, millis),
        };
        let req = Request {
            action,
            mode,
            form: Form::of(key),
        };
        Op {
            reply,
            ..Op::of(req, key, floor)
        }
    }

    fn of(req: Request, key: KeyId, floor: i64) -> Op {
        Op {
            req,
            key,
            floor,
            reply: None,
            tolerant: false,
            tracked: false,
        }
    }

    /// Marks an unlock as one the in-process table asked for.
    pub(crate) fn tracked(mut self) -> Op {
        self.tracked = true;
        self
    }

    fn is_unlock(&self) -> bool {
        matches!(
            self.req.action,
            Action::Unlock | Action::UnlockNotify | Action::CheckedUnlock
        )
    }

    fn is_lock(&self) -> bool {
        matches!(
            self.req.action,
            Action::TryLock | Action::FencedTryLock | Action::Wait
        )
    }

    fn is_raise(&self) -> bool {
        self.req.action == Action::Raise
    }

    /// A blocking wait ([`Kind::Wait`]).
    fn is_wait(&self) -> bool {
        self.req.action == Action::Wait
    }

    /// A fenced try-lock: answers `(granted, token)`.
    fn is_fenced(&self) -> bool {
        self.req.action == Action::FencedTryLock
    }

    /// A plain exclusive request on a `bigint` key (see
    /// [`Statement::BatchExclusive`]).
    fn is_exclusive_int8(&self) -> bool {
        self.req.action.is_plain()
            && self.req.mode == Mode::Exclusive
            && self.req.form == Form::Int8
    }

    /// Fenced locks, raises, waits and checked unlocks go out as statements
    /// of their own.
    fn goes_alone(&self) -> bool {
        !self.req.action.is_plain()
    }

    /// The unlock that undoes this (granted) lock request.
    fn undo(&self) -> Op {
        // A lock a blocking wait got was waited for: giving it back wakes
        // waiters in other processes, as its holder's release would have.
        let action = if self.is_wait() {
            Action::UnlockNotify
        } else {
            Action::Unlock
        };
        Op::of(Request { action, ..self.req }, self.key, 0)
    }

    /// The unlock sent after this lock request failed, when it is unknown
    /// whether it was granted first: "not held" is fine. After a blocking
    /// wait (which fails at every `lock_timeout`) it is an unlock only if
    /// the session holds the key (no server warning for each timed-out
    /// wait; see [`Action::CheckedUnlock`]).
    fn undo_unknown(&self) -> Op {
        let mut undo = self.undo();
        if self.is_wait() {
            // The checked unlock (no notification: almost always nothing
            // was held).
            undo.req.action = Action::CheckedUnlock;
        }
        undo.tolerant = true;
        undo
    }
}

/// The statements a session prepares (by name, at its set-up; see
/// [`Statements::prepare_sql`]): the common ones, plus the fenced ones on
/// an entry with fencing tokens, plus the blocking waits on a wait session.
/// Their names are unique to the session in this process (as
/// tokio-postgres's are): a server session that already knows one of them
/// is not fresh, and comes from a pooler.
#[derive(Debug, Clone)]
pub(crate) struct Statements {
    /// Prepared on this session.
    prepared: Vec<Statement>,
    /// Every statement's name, by [`Statement::index`].
    names: Vec<String>,
    /// On a wait session: its own `lock_timeout` in milliseconds (its
    /// longest wait, set at its set-up), which a wait of that length uses
    /// instead of setting its own ([`Action::WaitStanding`]).
    standing: Option<i64>,
}

impl Statements {
    /// The statements of session `id` of this process; `wait`: a wait
    /// session's longest wait, in milliseconds.
    pub(crate) fn new(id: u64, fenced: bool, wait: Option<i64>) -> Statements {
        let prefix = format!("al{}_{id}_", std::process::id());
        Statements {
            prepared: Statement::prepared(fenced, wait.is_some()),
            names: (0..STATEMENTS).map(|i| format!("{prefix}{i}")).collect(),
            standing: wait,
        }
    }

    /// The `SET` of a wait session's own `lock_timeout`, sent with its
    /// set-up (see [`Action::WaitStanding`]).
    pub(crate) fn standing_sql(&self) -> Option<String> {
        self.standing.map(crate::pg::sql::standing_lock_timeout)
    }

    pub(crate) fn name(&self, statement: Statement) -> &str {
        &self.names[statement.index()]
    }

    /// `PREPARE` of every statement of the session, each a simple query
    /// of its own (sent with the set-up, through tokio-postgres). Not one
    /// query for all: a statement prepared by `PREPARE` keeps the whole
    /// query text it came in as its source, and the server reads that
    /// text to the end (and copies its first `track_activity_query_size`
    /// bytes to `pg_stat_activity`) at every Bind and every Execute. With
    /// all statements in one text (13–16 KB), that cost ~0.5 µs of
    /// server CPU per statement (docs/design.md, "Lock sessions and
    /// dispatchers").
    pub(crate) fn prepare_sql(&self) -> Vec<String> {
        self.prepared
            .iter()
            .map(|&statement| format!("PREPARE {} AS {}", self.name(statement), statement.sql()))
            .collect()
    }
}

/// A session's dispatcher, run by the session's one task.
pub(crate) struct Dispatcher {
    pub(crate) wire: Wire<Transport>,
    pub(crate) statements: Statements,
    pub(crate) ops: mpsc::UnboundedReceiver<Op>,
    /// For grants in transit, to queue their undo (see [`Grant`]).
    pub(crate) weak: mpsc::WeakUnboundedSender<Op>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) waiters: Arc<Waiters>,
    /// How often an idle session is checked, and how long an answer may take.
    pub(crate) liveness: Liveness,
}

/// The heartbeat of a session: every `interval`, an idle session sends a
/// trivial statement; a session that leaves any statement unanswered for
/// `timeout` is declared dead and closed. A lost session is so noticed
/// within `interval + timeout` (plus scheduling), even when the network
/// drops traffic without closing the connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Liveness {
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
}

impl Liveness {
    /// Splits a detection bound: checks at a quarter of it, gives an answer
    /// three quarters.
    pub(crate) fn within(bound: Duration) -> Liveness {
        Liveness {
            interval: bound / 4,
            timeout: bound * 3 / 4,
        }
    }

    /// The longest single wait on a wait session: half the answer timeout
    /// (a blocked statement must not be taken for a dead session).
    pub(crate) fn longest_wait(&self) -> Duration {
        (self.timeout / 2).max(Duration::from_millis(1))
    }
}

/// A wait's `lock_timeout`: whole milliseconds, rounded up (its unit).
pub(crate) fn wait_millis(wait: Duration) -> i64 {
    wait.as_micros().div_ceil(1000) as i64
}

/// What a dispatcher keeps between its steps.
struct Flight {
    /// The statements on the wire, answered in order (an empty one is a
    /// heartbeat).
    in_flight: VecDeque<Vec<Op>>,
    /// Unlocks of grants whose callers were gone, for the next statement.
    backlog: Vec<Op>,
    /// Emptied batches, kept for the next statements: a request then costs
    /// no allocation of its own on the dispatcher's side.
    spare: Vec<Vec<Op>>,
    /// Every sender of requests is gone.
    closed: bool,
    /// Liveness: since when a statement has waited for its answer, and
    /// when the server was last heard from.
    waiting_since: Option<Instant>,
    last_heard: Instant,
}

/// What the dispatcher does after a step.
enum Step {
    Go,
    /// End the session (with the connection's error, if it has one).
    End(Result<(), Arc<QueryError>>),
}

impl Flight {
    /// When the timer must fire next: the ping of an idle session
    /// (`interval` after it was last heard from), or the moment a waiting
    /// statement has waited `timeout`. So a lost session is noticed within
    /// `interval + timeout` of the last answer, exactly.
    fn due(&mut self, liveness: Liveness) -> Instant {
        if self.waiting_since.is_none() && !self.in_flight.is_empty() {
            self.waiting_since = Some(Instant::now());
        }
        match self.waiting_since {
            Some(since) => since + liveness.timeout,
            None => self.last_heard + liveness.interval,
        }
    }

    fn can_send(&self) -> bool {
        self.in_flight.len() < MAX_IN_FLIGHT
    }

    /// Queues `batch` on the wire, as many statements as it takes.
    fn send(&mut self, d: &mut Parts<'_>, batch: Vec<Op>) {
        if !batch.iter().any(Op::goes_alone) {
            // The common case, without the Vec of parts.
            send(d.wire, d.statements, d.shared, &batch);
            self.in_flight.push_back(batch);
            return;
        }
        for part in split(batch) {
            send(d.wire, d.statements, d.shared, &part);
            self.in_flight.push_back(part);
        }
    }

    /// An answer (or the connection's end) for the oldest statement.
    fn on_answer(&mut self, d: &mut Parts<'_>, answer: Result<Values, Arc<QueryError>>) -> Step {
        if matches!(&answer, Err(e) if e.ends_session()) {
            // Every request in flight hears of it.
            let e = answer.err();
            for batch in self.in_flight.drain(..) {
                let e = e.clone().unwrap_or_else(|| Arc::new(QueryError::Closed));
                finish(batch, Err(e), d.shared, d.weak, &mut self.backlog);
            }
            return Step::End(e.map_or(Ok(()), Err));
        }
        let Some(batch) = self.in_flight.pop_front() else {
            tracing::error!(session = d.shared.id, "advisory-locked: the server answered a request that was not sent; closing the session");
            d.shared.kill();
            return Step::End(Ok(()));
        };
        self.last_heard = Instant::now();
        self.waiting_since = (!self.in_flight.is_empty()).then_some(self.last_heard);
        let emptied = match answer {
            Ok(values) => {
                let emptied = finish(batch, Ok(&values), d.shared, d.weak, &mut self.backlog);
                d.wire.recycle(values);
                emptied
            }
            Err(e) => finish(batch, Err(e), d.shared, d.weak, &mut self.backlog),
        };
        self.recycle(emptied);
        if d.shared.is_dead() {
            return Step::End(Ok(()));
        }
        Step::Go
    }

    /// A new request (`None`: every sender is gone): it and whatever else
    /// is queued, up to [`MAX_BATCH`], go out together.
    fn on_request(
        &mut self,
        d: &mut Parts<'_>,
        op: Option<Op>,
        ops: &mut mpsc::UnboundedReceiver<Op>,
    ) {
        let Some(op) = op else {
            self.closed = true;
            return;
        };
        let mut batch = if self.backlog.is_empty() {
            self.spare.pop().unwrap_or_default()
        } else {
            std::mem::take(&mut self.backlog)
        };
        batch.push(op);
        while batch.len() < MAX_BATCH {
            match ops.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        self.send(d, batch);
    }

    /// Keeps an emptied batch for reuse: a few, and only small ones (a
    /// burst's large batches are freed).
    fn recycle(&mut self, emptied: Vec<Op>) {
        debug_assert!(emptied.is_empty());
        if emptied.capacity() != 0
            && emptied.capacity() <= SPARE_CAPACITY
            && self.spare.len() < MAX_IN_FLIGHT + 1
        {
            self.spare.push(emptied);
        }
    }

    /// The timer fired at `due`: a statement waited too long (the session
    /// is closed), or the session was idle for `interval` (a heartbeat).
    fn on_timer(&mut self, d: &mut Parts<'_>) -> Step {
        if let Some(since) = self.waiting_since {
            tracing::error!(session = d.shared.id, waited_ms = since.elapsed().as_millis() as u64,
                "advisory-locked: the server has not answered in time; closing the session, its locks are lost");
            d.shared.kill();
            return Step::End(Ok(()));
        }
        // Idle for `interval`: ask the server whether it is there.
        send(d.wire, d.statements, d.shared, &[]);
        self.in_flight.push_back(Vec::new());
        Step::Go
    }
}

/// The parts of a dispatcher that its steps use.
struct Parts<'a> {
    wire: &'a mut Wire<Transport>,
    statements: &'a Statements,
    shared: &'a Arc<Shared>,
    weak: &'a mpsc::WeakUnboundedSender<Op>,
}

impl Dispatcher {
    /// Drives the connection and serves requests until the connection ends,
    /// the session is killed, or every sender of `ops` is gone (the session
    /// was dropped) and nothing is left in flight.
    ///
    /// Returning drops the connection (the server frees the session's
    /// locks) and every request still queued or in flight, whose callers
    /// then hear "ended".
    pub(crate) async fn run(self) -> Result<(), Arc<QueryError>> {
        let Dispatcher {
            mut wire,
            statements,
            mut ops,
            weak,
            shared,
            waiters,
            liveness,
        } = self;
        let mut f = Flight {
            in_flight: VecDeque::with_capacity(MAX_IN_FLIGHT + 1),
            backlog: Vec::new(),
            spare: Vec::new(),
            closed: false,
            waiting_since: None,
            last_heard: Instant::now(),
        };
        // One timer, set to whichever is next (see `Flight::due`).
        let timer = tokio::time::sleep_until(f.last_heard + liveness.interval);
        tokio::pin!(timer);
        // Whether the timer has this task's waker for its current deadline
        // (every poll of this task has the same one): it is then not polled
        // again until it fires (see `sleep`), which saves a registration
        // each time the task sleeps.
        let mut timer_polled = false;
        let mut on_notify = |channel: &str, payload: &str| waiters.notified(channel, payload);
        let result = loop {
            if f.closed && f.in_flight.is_empty() && f.backlog.is_empty() {
                break Ok(());
            }
            let due = f.due(liveness);
            timer_polled &= !arm(timer.as_mut(), due);
            let step = tokio::select! {
                biased;
                // Killed while the task ran (the waker is registered only
                // when it is about to sleep: last branch).
                () = std::future::poll_fn(|_| shared.killed_now()) => Step::End(Ok(())),
                // Sends what is queued; an answer, or the connection's end.
                answer = std::future::poll_fn(|cx| wire.poll_answer(cx, &mut on_notify)) => {
                    let mut d = Parts { wire: &mut wire, statements: &statements, shared: &shared, weak: &weak };
                    f.on_answer(&mut d, answer)
                }
                op = ops.recv(), if !f.closed && f.can_send() => {
                    let mut d = Parts { wire: &mut wire, statements: &statements, shared: &shared, weak: &weak };
                    f.on_request(&mut d, op, &mut ops);
                    Step::Go
                }
                () = std::future::ready(()), if !f.backlog.is_empty() && f.can_send() => {
                    let mut d = Parts { wire: &mut wire, statements: &statements, shared: &shared, weak: &weak };
                    let backlog = std::mem::take(&mut f.backlog);
                    f.send(&mut d, backlog);
                    Step::Go
                }
                // Last: when an answer or a request is ready, the session is
                // alive and busy, and neither the kill waker nor the timer
                // need be registered.
                killed = std::future::poll_fn(|cx| sleep(cx, &shared, timer.as_mut(), &mut timer_polled)) => {
                    if killed {
                        break Ok(());
                    }
                    timer_polled = false;
                    if Instant::now() < due {
                        // Set for an earlier deadline that has passed.
                        timer.as_mut().reset(due);
                        continue;
                    }
                    let mut d = Parts { wire: &mut wire, statements: &statements, shared: &shared, weak: &weak };
                    f.on_timer(&mut d)
                }
            };
            if let Step::End(result) = step {
                break result;
            }
        };
        // No request may be left in the channel unanswered: a send that
        // raced with the receiver's drop would stay there (and its caller
        // wait) for as long as anything holds the session. Closed, the
        // channel refuses new requests (their callers hear "ended"), and
        // `recv` returns `None` only once every send already under way has
        // arrived; each request dropped here tells its caller "ended".
        ops.close();
        while let Some(op) = ops.recv().await {
            drop(op);
        }
        result
    }
}

/// The dispatcher's last branch, polled when it is about to sleep:
/// registers its waker for a kill (ready: true) and with the timer (ready:
/// false). The timer is polled again only once it has fired (it is then
/// marked elapsed before it wakes the task) or when `polled` says it does not
/// have the waker for its current deadline.
fn sleep(
    cx: &mut std::task::Context<'_>,
    shared: &Shared,
    timer: std::pin::Pin<&mut tokio::time::Sleep>,
    polled: &mut bool,
) -> Poll<bool> {
    if shared.poll_killed(cx).is_ready() {
        return Poll::Ready(true);
    }
    if *polled && !timer.is_elapsed() {
        return Poll::Pending;
    }
    *polled = true;
    timer.poll(cx).map(|()| false)
}

/// Sets the timer for `due` if it is set later than that. The timer is only
/// ever moved earlier when it must fire sooner than it is set to: moving a
/// timer earlier wakes the runtime's timer driver (often another thread,
/// parked), which cost a thread wake-up per statement when the timer
/// followed every answer. In steady operation each new deadline is later
/// than the last, so the timer stays where it is, fires early at most every
/// `interval`, and is then moved on (later: cheap).
/// Returns true if it was moved.
fn arm(timer: std::pin::Pin<&mut tokio::time::Sleep>, due: Instant) -> bool {
    let earlier = due < timer.deadline();
    if earlier {
        timer.reset(due);
    }
    earlier
}

/// Splits requests into statements, in order: runs of plain requests share
/// one; a fenced lock, a raise, a wait or a checked unlock goes alone.
fn split(batch: Vec<Op>) -> Vec<Vec<Op>> {
    let mut parts = Vec::new();
    let mut run = Vec::new();
    for op in batch {
        if op.goes_alone() {
            if !run.is_empty() {
                parts.push(std::mem::take(&mut run));
            }
            parts.push(vec![op]);
        } else {
            run.push(op);
        }
    }
    if !run.is_empty() {
        parts.push(run);
    }
    parts
}

/// One request's answer: true/false, and a fencing token if it carries one.
type Row = (bool, Option<i64>);

/// The key as parameters: one int8, or two int4.
fn key_params(key: KeyId, out: &mut [Param<'static>; 3]) -> usize {
    match key {
        KeyId::Int(k) => {
            out[0] = Param::I64(k);
            1
        }
        KeyId::Pair(a, b) => {
            out[0] = Param::I32(a);
            out[1] = Param::I32(b);
            2
        }
    }
}

/// Queues one statement for `batch` on the wire (an empty batch: a
/// heartbeat).
fn send(wire: &mut Wire<Transport>, statements: &Statements, shared: &Shared, batch: &[Op]) {
    let counters = &shared.counters;
    if batch.is_empty() {
        Counters::add(&counters.heartbeats, 1);
        wire.execute(statements.name(Statement::Ping), &[]);
        return;
    }
    counters.statement();
    let unlocks = batch.iter().filter(|op| op.is_unlock()).count() as u64;
    Counters::add(&counters.unlock_requests, unlocks);
    Counters::add(&counters.lock_requests, batch.len() as u64 - unlocks);
    match batch {
        [op] => send_one(wire, statements, op),
        [x, y] => send_two(wire, statements, x, y),
        _ if batch.iter().all(Op::is_exclusive_int8) => {
            send_batch_exclusive(wire, statements, batch)
        }
        _ => send_batch(wire, statements, batch),
    }
}

/// One request alone: its key, then its floor or milliseconds if it has
/// one. A wait as long as its session's own `lock_timeout` leaves it be.
fn send_one(wire: &mut Wire<Transport>, statements: &Statements, op: &Op) {
    let mut params = [Param::I64(0); 3];
    let mut n = key_params(op.key, &mut params);
    let mut req = op.req;
    if op.is_wait() && statements.standing == Some(op.floor) {
        req.action = Action::WaitStanding;
    } else if matches!(op.req.action, Action::Raise | Action::Wait) {
        params[n] = Param::I64(op.floor);
        n += 1;
    }
    wire.execute(statements.name(Statement::One(req)), &params[..n]);
}

/// Two plain requests: [`Statement::Pair`] for exclusive requests on
/// `bigint` keys, else [`Statement::Two`].
fn send_two(wire: &mut Wire<Transport>, statements: &Statements, x: &Op, y: &Op) {
    if let Some((pair, xk, yk)) = common_pair(x, y) {
        wire.execute(statements.name(pair), &[Param::I64(xk), Param::I64(yk)]);
        return;
    }
    let (xk, xa, xb) = x.key.parts();
    let (yk, ya, yb) = y.key.parts();
    wire.execute(
        statements.name(Statement::Two),
        &[
            Param::I16(x.req.code()),
            Param::I64(xk),
            Param::I32(xa),
            Param::I32(xb),
            Param::I16(y.req.code()),
            Param::I64(yk),
            Param::I32(ya),
            Param::I32(yb),
        ],
    );
}

/// Many plain exclusive requests on `bigint` keys in one statement.
fn send_batch_exclusive(wire: &mut Wire<Transport>, statements: &Statements, batch: &[Op]) {
    let mut codes = Vec::with_capacity(batch.len());
    let mut keys = Vec::with_capacity(batch.len());
    for op in batch {
        codes.push(op.req.code());
        keys.push(op.key.parts().0);
    }
    wire.execute(
        statements.name(Statement::BatchExclusive),
        &[Param::I16s(&codes), Param::I64s(&keys)],
    );
}

/// Many plain requests in one statement, as arrays.
fn send_batch(wire: &mut Wire<Transport>, statements: &Statements, batch: &[Op]) {
    let mut codes = Vec::with_capacity(batch.len());
    let mut keys = Vec::with_capacity(batch.len());
    let mut a = Vec::with_capacity(batch.len());
    let mut b = Vec::with_capacity(batch.len());
    for op in batch {
        codes.push(op.req.code());
        let (k, x, y) = op.key.parts();
        keys.push(k);
        a.push(x);
        b.push(y);
    }
    wire.execute(
        statements.name(Statement::Batch),
        &[
            Param::I16s(&codes),
            Param::I64s(&keys),
            Param::I32s(&a),
            Param::I32s(&b),
        ],
    );
}

/// The number of values a statement for `batch` answers: one boolean a
/// request (and the heartbeat's one), but a fenced try-lock's
/// `(granted, token)` (see [`row`]).
fn values_for(batch: &[Op]) -> usize {
    match batch {
        // The heartbeat's `SELECT true`.
        [] => 1,
        [op] if op.is_fenced() => 2,
        _ => batch.len(),
    }
}

/// The answer to request `i` of `batch` from the values of its statement
/// (as many as [`values_for`]): a boolean (1 is true), a fenced try-lock's
/// `(granted, token)`, a raise's `(token)`, a blocking wait's `(granted,
/// 1 or 2)` (2: it had to wait).
fn row(batch: &[Op], values: &[Option<i64>], i: usize) -> Row {
    match batch {
        [op] if op.is_raise() => (true, values[0]),
        [op] if op.is_wait() => (matches!(values[0], Some(1 | 2)), values[0]),
        [op] if op.is_fenced() => (values[0] == Some(1), values[1]),
        _ => (values[i] == Some(1), None),
    }
}

/// Two plain exclusive requests on `bigint` keys: their
/// [`Statement::Pair`], and the two keys.
fn common_pair(x: &Op, y: &Op) -> Option<(Statement, i64, i64)> {
    let (KeyId::Int(xk), KeyId::Int(yk)) = (x.key, y.key) else {
        return None;
    };
    let exclusive = x.req.mode == Mode::Exclusive && y.req.mode == Mode::Exclusive;
    let plain = x.req.action.is_plain() && y.req.action.is_plain();
    (exclusive && plain).then_some((Statement::Pair(x.req.action, y.req.action), xk, yk))
}

/// Hands the answers of one statement to the requests' callers; returns
/// the batch emptied, for reuse.
fn finish(
    mut batch: Vec<Op>,
    result: Result<&[Option<i64>], Arc<QueryError>>,
    shared: &Arc<Shared>,
    weak: &mpsc::WeakUnboundedSender<Op>,
    backlog: &mut Vec<Op>,
) -> Vec<Op> {
    // Answered (or the session is closing): the table's unlocks in this
    // statement have taken effect on the server, if the session lives on.
    let tracked = batch.iter().filter(|op| op.tracked).count() as u64;
    if tracked > 0 {
        shared.unlocks_answered(tracked);
    }
    match result {
        Ok(values) if values.len() == values_for(&batch) => {
            // (Read before the batch is taken apart: one request's answer
            // may be a fenced or raise row.)
            let single = (batch.len() == 1).then(|| row(&batch, values, 0));
            for (i, op) in batch.drain(..).enumerate() {
                let (yes, token) = single.unwrap_or_else(|| (values[i] == Some(1), None));
                let (reply, answer) = answer(op, yes, token, shared, weak);
                deliver(reply, answer, shared, backlog);
            }
            batch
        }
        Ok(values) => {
            tracing::error!(session = shared.id, sent = batch.len(), answered = values.len(),
                "advisory-locked: a lock statement answered the wrong number of rows; closing the session");
            shared.kill();
            fail(batch, RequestError::Ended);
            Vec::new()
        }
        Err(e) => {
            failed(batch, e, shared, backlog);
            Vec::new()
        }
    }
}

/// One request's answer from its row: `yes` (granted, or was held) and a
/// token; with the request's reply channel.
fn answer(
    op: Op,
    yes: bool,
    token: Option<i64>,
    shared: &Arc<Shared>,
    weak: &mpsc::WeakUnboundedSender<Op>,
) -> (Option<reply::Sender<Reply>>, Answer) {
    let answer = if op.is_raise() {
        Answer::Raised(token)
    } else if op.is_unlock() {
        if yes {
            Counters::add(&shared.counters.released, 1);
        } else if !op.tolerant {
            tracing::error!(session = shared.id, key = %op.key,
                "advisory-locked: BROKEN INVARIANT: the server says this session did not hold the lock it was releasing; closing the session");
            shared.kill();
        }
        Answer::Unlocked(yes)
    } else if yes {
        Counters::add(&shared.counters.granted, 1);
        let wait = op.is_wait();
        if wait {
            // Before the caller can give it back.
            shared.holding();
        }
        Answer::Granted(Grant {
            undo: Some(op.undo()),
            ops: weak.clone(),
            token: if wait { None } else { token },
            lent: wait.then(|| shared.clone()),
            blocked: wait && token == Some(2),
        })
    } else {
        Counters::add(&shared.counters.busy, 1);
        if op.is_wait() {
            shared.unlocked();
        }
        Answer::Busy
    };
    (op.reply, answer)
}

/// Sends an answer to its caller; a grant nobody takes (the caller is gone,
/// or never asked) is given back with the next statement.
fn deliver(
    reply: Option<reply::Sender<Reply>>,
    answer: Answer,
    shared: &Shared,
    backlog: &mut Vec<Op>,
) {
    let unclaimed = match (reply, answer) {
        (Some(reply), answer) => match reply.send(Ok(answer)) {
            Err(Ok(Answer::Granted(grant))) => Some(grant),
            _ => None,
        },
        (None, Answer::Granted(grant)) => Some(grant),
        (None, _) => None,
    };
    if let Some(mut grant) = unclaimed {
        if let Some(undo) = grant.undo.take() {
            backlog.push(undo);
            shared.unlocked();
        }
    }
}

/// A statement failed: its requests hear of it, and the session's lock
/// state is made known again (see the module's docs).
fn failed(batch: Vec<Op>, e: Arc<QueryError>, shared: &Shared, backlog: &mut Vec<Op>) {
    let ended = e.ends_session();
    match batch.as_slice() {
        _ if ended || shared.is_dead() => {}
        // A raise changes no lock: its caller decides.
        [op] if op.is_raise() => {}
        // One try-lock failed (a cancel, a server-set statement timeout,
        // out of lock memory): it may have been granted before the error
        // (session locks ignore the rollback). An unlock queued now, before
        // the caller hears of the error, gives it back if so; "not held" is
        // fine. Anything of this process for that key comes after it on
        // this session. So for a blocking wait, even one that ended with
        // lock_timeout: the server can grant the lock just as the timeout
        // fires and then still raise the timeout's error.
        [op] if op.is_lock() => {
            backlog.push(op.undo_unknown());
            if op.is_wait() {
                // The unlock is queued before any later request.
                shared.unlocked();
            }
        }
        // Several requests, or an unlock: which of them took effect is
        // unknown. Only closing the session makes the server's state known
        // again (nothing held).
        _ => {
            tracing::error!(session = shared.id, requests = batch.len(), error = %crate::error::cause(&*e),
                "advisory-locked: a lock statement failed; closing the session so that the server frees its locks");
            shared.kill();
        }
    }
    let e = if ended {
        shared.kill();
        RequestError::Ended
    } else {
        RequestError::Db(e)
    };
    fail(batch, e);
}

fn fail(batch: Vec<Op>, e: RequestError) {
    for op in batch {
        if let Some(reply) = op.reply {
            let _ = reply.send(Err(e.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::test_server::TestKey;

    /// A connection listening on the crate's channel, and the payloads of
    /// the notifications it receives.
    async fn listen() -> (tokio_postgres::Client, mpsc::UnboundedReceiver<String>) {
        let (listener, mut conn) = crate::pg::test_server::connect().await;
        let (tx, notes) = mpsc::unbounded_channel::<String>();
        tokio::spawn(async move {
            while let Some(m) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                match m {
                    Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                        let _ = tx.send(n.payload().to_owned());
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        });
        listener
            .batch_execute("LISTEN advisory_locked")
            .await
            .unwrap();
        (listener, notes)
    }

    /// Whether a notification with `payload` arrives within `within`
    /// (other programs on the server may notify too).
    async fn heard(
        notes: &mut mpsc::UnboundedReceiver<String>,
        payload: &str,
        within: Duration,
    ) -> bool {
        let ours = async {
            while let Some(p) = notes.recv().await {
                if p == payload {
                    return true;
                }
            }
            false
        };
        tokio::time::timeout(within, ours).await == Ok(true)
    }

    /// One form of the unlock-and-notify statement, for `key`: its name in
    /// the messages, its text, and the payload its notification carries.
    struct NotifyCase {
        code: String,
        statement: String,
        payload: String,
    }

    fn notify_case(key: TestKey, shared: bool) -> NotifyCase {
        let mode = if shared {
            Mode::Shared
        } else {
            Mode::Exclusive
        };
        let (form, payload) = match key {
            TestKey::Int(k) => (Form::Int8, k.to_string()),
            TestKey::Pair(a, b) => (Form::Pair, format!("{a}:{b}")),
        };
        let req = Request {
            action: Action::UnlockNotify,
            mode,
            form,
        };
        NotifyCase {
            code: format!("{req:?}"),
            statement: Statement::One(req).sql(),
            payload,
        }
    }

    /// The unlock-and-notify statements, on the real server: a release
    /// that leaves the key free notifies; one whose key a waiter blocked on
    /// the server gets at once does not (and still answers true); one of a
    /// key not held answers false. None leaves the releasing session
    /// holding anything (the test's shared lock is given back).
    #[tokio::test]
    async fn unlock_notify_skips_the_notification_when_a_blocked_waiter_got_the_key() {
        use crate::pg::test_server::{backend_pid, client as plain, until_waiting};
        let (_listener, mut notes) = listen().await;
        let (holder, waiter, observer) = (plain().await, plain().await, plain().await);
        let (holder_pid, waiter_pid) = (backend_pid(&holder).await, backend_pid(&waiter).await);
        let held_by_holder = || async {
            observer
                .query_one(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = $1",
                    &[&holder_pid],
                )
                .await
                .unwrap()
                .get::<_, i64>(0)
        };
        let int = TestKey::Int((i64::from(std::process::id()) << 24) | (1 << 61));
        let pair = TestKey::Pair(std::process::id() as i32, -1234);
        for (key, shared) in [(int, false), (int, true), (pair, false), (pair, true)] {
            let c = notify_case(key, shared);
            let statement = holder.prepare(&c.statement).await.unwrap();
            let release = || async {
                let row = key.query(&holder, &statement, &[]).await;
                assert!(row.unwrap().get::<_, bool>(0), "code {}", c.code);
            };
            let take = key.take_sql(shared);
            // Nobody waits: notified.
            holder.batch_execute(&take).await.unwrap();
            release().await;
            assert!(
                heard(&mut notes, &c.payload, Duration::from_secs(5)).await,
                "code {}: no notification for a release that left the key free",
                c.code
            );
            assert_eq!(held_by_holder().await, 0, "code {}", c.code);
            // Not held: false, and nothing left held.
            let row = key.query(&holder, &statement, &[]).await.unwrap();
            assert!(
                !row.get::<_, bool>(0),
                "code {}: not held, yet true",
                c.code
            );
            assert_eq!(held_by_holder().await, 0, "code {}", c.code);
            // A waiter blocked on the server gets it: no notification.
            holder.batch_execute(&take).await.unwrap();
            let wait = key.take_sql(false);
            let mut blocked = Box::pin(waiter.batch_execute(&wait));
            until_waiting(&holder, waiter_pid, &mut blocked, &c.code).await;
            release().await;
            blocked.await.unwrap();
            assert!(
                !heard(&mut notes, &c.payload, Duration::from_millis(300)).await,
                "code {}: notified anyway",
                c.code
            );
            assert_eq!(held_by_holder().await, 0, "code {}", c.code);
            waiter
                .batch_execute("SELECT pg_advisory_unlock_all()")
                .await
                .unwrap();
        }
    }

    /// Every pair statement, run on the real server: both requests take
    /// effect, left to right (a lock then an unlock of one key leaves it
    /// free).
    #[tokio::test]
    async fn pair_statements_do_both_requests_in_order() {
        let client = crate::pg::test_server::client().await;
        let base = i64::from(std::process::id()) << 20;
        const PLAIN: [Action; 3] = [Action::TryLock, Action::Unlock, Action::UnlockNotify];
        let mut i = 0;
        for x in PLAIN {
            for y in PLAIN {
                let statement = Statement::Pair(x, y).sql();
                let (k1, k2) = (base + 2 * i, base + 2 * i + 1);
                i += 1;
                // An unlock needs the key held by this session first.
                for (action, k) in [(x, k1), (y, k2)] {
                    if action != Action::TryLock {
                        client
                            .execute("SELECT pg_advisory_lock($1)", &[&k])
                            .await
                            .unwrap();
                    }
                }
                let row = client.query_one(&statement, &[&k1, &k2]).await.unwrap();
                assert_eq!(
                    (row.get::<_, bool>(0), row.get::<_, bool>(1)),
                    (true, true),
                    "{statement}"
                );
                client
                    .execute("SELECT pg_advisory_unlock_all()", &[])
                    .await
                    .unwrap();
            }
        }
        // Left to right: lock k, then unlock k.
        let lock_then_unlock = &Statement::Pair(Action::TryLock, Action::Unlock).sql();
        let k = base + 100;
        let row = client.query_one(lock_then_unlock, &[&k, &k]).await.unwrap();
        assert_eq!((row.get::<_, bool>(0), row.get::<_, bool>(1)), (true, true));
        let held: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(held, 0);
    }
}
