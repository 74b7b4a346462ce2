//! The one entry point that `#[advisory_locked]` expands into.
//!
//! Not a public API: the attribute's expansion names these items by absolute
//! path (`::advisory_locked::__private::…`); everything they do is done by
//! the public [`Locker`](crate::Locker) API, where it is tested without macros.

mod run;

pub use run::{Core, Entered, RunSkip, RunWait, Step};

use std::future::Future;
use std::time::Duration;

use crate::transaction::Busy;
use crate::{Error, LockKey, Mode, OnLost, Outcome};

/// What the attribute's options say, as a value.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// The registry entry (`pool = "…"`, else `"default"`).
    pub pool: &'static str,
    /// `shared` or exclusive (the default).
    pub mode: Mode,
    /// `on_lost = "abort" | "continue"`, else the registry entry's policy.
    pub on_lost: Option<OnLost>,
    /// `limit = N` (and `per = "…"`): N slots of the key across the fleet
    /// instead of one lock.
    pub limit: Option<Limit>,
}

/// How long a wait-mode call waits (`wait` or `wait = "30s"`); skip mode
/// has entry points of its own, which take none.
#[derive(Debug, Clone, Copy)]
pub enum Wait {
    /// Wait as long as it takes.
    Forever,
    /// Wait at most this long, then fail with [`Error::WaitTimeout`].
    Timeout(Duration),
}

impl Wait {
    /// The longest wait: `None` for as long as it takes.
    pub(crate) fn timeout(self) -> Option<Duration> {
        match self {
            Wait::Timeout(t) => Some(t),
            Wait::Forever => None,
        }
    }
}

/// Skip mode: take the lock if free, run `body`, release. A plain fn
/// returning a small future (see [`RunSkip`]); like an `async fn`, nothing
/// happens until it is polled.
pub fn run_skip<F: Future>(spec: Spec, key: LockKey, body: F) -> RunSkip<F> {
    // Built here, not by a constructor: one generic fn less a call site.
    RunSkip {
        body: Box::pin(body),
        core: Core::skip(spec, key),
    }
}

/// Wait mode: wait for the lock (bounded by `wait`), run `body`, release.
pub fn run_wait<F: Future>(spec: Spec, wait: Wait, key: LockKey, body: F) -> RunWait<F> {
    RunWait {
        body: Box::pin(body),
        core: Core::wait(spec, wait, key),
    }
}

/// A template key (`key = "tenant:{id}"`): its name formatted without
/// a `String` when it is short (see [`LockKey`]'s representation).
pub fn template_key(name: std::fmt::Arguments<'_>) -> LockKey {
    LockKey::formatted(name)
}

/// A template key whose placeholders are all integer arguments
/// (`key = "tenant:{id}"` with `id: u64`): the key [`template_key`] makes,
/// written without `core::fmt`.
pub fn template_key_parts(parts: &[KeyPart]) -> LockKey {
    LockKey::from_parts(parts)
}

pub use crate::key::KeyPart;

/// An integer placeholder's value as a [`KeyPart`] (the attribute's
/// expansion calls it for arguments declared with these types).
pub trait KeyInt: Copy {
    fn key_part(self) -> KeyPart;
}

macro_rules! key_ints {
    ($part:ident as $wide:ty: $($t:ty),*) => {
        $(impl KeyInt for $t {
            fn key_part(self) -> KeyPart {
                KeyPart::$part(self as $wide)
            }
        })*
    };
}

key_ints!(Unsigned as u64: u8, u16, u32, u64, usize);
key_ints!(Signed as i64: i8, i16, i32, i64, isize);

/// `transaction = tx`, skip mode: begin a transaction, take the
/// transaction-level lock if free, run `body` with the transaction, commit if
/// the body succeeded (see [`TransactionResult`](crate::TransactionResult)),
/// else roll back; the lock ends with the transaction.
pub async fn run_tx_skip<B, F>(
    spec: Spec,
    key: LockKey,
    body: B,
) -> Result<Outcome<F::Output>, Error>
where
    B: FnOnce(crate::Transaction) -> F,
    F: Future,
    F::Output: crate::TransactionResult,
{
    run::run_tx(spec, key, Busy::Skip, body).await
}

/// `transaction = tx`, wait mode.
pub async fn run_tx_wait<B, F>(
    spec: Spec,
    wait: Wait,
    key: LockKey,
    body: B,
) -> Result<F::Output, Error>
where
    B: FnOnce(crate::Transaction) -> F,
    F: Future,
    F::Output: crate::TransactionResult,
{
    let start = std::time::Instant::now();
    let name = key.name().to_owned();
    match run::run_tx(spec, key, Busy::Wait(wait.timeout()), body).await? {
        Outcome::Ran(value) => Ok(value),
        // A wait never skips; kept as a value rather than a panic.
        Outcome::Skipped => Err(Error::WaitTimeout {
            key: name,
            waited: start.elapsed(),
        }),
    }
}

/// The compile-time collection the attribute submits [`KeyName`]s to.
pub use inventory;

pub use crate::features::external::macro_support::{on_try, on_wait, run_on_skip, run_on_wait};
pub use crate::features::limit::Limit;
pub use crate::features::names::KeyName;
