//! Advisory locks as the server sees them (`pg_locks`, decoded back into
//! [`KeyId`]s), taken and released on plain connections outside the crate,
//! and the holds tables that record who ran a body when.

use std::time::{Duration, Instant};

use advisory_locked::KeyId;
use tokio_postgres::Client;

/// One advisory lock as `pg_locks` shows it, with its key decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdvisoryLock {
    /// The server process (session) that holds or awaits it.
    pub pid: i32,
    /// The key: `objsubid` = 1 is a 64-bit key (`classid` high 32 bits,
    /// `objid` low 32 bits), `objsubid` = 2 is a pair (`classid`, `objid`).
    pub key: KeyId,
    /// `ExclusiveLock` or `ShareLock`.
    pub mode: String,
    /// False while a session waits for it.
    pub granted: bool,
    /// The raw columns, for layout checks: (`classid`, `objid`, `objsubid`).
    pub raw: (u32, u32, i16),
}

/// Decodes `pg_locks` columns of an advisory lock into a key.
pub fn decode_key(classid: u32, objid: u32, objsubid: i16) -> KeyId {
    match objsubid {
        1 => KeyId::Int(((u64::from(classid) << 32) | u64::from(objid)) as i64),
        2 => KeyId::Pair(classid as i32, objid as i32),
        other => panic!("unexpected objsubid {other} for an advisory lock"),
    }
}

/// The advisory locks of the client's current database whose keys are in
/// `keys` (granted or awaited).
pub async fn advisory_locks(client: &Client, keys: &[KeyId]) -> Vec<AdvisoryLock> {
    try_advisory_locks(client, keys)
        .await
        .expect("pg_locks query failed")
}

/// [`advisory_locks`], or the query's error (e.g. "out of shared memory"
/// while a server's lock table is full: the query needs locks too).
pub async fn try_advisory_locks(
    client: &Client,
    keys: &[KeyId],
) -> Result<Vec<AdvisoryLock>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT pid, classid::oid::int8, objid::oid::int8, objsubid::int2, mode, granted \
             FROM pg_locks \
             WHERE locktype = 'advisory' \
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let classid = r.get::<_, i64>(1) as u32;
            let objid = r.get::<_, i64>(2) as u32;
            let objsubid: i16 = r.get(3);
            AdvisoryLock {
                pid: r.get(0),
                key: decode_key(classid, objid, objsubid),
                mode: r.get(4),
                granted: r.get(5),
                raw: (classid, objid, objsubid),
            }
        })
        .filter(|l| keys.contains(&l.key))
        .collect())
}

/// Polls `pg_locks` (every 20 ms, at most `limit`) until none of `keys` is
/// held or awaited; returns what was still there at the end (empty on success).
pub async fn wait_until_unlocked(
    client: &Client,
    keys: &[KeyId],
    limit: Duration,
) -> Vec<AdvisoryLock> {
    let start = Instant::now();
    loop {
        let left = advisory_locks(client, keys).await;
        if left.is_empty() || start.elapsed() >= limit {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `pg_locks` until `keys` are all held (granted) by some session, at
/// most `limit`; returns the locks seen last.
pub async fn wait_until_locked(
    client: &Client,
    keys: &[KeyId],
    limit: Duration,
) -> Vec<AdvisoryLock> {
    let start = Instant::now();
    loop {
        let held = advisory_locks(client, keys).await;
        let all = keys
            .iter()
            .all(|k| held.iter().any(|l| l.key == *k && l.granted));
        if all || start.elapsed() >= limit {
            return held;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Takes `key` on a plain connection, outside the crate, waiting for it
/// (`pg_advisory_lock[_shared]`).
pub async fn pg_lock(client: &Client, key: KeyId, mode: advisory_locked::Mode) {
    pg_advisory(client, "pg_advisory_lock", key, mode)
        .await
        .expect("pg_advisory_lock failed");
}

/// Releases `key` on a plain connection; true if the session held it.
pub async fn pg_unlock(client: &Client, key: KeyId, mode: advisory_locked::Mode) -> bool {
    pg_advisory(client, "pg_advisory_unlock", key, mode)
        .await
        .expect("pg_advisory_unlock failed")
        .get(0)
}

/// `SELECT <function>[_shared](key)` for either key space.
async fn pg_advisory(
    client: &Client,
    function: &str,
    key: KeyId,
    mode: advisory_locked::Mode,
) -> Result<tokio_postgres::Row, tokio_postgres::Error> {
    let shared = if mode == advisory_locked::Mode::Shared {
        "_shared"
    } else {
        ""
    };
    match key {
        KeyId::Int(k) => {
            let sql = format!("SELECT {function}{shared}($1::int8)");
            client.query_one(&sql, &[&k]).await
        }
        KeyId::Pair(a, b) => {
            let sql = format!("SELECT {function}{shared}($1::int4, $2::int4)");
            client.query_one(&sql, &[&a, &b]).await
        }
    }
}

/// The key id a template key such as `"tenant:{t}"` formats to.
pub fn named(name: &str) -> KeyId {
    KeyId::Int(advisory_locked::key_hash(name))
}

/// The columns of the tables that record lock holds: one row per body run,
/// `entered`/`exited` stamped with the server's `clock_timestamp()`.
pub const HOLDS_COLUMNS: &str = "(id bigserial PRIMARY KEY, key text NOT NULL, pid int NOT NULL, \
     round int NOT NULL, shared bool NOT NULL DEFAULT false, \
     entered timestamptz NOT NULL DEFAULT clock_timestamp(), exited timestamptz)";

/// Counts in a holds table ([`HOLDS_COLUMNS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldStats {
    /// All rows.
    pub rows: i64,
    /// Rows whose body never recorded its exit.
    pub unfinished: i64,
    /// Pairs of rows of one key whose `[entered, exited)` intervals overlap
    /// and at least one of which was exclusive: must be 0.
    pub conflicting_overlaps: i64,
    /// Pairs of shared rows of one key that overlapped (allowed).
    pub shared_overlaps: i64,
}

/// Checks a holds table with SQL: a self-join on overlapping intervals of one key.
pub async fn hold_stats(client: &Client, table: &str) -> HoldStats {
    let row = client
        .query_one(
            &format!(
                "SELECT (SELECT count(*) FROM {table}), \
                        (SELECT count(*) FROM {table} WHERE exited IS NULL), \
                        count(*) FILTER (WHERE NOT (a.shared AND b.shared)), \
                        count(*) FILTER (WHERE a.shared AND b.shared) \
                 FROM {table} a JOIN {table} b \
                   ON a.key = b.key AND a.id < b.id \
                  AND tstzrange(a.entered, a.exited, '[)') && tstzrange(b.entered, b.exited, '[)')"
            ),
            &[],
        )
        .await
        .expect("overlap query failed");
    HoldStats {
        rows: row.get(0),
        unfinished: row.get(1),
        conflicting_overlaps: row.get(2),
        shared_overlaps: row.get(3),
    }
}
