//! Boxing a future outside its caller's stack frame.

use std::future::Future;
use std::pin::Pin;

/// `Box::pin(make())`, with the future made in this function's own stack
/// frame. A future is boxed on a hot path because it is large and rarely
/// needed; built in the caller, it would still size the stack frame of the
/// caller's `poll`, which every call then touches (and probes page by page;
/// see `bench/README.md`, 2026-12-04, for such a frame: 16.8 KB).
#[inline(never)]
pub(crate) fn boxed<F: Future>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    Box::pin(make())
}
