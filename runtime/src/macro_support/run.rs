//! Running a body under a lock: what `#[advisory_locked]` expands into.

use std::future::Future;

use tracing::Instrument;

use super::{Spec, Wait};
use crate::transaction::{self, Busy, TransactionResult};
use crate::{Error, LockGuard, LockKey, Locker, OnLost, Outcome, SlotGuard};

fn policy(spec: &Spec, locker: &Locker) -> OnLost {
    spec.on_lost.unwrap_or(locker.settings().on_lost)
}

/// Skip mode: take the lock if free, run `body`, release.
pub(crate) async fn run_skip<F: Future>(
    spec: Spec,
    key: LockKey,
    body: F,
) -> Result<Outcome<F::Output>, Error> {
    let locker = crate::locker(spec.pool)?;
    if let Some(limit) = spec.limit {
        let slots = crate::features::limit::slots_of(key, limit, spec.mode)?;
        // Boxed: the slot machinery's future stays out of the plain
        // path's future and stack frame.
        return match Box::pin(locker.try_lock_slot(&slots)).await? {
            Some(slot) => hold_slot(slot, body, policy(&spec, &locker), spec.pool)
                .await
                .map(Outcome::Ran),
            None => Ok(Outcome::Skipped),
        };
    }
    let label = crate::meter::label_of(&key);
    match locker.try_lock_as(key, spec.mode, false, label).await? {
        Some(guard) => hold(guard, body, policy(&spec, &locker), spec.pool)
            .await
            .map(Outcome::Ran),
        None => Ok(Outcome::Skipped),
    }
}

/// Wait mode: wait for the lock (bounded by the spec's timeout), run `body`, release.
pub(crate) async fn run_wait<F: Future>(
    spec: Spec,
    wait: Wait,
    key: LockKey,
    body: F,
) -> Result<F::Output, Error> {
    let locker = crate::locker(spec.pool)?;
    let timeout = wait.timeout();
    if let Some(limit) = spec.limit {
        let slots = crate::features::limit::slots_of(key, limit, spec.mode)?;
        let slot = Box::pin(locker.lock_slot(&slots, timeout)).await?;
        return hold_slot(slot, body, policy(&spec, &locker), spec.pool).await;
    }
    let label = crate::meter::label_of(&key);
    let guard = locker.lock_as(key, spec.mode, timeout, label).await?;
    hold(guard, body, policy(&spec, &locker), spec.pool).await
}

/// [`hold`] for a slot of a limit (`limit = N`): the body runs under the
/// slot's lock; afterwards the slot is dropped, which in the rate form
/// (`per = "…"`) keeps it in a background task until its period has passed,
/// while this call returns at once.
async fn hold_slot<F: Future>(
    slot: SlotGuard,
    body: F,
    policy: OnLost,
    entry: &str,
) -> Result<F::Output, Error> {
    let value = run_body(slot.guard(), body, policy, entry).await;
    drop(slot);
    value
}

/// Runs `body` while `guard` holds the lock, then releases it.
///
/// If the lock's session ends while the body runs, the policy applies:
/// [`OnLost::Abort`] drops the body at its next await point and returns
/// [`Error::LockLost`] (the server has freed the lock, so the body must not
/// go on believing it holds it); [`OnLost::Continue`] lets it finish (it can
/// check [`current_lock`](crate::current_lock)). If the body panics, the
/// guard's drop releases the lock and the panic goes on.
async fn hold<F: Future>(
    guard: LockGuard,
    body: F,
    policy: OnLost,
    entry: &str,
) -> Result<F::Output, Error> {
    let value = run_body(&guard, body, policy, entry).await;
    // Released without waiting for the server's answer: the unlock is
    // queued on the lock's session, ahead of any later request for this key.
    drop(guard);
    value
}

/// Runs `body` under `guard` with the loss policy (see [`hold`]), in a
/// span `advisory_locked.hold`.
async fn run_body<F: Future>(
    guard: &LockGuard,
    body: F,
    policy: OnLost,
    entry: &str,
) -> Result<F::Output, Error> {
    let span = crate::meter::hold_span(entry, guard.key(), guard.mode());
    run_body_unspanned(guard, body, policy)
        .instrument(span)
        .await
}

async fn run_body_unspanned<F: Future>(
    guard: &LockGuard,
    body: F,
    policy: OnLost,
) -> Result<F::Output, Error> {
    // One state for both the body's `current_lock()` and the loss watch
    // (each `state()` clones the key's name).
    let state = guard.state();
    let lost = state.lost();
    let body = crate::server::loss::scope(state, body);
    let value = match policy {
        OnLost::Abort => {
            tokio::select! {
                biased;
                () = lost => {
                    tracing::error!(key = %guard.key().name(), "advisory-locked: lock lost while the body ran; the body was stopped");
                    return Err(Error::LockLost { key: guard.key().name().to_owned() });
                }
                value = body => value,
            }
        }
        OnLost::Continue => {
            let value = body.await;
            if !guard.is_held() {
                tracing::warn!(key = %guard.key().name(), "advisory-locked: lock lost while the body ran; the body was let finish (on_lost = continue)");
            }
            value
        }
    };
    Ok(value)
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
