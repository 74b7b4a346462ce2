//! The global registry: the named entries that annotated functions use,
//! installed once at start-up ([`configure`], [`LockConfig::install`]) and
//! looked up by every call ([`locker`]).

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use crate::{Error, LockConfig, Locker, QuorumConfig};

static REGISTRY: LazyLock<Mutex<HashMap<String, Locker>>> = LazyLock::new(Default::default);

impl LockConfig {
    /// Connects (as [`connect`](Self::connect)) and installs the entry in the
    /// global registry under its name, for annotated functions to use.
    ///
    /// Installing a name twice is [`Error::AlreadyConfigured`]. Key names of
    /// this entry's annotated fns that lock the same number as another name
    /// ([`names::collisions`](crate::features::names::collisions)) are logged as
    /// `tracing` errors.
    ///
    /// Installing holds three connections to the server at once (the first
    /// lock session and two probes for a transaction-pooling proxy): behind a
    /// pooler in session mode, its pool must have room for them, else this
    /// fails with [`Error::PoolExhausted`] (see
    /// [`sessions`](Self::sessions), its "Connections", for what the entry
    /// uses later).
    pub async fn install(self) -> Result<Locker, Error> {
        let name = self.settings().name.clone();
        Box::pin(install_as(name, self.connect())).await
    }
}

impl QuorumConfig {
    /// Connects (as [`connect`](Self::connect)) and installs the entry in
    /// the global registry under its name. Installing a name twice is
    /// [`Error::AlreadyConfigured`].
    pub async fn install(self) -> Result<Locker, Error> {
        let name = self.entry_name().to_owned();
        Box::pin(install_as(name, self.connect())).await
    }
}

/// Connects with `connect` and installs the result as `name`, unless the
/// name is taken (checked before connecting and again after).
async fn install_as(
    name: String,
    connect: impl std::future::Future<Output = Result<Locker, Error>>,
) -> Result<Locker, Error> {
    check_free(&name)?;
    let locker = connect.await?;
    register(name, locker.clone())?;
    Ok(locker)
}

/// [`Error::AlreadyConfigured`] if `name` is taken.
fn check_free(name: &str) -> Result<(), Error> {
    if registry().contains_key(name) {
        return Err(Error::AlreadyConfigured {
            pool: name.to_owned(),
        });
    }
    Ok(())
}

/// Puts a connected entry in the registry, unless its name was taken
/// meanwhile.
fn register(name: String, locker: Locker) -> Result<(), Error> {
    let mut reg = registry();
    if reg.contains_key(&name) {
        return Err(Error::AlreadyConfigured { pool: name });
    }
    tracing::info!(pool = %name, target = %locker.settings().target(), servers = locker.servers(), "advisory-locked: registry entry configured");
    reg.insert(name.clone(), locker);
    drop(reg);
    log_collisions(&name);
    Ok(())
}

/// Logs (`tracing::error!`) every key collision of the program (see
/// [`crate::features::names::collisions`]) that involves an annotated fn of entry
/// `pool`: two names that lock one number exclude each other by accident.
fn log_collisions(pool: &str) {
    for c in crate::features::names::collisions() {
        if c.keys.iter().any(|k| k.pool() == pool) {
            tracing::error!(pool = %pool, key = %c.id, "advisory-locked: {c}; they exclude each other: rename one of them");
        }
    }
}

fn registry() -> std::sync::MutexGuard<'static, HashMap<String, Locker>> {
    // A panic while holding this lock can't leave the map half-changed.
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

/// Configures the default registry entry from a connection URL.
///
/// ```no_run
/// # async fn setup() -> Result<(), advisory_locked::Error> {
/// advisory_locked::configure("postgres://postgres@127.0.0.1:5432/postgres").await?;
/// # Ok(()) }
/// ```
pub async fn configure(url: &str) -> Result<(), Error> {
    LockConfig::from_url(url)?.install().await.map(drop)
}

/// Configures the default registry entry from the `DATABASE_URL` environment variable.
pub async fn configure_from_env() -> Result<(), Error> {
    LockConfig::from_env()?.install().await.map(drop)
}

/// The [`Locker`] installed under `name`, or [`Error::NotConfigured`].
pub fn locker(name: &str) -> Result<Locker, Error> {
    // Every annotated call looks its entry up. Entries are never removed or
    // replaced, so one found stays valid: each thread keeps those it found,
    // and only a miss takes the registry's (process-wide) lock.
    thread_local! {
        static FOUND: std::cell::RefCell<Vec<(String, Locker)>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let cached = FOUND.with_borrow(|found| {
        found
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, l)| l.clone())
    });
    if let Some(locker) = cached {
        return Ok(locker);
    }
    let locker = registry()
        .get(name)
        .cloned()
        .ok_or_else(|| Error::NotConfigured {
            pool: name.to_owned(),
        })?;
    FOUND.with_borrow_mut(|found| found.push((name.to_owned(), locker.clone())));
    Ok(locker)
}
