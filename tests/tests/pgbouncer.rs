//! A real pgbouncer in front of the test server (README, "Guarantees and
//! non-guarantees"): in transaction (or statement) pooling mode session
//! advisory locks are granted to two clients at once, so configuring a lock
//! registry through such a proxy is refused with `Error::TransactionPooler`;
//! in session mode it works and locks exclude each other through the proxy.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use advisory_locked::{Error, LockConfig, LockKey, Mode};
use advisory_locked_tests::{
    advisory_locks, db_url, join_all, raw_connect, unique, wait_until_unlocked, Pgbouncer,
};
use tokio::task::JoinHandle;
use tokio_postgres::{Client, SimpleQueryMessage};

/// How many times each proxy configuration is configured against.
const ATTEMPTS: usize = 10;

/// The first row of a simple query, as text columns.
async fn row(client: &Client, sql: &str) -> Vec<String> {
    let messages = client.simple_query(sql).await.expect(sql);
    messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("").to_owned())
                    .collect(),
            ),
            _ => None,
        })
        .expect("no row")
}

/// Makes the proxy open `n` server connections and leave them idle in its
/// pool: `n` clients hold a transaction open at the same time.
async fn prewarm(url: &str, n: usize) {
    let mut clients = Vec::new();
    for _ in 0..n {
        clients.push(raw_connect(url).await);
    }
    let sleeping = clients
        .iter()
        .map(|c| c.simple_query("SELECT pg_sleep(0.2)"))
        .collect();
    for r in join_all(sleeping).await {
        r.expect("prewarm statement failed");
    }
}

/// Clients that send `SELECT 1` through the proxy without pause until
/// `stop`; returns how many statements they sent.
async fn keep_busy(url: &str, n: usize, stop: Arc<AtomicBool>) -> Vec<JoinHandle<u64>> {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let client = raw_connect(url).await;
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut sent = 0;
            while !stop.load(Ordering::Relaxed) {
                client.simple_query("SELECT 1").await.expect("busy client");
                sent += 1;
            }
            sent
        }));
    }
    tasks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_pooling_is_refused() {
    // (pgbouncer settings, idle server connections made beforehand, other
    // clients busy through the proxy meanwhile)
    let cases: [(&[&str], usize, usize); 5] = [
        (&["pool_mode = transaction", "default_pool_size = 1"], 0, 0),
        (&["pool_mode = transaction", "default_pool_size = 20"], 6, 0),
        (
            &[
                "pool_mode = transaction",
                "default_pool_size = 20",
                "server_round_robin = 1",
            ],
            6,
            0,
        ),
        (&["pool_mode = transaction", "default_pool_size = 4"], 0, 4),
        (&["pool_mode = statement", "default_pool_size = 4"], 0, 0),
    ];
    for (settings, idle, busy) in cases {
        let proxy = Pgbouncer::start(settings);
        let url = proxy.url();
        if idle > 0 {
            prewarm(&url, idle).await;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let busy = keep_busy(&url, busy, stop.clone()).await;
        let mut refused = 0;
        let mut other = Vec::new();
        let mut took = Duration::ZERO;
        for _ in 0..ATTEMPTS {
            let start = Instant::now();
            let result = LockConfig::from_url(&url)
                .unwrap()
                .connect_timeout(Duration::from_secs(10))
                .connect()
                .await;
            took += start.elapsed();
            match result {
                Err(Error::TransactionPooler { target }) => {
                    assert!(target.starts_with("127.0.0.1:"), "{target}");
                    refused += 1;
                }
                Err(e) => other.push(e.to_string()),
                Ok(_) => other.push("accepted".to_owned()),
            }
        }
        stop.store(true, Ordering::Relaxed);
        let mut sent = 0;
        for task in busy {
            sent += task.await.unwrap();
        }
        println!(
            "{settings:?}, {idle} idle server connections, busy clients sent {sent} statements: \
             refused {refused} of {ATTEMPTS}, mean {:?} a configuration; otherwise: {other:?}",
            took / ATTEMPTS as u32
        );
        assert_eq!(
            refused,
            ATTEMPTS,
            "{settings:?}: {other:?}\n{}",
            proxy.log()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_through_a_transaction_pooler_fails_and_installs_nothing() {
    let proxy = Pgbouncer::start(&["pool_mode = transaction"]);
    let name = unique("pgbouncer-install");
    let err = LockConfig::from_url(&proxy.url())
        .unwrap()
        .name(name.clone())
        .install()
        .await
        .expect_err("a transaction pooler must be refused");
    let text = err.to_string();
    assert!(matches!(err, Error::TransactionPooler { .. }), "{err:?}");
    assert!(!err.is_transient(), "a configuration mistake: {err:?}");
    assert!(
        text.contains("connect the lock registry directly to PostgreSQL")
            && text.contains("session mode"),
        "the message says what to do: {text}"
    );
    assert!(matches!(
        advisory_locked::locker(&name),
        Err(Error::NotConfigured { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_pooling_is_accepted_and_locks_exclude_through_it() {
    let proxy = Pgbouncer::start(&["pool_mode = session", "default_pool_size = 10"]);
    let connect = || async {
        LockConfig::from_url(&proxy.url())
            .unwrap()
            .sessions(2)
            .connect()
            .await
            .unwrap_or_else(|e| panic!("session mode must be accepted: {e}\n{}", proxy.log()))
    };
    let (a, b) = (connect().await, connect().await);
    let direct = raw_connect(&db_url()).await;
    let key = LockKey::named(unique("pgbouncer-session"));

    let guard = a
        .try_lock(key.clone(), Mode::Exclusive)
        .await
        .unwrap()
        .expect("a free key");
    let held = advisory_locks(&direct, &[key.id()]).await;
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0].pid, guard.backend_pid(), "held by A's backend");
    assert!(held[0].granted);
    assert!(
        b.try_lock(key.clone(), Mode::Exclusive)
            .await
            .unwrap()
            .is_none(),
        "B, through the same proxy, must find the key busy"
    );

    guard.release().await.unwrap();
    let guard = b
        .try_lock(key.clone(), Mode::Exclusive)
        .await
        .unwrap()
        .expect("free again after A's release");
    assert!(a
        .try_lock(key.clone(), Mode::Exclusive)
        .await
        .unwrap()
        .is_none());
    guard.release().await.unwrap();
    let left = wait_until_unlocked(&direct, &[key.id()], Duration::from_secs(5)).await;
    assert!(left.is_empty(), "{left:?}");
}

/// Install holds three server connections at once (its first lock session
/// and two probes). Through session pooling with a pool of two, the second
/// probe waits for a server connection that never comes free: a typed
/// `PoolExhausted` naming the pool size, after the connect timeout, and
/// nothing installed; with a pool of three, install succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_pool_too_small_for_install_is_named() {
    let timeout = Duration::from_secs(2);
    let small = Pgbouncer::start(&["pool_mode = session", "default_pool_size = 2"]);
    let name = unique("pgbouncer-small");
    let err = LockConfig::from_url(&small.url())
        .unwrap()
        .name(name.clone())
        .connect_timeout(timeout)
        .install()
        .await
        .expect_err("a pool of 2 can't hold install's 3 connections");
    match &err {
        Error::PoolExhausted {
            connections, after, ..
        } => assert_eq!((*connections, *after), (3, timeout), "{err:?}"),
        other => panic!("expected PoolExhausted, got {other:?}\n{}", small.log()),
    }
    let text = err.to_string();
    assert!(
        text.contains("default_pool_size") && text.contains("at least 3"),
        "the message names the pool size: {text}"
    );
    assert!(matches!(
        advisory_locked::locker(&name),
        Err(Error::NotConfigured { .. })
    ));
    drop(small);

    let enough = Pgbouncer::start(&["pool_mode = session", "default_pool_size = 3"]);
    let locker = LockConfig::from_url(&enough.url())
        .unwrap()
        .connect_timeout(timeout)
        .connect()
        .await
        .unwrap_or_else(|e| panic!("a pool of 3 is enough: {e:?}\n{}", enough.log()));
    let key = LockKey::named(unique("pgbouncer-small"));
    let guard = locker
        .try_lock(key, Mode::Exclusive)
        .await
        .unwrap()
        .expect("a free key");
    guard.release().await.unwrap();
}

/// The hazard that the refusal prevents, with plain connections through a
/// transaction-mode proxy (docs/design.md): A takes a key and goes idle; B lands
/// on the same server backend and is granted the same key; after A unlocks
/// and both clients are gone, the key stays held by the pooled backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_pooling_grants_one_session_lock_to_two_clients() {
    let proxy = Pgbouncer::start(&["pool_mode = transaction", "default_pool_size = 1"]);
    let direct = raw_connect(&db_url()).await;
    let k = advisory_locked::key_hash(&unique("pgbouncer-hazard"));
    let key = advisory_locked::KeyId::Int(k);
    let take = format!("SELECT pg_try_advisory_lock({k}), pg_backend_pid()");

    let a = raw_connect(&proxy.url()).await;
    let b = raw_connect(&proxy.url()).await;
    let got_a = row(&a, &take).await;
    let got_b = row(&b, &take).await;
    println!("A: {got_a:?}, B: {got_b:?}");
    assert_eq!(got_a[0], "t", "A takes the free key");
    assert_eq!(got_b[0], "t", "B is granted the key A holds");
    assert_eq!(got_a[1], got_b[1], "both on one server backend");

    assert_eq!(
        row(&a, &format!("SELECT pg_advisory_unlock({k})")).await[0],
        "t"
    );
    drop((a, b));
    // Once the proxy has seen both clients go, the key is still held.
    let gone = Instant::now();
    while proxy.clients().await > 0 {
        assert!(
            gone.elapsed() < Duration::from_secs(10),
            "the clients never left the proxy"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let held = advisory_locks(&direct, &[key]).await;
    assert_eq!(
        held.len(),
        1,
        "both clients are gone, the key is still held by the pooled backend: {held:?}"
    );
    assert_eq!(held[0].pid.to_string(), got_a[1]);

    drop(proxy); // its server connections close: the backend frees the lock
    let left = wait_until_unlocked(&direct, &[key], Duration::from_secs(10)).await;
    assert!(left.is_empty(), "{left:?}");
}
