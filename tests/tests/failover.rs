//! High availability through one multi-host connection string, against a
//! real primary and a real streaming standby (`pg_basebackup -R`) started
//! by the test:
//!
//! - with the standby first in the host list and
//!   `target_session_attrs=read-write`, the entry installs on the primary
//!   (the standby is skipped, not an `Error::Standby`);
//! - failover: the standby is promoted and the old primary stopped while a
//!   lock is held: the holder's body gets `Error::LockLost` within the loss
//!   detection bound, and the same `Locker` is granted new locks on the new
//!   primary within the reconnect backoff, never failing with
//!   `Error::Standby` once the promotion is done.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use advisory_locked::{advisory_locked, Error, LockConfig, LockKey, Mode};
use advisory_locked_tests::{advisory_locks, pg_bin_dir, raw_connect, unique, ThrowawayServer};
use tokio::sync::oneshot;

const LOSS_DETECTION: Duration = Duration::from_secs(1);

/// Held until the session holding it dies (the body never ends by itself).
#[advisory_locked(key = "failover:held", pool = "failover", wait = "10s")]
async fn hold_until_lost(holding: oneshot::Sender<bool>) {
    let _ = holding.send(advisory_locked::current_lock().is_some_and(|l| l.is_held()));
    std::future::pending::<()>().await;
}

/// `pg_ctl promote -w` on the standby, as the server's user.
fn promote(standby: &ThrowawayServer) {
    let exe = pg_bin_dir().join("pg_ctl");
    let data = standby.data_dir().display().to_string();
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n");
    let mut cmd = if root.unwrap_or(false) {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(&exe);
        c
    } else {
        Command::new(&exe)
    };
    let out = cmd
        .args(["-D", &data, "-w", "-t", "60", "promote"])
        .stdin(Stdio::null())
        .output()
        .expect("cannot run pg_ctl promote");
    assert!(
        out.status.success(),
        "pg_ctl promote failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn in_recovery(url: &str) -> bool {
    raw_connect(url)
        .await
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_first_installs_on_the_primary_and_failover_moves_the_locks() {
    let (mut primary, standby) = tokio::task::spawn_blocking(|| {
        let primary = ThrowawayServer::start();
        let standby = ThrowawayServer::standby_of(&primary);
        (primary, standby)
    })
    .await
    .expect("cannot start a primary and a standby");
    assert!(in_recovery(&standby.url("postgres")).await, "not a standby");

    // The standby first: skipped for the primary.
    let url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/postgres?target_session_attrs=read-write",
        standby.port(),
        primary.port()
    );
    let locker = LockConfig::from_url(&url)
        .unwrap()
        .name("failover")
        .loss_detection(LOSS_DETECTION)
        .install()
        .await
        .unwrap_or_else(|e| panic!("install with the standby first: {e}"));
    let on_primary = raw_connect(&primary.url("postgres")).await;
    let key = LockKey::named(unique("failover"));
    let guard = locker
        .try_lock(key.clone(), Mode::Exclusive)
        .await
        .unwrap()
        .expect("a free key");
    let held = advisory_locks(&on_primary, &[key.id()]).await;
    assert_eq!(held.len(), 1, "the lock is on the primary: {held:?}");
    assert_eq!(held[0].pid, guard.backend_pid());

    // A body holding a lock, which must hear of the loss.
    let (holding, held_now) = oneshot::channel();
    let body = tokio::spawn(hold_until_lost(holding));
    assert!(
        held_now.await.expect("the body started"),
        "the body holds its lock"
    );

    // Failover: promote the standby, then stop the old primary.
    let new_primary = tokio::task::spawn_blocking(move || {
        promote(&standby);
        standby
    })
    .await
    .expect("promotion");
    assert!(!in_recovery(&new_primary.url("postgres")).await, "promoted");
    let stopped = Instant::now();
    let _old_primary = tokio::task::spawn_blocking(move || {
        primary.stop("fast");
        primary
    })
    .await
    .expect("stop");
    let stop_took = stopped.elapsed();

    // The holders hear of the loss.
    let bound = stop_took + LOSS_DETECTION + Duration::from_secs(2);
    tokio::time::timeout(bound, guard.lost())
        .await
        .expect("the guard heard of the loss");
    let result = tokio::time::timeout(bound, body)
        .await
        .expect("the body was stopped")
        .unwrap();
    assert!(matches!(result, Err(Error::LockLost { .. })), "{result:?}");
    let lost_after = stopped.elapsed();
    drop(guard);

    // New locks on the new primary, through the same Locker.
    let on_new = raw_connect(&new_primary.url("postgres")).await;
    let key = LockKey::named(unique("failover-after"));
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut errors = Vec::new();
    let guard = loop {
        match locker.try_lock(key.clone(), Mode::Exclusive).await {
            Ok(Some(g)) => break g,
            Ok(None) => panic!("the key is free"),
            Err(e) => {
                assert!(
                    !matches!(e, Error::Standby { .. }),
                    "Standby after the promotion: {e}"
                );
                errors.push(e.to_string());
            }
        }
        assert!(
            Instant::now() < deadline,
            "no grant on the new primary: {errors:?}"
        );
        // Pacing between tries (the crate's own backoff decides when it
        // reconnects; calls before that fail at once with Unavailable).
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let granted_after = stopped.elapsed();
    let held = advisory_locks(&on_new, &[key.id()]).await;
    assert_eq!(held.len(), 1, "on the new primary: {held:?}");
    assert_eq!(held[0].pid, guard.backend_pid());
    println!(
        "failover: old primary stopped in {stop_took:?}; loss heard {lost_after:?} and a new grant {granted_after:?} after the stop began ({} failed tries: {errors:?})",
        errors.len()
    );
    guard.release().await.unwrap();
}
