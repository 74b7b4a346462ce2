//! Fault: a holder PROCESS is killed with SIGKILL while it holds a lock.
//!
//! Its kernel closes its sockets, so the server sees the lock session's
//! connection end at once and frees the lock; a waiter in another process
//! (here: a `Locker` of the test process, in wait mode) gets the key: at
//! once if it waits on the server on a wait session (the default), else at
//! its next retry — no release notifies it, so its backoff (at most 250 ms
//! plus jitter) bounds the handover. The test measures when the server
//! dropped the dead holder's lock and when the waiter got it, and asserts
//! < 5 s.

use std::time::{Duration, Instant};

use advisory_locked::{LockConfig, LockKey, Mode};
use advisory_locked_tests::{
    advisory_locks, db_url, next_line, raw_connect, unique, wait_until_unlocked, Prng,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const WORKER: &str = env!("CARGO_BIN_EXE_fault_lock");
const LIMIT: Duration = Duration::from_secs(10);
/// The documented bound for a killed process on the same host.
const HANDOVER_BOUND: Duration = Duration::from_secs(5);
const ROUNDS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_holder_hands_its_lock_to_a_waiting_process() {
    let url = db_url();
    let client = raw_connect(&url).await;
    let waiter = LockConfig::from_url(&url)
        .unwrap()
        .sessions(1)
        .connect()
        .await
        .unwrap();
    let mut rng = Prng::seeded("faults_kill9", 0xFA17_0009);
    let mut figures = Vec::new();

    for round in 0..ROUNDS {
        let key = LockKey::named(unique("faults:kill9"));
        let mut child = Command::new(WORKER)
            .args([url.as_str(), key.name(), "60000"])
            .kill_on_drop(true)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("cannot start the holder");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = next_line(&mut lines, "ready", LIMIT).await;
        assert!(ready.starts_with("ready "), "{ready}");
        let acquired = next_line(&mut lines, "acquired", LIMIT).await;
        let holder_pid: i32 = acquired
            .split_whitespace()
            .nth(2)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad holder line {acquired:?}"));
        let held = advisory_locks(&client, &[key.id()]).await;
        assert_eq!(
            held.iter().map(|l| (l.pid, l.granted)).collect::<Vec<_>>(),
            vec![(holder_pid, true)]
        );

        // The waiter, in wait mode, retrying with backoff.
        let wait = {
            let (waiter, key) = (waiter.clone(), key.clone());
            tokio::spawn(async move {
                let guard = waiter.lock(key, Mode::Exclusive, Some(LIMIT)).await;
                (Instant::now(), guard)
            })
        };
        tokio::time::sleep(Duration::from_millis(50 + rng.below(300))).await;
        assert!(
            !wait.is_finished(),
            "round {round}: the waiter got a held lock"
        );

        let killed = Instant::now();
        child.start_kill().expect("SIGKILL");
        // When the server stopped showing the dead holder's lock.
        let mut freed = None;
        while killed.elapsed() < LIMIT {
            let held = advisory_locks(&client, &[key.id()]).await;
            if !held.iter().any(|l| l.pid == holder_pid) {
                freed = Some(killed.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let freed = freed.expect("the server kept the killed holder's lock for 10 s");
        let (got_at, guard) = tokio::time::timeout(LIMIT, wait)
            .await
            .expect("the waiter hung")
            .expect("the waiter panicked");
        let guard = guard.unwrap_or_else(|e| panic!("round {round}: the waiter failed: {e}"));
        let handover = got_at.duration_since(killed);
        let status = tokio::time::timeout(LIMIT, child.wait())
            .await
            .expect("the killed holder did not go")
            .expect("wait");
        assert!(!status.success(), "the holder was not killed: {status}");
        assert_ne!(guard.backend_pid(), holder_pid);
        println!(
            "round {round}: SIGKILL -> server freed the lock after {:.3} ms, waiter got it after {:.3} ms",
            freed.as_secs_f64() * 1e3,
            handover.as_secs_f64() * 1e3
        );
        assert!(
            handover < HANDOVER_BOUND,
            "round {round}: handover took {handover:?}"
        );
        guard.release().await.unwrap();
        let left = wait_until_unlocked(&client, &[key.id()], LIMIT).await;
        assert!(left.is_empty(), "round {round}: {left:?}");
        figures.push((freed, handover));
    }
    println!("faults_kill9: (server freed, waiter got it) per round: {figures:?}");
}
