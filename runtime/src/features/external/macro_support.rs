//! What `#[advisory_locked(key = "…", on = tx)]` expands into (re-exported
//! in `__private`): the transaction-level lock in the argument `tx`, then
//! the body.

use std::future::Future;

use super::{lock_xact, try_lock_xact, AdvisoryTransaction, BoxFuture};
use crate::{Error, LockKey, Mode, Outcome};

/// Skip mode: the try-lock in `tx` (`true`: granted). A plain fn returning
/// a future whose type does not name `T`: an argument that is not a
/// transaction is reported once, at the argument.
pub fn on_try<T: AdvisoryTransaction + ?Sized>(
    tx: &mut T,
    mode: Mode,
    key: LockKey,
) -> BoxFuture<'_, Result<bool, Error>> {
    Box::pin(try_lock_xact(tx, key, mode))
}

/// Wait mode: the waiting lock in `tx` (as [`on_try`]).
pub fn on_wait<T: AdvisoryTransaction + ?Sized>(
    tx: &mut T,
    mode: Mode,
    wait: crate::__private::Wait,
    key: LockKey,
) -> BoxFuture<'_, Result<bool, Error>> {
    Box::pin(async move {
        lock_xact(tx, key, mode, wait.timeout())
            .await
            .map(|()| true)
    })
}

/// Skip mode: the body if the lock was granted.
pub async fn run_on_skip<F: Future>(
    locked: Result<bool, Error>,
    body: F,
) -> Result<Outcome<F::Output>, Error> {
    Ok(match locked? {
        true => Outcome::Ran(body.await),
        false => Outcome::Skipped,
    })
}

/// Wait mode: the body once the lock is held.
pub async fn run_on_wait<F: Future>(
    locked: Result<bool, Error>,
    body: F,
) -> Result<F::Output, Error> {
    locked?;
    Ok(body.await)
}
