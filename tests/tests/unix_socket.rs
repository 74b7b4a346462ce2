//! Lock sessions over a Unix-domain socket: the lock sessions open their
//! own sockets (see runtime/src/wire.rs), for a `host` that is a directory
//! as well as for TCP.

use std::time::Duration;

use advisory_locked::{LockConfig, LockKey, Mode};
use advisory_locked_tests::{
    advisory_locks, raw_connect, unique, wait_until_unlocked, ThrowawayServer,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_work_over_a_unix_socket() {
    let server = ThrowawayServer::start();
    let admin = raw_connect(&server.url("postgres")).await;
    let config = format!(
        "host={} port={} user=postgres dbname=postgres",
        server.socket_dir().display(),
        server.port()
    );
    let locker = LockConfig::from_url(&config)
        .unwrap()
        .name(unique("unix"))
        .connect()
        .await
        .expect("a locker over the Unix socket");
    let key = LockKey::named(unique("unix:key"));
    let guard = locker
        .try_lock(key.clone(), Mode::Exclusive)
        .await
        .unwrap()
        .expect("free");
    let held = advisory_locks(&admin, &[key.id()]).await;
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0].pid, guard.backend_pid());
    // The holder's connection came over the socket: no client address.
    let over_socket: bool = admin
        .query_one(
            "SELECT client_addr IS NULL FROM pg_stat_activity WHERE pid = $1",
            &[&guard.backend_pid()],
        )
        .await
        .unwrap()
        .get(0);
    assert!(over_socket, "the lock session did not use the Unix socket");
    // Busy for another locker on the same socket, free once released.
    let other = LockConfig::from_url(&config)
        .unwrap()
        .name(unique("unix-other"))
        .connect()
        .await
        .unwrap();
    assert!(other
        .try_lock(key.clone(), Mode::Exclusive)
        .await
        .unwrap()
        .is_none());
    guard.release().await.unwrap();
    let left = wait_until_unlocked(&admin, &[key.id()], Duration::from_secs(5)).await;
    assert!(left.is_empty(), "{left:?}");
    let again = other
        .try_lock(key, Mode::Exclusive)
        .await
        .unwrap()
        .expect("free after the release");
    again.release().await.unwrap();
}
