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
//! The repository's README is the contract: every option, the signatures the
//! attribute produces, and the guarantees and non-guarantees (advisory locks
//! coordinate processes of **one database**, not independent servers).
#![warn(missing_docs)]

// The attribute's expansion names the crate `::advisory_locked`; this makes
// that path work inside this crate too (its unit tests).
extern crate self as advisory_locked;

mod backoff;
mod config;
mod dispatch;
mod error;
mod fence;
mod key;
mod lanes;
mod leader;
mod limit;
mod locker;
mod loss;
pub mod names;
mod outcome;
mod proxy;
mod quorum;
mod run;
mod server;
mod session;
mod stats;
pub mod status;
mod table;
#[cfg(test)]
mod test_server;
mod transaction;
mod waiting;
mod wakeup;
mod wire;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

/// Rewrites an `async fn` so that its body runs under a PostgreSQL advisory
/// lock; see the crate documentation for the options and signatures.
pub use advisory_locked_macros::advisory_locked;

pub use config::{
    configure, configure_from_env, locker, LockConfig, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_LOSS_DETECTION, DEFAULT_POOL, DEFAULT_SESSIONS, DEFAULT_WAIT_SESSIONS,
};
pub use error::{Error, Result};
pub use key::{key_hash, KeyId, LockKey};
pub use leader::{Campaign, Leader, Leadership, DEFAULT_CAMPAIGN_RETRY};
pub use limit::{SlotGuard, Slots};
pub use locker::{LockGuard, Locker, Mode};
pub use loss::{current_lock, LockState, OnLost};
pub use outcome::Outcome;
pub use quorum::QuorumConfig;
pub use stats::Stats;
pub use transaction::{Transaction, TransactionResult};
pub use wire::{QueryError, ServerError};

/// The `rustls` crate that [`LockConfig::tls_config`] takes a configuration
/// of (feature `tls-rustls`).
#[cfg(feature = "tls-rustls")]
pub use rustls;

/// The README's code blocks, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
