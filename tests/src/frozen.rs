//! [`FrozenClock`]: a runtime whose clock never moves, to tell an event
//! from a timer without timing anything.
//!
//! A waiter whose backoff or deadline lives on a frozen clock can only be
//! woken by I/O (a notification, an answer from the server): if it gets its
//! lock, no timer did it. `moved()` then checks that the clock really stood
//! still.

use std::future::Future;
use std::time::Duration;

/// A current-thread runtime on a thread of its own, started paused and kept
/// from auto-advancing by a blocking task that lasts as long as this does:
/// its clock stands still, only I/O and other tasks move work along.
pub struct FrozenClock {
    /// Its runtime: spawn what must run on the frozen clock here.
    pub handle: tokio::runtime::Handle,
    started: tokio::time::Instant,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FrozenClock {
    /// Starts it.
    pub fn start() -> FrozenClock {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .start_paused(true)
                .build()
                .expect("a runtime");
            rt.block_on(async move {
                // While a blocking task runs, a paused clock does not
                // auto-advance to the next timer.
                let hold = tokio::task::spawn_blocking(move || {
                    let _ = stopped.recv();
                });
                let now = tokio::time::Instant::now();
                let _ = ready_tx.send((tokio::runtime::Handle::current(), now));
                let _ = hold.await;
            });
        });
        let (handle, started) = ready.recv().expect("the frozen runtime started");
        FrozenClock {
            handle,
            started,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Runs `fut` there; panics saying `what` did not happen if it takes
    /// more than `limit` of real time.
    pub async fn run<F>(&self, limit: Duration, what: &str, fut: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        tokio::time::timeout(limit, self.handle.spawn(fut))
            .await
            .unwrap_or_else(|_| panic!("{what}: not within {limit:?}"))
            .expect("the task panicked")
    }

    /// How far its clock has moved since it started (zero: it stood still).
    pub async fn moved(&self) -> Duration {
        let started = self.started;
        self.run(Duration::from_secs(20), "read the clock", async move {
            tokio::time::Instant::now() - started
        })
        .await
    }
}

impl Drop for FrozenClock {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
