//! The one entry point that `#[advisory_locked]` expands into.
//!
//! Not a public API: the attribute's expansion names these items by absolute
//! path (`::advisory_locked::__private::…`); everything they do is done by
//! the public [`Locker`](crate::Locker) API, where it is tested without macros.

use std::future::Future;
use std::time::Duration;

use crate::{Error, LockKey, Mode, OnLost, Outcome};

/// What the attribute's options say, as a value.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// The registry entry (`pool = "…"`, else `"default"`).
    pub pool: &'static str,
    /// `shared` or exclusive (the default).
    pub mode: Mode,
    /// `skip` (the default), `wait`, or `wait = "30s"`.
    pub wait: Wait,
    /// `on_lost = "abort" | "continue"`, else the registry entry's policy.
    pub on_lost: Option<OnLost>,
}

/// Busy behaviour.
#[derive(Debug, Clone, Copy)]
pub enum Wait {
    /// Skip the body when the lock is busy.
    Skip,
    /// Wait as long as it takes.
    Forever,
    /// Wait at most this long, then fail with [`Error::WaitTimeout`].
    Timeout(Duration),
}

/// Skip mode: take the lock if free, run `body`, release.
pub async fn run_skip<F: Future>(
    spec: Spec,
    key: LockKey,
    body: F,
) -> Result<Outcome<F::Output>, Error> {
    crate::run::run_skip(spec, key, body).await
}

/// Wait mode: wait for the lock (bounded by the spec's timeout), run `body`, release.
pub async fn run_wait<F: Future>(spec: Spec, key: LockKey, body: F) -> Result<F::Output, Error> {
    crate::run::run_wait(spec, key, body).await
}
