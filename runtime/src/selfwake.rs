//! Keeps a task's wake-ups of itself off the scheduler.
//!
//! A session's task drives both its dispatcher and its connection: sending a
//! request (the driver's channel to the connection) and routing an answer
//! (the connection to the request's future) each wake the task *while it
//! runs*. Tokio then reschedules it as a yield: to the back of the run
//! queue, and a parked worker thread is woken to look for work — which,
//! on a small machine, takes a CPU from the server and often moves the task
//! to another thread. That cost ~1.3x a round trip per call.
//!
//! [`Quiet`] polls its future with a waker of its own: a wake that arrives
//! while the future is being polled only asks for one more poll in the same
//! turn; a wake at any other time (a caller's request, the socket) wakes the
//! task as usual. After a few extra polls in one turn it yields for real, so
//! that a future that keeps waking itself (Tokio's cooperative budget) can't
//! starve the runtime.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

/// Extra polls in one turn before yielding to the scheduler.
const MAX_REPOLLS: usize = 16;

const IN_POLL: u8 = 1;
const WOKEN: u8 = 2;

struct Shared {
    state: AtomicU8,
    /// The task's own waker, from the last poll.
    task: Mutex<Option<Waker>>,
}

impl Wake for Shared {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let before = self.state.fetch_or(WOKEN, Ordering::AcqRel);
        if before & IN_POLL != 0 {
            // The poller sees WOKEN before it returns.
            return;
        }
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(task) = task {
            task.wake();
        }
    }
}

/// A future polled so that its wake-ups of its own task cost no reschedule.
pub(crate) struct Quiet<F> {
    inner: Pin<Box<F>>,
    shared: Arc<Shared>,
    waker: Waker,
}

impl<F: Future> Quiet<F> {
    pub(crate) fn new(inner: F) -> Quiet<F> {
        let shared = Arc::new(Shared {
            state: AtomicU8::new(0),
            task: Mutex::new(None),
        });
        let waker = Waker::from(shared.clone());
        Quiet {
            inner: Box::pin(inner),
            shared,
            waker,
        }
    }
}

impl<F: Future> Future for Quiet<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        {
            let mut task = this.shared.task.lock().unwrap_or_else(|p| p.into_inner());
            if !task.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *task = Some(cx.waker().clone());
            }
        }
        let mut inner_cx = Context::from_waker(&this.waker);
        for _ in 0..=MAX_REPOLLS {
            // Polling: wakes from now on only mark WOKEN.
            this.shared.state.store(IN_POLL, Ordering::Release);
            if let Poll::Ready(out) = this.inner.as_mut().poll(&mut inner_cx) {
                this.shared.state.store(0, Ordering::Release);
                return Poll::Ready(out);
            }
            // Done polling, unless a wake came meanwhile: then poll again.
            if this
                .shared
                .state
                .compare_exchange(IN_POLL, 0, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return Poll::Pending;
            }
        }
        // Woken on every poll: yield to the scheduler, and come back.
        this.shared.state.store(0, Ordering::Release);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wakes_from_outside_and_from_inside_both_get_through() {
        // Inside: a future that wakes itself twice before finishing.
        let mut left = 2;
        let own = Quiet::new(std::future::poll_fn(move |cx| {
            if left == 0 {
                return Poll::Ready(7);
            }
            left -= 1;
            cx.waker().wake_by_ref();
            Poll::Pending
        }));
        assert_eq!(own.await, 7);

        // Outside: a wake from another task.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let waiting = tokio::spawn(Quiet::new(rx));
        tokio::task::yield_now().await;
        tx.send(5).unwrap();
        assert_eq!(waiting.await.unwrap().unwrap(), 5);

        // Forever self-waking: still yields (the runtime is not starved).
        let spinner = tokio::spawn(Quiet::new(std::future::poll_fn(|cx: &mut Context<'_>| {
            cx.waker().wake_by_ref();
            Poll::<()>::Pending
        })));
        tokio::task::yield_now().await;
        spinner.abort();
        assert!(spinner.await.unwrap_err().is_cancelled());
    }
}
