//! Helpers shared by the integration tests of `advisory-locked`, by concern:
//!
//! - [`db`]: the server every test uses ([`db_url`]: `DATABASE_URL`, else
//!   the local default), plain connections ([`raw_connect`]), temporary
//!   databases and tables, sessions found by `application_name`;
//! - [`locks`]: what `pg_locks` says about given keys, decoded back into
//!   `KeyId`s ([`advisory_locks`], [`wait_until_unlocked`]), locks taken on
//!   plain connections, holds tables;
//! - [`server`]: [`ThrowawayServer`], an independent PostgreSQL server in a
//!   temporary directory, for the tests that need a second server or a standby;
//! - [`pgbouncer`]: a real [`Pgbouncer`] in front of the test server;
//! - [`tls`]: [`TestCertificates`] made with `openssl`, and a [`TlsServer`];
//! - [`frozen`]: a runtime whose clock stands still, to tell a wake-up by
//!   an event from one by a timer;
//! - [`demo`]: what the runnable examples share: a database found, or a
//!   throwaway server started, when none answers;
//! - [`tools`]: where the programs above are found, and the message a test
//!   fails with when one is missing (`scripts/test` installs them all);
//! - [`workers`]: worker processes, their output, a clock they share;
//! - [`Prng`]: a small seeded random generator (no `rand` dependency);
//! - [`unique`], [`free_port`], [`join_all`]: names, ports and futures for
//!   tests that run in parallel threads of one process and parallel
//!   processes against one server.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};

pub mod blackhole;
pub mod capture;
pub mod db;
pub mod demo;
pub mod frozen;
pub mod limits;
pub mod locks;
pub mod pgbouncer;
pub mod prng;
pub mod server;
pub mod tls;
pub mod tools;
pub mod transaction;
pub mod visibility;
pub mod workers;

pub use db::{
    backends_named, db_url, db_url_for_database, db_url_with_app, install, raw_connect,
    sessions_named, terminate_backend, ScratchTable, TempDatabase,
};
pub use locks::{
    advisory_locks, decode_key, hold_stats, named, pg_lock, pg_unlock, try_advisory_locks,
    wait_until_locked, wait_until_unlocked, AdvisoryLock, HoldStats, HOLDS_COLUMNS,
};
pub use pgbouncer::Pgbouncer;
pub use prng::Prng;
pub use server::ThrowawayServer;
pub use tls::{TestCertificates, TlsServer};
pub use tools::{pg_bin_dir, ServerReadableDir};
pub use workers::{next_line, unix_micros};

/// A name unique to this process and call: `{prefix}-{pid}-{n}`. Use it for
/// keys, registry entry names and tables.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A name usable as an SQL identifier (`[a-z0-9_]`), unique as [`unique`].
pub fn unique_ident(prefix: &str) -> String {
    unique(prefix)
        .replace(|c: char| !c.is_ascii_alphanumeric(), "_")
        .to_lowercase()
}

/// A port on 127.0.0.1 that nothing listened on a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("cannot bind a free port")
        .port()
}

/// Polls all futures in one task, in order: their requests are queued in
/// the same turn.
pub async fn join_all<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut futs: Vec<_> = futs.into_iter().map(Box::pin).map(Some).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (f, o) in futs.iter_mut().zip(out.iter_mut()) {
            if let Some(fut) = f {
                match fut.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        *o = Some(v);
                        *f = None;
                    }
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out.into_iter().map(|o| o.unwrap()).collect()
}

/// Polls `done` every 5 ms until it holds, at most `limit`; panics (failing
/// the test) saying `what` did not happen. For waiting on an event a test
/// can only observe by asking (counters, a task's state).
pub async fn until(what: &str, limit: std::time::Duration, mut done: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}
