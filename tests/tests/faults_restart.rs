//! Fault: the server goes down (and comes back) while a body holds a lock.
//!
//! On a throwaway server the test owns: a holder runs a long body; the
//! server is stopped (`pg_ctl stop -m fast`, then, in a second cycle,
//! `-m immediate`, the crash-like stop). The holder must be told
//! (`Error::LockLost`) within the loss-detection bound; while the server is
//! down every call must fail with a typed error, each within 2 x the connect
//! timeout (no hang; the entry fails fast between reconnect attempts); once
//! the server is back, locks work again through the same `Locker` (no
//! re-install), which the test times.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use advisory_locked::{advisory_locked, Error, LockConfig, LockKey, Locker, Mode, Outcome};
use advisory_locked_tests::{
    advisory_locks, named, raw_connect, unique, wait_until_locked, wait_until_unlocked, Prng,
    ThrowawayServer,
};
use tokio::sync::Notify;

const POOL: &str = "faults_restart";
const BOUND: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const LIMIT: Duration = Duration::from_secs(15);
/// How long the test keeps calling while the server is down.
const OUTAGE: Duration = Duration::from_millis(1500);
/// At most this many calls during one outage.
const OUTAGE_CALLS: usize = 300;
/// How long recovery may take once the server accepts connections again
/// (reconnect backoff is at most 5 s, plus jitter, plus a connect).
const RECOVERY_LIMIT: Duration = Duration::from_secs(12);

#[advisory_locked(key = "{key}", pool = "faults_restart")]
async fn long_body(key: &str, entered: &Notify, finished: &AtomicBool) {
    entered.notify_one();
    tokio::time::sleep(Duration::from_secs(60)).await;
    finished.store(true, Ordering::SeqCst);
}

#[advisory_locked(key = "{key}", pool = "faults_restart")]
async fn quick_skip(key: &str) -> u8 {
    7
}

#[advisory_locked(key = "{key}", wait = "2s", pool = "faults_restart")]
async fn quick_wait(key: &str) -> u8 {
    8
}

/// What the calls made during an outage returned.
#[derive(Debug, Default)]
struct OutageTally {
    calls: usize,
    connect: usize,
    connect_timeout: usize,
    unavailable: usize,
    session_ended: usize,
    other: Vec<String>,
    slowest: Duration,
    total: Duration,
}

impl OutageTally {
    fn add(&mut self, took: Duration, e: &Error) {
        self.calls += 1;
        self.total += took;
        self.slowest = self.slowest.max(took);
        match e {
            Error::Connect { .. } => self.connect += 1,
            Error::ConnectTimeout { .. } => self.connect_timeout += 1,
            Error::Unavailable { .. } => self.unavailable += 1,
            Error::SessionEnded { .. } => self.session_ended += 1,
            other => self.other.push(other.to_string()),
        }
    }
}

/// Calls of every kind while the server is down: each must be an error,
/// typed, within 2 x the connect timeout.
async fn call_during_outage(locker: &Locker, rng: &mut Prng) -> OutageTally {
    let mut tally = OutageTally::default();
    let start = Instant::now();
    while start.elapsed() < OUTAGE && tally.calls < OUTAGE_CALLS {
        let key = unique("faults:restart:outage");
        let began = Instant::now();
        let result: Result<(), Error> = match rng.below(4) {
            0 => locker
                .try_lock(LockKey::named(key), Mode::Exclusive)
                .await
                .map(|g| assert!(g.is_none(), "a lock was granted with the server down")),
            1 => locker
                .lock(
                    LockKey::named(key),
                    Mode::Shared,
                    Some(Duration::from_secs(3)),
                )
                .await
                .map(|_| panic!("a lock was granted with the server down")),
            2 => quick_skip(&key)
                .await
                .map(|o| panic!("a body ran with the server down: {o:?}")),
            _ => quick_wait(&key)
                .await
                .map(|o| panic!("a body ran with the server down: {o:?}")),
        };
        let took = began.elapsed();
        let e = result.expect_err("a call succeeded with the server down");
        assert!(
            took < 2 * CONNECT_TIMEOUT,
            "a call took {took:?} to fail during the outage ({e})"
        );
        assert!(e.is_transient(), "{e:?}");
        tally.add(took, &e);
        tokio::time::sleep(Duration::from_millis(rng.below(10))).await;
    }
    tally
}

/// Locks held on one session while `recover` checks the other (more than
/// lanes need before a repeated key leaves a session; see
/// runtime/src/lanes.rs).
const ANCHORS: usize = 24;

/// Tries locks every 10 ms until both sessions of the entry serve again
/// (the slots back off independently): first `ANCHORS` fresh keys, held
/// (lanes pack them into one session), then 8 keys each taken, released and
/// taken again (a repeated key goes to the light session). Returns the time
/// to the first grant, the time until both sessions served, and the failed
/// tries.
async fn recover(locker: &Locker, server: &ThrowawayServer) -> (Duration, Duration, usize) {
    let start = Instant::now();
    let mut failures = 0;
    let mut first = None;
    let client = raw_connect(&server.url("postgres")).await;
    // One try: the holder's pid if granted (checked on the server), with
    // the guard if `keep` (else released); Err after a transient error.
    let mut anchors = Vec::new();
    let attempt = |key: LockKey, keep: bool| {
        let client = &client;
        let locker = locker.clone();
        async move {
            match locker.try_lock(key.clone(), Mode::Exclusive).await {
                Ok(Some(guard)) => {
                    let held = advisory_locks(client, &[key.id()]).await;
                    assert_eq!(
                        held.iter().map(|l| l.pid).collect::<Vec<_>>(),
                        vec![guard.backend_pid()],
                        "the lock after recovery is not on the restarted server"
                    );
                    let pid = guard.backend_pid();
                    if keep {
                        Ok((pid, Some(guard)))
                    } else {
                        guard.release().await.expect("release after recovery");
                        Ok((pid, None))
                    }
                }
                Ok(None) => panic!("a fresh key was busy"),
                Err(e) => {
                    assert!(e.is_transient(), "{e:?}");
                    assert!(
                        start.elapsed() < RECOVERY_LIMIT,
                        "locks did not work again {RECOVERY_LIMIT:?} after the server came back; last error: {e}"
                    );
                    Err(())
                }
            }
        }
    };
    let mut pids = std::collections::BTreeSet::new();
    while anchors.len() < ANCHORS {
        match attempt(LockKey::named(unique("faults:restart:anchor")), true).await {
            Ok((pid, guard)) => {
                first.get_or_insert(start.elapsed());
                pids.insert(pid);
                anchors.extend(guard);
            }
            Err(()) => {
                failures += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    assert_eq!(pids.len(), 1, "fresh held keys are packed: {pids:?}");
    for i in 0..8 {
        let key = LockKey::named(unique(&format!("faults:restart:recover:{i}")));
        // Granted twice: the second time it is a repeated key.
        let mut grants = 0;
        while grants < 2 {
            match attempt(key.clone(), false).await {
                Ok((pid, _)) => {
                    grants += 1;
                    if grants == 2 {
                        pids.insert(pid);
                    }
                }
                Err(()) => {
                    failures += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
    assert_eq!(
        pids.len(),
        2,
        "repeated keys did not run on the entry's other session: {pids:?}"
    );
    drop(anchors);
    (first.unwrap(), start.elapsed(), failures)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_is_told_to_holders_fails_fast_and_recovers() {
    let began = Instant::now();
    let mut server = tokio::task::spawn_blocking(ThrowawayServer::start)
        .await
        .unwrap();
    println!("throwaway server up in {:?}", began.elapsed());
    let locker = LockConfig::from_url(&server.url("postgres"))
        .unwrap()
        .name(POOL)
        .sessions(2)
        .connect_timeout(CONNECT_TIMEOUT)
        .loss_detection(BOUND)
        .install()
        .await
        .unwrap();
    let mut rng = Prng::seeded("faults_restart", 0xFA17_0002);

    for mode in ["fast", "immediate"] {
        let client = raw_connect(&server.url("postgres")).await;
        let key = unique("faults:restart:held");
        let entered = Arc::new(Notify::new());
        let finished = Arc::new(AtomicBool::new(false));
        let mut call = {
            let (key, entered, finished) = (key.clone(), entered.clone(), finished.clone());
            tokio::spawn(async move { long_body(&key, &entered, &finished).await })
        };
        tokio::select! {
            () = entered.notified() => {}
            r = &mut call => panic!("the holder's call ended before its body started: {r:?}"),
            () = tokio::time::sleep(LIMIT) => panic!("the body did not start"),
        }
        let held = wait_until_locked(&client, &[named(&key)], LIMIT).await;
        assert_eq!(held.len(), 1, "{held:?}");
        drop(client);

        // Down.
        let stopping = Instant::now();
        let stop = tokio::task::spawn_blocking(move || {
            server.stop(mode);
            server
        });
        let result = tokio::time::timeout(LIMIT, call)
            .await
            .expect("the holder was never told")
            .expect("the holder panicked");
        let told = stopping.elapsed();
        server = stop.await.unwrap();
        let stopped = stopping.elapsed();
        match &result {
            Err(Error::LockLost { key: k }) => assert_eq!(k, &key),
            other => panic!("stop -m {mode}: expected Err(LockLost), got {other:?}"),
        }
        assert!(!finished.load(Ordering::SeqCst));
        println!(
            "stop -m {mode}: holder told (LockLost) {:.1} ms after the stop began; server down after {:.1} ms",
            told.as_secs_f64() * 1e3,
            stopped.as_secs_f64() * 1e3
        );
        assert!(told < BOUND, "stop -m {mode}: told after {told:?}");

        // While down.
        let tally = call_during_outage(&locker, &mut rng).await;
        println!(
            "stop -m {mode}: {} calls during the outage, all errors: {} Connect, {} ConnectTimeout, {} Unavailable, {} SessionEnded, other {:?}; \
             per call: mean {:.3} ms, slowest {:.3} ms (limit 2 x connect timeout = {:?})",
            tally.calls,
            tally.connect,
            tally.connect_timeout,
            tally.unavailable,
            tally.session_ended,
            tally.other,
            tally.total.as_secs_f64() * 1e3 / tally.calls.max(1) as f64,
            tally.slowest.as_secs_f64() * 1e3,
            2 * CONNECT_TIMEOUT
        );
        assert!(tally.calls >= 10, "{tally:?}");
        assert!(tally.other.is_empty(), "unexpected errors: {tally:?}");

        // Up again.
        let starting = Instant::now();
        server = tokio::task::spawn_blocking(move || {
            server.start_again();
            server
        })
        .await
        .unwrap();
        let start_took = starting.elapsed();
        let (first, all, failures) = recover(&locker, &server).await;
        println!(
            "stop -m {mode}: server restarted in {:.1} ms; after it accepted connections, the first lock was granted in {:.1} ms, \
             locks on both sessions in {:.1} ms ({failures} failed tries before), same Locker",
            start_took.as_secs_f64() * 1e3,
            first.as_secs_f64() * 1e3,
            all.as_secs_f64() * 1e3
        );

        // The annotated functions work again too, and nothing is left held.
        let again = unique("faults:restart:again");
        assert!(matches!(
            tokio::time::timeout(LIMIT, quick_skip(&again))
                .await
                .expect("hung"),
            Ok(Outcome::Ran(7))
        ));
        assert_eq!(
            tokio::time::timeout(LIMIT, quick_wait(&again))
                .await
                .expect("hung")
                .expect("wait-mode call after recovery"),
            8
        );
        let client = raw_connect(&server.url("postgres")).await;
        let left = wait_until_unlocked(&client, &[named(&key), named(&again)], LIMIT).await;
        assert!(left.is_empty(), "{left:?}");
    }
    println!("faults_restart: {:?} in all", began.elapsed());
}
