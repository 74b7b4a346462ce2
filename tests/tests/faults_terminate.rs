//! Fault: the holder's lock session is killed with `pg_terminate_backend`
//! while its body runs and a second process waits for the same key.
//!
//! The server frees the lock the moment the backend exits; the holder only
//! learns it when its connection reports the end (the FATAL message and the
//! closed socket arrive at once on loopback). Between the two the holder's
//! body may still run, and the waiter may already hold the lock: that window
//! is the only overlap the abort policy allows. The test measures it — the
//! holder's last body activity (the body stamps the clock and awaits every
//! millisecond) against the waiter's acquisition — and checks it is at most
//! the measured detection time + 20 ms, that the holder was told with
//! `Error::LockLost` within the loss-detection bound, and that its body never
//! ran to its end.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use advisory_locked::{advisory_locked, Error, LockConfig};
use advisory_locked_tests::{
    db_url, named, next_line, raw_connect, terminate_backend, unique, unix_micros,
    wait_until_locked, wait_until_unlocked, Prng,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::Notify;

const WORKER: &str = env!("CARGO_BIN_EXE_fault_lock");
const POOL: &str = "faults_terminate";
/// The loss-detection bound configured for the holder's entry.
const BOUND: Duration = Duration::from_secs(1);
/// The slack allowed on top of the measured detection time.
const EPSILON_US: i64 = 20_000;
const LIMIT: Duration = Duration::from_secs(10);
const ROUNDS: usize = 6;

#[advisory_locked(key = "{key}", wait = "10s", pool = "faults_terminate")]
async fn holder(key: &str, entered: &Notify, last: &AtomicI64, finished: &AtomicBool) {
    entered.notify_one();
    let start = Instant::now();
    // At most 20 s: the test kills the session long before.
    while start.elapsed() < Duration::from_secs(20) {
        last.store(unix_micros(), Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    finished.store(true, Ordering::SeqCst);
}

fn field(line: &str, word: &str, i: usize) -> i64 {
    let mut parts = line.split_whitespace();
    assert_eq!(parts.next(), Some(word), "unexpected worker line {line:?}");
    parts
        .nth(i)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad worker line {line:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_holder_is_told_and_overlaps_the_next_holder_at_most_by_its_detection_time() {
    LockConfig::from_url(&db_url())
        .unwrap()
        .name(POOL)
        .sessions(1)
        .loss_detection(BOUND)
        .install()
        .await
        .unwrap();
    let client = raw_connect(&db_url()).await;
    let mut rng = Prng::seeded("faults_terminate", 0xFA17_0001);
    let mut detections = Vec::new();
    let mut overlaps = Vec::new();

    for round in 0..ROUNDS {
        let key = unique("faults:terminate");
        let id = named(&key);
        let entered = Arc::new(Notify::new());
        let last = Arc::new(AtomicI64::new(0));
        let finished = Arc::new(AtomicBool::new(false));
        let call = {
            let (key, entered, last, finished) =
                (key.clone(), entered.clone(), last.clone(), finished.clone());
            tokio::spawn(async move { holder(&key, &entered, &last, &finished).await })
        };
        tokio::time::timeout(LIMIT, entered.notified())
            .await
            .expect("the holder's body did not start");
        let held = wait_until_locked(&client, &[id], LIMIT).await;
        assert_eq!(held.len(), 1, "{held:?}");
        let holder_pid = held[0].pid;

        // The second process waits for the key in wait mode.
        let mut child = Command::new(WORKER)
            .args([db_url().as_str(), key.as_str(), "50"])
            .kill_on_drop(true)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("cannot start the worker");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        next_line(&mut lines, "ready", LIMIT).await;
        // Let it try and back off for a random while (its retries then come
        // every few to 250 ms, so the kill falls at a random point of them).
        tokio::time::sleep(Duration::from_millis(30 + rng.below(200))).await;
        assert!(!finished.load(Ordering::SeqCst));

        let kill_us = unix_micros();
        let killed = Instant::now();
        assert!(terminate_backend(&client, holder_pid).await);
        let result = tokio::time::timeout(LIMIT, call)
            .await
            .expect("the holder's call did not return")
            .expect("the holder's call panicked");
        let detection = killed.elapsed();
        let told_us = unix_micros();
        match &result {
            Err(Error::LockLost { key: k }) => assert_eq!(k, &key),
            other => panic!("round {round}: expected Err(LockLost), got {other:?}"),
        }

        let acquired = next_line(&mut lines, "acquired", LIMIT).await;
        let acquired_us = field(&acquired, "acquired", 0);
        let waiter_pid = field(&acquired, "acquired", 1) as i32;
        assert_ne!(waiter_pid, holder_pid);
        let released = next_line(&mut lines, "released", LIMIT).await;
        let status = tokio::time::timeout(LIMIT, child.wait())
            .await
            .expect("the worker did not exit")
            .expect("worker wait");
        assert!(status.success(), "worker failed: {status} ({released})");

        let last_us = last.load(Ordering::SeqCst);
        let detection_us = detection.as_micros() as i64;
        let overlap_us = last_us - acquired_us;
        println!(
            "round {round}: LockLost {:.3} ms after pg_terminate_backend; the waiter got the lock {:.3} ms after it; \
             the holder's last body activity {:.3} ms after the kill, {:.3} ms before it was told; \
             overlap (last activity - waiter's acquisition) = {:.3} ms (allowed: detection + 20 ms = {:.3} ms)",
            detection_us as f64 / 1e3,
            (acquired_us - kill_us) as f64 / 1e3,
            (last_us - kill_us) as f64 / 1e3,
            (told_us - last_us) as f64 / 1e3,
            overlap_us as f64 / 1e3,
            (detection_us + EPSILON_US) as f64 / 1e3,
        );
        assert!(
            detection < BOUND,
            "round {round}: the holder was told {detection:?} after the kill (bound {BOUND:?})"
        );
        assert!(
            overlap_us <= detection_us + EPSILON_US,
            "round {round}: the holder's body ran {overlap_us} us past the waiter's acquisition \
             (detection {detection_us} us + {EPSILON_US} us allowed)"
        );
        assert!(
            last_us <= told_us,
            "round {round}: the body ran after the call returned LockLost"
        );
        // The body never runs again once it was stopped.
        let after = last.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            last.load(Ordering::SeqCst),
            after,
            "round {round}: the body still runs"
        );
        assert!(
            !finished.load(Ordering::SeqCst),
            "round {round}: the body ran to its end"
        );
        let left = wait_until_unlocked(&client, &[id], LIMIT).await;
        assert!(left.is_empty(), "round {round}: {left:?}");
        detections.push(detection_us);
        overlaps.push(overlap_us);
    }
    detections.sort();
    overlaps.sort();
    println!(
        "faults_terminate: {ROUNDS} rounds; detection after pg_terminate_backend (us) {detections:?}; \
         overlap (us, <= 0 means none) {overlaps:?}"
    );
}
