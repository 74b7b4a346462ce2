//! A lock session that once held thousands of locks is replaced when it is
//! empty again: PostgreSQL's backend-local lock table never shrinks, and
//! every statement's end walks it, so the old backend stays slower for good.

use std::time::{Duration, Instant};

use advisory_locked::{LockConfig, LockKey, Mode};
use advisory_locked_tests::{db_url, db_url_with_app, raw_connect, unique};

const BOUND: Duration = Duration::from_secs(20);

async fn backends_named(client: &tokio_postgres::Client, app: &str) -> Vec<i32> {
    client
        .query(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1 ORDER BY pid",
            &[&app],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_session_that_held_thousands_of_locks_is_replaced() {
    let client = raw_connect(&db_url()).await;
    let app = unique("retire");
    let locker = LockConfig::from_url(&db_url_with_app(&app))
        .unwrap()
        .sessions(1)
        .wait_sessions(0)
        .connect()
        .await
        .unwrap();
    let base = unique("retire-key");
    let mut guards = Vec::new();
    for i in 0..1500 {
        let key = LockKey::named(format!("{base}:{i}"));
        guards.push(
            locker
                .try_lock(key, Mode::Exclusive)
                .await
                .unwrap()
                .expect("free"),
        );
    }
    let old = guards[0].backend_pid();
    assert!(guards.iter().all(|g| g.backend_pid() == old));
    for g in guards {
        g.release().await.unwrap();
    }
    // The next lock starts the replacement; later ones land on the fresh
    // session, and the old backend goes away.
    let start = Instant::now();
    let fresh = loop {
        let key = LockKey::named(unique("retire-next"));
        let g = locker
            .try_lock(key, Mode::Exclusive)
            .await
            .unwrap()
            .expect("free");
        let pid = g.backend_pid();
        g.release().await.unwrap();
        if pid != old {
            break pid;
        }
        assert!(
            start.elapsed() < BOUND,
            "the bloated session {old} was never replaced"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    loop {
        let pids = backends_named(&client, &app).await;
        if !pids.contains(&old) {
            assert!(pids.contains(&fresh), "{pids:?}");
            break;
        }
        assert!(
            start.elapsed() < BOUND,
            "the old backend {old} stays: {pids:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A session that never held many locks is kept.
    let key = LockKey::named(unique("retire-kept"));
    let g = locker
        .try_lock(key, Mode::Exclusive)
        .await
        .unwrap()
        .expect("free");
    assert_eq!(g.backend_pid(), fresh);
    g.release().await.unwrap();
}
