//! The answer to one request: from a session's dispatcher to the caller.
//!
//! A one-shot channel, as `tokio::sync::oneshot`, with one difference that
//! matters on every lock call: the sender lets go of the shared slot
//! *before* it wakes the receiver. The slot is allocated by the caller's
//! thread; with tokio's channel the dispatcher (on another thread) often
//! held the last reference once the woken caller had read the answer, so
//! the slot was freed on the dispatcher's thread. Freed across threads, the
//! blocks drained the caller's per-thread allocator cache: 0.1 to 0.3 slow
//! allocations a lock call (`bench/README.md`, 2026-12-04, night). Here the
//! caller frees the slot, except when it is gone before the answer.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

enum State<T> {
    /// No answer yet; the receiver's waker, once it has polled.
    Waiting(Option<Waker>),
    /// Answered, not yet taken.
    Sent(T),
    /// Taken, or one side is gone.
    Done,
}

struct Slot<T> {
    state: Mutex<State<T>>,
}

impl<T> Slot<T> {
    fn state(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A channel for one answer.
pub(crate) fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let slot = Arc::new(Slot {
        state: Mutex::new(State::Waiting(None)),
    });
    (Sender(Some(slot.clone())), Receiver(slot))
}

/// The dispatcher's end: [`Sender::send`] once, or dropped (the receiver
/// then hears `None`).
pub(crate) struct Sender<T>(Option<Arc<Slot<T>>>);

impl<T> Sender<T> {
    /// Gives `value` to the receiver; gives it back if the receiver is gone.
    pub(crate) fn send(mut self, value: T) -> Result<(), T> {
        let Some(slot) = self.0.take() else {
            return Err(value);
        };
        let waker = {
            let mut state = slot.state();
            match std::mem::replace(&mut *state, State::Done) {
                State::Waiting(waker) => {
                    *state = State::Sent(value);
                    waker
                }
                // The receiver is gone (`Done`); `Sent` can't be: one send.
                other => {
                    *state = other;
                    return Err(value);
                }
            }
        };
        // Let go first: whoever reads the answer frees the slot.
        drop(slot);
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }
}

impl<T> Drop for Sender<T> {
    /// Not sent: the receiver hears `None`.
    fn drop(&mut self) {
        let Some(slot) = self.0.take() else { return };
        let waker = {
            let mut state = slot.state();
            match std::mem::replace(&mut *state, State::Done) {
                State::Waiting(waker) => waker,
                other => {
                    *state = other;
                    None
                }
            }
        };
        drop(slot);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// The caller's end: the answer, or `None` if the sender was dropped
/// without one.
pub(crate) struct Receiver<T>(Arc<Slot<T>>);

impl<T> Future for Receiver<T> {
    type Output = Option<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut state = self.0.state();
        match &mut *state {
            State::Waiting(waker) => {
                if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            State::Sent(_) => match std::mem::replace(&mut *state, State::Done) {
                State::Sent(value) => Poll::Ready(Some(value)),
                _ => Poll::Ready(None),
            },
            State::Done => Poll::Ready(None),
        }
    }
}

impl<T> Drop for Receiver<T> {
    /// An answer not taken is dropped here, outside the slot's lock (a
    /// grant in it gives the lock back as it drops).
    fn drop(&mut self) {
        let left = std::mem::replace(&mut *self.0.state(), State::Done);
        drop(left);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts its drops.
    struct Counted(Arc<AtomicUsize>);

    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn an_answer_sent_before_or_after_the_first_poll_arrives() {
        let (tx, rx) = channel();
        tx.send(1).unwrap();
        assert_eq!(rx.await, Some(1));
        let (tx, rx) = channel();
        let waiting = tokio::spawn(rx);
        tokio::task::yield_now().await;
        tx.send(2).unwrap();
        assert_eq!(waiting.await.unwrap(), Some(2));
    }

    #[tokio::test]
    async fn a_sender_dropped_without_an_answer_ends_the_wait() {
        let (tx, rx) = channel::<u8>();
        let waiting = tokio::spawn(rx);
        tokio::task::yield_now().await;
        drop(tx);
        assert_eq!(waiting.await.unwrap(), None);
    }

    #[test]
    fn an_answer_to_a_receiver_that_is_gone_comes_back() {
        let (tx, rx) = channel();
        drop(rx);
        assert_eq!(tx.send(3), Err(3));
    }

    /// An answer sent but never taken is dropped with the receiver, once.
    #[test]
    fn an_answer_not_taken_is_dropped_with_the_receiver() {
        let drops = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = channel();
        assert!(tx.send(Counted(drops.clone())).is_ok());
        assert_eq!(drops.load(Ordering::SeqCst), 0);
        drop(rx);
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    }

    /// The sender lets go of the slot before it wakes the receiver: at the
    /// wake, the receiver holds the only reference, so the slot is freed
    /// where the answer is read.
    #[test]
    fn the_sender_lets_go_before_it_wakes() {
        struct Probe {
            slot: std::sync::Weak<Slot<u32>>,
            seen: Mutex<Option<usize>>,
        }
        impl std::task::Wake for Probe {
            fn wake(self: Arc<Self>) {
                *self.seen.lock().unwrap() = Some(self.slot.strong_count());
            }
        }
        let (tx, mut rx) = channel();
        let probe = Arc::new(Probe {
            slot: Arc::downgrade(&rx.0),
            seen: Mutex::new(None),
        });
        let waker = Waker::from(probe.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut rx).poll(&mut cx).is_pending());
        tx.send(5).unwrap();
        let seen = *probe.seen.lock().unwrap();
        assert_eq!(seen, Some(1), "references to the slot at the wake");
        assert_eq!(Pin::new(&mut rx).poll(&mut cx), Poll::Ready(Some(5)));
    }
}
