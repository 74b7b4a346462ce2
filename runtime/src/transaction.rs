//! Transaction scope: `#[advisory_locked(key = "…", transaction = tx)]`.
//!
//! (Skeleton: the interface the attribute expands into; the behaviour is
//! being built.)

use std::future::Future;

use crate::__private::Spec;
use crate::{Error, LockKey, Outcome};

/// The transaction a `transaction = tx` body runs in; the lock is a
/// transaction-level lock of it.
pub struct Transaction {
    _private: (),
}

/// What a transaction-scope body returns: whether to commit.
pub trait TransactionResult {
    /// True to commit the body's transaction, false to roll it back.
    fn commits(&self) -> bool;
}

impl<T, E> TransactionResult for Result<T, E> {
    fn commits(&self) -> bool {
        self.is_ok()
    }
}

impl TransactionResult for () {
    fn commits(&self) -> bool {
        true
    }
}

fn not_yet() -> Error {
    Error::InvalidConfig {
        reason: "transaction scope is not built yet".to_owned(),
    }
}

pub(crate) async fn run_skip<B, F>(
    _spec: Spec,
    _key: LockKey,
    _body: B,
) -> Result<Outcome<F::Output>, Error>
where
    B: FnOnce(Transaction) -> F,
    F: Future,
    F::Output: TransactionResult,
{
    Err(not_yet())
}

pub(crate) async fn run_wait<B, F>(_spec: Spec, _key: LockKey, _body: B) -> Result<F::Output, Error>
where
    B: FnOnce(Transaction) -> F,
    F: Future,
    F::Output: TransactionResult,
{
    Err(not_yet())
}
