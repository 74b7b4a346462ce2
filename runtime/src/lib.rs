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
#![forbid(unsafe_code)]
#![warn(missing_docs)]

// The attribute's expansion names the crate `::advisory_locked`; this makes
// that path work inside this crate too (its unit tests).
extern crate self as advisory_locked;

// Layers, from the bottom up; a module imports only from its own folder or
// from the layers above it in this list (`tests/tests/layers.rs` checks that
// no import cycle comes back).
mod backoff;
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
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
