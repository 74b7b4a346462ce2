//! Helpers of `tests/visibility.rs`: the `application_name` the lock
//! sessions should carry, the sessions that carry it, and polling
//! `advisory_locked::status::held_locks` for a condition.

use std::time::{Duration, Instant};

use advisory_locked::status::{held_locks, HeldLock};
use advisory_locked::{KeyId, LockConfig};
use tokio_postgres::Client;

/// What the lock sessions of registry entry `pool` in this process should be
/// called, computed here independently of the runtime:
/// `advisory-locked:<pool> <exe>[<pid>]`, cut to PostgreSQL's 63 bytes by
/// shortening the program name.
pub fn expected_application_name(pool: &str) -> String {
    let exe = std::env::current_exe()
        .expect("current_exe")
        .file_name()
        .expect("a file name")
        .to_string_lossy()
        .into_owned();
    let head = format!("advisory-locked:{pool} ");
    let tail = format!("[{}]", std::process::id());
    let room = 63usize.saturating_sub(head.len() + tail.len());
    let exe: String = exe.chars().take(room).collect();
    format!("{head}{exe}{tail}")
}

/// `(pid, application_name)` of every client backend whose
/// `application_name` starts with `prefix`.
pub async fn backends_with_app_prefix(client: &Client, prefix: &str) -> Vec<(i32, String)> {
    client
        .query(
            "SELECT pid, application_name FROM pg_stat_activity \
             WHERE backend_type = 'client backend' AND starts_with(application_name, $1) \
             ORDER BY pid",
            &[&prefix],
        )
        .await
        .expect("pg_stat_activity query failed")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Polls `held_locks` (every 20 ms, at most `limit`) until the locks of
/// `key` satisfy `done`; returns them, or panics with what was seen last.
pub async fn wait_for_locks(
    config: &LockConfig,
    key: KeyId,
    limit: Duration,
    what: &str,
    done: impl Fn(&[HeldLock]) -> bool,
) -> Vec<HeldLock> {
    let deadline = Instant::now() + limit;
    loop {
        let all = held_locks(config).await.expect("held_locks failed");
        let ours: Vec<HeldLock> = all.into_iter().filter(|l| l.key == key).collect();
        if done(&ours) {
            return ours;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not seen within {limit:?}; last seen for {key}: {ours:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
