//! Helpers for the transaction-scope tests (tests/tests/transaction.rs):
//! registry entries, the `Spec` the attribute will emit for
//! `transaction = tx`, and a holds table that the bodies write to inside
//! their transaction.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use advisory_locked::__private::Spec;
use advisory_locked::{LockConfig, Locker, Mode, Transaction};
use tokio_postgres::types::Type;
use tokio_postgres::Client;

/// A registry entry name that lives as long as the test process (a
/// [`Spec`] names its entry by `&'static str`, as the attribute does).
pub fn pool_name(prefix: &str) -> &'static str {
    Box::leak(crate::unique(prefix).into_boxed_str())
}

/// The `Spec` of `#[advisory_locked(key = …, pool = pool, [shared], transaction = tx)]`
/// (a wait-mode call passes its `Wait` beside it).
pub fn spec(pool: &'static str, mode: Mode) -> Spec {
    Spec {
        pool,
        mode,
        on_lost: None,
        limit: None,
    }
}

/// Installs registry entry `pool` for `url` with `connections` transaction
/// connections; `scope_only` for [`LockConfig::transaction_scope_only`].
pub async fn install_tx(pool: &str, url: &str, connections: usize, scope_only: bool) -> Locker {
    let mut config = LockConfig::from_url(url)
        .expect("url")
        .name(pool)
        .sessions(1)
        .transaction_connections(connections);
    if scope_only {
        config = config.transaction_scope_only();
    }
    config
        .install()
        .await
        .unwrap_or_else(|e| panic!("cannot install registry entry {pool:?}: {e}"))
}

/// `count(*)` of `table` rows whose `key` column is `key`.
pub async fn rows_of(client: &Client, table: &str, key: &str) -> i64 {
    client
        .query_one(
            &format!("SELECT count(*) FROM {table} WHERE key = $1"),
            &[&key],
        )
        .await
        .expect("count query")
        .get(0)
}

/// Counts bodies inside at once, in this process; keeps the maximum.
#[derive(Debug, Default)]
pub struct Inside {
    now: AtomicUsize,
    max: AtomicUsize,
    entered: AtomicUsize,
}

impl Inside {
    /// A body entered; returns a guard that leaves on drop.
    pub fn enter(&self) -> InsideGuard<'_> {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(n, Ordering::SeqCst);
        self.entered.fetch_add(1, Ordering::SeqCst);
        InsideGuard(self)
    }

    /// The most bodies seen inside at once.
    pub fn max(&self) -> usize {
        self.max.load(Ordering::SeqCst)
    }

    /// How many bodies entered.
    pub fn entered(&self) -> usize {
        self.entered.load(Ordering::SeqCst)
    }
}

/// See [`Inside::enter`].
#[derive(Debug)]
pub struct InsideGuard<'a>(&'a Inside);

impl Drop for InsideGuard<'_> {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A body's work inside its transaction: takes the server's clock, holds
/// for `hold`, then inserts its interval into a holds table
/// ([`crate::HOLDS_COLUMNS`]) with unnamed statements (`query_typed`, fine
/// behind a transaction pooler). The row commits with the transaction.
pub async fn record_hold(
    tx: &Transaction,
    table: &str,
    key: &str,
    round: i32,
    shared: bool,
    hold: Duration,
) -> Result<(), tokio_postgres::Error> {
    let entered: SystemTime = tx
        .query_typed_one("SELECT clock_timestamp()", &[])
        .await?
        .get(0);
    tokio::time::sleep(hold).await;
    let pid = tx.backend_pid();
    tx.query_typed(
        &format!(
            "INSERT INTO {table} (key, pid, round, shared, entered, exited) \
             VALUES ($1, $2, $3, $4, $5, clock_timestamp())"
        ),
        &[
            (&key, Type::TEXT),
            (&pid, Type::INT4),
            (&round, Type::INT4),
            (&shared, Type::BOOL),
            (&entered, Type::TIMESTAMPTZ),
        ],
    )
    .await?;
    Ok(())
}

/// Polls until `check` is true (every 10 ms, at most `limit`); returns
/// whether it became true.
pub async fn poll_until<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return true;
        }
        if start.elapsed() >= limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Median and maximum of some durations, in microseconds.
pub fn median_max_us(mut samples: Vec<Duration>) -> (u128, u128) {
    samples.sort();
    let median = samples.get(samples.len() / 2).copied().unwrap_or_default();
    let max = samples.last().copied().unwrap_or_default();
    (median.as_micros(), max.as_micros())
}
