//! Fencing tokens: a number that grows with every grant of a key, so that a
//! store the body writes to can reject a holder whose lock has since been
//! lost and granted to someone else ("fencing", as in Kleppmann's "How to
//! do distributed locking").
//!
//! Enabled per registry entry ([`LockConfig::fencing_tokens`](crate::LockConfig::fencing_tokens)).
//! Each key's last token lives in the table `advisory_locked_fence` of the
//! lock's database (created at configuration if missing). A fenced try-lock
//! is ONE statement: the try-lock and, when it is granted, the increment of
//! the key's row (an `INSERT … ON CONFLICT DO UPDATE` in a data-modifying
//! CTE), committed before the answer reaches the caller. Only a holder of
//! the key writes its row, so every grant reads the token its predecessor
//! committed and adds one: tokens of one key strictly increase, across
//! processes, sessions, lock losses and server restarts (the row is durable
//! as any committed row).
//!
//! Under a quorum each member keeps its own row; a grant takes the largest
//! token its granting members returned and raises the members that lagged
//! (a second statement, only when they disagree), so that a majority holds
//! at least that token and the next grant, whose majority overlaps this one,
//! gets a larger one (see [`crate::quorum`]).

use crate::config::Settings;
use crate::Error;

/// A key that serialises concurrent creations of the table
/// (`key_hash("advisory-locked:fence-table")`).
const CREATE_LOCK: i64 = crate::key_hash("advisory-locked:fence-table");

/// Creates the table if it is missing (at configuration, before the lock
/// sessions prepare their statements on it).
pub(crate) async fn ensure_table(settings: &Settings) -> Result<(), Error> {
    let target = settings.target();
    let after = settings.connect_timeout;
    let timed_out = || Error::ConnectTimeout {
        target: target.clone(),
        after,
    };
    let (client, _) = crate::pg::connect::connect_client(settings).await?;
    // Two processes configuring at once would race on the catalog: one
    // creation at a time, under a transaction-level lock.
    let sql = crate::pg::sql::create_fence_table(CREATE_LOCK);
    tokio::time::timeout(after, client.batch_execute(&sql))
        .await
        .map_err(|_| timed_out())?
        .map_err(|e| Error::InvalidConfig {
            reason: format!(
                "fencing tokens need the table advisory_locked_fence in {target}, and it could not be created: {}",
                crate::error::cause(&e)
            ),
        })
}
