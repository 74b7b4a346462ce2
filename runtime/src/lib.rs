//! PostgreSQL advisory locks as a one-line attribute, for fleets of
//! application instances that share one database.
//!
//! ```no_run
//! use advisory_locked::{advisory_locked, Outcome};
//!
//! // Skip when another instance holds the lock:
//! #[advisory_locked(key = "report:daily")]
//! async fn daily_report() -> Result<(), std::io::Error> {
//!     Ok(())
//! }
//!
//! // One tenant at a time across the fleet; wait up to 30 s for it:
//! #[advisory_locked(key = "tenant:{tenant_id}", wait = "30s")]
//! async fn rebuild(tenant_id: u64) -> u64 {
//!     tenant_id
//! }
//!
//! # async fn demo() -> Result<(), advisory_locked::Error> {
//! advisory_locked::configure_from_env().await?; // once, at startup
//!
//! match daily_report().await? {
//!     Outcome::Ran(result) => println!("ran: {result:?}"),
//!     Outcome::Skipped => println!("busy elsewhere; skipped"),
//! }
//! let rebuilt: u64 = rebuild(7).await?; // Err(Error::WaitTimeout { .. }) after 30 s
//! # let _ = rebuilt;
//! # Ok(()) }
//! ```
//!
//! Advisory locks coordinate the processes of **one database** (or, with a
//! [quorum](#quorum), of a majority of independent servers). The sections
//! below are the reference; the repository's `docs/guide.md` and
//! `docs/operations.md` go into depth, and `tests/examples/` holds runnable
//! programs (`cargo run -p advisory-locked-tests --example NAME`): `axum_tenant`,
//! `scheduled`, `leader`, `quorum`, `sqlx_transaction`, `transaction`,
//! `fleet`, `status`.
//!
//! # Options of the attribute
//!
//! [`#[advisory_locked(…)]`](macro@advisory_locked) takes these options,
//! comma separated, in any order (its own page has the full table):
//!
//! - `key = "name"`: the lock's name, hashed at compile time exactly as
//!   PostgreSQL's `hashtextextended(name, 0)` ([`key_hash`]). Required.
//! - `key = "tenant:{tenant_id}"`: a template formatted from the arguments
//!   (`Display`) at run time and hashed the same way; `{self.id}`,
//!   `{job.tenant.id}`, `{pair.0}` reach fields; `{{`/`}}` are literal braces.
//! - `key = 42`: a raw 64-bit key (`pg_advisory_lock(bigint)`).
//! - `key = (7, 42)`: the two-int4 key space (`pg_advisory_lock(int, int)`).
//! - `skip`: the default; when the lock is busy the body does not run and
//!   the call returns [`Outcome::Skipped`].
//! - `wait`: wait for the lock without a limit.
//! - `wait = "30s"`: wait at most this long, then [`Error::WaitTimeout`]
//!   (units `ms`, `s`, `m`, `h`; `"1.5s"`, `"1m30s"`).
//! - `shared` / `exclusive`: the lock mode ([`Mode`]); exclusive by default.
//! - `pool = "name"`: the registry entry to lock with (`"default"` if left out;
//!   see [`LockConfig::name`]).
//! - `on_lost = "abort"` / `on_lost = "continue"`: what happens to the body
//!   when its lock is lost while it runs ([`OnLost`]; the entry's policy if
//!   left out).
//! - `limit = N`: at most `N` bodies at once across the fleet ([limits](#limits-and-rates)).
//! - `per = "1m"`: with `limit`, each slot is held at least this long from the
//!   body's start: at most `N` starts per period, and a minimum hold.
//! - `transaction = tx`: transaction scope ([scopes](#scopes-session-and-transaction)).
//! - `on = tx`: a transaction-level lock in the caller's own transaction,
//!   the fn's argument `tx` ([bring your own connection](#bring-your-own-connection)).
//! - `crate = "path"`: where the generated code finds this crate, for a
//!   renamed dependency or a re-export.
//!
//! A skip-mode fn returning `T` becomes `async fn(…) -> Result<Outcome<T>, Error>`;
//! a wait-mode one, `async fn(…) -> Result<T, Error>`. `?` and `return` in the
//! body keep their meaning.
//!
//! # Configuration
//!
//! Once at startup, [`configure`] / [`configure_from_env`] install the
//! `"default"` registry entry; [`LockConfig`] sets everything else (sessions,
//! timeouts, TLS, loss detection, fencing) and [`LockConfig::install`]
//! installs an entry under its name. Without the attribute, a [`Locker`]
//! ([`locker`], or [`LockConfig::connect`]) takes locks as guards:
//!
//! ```no_run
//! use std::time::Duration;
//! use advisory_locked::{LockConfig, LockKey, Mode};
//!
//! # async fn demo() -> Result<(), advisory_locked::Error> {
//! LockConfig::from_env()?.name("billing").install().await?;
//! let locker = advisory_locked::locker("billing")?;
//! if let Some(guard) = locker.try_lock(LockKey::named("invoices:close"), Mode::Exclusive).await? {
//!     // ... held until released or dropped
//!     guard.release().await?;
//! }
//! let guard = locker
//!     .lock(LockKey::named("invoices:close"), Mode::Exclusive, Some(Duration::from_secs(5)))
//!     .await?;
//! # drop(guard);
//! # Ok(()) }
//! ```
//!
//! # Scopes: session and transaction
//!
//! By default a lock is **session-level**: it is taken on one of the
//! registry entry's long-lived lock sessions and released when the body
//! returns; the body's own database work uses whatever connections the
//! program has. With `transaction = tx` the lock is **transaction-level**
//! (`pg_advisory_xact_lock`) of a transaction the body runs its statements
//! in: `tx` is a [`Transaction`] (it dereferences to a
//! `tokio_postgres::Client`), the body must return `Result<T, E>` (commit on
//! `Ok`, roll back on `Err`; see [`TransactionResult`]) or `()`, and its
//! writes commit exactly when the lock ends, so the next holder sees them.
//!
//! ```no_run
//! use advisory_locked::advisory_locked;
//!
//! #[advisory_locked(key = "invoice:{id}", wait = "10s", transaction = tx)]
//! async fn pay(id: i64, cents: i64) -> Result<u64, tokio_postgres::Error> {
//!     tx.execute("UPDATE invoices SET paid = paid + $2 WHERE id = $1", &[&id, &cents])
//!         .await
//! }
//! ```
//!
//! Behind a transaction-pooling proxy (pgbouncer `pool_mode = transaction`)
//! only transaction scope excludes anything; see
//! [`LockConfig::transaction_scope_only`].
//!
//! # Bring your own connection
//!
//! A service that already holds a sqlx `PgPool`, a deadpool-postgres pool or
//! a tokio-postgres `Client` can take the lock in *its own* transaction, so
//! that its writes and the lock end together when it commits or rolls back:
//! `on = tx` names the fn's argument (a `&mut` of an
//! [`external::AdvisoryTransaction`]); no registry entry is used. The
//! [`external`] module has the same without the attribute
//! ([`external::lock_xact`], [`external::try_lock_xact`]) and session-level
//! locks on a connection ([`external::SessionLock`]). Features `sqlx` and
//! `deadpool-postgres` add those libraries' types; tokio-postgres' are always
//! there.
//!
//! ```no_run
//! # #[cfg(feature = "sqlx")]
//! # mod demo {
//! use advisory_locked::advisory_locked;
//!
//! #[advisory_locked(key = "invoice:{id}", wait = "10s", on = tx)]
//! async fn bill(tx: &mut sqlx::PgTransaction<'_>, id: i64) -> Result<u64, sqlx::Error> {
//!     let done = sqlx::query("UPDATE invoices SET billed = true WHERE id = $1")
//!         .bind(id)
//!         .execute(&mut **tx)
//!         .await?;
//!     Ok(done.rows_affected())
//! }
//!
//! async fn handler(pool: sqlx::PgPool, id: i64) -> Result<(), Box<dyn std::error::Error>> {
//!     let mut tx = pool.begin().await?;
//!     bill(&mut tx, id).await??; // the lock is held from here ...
//!     tx.commit().await?; // ... to here, released with the commit
//!     Ok(())
//! }
//! # }
//! ```
//!
//! # Limits and rates
//!
//! `limit = N` gives a key `N` slots (the named keys `"<name>#0"` …
//! `"<name>#<N-1>"`): at most `N` bodies at once across the fleet. With
//! `per = "…"` a slot stays held at least that long from the body's start, so
//! at most `N` bodies *start* in any window of that length. `limit = 1, per`
//! is also the **minimum hold** of a scheduled job (ShedLock's
//! `lockAtLeastFor`): a replica whose tick comes late finds the slot still
//! held and skips, instead of running the same tick again. The hold is kept by
//! the process that ran the body, so it ends early if that process exits.
//! Without the attribute: [`Slots`], [`Locker::try_lock_slot`],
//! [`Locker::lock_slot`].
//!
//! ```no_run
//! use advisory_locked::advisory_locked;
//!
//! // At most 4 exports at once, fleet-wide; wait up to 30 s for a slot:
//! #[advisory_locked(key = "exports", limit = 4, wait = "30s")]
//! async fn export(job: u64) -> u64 { job }
//!
//! // Once per 5-minute tick across replicas: kept 4 minutes, so a replica
//! // that is late by less than that skips the tick:
//! #[advisory_locked(key = "jobs:digest", limit = 1, per = "4m")]
//! async fn send_digest() {}
//! ```
//!
//! # Leader election
//!
//! A [`Campaign`] keeps trying an exclusive key; the process that holds it
//! leads until its lock is lost, it [resigns](Leader::resign), or the
//! [`Leader`] is dropped; followers take over within the retry interval.
//! [`Leader::watch`] publishes every change ([`Leadership`]):
//!
//! ```no_run
//! use std::time::Duration;
//! use advisory_locked::{Campaign, LockKey};
//!
//! # async fn sweep() {}
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let locker = advisory_locked::locker("default")?;
//! let leader = Campaign::new(LockKey::named("sweeper:leader"))
//!     .retry_interval(Duration::from_millis(500))
//!     .start(&locker);
//! let mut state = leader.watch();
//! let mut every = tokio::time::interval(Duration::from_secs(10));
//! loop {
//!     state.wait_for(|s| s.is_leader()).await?; // follower: wait for our turn
//!     tokio::select! {
//!         _ = state.wait_for(|s| !s.is_leader()) => {} // lost it: stop at once
//!         _ = every.tick() => sweep().await,              // leader-only work
//!     }
//! }
//! # }
//! ```
//!
//! # Quorum
//!
//! Advisory locks of one server coordinate nothing with another. A
//! [`QuorumConfig`] entry asks several independent servers at once and
//! holds a lock when a majority granted it; it survives a minority of
//! servers going down, and fails closed ([`Error::QuorumUnavailable`]) when
//! no majority answers. No clock is involved.
//!
//! ```no_run
//! use advisory_locked::{advisory_locked, QuorumConfig};
//!
//! #[advisory_locked(key = "billing:close-month", pool = "fleet")]
//! async fn close_month() {}
//!
//! # async fn setup() -> Result<(), advisory_locked::Error> {
//! QuorumConfig::from_urls([
//!     "postgres://app@db-a.internal/app",
//!     "postgres://app@db-b.internal/app",
//!     "postgres://app@db-c.internal/app",
//! ])?
//! .name("fleet")
//! .install()
//! .await?;
//! # Ok(()) }
//! ```
//!
//! # Fencing tokens
//!
//! A lock can be lost without its holder knowing at once (a network
//! partition ends its session; the server hands the key on). With
//! [`LockConfig::fencing_tokens`] every grant carries a token larger than
//! every earlier grant's; the body passes it to the store it writes, which
//! refuses writes with a smaller token than it has seen, so a stale holder's
//! writes are refused. The body reads it from [`current_lock`]
//! ([`LockState::fencing_token`]), a guard from [`LockGuard::fencing_token`].
//!
//! ```no_run
//! use advisory_locked::{advisory_locked, LockConfig};
//!
//! #[advisory_locked(key = "ledger:export", pool = "fenced")]
//! async fn export(store: &tokio_postgres::Client) -> Result<u64, tokio_postgres::Error> {
//!     let token = advisory_locked::current_lock()
//!         .and_then(|l| l.fencing_token())
//!         .unwrap_or(0);
//!     store
//!         .execute("UPDATE exports SET token = $1 WHERE id = 1 AND token < $1", &[&token])
//!         .await
//! }
//!
//! # async fn setup() -> Result<(), advisory_locked::Error> {
//! LockConfig::from_env()?.name("fenced").fencing_tokens(true).install().await?;
//! # Ok(()) }
//! ```
//!
//! # Lock loss
//!
//! A session-level lock lives as long as its session. When the session ends
//! while a body runs, the lock is lost: by default (`on_lost = "abort"`) the
//! body is stopped and the call fails with [`Error::LockLost`]; with
//! `"continue"` it finishes and [`current_lock`]'s [`LockState::is_held`]
//! says false. Detection is bounded by [`LockConfig::loss_detection`].
//!
//! # Status: who holds what
//!
//! [`status::held_locks`] reads `pg_locks` and `pg_stat_activity` of a
//! database: every advisory lock held or awaited, its holder's pid,
//! `application_name` and age, keys named from this program's annotated fns
//! ([`names`]) and from names given at run time ([`status::fill_names`]).
//!
//! ```no_run
//! use advisory_locked::{status, LockConfig};
//!
//! # async fn show() -> Result<(), advisory_locked::Error> {
//! let mut locks = status::held_locks(&LockConfig::from_env()?).await?;
//! status::fill_names(&mut locks, &["tenant:7"]);
//! print!("{}", status::format_table(&locks));
//! # Ok(()) }
//! ```
//!
//! # Features
//!
//! - `tls-rustls`: TLS for the lock sessions (`LockConfig::tls_root_certificates_pem`,
//!   `LockConfig::tls_config`; they exist only with this feature).
//! - `metrics`: counters, histograms and gauges through the `metrics` crate.
//! - `sqlx`, `deadpool-postgres`: locks on those libraries' connections and
//!   transactions ([`external`]).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

// The attribute's expansion names the crate `::advisory_locked`; this makes
// that path work inside this crate too (its unit tests).
extern crate self as advisory_locked;

// Layers, from the bottom up; a module imports only from its own folder or
// from the layers above it in this list (`tests/tests/layers.rs` checks that
// no import cycle comes back).
#[cfg(feature = "bench-internals")]
#[doc(hidden)]
#[path = "bench_support.rs"]
pub mod __bench;
mod backoff;
mod boxed;
mod config;
mod error;
mod features;
mod key;
mod local;
mod locker;
mod meter;
mod outcome;
mod pg;
mod quorum;
mod registry;
mod server;
mod session;
mod stats;
mod transaction;

#[doc(hidden)]
#[path = "macro_support/mod.rs"]
pub mod __private;

/// Rewrites an `async fn` so that its body runs under a PostgreSQL advisory
/// lock; see the crate documentation for the options and signatures.
pub use advisory_locked_macros::advisory_locked;

pub use config::{
    LockConfig, OnLost, DEFAULT_CONNECT_TIMEOUT, DEFAULT_LOSS_DETECTION, DEFAULT_POOL,
    DEFAULT_SESSIONS, DEFAULT_WAIT_SESSIONS,
};
pub use error::{Error, Result};
pub use error::{LockScope, QueryError, ServerError};
pub use features::leader::{Campaign, Leader, Leadership, DEFAULT_CAMPAIGN_RETRY};
pub use features::limit::{SlotGuard, Slots};
pub use features::{external, names, status};
pub use key::Mode;
pub use key::{key_hash, KeyId, LockKey};
pub use locker::{LockGuard, Locker};
pub use outcome::Outcome;
pub use quorum::QuorumConfig;
pub use registry::{configure, configure_from_env, locker};
pub use server::loss::{current_lock, LockState};
pub use stats::Stats;
pub use transaction::{Transaction, TransactionResult};

/// The `rustls` crate that [`LockConfig::tls_config`] takes a configuration
/// of (feature `tls-rustls`).
#[cfg(feature = "tls-rustls")]
pub use rustls;

/// The README's code blocks, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
