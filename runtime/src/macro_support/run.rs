//! Running a body under a lock: what `#[advisory_locked]` expands into.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::{Spec, Wait};
use crate::local::lanes::Tenure;
use crate::server::loss::Scope;
use crate::server::Granted;
use crate::transaction::{self, Busy, TransactionResult};
use crate::{Error, LockGuard, LockKey, LockState, Locker, OnLost, Outcome, SlotGuard};

fn policy(spec: &Spec, locker: &Locker) -> OnLost {
    spec.on_lost.unwrap_or(locker.settings().on_lost)
}

// An annotated call is a [`Core`], which is not generic (compiled once,
// here: the acquisition, the loss policy, the span and `current_lock`),
// and [`RunSkip`] / [`RunWait`], the two small generic futures, which poll
// the body when the core says so. The attribute's compile time is spent
// mostly on what is generic over each fn's body, so that is kept to one
// `poll` each: no generic `async fn` (its coroutine and drop glue), and no
// non-generic future that only a generic one polls (it would be compiled
// in each crate using the attribute, with everything below it, since no
// code here polls it).

/// The acquisition, boxed: its future is polled through the box's vtable,
/// which is compiled here.
type Acquiring = Pin<Box<dyn Future<Output = Result<Option<Hold>, Error>> + Send>>;

/// The part of an annotated call that is not generic: acquiring the lock,
/// then holding it while the body runs.
pub struct Core {
    state: State,
}

// One per call, from the first state to the second: boxing the hold would
// cost an allocation a call for no saving.
#[allow(clippy::large_enum_variant)]
enum State {
    Acquiring(Acquiring),
    Holding(Hold),
    /// The lock was lost and the body stopped: the hold is kept until the
    /// call is dropped, so that the body is dropped first.
    Stopped {
        _kept: Hold,
    },
    Done,
}

/// What a call does next (see [`Core::poll_step`]).
pub enum Step<'a> {
    /// Poll the body inside this: its span and its `current_lock`.
    Run(Entered<'a>),
    /// Skip mode: the lock is busy; the body does not run.
    Skipped,
    /// The call ends with this error; the body is not polled again.
    Failed(Error),
}

/// While a body is polled: its lock is [`current_lock`](crate::current_lock)
/// and its span `advisory_locked.hold` is entered (left last).
pub struct Entered<'a> {
    _scope: Scope<'a>,
    _span: tracing::span::Entered<'a>,
}

impl Core {
    pub(crate) fn skip(spec: Spec, key: LockKey) -> Core {
        Core::acquiring(Box::pin(acquire_skip(spec, key)))
    }

    pub(crate) fn wait(spec: Spec, wait: Wait, key: LockKey) -> Core {
        Core::acquiring(Box::pin(async move {
            acquire_wait(spec, wait, key).await.map(Some)
        }))
    }

    fn acquiring(acquiring: Acquiring) -> Core {
        Core {
            state: State::Acquiring(acquiring),
        }
    }

    /// Acquires, then (with [`OnLost::Abort`]) checks that the lock is
    /// still held before each poll of the body. Once the body is ready, the
    /// caller calls [`end`](Core::end). A lost lock is released when the
    /// call is dropped, after the body (the call's field declared first).
    pub fn poll_step(&mut self, cx: &mut Context<'_>) -> Poll<Step<'_>> {
        if let State::Acquiring(acquiring) = &mut self.state {
            match std::task::ready!(acquiring.as_mut().poll(cx)) {
                Ok(Some(hold)) => self.state = State::Holding(hold),
                Ok(None) => {
                    self.state = State::Done;
                    return Poll::Ready(Step::Skipped);
                }
                Err(e) => {
                    self.state = State::Done;
                    return Poll::Ready(Step::Failed(e));
                }
            }
        }
        let lost = match &mut self.state {
            State::Holding(hold) => hold.poll_lost(cx),
            _ => return Poll::Ready(Step::Failed(completed())),
        };
        if let Some(e) = lost {
            if let State::Holding(hold) = std::mem::replace(&mut self.state, State::Done) {
                self.state = State::Stopped { _kept: hold };
            }
            return Poll::Ready(Step::Failed(e));
        }
        let State::Holding(hold) = &mut self.state else {
            return Poll::Ready(Step::Failed(completed()));
        };
        Poll::Ready(Step::Run(hold.enter()))
    }

    /// The body is pending: with [`OnLost::Abort`], the loss wakes the
    /// task from now on (see [`Hold::watch_loss`]). The error that ends the
    /// call if the lock is lost already; the body is not polled again.
    pub fn pending(&mut self, cx: &mut Context<'_>) -> Option<Error> {
        let State::Holding(hold) = &mut self.state else {
            return None;
        };
        let e = hold.watch_loss(cx)?;
        if let State::Holding(hold) = std::mem::replace(&mut self.state, State::Done) {
            self.state = State::Stopped { _kept: hold };
        }
        Some(e)
    }

    /// The body is done: the lock is released.
    pub fn end(&mut self) {
        // Finished and dropped in place: the hold is not small.
        if let State::Holding(hold) = &self.state {
            hold.finish();
        }
        self.state = State::Done;
    }
}

/// Skip mode: the lock if it is free (`None`: busy).
async fn acquire_skip(spec: Spec, key: LockKey) -> Result<Option<Hold>, Error> {
    let locker = crate::locker(spec.pool)?;
    let policy = policy(&spec, &locker);
    if let Some(limit) = spec.limit {
        let slots = crate::features::limit::slots_of(key, limit, spec.mode)?;
        // Boxed: the slot machinery's future stays out of the plain
        // path's future and stack frame.
        let slot = crate::boxed::boxed(|| locker.try_lock_slot(&slots)).await?;
        return Ok(slot.map(|s| Hold::new(Held::Slot(Box::new(s)), policy, spec.pool)));
    }
    let label = crate::meter::label_of(&key);
    let mut granted = None;
    let guard = locker
        .try_lock_as(key, spec.mode, false, Tenure::Scoped, label, &mut granted)
        .await?;
    Ok(guard.map(|g| Hold::granted(Held::Lock(g), policy, spec.pool, granted)))
}

/// Wait mode: the lock, waited for (bounded by `wait`).
async fn acquire_wait(spec: Spec, wait: Wait, key: LockKey) -> Result<Hold, Error> {
    let locker = crate::locker(spec.pool)?;
    let policy = policy(&spec, &locker);
    let timeout = wait.timeout();
    if let Some(limit) = spec.limit {
        let slots = crate::features::limit::slots_of(key, limit, spec.mode)?;
        let slot = crate::boxed::boxed(|| locker.lock_slot(&slots, timeout)).await?;
        return Ok(Hold::new(Held::Slot(Box::new(slot)), policy, spec.pool));
    }
    let label = crate::meter::label_of(&key);
    let guard = locker
        .lock_as(key, spec.mode, timeout, Tenure::Scoped, label)
        .await?;
    Ok(Hold::new(Held::Lock(guard), policy, spec.pool))
}

/// The lock of an annotated call: a plain lock, or a slot of a limit
/// (`limit = N`), which in the rate form (`per = "…"`) is kept by a
/// background task until its period has passed when it is dropped.
/// The slot is boxed: it is rarer and larger, and a hold is moved a few
/// times a call.
enum Held {
    Lock(LockGuard),
    Slot(Box<SlotGuard>),
}

impl Held {
    fn guard(&self) -> &LockGuard {
        match self {
            Held::Lock(g) => g,
            Held::Slot(s) => s.guard(),
        }
    }
}

/// The error of a call polled again after it completed.
fn completed() -> Error {
    Error::InvalidConfig {
        reason: "an annotated call's future was polled after it completed".to_owned(),
    }
}

/// A held lock and what running a body under it needs; not generic.
pub struct Hold {
    held: Held,
    /// The body's [`current_lock`](crate::current_lock), in place while it
    /// is polled.
    state: Option<LockState>,
    /// [`OnLost::Abort`]: the body is stopped once the lock is lost.
    abort: bool,
    /// With [`OnLost::Abort`], once the body has been pending: resolves
    /// when the lock is lost. Set up only then (see [`Hold::watch_loss`]):
    /// a body that ends in its first poll needs no waker for the loss.
    lost: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    span: tracing::Span,
}

impl Hold {
    fn new(held: Held, policy: OnLost, entry: &str) -> Hold {
        Hold::granted(held, policy, entry, None)
    }

    /// [`new`](Self::new), with what the try-lock left in `granted` (see
    /// [`LockGuard::state_granted`]).
    fn granted(held: Held, policy: OnLost, entry: &str, granted: Granted) -> Hold {
        let guard = held.guard();
        // One state for both the body's `current_lock()` and the loss watch.
        let state = guard.state_granted(granted);
        let span = crate::meter::hold_span(entry, guard.key(), guard.mode());
        Hold {
            held,
            state: Some(state),
            abort: policy == OnLost::Abort,
            lost: None,
            span,
        }
    }

    /// Around each poll of the body.
    fn enter(&mut self) -> Entered<'_> {
        Entered {
            _scope: Scope::enter(&mut self.state),
            _span: self.span.enter(),
        }
    }

    /// True while the lock's session lives (the state is in place: this
    /// is not called while the body is polled).
    fn is_held(&self) -> bool {
        self.state.as_ref().is_none_or(LockState::is_held)
    }

    /// With [`OnLost::Abort`], before the body is polled: the error that
    /// ends the call once the lock is lost (the server has freed it, so the
    /// body must not go on believing it holds it: it is dropped at its next
    /// await point). Before the loss is watched, the session is asked.
    fn poll_lost(&mut self, cx: &mut Context<'_>) -> Option<Error> {
        if !self.abort {
            return None;
        }
        let lost = match self.lost.as_mut() {
            Some(lost) => lost.as_mut().poll(cx).is_ready(),
            None => !self.is_held(),
        };
        lost.then(|| self.lost_error())
    }

    /// With [`OnLost::Abort`], the body is pending: from now on the loss
    /// wakes the task (polled once here to register it), so a body that
    /// waits is stopped when the lock is lost. The error if it is lost
    /// already.
    fn watch_loss(&mut self, cx: &mut Context<'_>) -> Option<Error> {
        if !self.abort || self.lost.is_some() {
            return None;
        }
        let mut lost: Pin<Box<dyn Future<Output = ()> + Send>> =
            Box::pin(self.state.as_ref()?.lost());
        let ready = lost.as_mut().poll(cx).is_ready();
        self.lost = Some(lost);
        ready.then(|| self.lost_error())
    }

    fn lost_error(&self) -> Error {
        let key = self.held.guard().key().name();
        tracing::error!(key = %key, "advisory-locked: lock lost while the body ran; the body was stopped");
        Error::LockLost {
            key: key.to_owned(),
        }
    }

    /// The body ended: the lock is released without waiting for the
    /// server's answer (the unlock is queued on the lock's session, ahead
    /// of any later request for this key).
    fn finish(&self) {
        if !self.abort && !self.is_held() {
            tracing::warn!(key = %self.held.guard().key().name(), "advisory-locked: lock lost while the body ran; the body was let finish (on_lost = continue)");
        }
    }
}

/// Skip mode: a body running under a [`Core`]'s lock, if it is free. The
/// body is boxed: moving this future moves a pointer, not the body's
/// future (in debug builds every move of a future is a stack copy, and
/// annotated calls nested in annotated bodies would otherwise need
/// megabytes of stack). The body is not dropped when it is done or stopped
/// but with this future, which is dropped as the `.await` on it ends; then
/// the core, which releases the lock if the body did not end normally (it
/// was stopped, or it panicked: then the panic goes on).
pub struct RunSkip<F> {
    pub(crate) body: Pin<Box<F>>,
    pub(crate) core: Core,
}

/// Wait mode: a body running under a [`Core`]'s lock, once granted.
pub struct RunWait<F> {
    pub(crate) body: Pin<Box<F>>,
    pub(crate) core: Core,
}

impl<F: Future> Future for RunSkip<F> {
    type Output = Result<Outcome<F::Output>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let entered = match std::task::ready!(this.core.poll_step(cx)) {
            Step::Run(entered) => entered,
            Step::Skipped => return Poll::Ready(Ok(Outcome::Skipped)),
            Step::Failed(e) => return Poll::Ready(Err(e)),
        };
        let polled = this.body.as_mut().poll(cx);
        drop(entered);
        let Poll::Ready(value) = polled else {
            return this
                .core
                .pending(cx)
                .map_or(Poll::Pending, |e| Poll::Ready(Err(e)));
        };
        this.core.end();
        Poll::Ready(Ok(Outcome::Ran(value)))
    }
}

impl<F: Future> Future for RunWait<F> {
    type Output = Result<F::Output, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let entered = match std::task::ready!(this.core.poll_step(cx)) {
            Step::Run(entered) => entered,
            // A wait never skips.
            Step::Skipped => return Poll::Ready(Err(completed())),
            Step::Failed(e) => return Poll::Ready(Err(e)),
        };
        let polled = this.body.as_mut().poll(cx);
        drop(entered);
        let Poll::Ready(value) = polled else {
            return this
                .core
                .pending(cx)
                .map_or(Poll::Pending, |e| Poll::Ready(Err(e)));
        };
        this.core.end();
        Poll::Ready(Ok(value))
    }
}

/// `transaction = tx`: the entry's transaction connections, then
/// [`transaction::run`].
pub(crate) async fn run_tx<B, F>(
    spec: Spec,
    key: LockKey,
    busy: Busy,
    body: B,
) -> Result<Outcome<F::Output>, Error>
where
    B: FnOnce(crate::Transaction) -> F,
    F: Future,
    F::Output: TransactionResult,
{
    key.check()?;
    let locker = crate::locker(spec.pool)?;
    if locker.servers() > 1 {
        // A transaction lives on one server; a quorum's lock can't be one.
        return Err(Error::InvalidConfig {
            reason: format!(
                "transaction scope needs a single-server entry; {:?} is a quorum of {} servers",
                spec.pool,
                locker.servers()
            ),
        });
    }
    let call = transaction::Call {
        pool: transaction::pool_for(locker.settings()),
        mode: spec.mode,
        on_lost: spec.on_lost,
    };
    transaction::run(call, key, busy, body).await
}
