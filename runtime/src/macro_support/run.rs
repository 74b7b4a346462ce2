//! Running a body under a lock: what `#[advisory_locked]` expands into.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::{Spec, Wait};
use crate::local::lanes::Tenure;
use crate::server::loss::Scope;
use crate::transaction::{self, Busy, TransactionResult};
use crate::{Error, LockGuard, LockKey, LockState, Locker, OnLost, Outcome, SlotGuard};

fn policy(spec: &Spec, locker: &Locker) -> OnLost {
    spec.on_lost.unwrap_or(locker.settings().on_lost)
}

// An annotated call is an acquisition, which is not generic (compiled once,
// here), then [`Running`], the one small generic future, which polls the
// body under the lock. The attribute's compile time is spent mostly on
// what it makes generic over each fn's body.

/// Skip mode: the lock if it is free (`None`: busy).
pub(crate) async fn acquire_skip(spec: Spec, key: LockKey) -> Result<Option<Hold>, Error> {
    let locker = crate::locker(spec.pool)?;
    let policy = policy(&spec, &locker);
    if let Some(limit) = spec.limit {
        let slots = crate::features::limit::slots_of(key, limit, spec.mode)?;
        // Boxed: the slot machinery's future stays out of the plain
        // path's future and stack frame.
        let slot = Box::pin(locker.try_lock_slot(&slots)).await?;
        return Ok(slot.map(|s| Hold::new(Held::Slot(s), policy, spec.pool)));
    }
    let label = crate::meter::label_of(&key);
    let guard = locker
        .try_lock_as(key, spec.mode, false, Tenure::Scoped, label)
        .await?;
    Ok(guard.map(|g| Hold::new(Held::Lock(g), policy, spec.pool)))
}

/// Wait mode: the lock, waited for (bounded by `wait`).
pub(crate) async fn acquire_wait(spec: Spec, wait: Wait, key: LockKey) -> Result<Hold, Error> {
    let locker = crate::locker(spec.pool)?;
    let policy = policy(&spec, &locker);
    let timeout = wait.timeout();
    if let Some(limit) = spec.limit {
        let slots = crate::features::limit::slots_of(key, limit, spec.mode)?;
        let slot = Box::pin(locker.lock_slot(&slots, timeout)).await?;
        return Ok(Hold::new(Held::Slot(slot), policy, spec.pool));
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
enum Held {
    Lock(LockGuard),
    Slot(SlotGuard),
}

impl Held {
    fn guard(&self) -> &LockGuard {
        match self {
            Held::Lock(g) => g,
            Held::Slot(s) => s.guard(),
        }
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
        let guard = held.guard();
        // One state for both the body's `current_lock()` and the loss watch
        // (each `state()` clones the key's name).
        let state = guard.state();
        let span = crate::meter::hold_span(entry, guard.key(), guard.mode());
        Hold {
            held,
            state: Some(state),
            abort: policy == OnLost::Abort,
            lost: None,
            span,
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

/// A body running under a [`Hold`]: the loss policy applies (with
/// [`OnLost::Abort`] the loss is polled first), the body sees its lock as
/// [`current_lock`](crate::current_lock) and runs in the span
/// `advisory_locked.hold`. If the body panics, dropping this releases the
/// lock and the panic goes on.
pub struct Running<F> {
    body: Option<Pin<Box<F>>>,
    hold: Option<Hold>,
}

impl<F> Running<F> {
    pub(crate) fn new(hold: Hold, body: Pin<Box<F>>) -> Running<F> {
        Running {
            body: Some(body),
            hold: Some(hold),
        }
    }
}

impl<F: Future> Future for Running<F> {
    type Output = Result<F::Output, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let (Some(hold), Some(body)) = (this.hold.as_mut(), this.body.as_mut()) else {
            return Poll::Ready(Err(Error::InvalidConfig {
                reason: "an annotated call's future was polled after it completed".to_owned(),
            }));
        };
        if let Some(e) = hold.poll_lost(cx) {
            this.body = None;
            this.hold = None;
            return Poll::Ready(Err(e));
        }
        let polled = {
            let _span = hold.span.enter();
            let _scope = Scope::enter(&mut hold.state);
            body.as_mut().poll(cx)
        };
        let Poll::Ready(value) = polled else {
            if let Some(e) = hold.watch_loss(cx) {
                this.body = None;
                this.hold = None;
                return Poll::Ready(Err(e));
            }
            return Poll::Pending;
        };
        this.body = None;
        // Finished and dropped in place (a `take()` would move it).
        hold.finish();
        this.hold = None;
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
