//! Loss is never silent (docs/design.md, invariant 3): when the session holding a
//! lock dies (here: `pg_terminate_backend`), the holder is told within a
//! bounded time — an annotated body is stopped and the call returns
//! `Error::LockLost` — and later calls work on a fresh session.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use advisory_locked::{advisory_locked, Error, LockConfig, LockKey, Mode, Outcome};
use advisory_locked_tests::{
    db_url, named, raw_connect, unique, wait_until_locked, wait_until_unlocked,
};
use tokio::sync::Notify;
use tokio_postgres::Client;

const BOUND: Duration = Duration::from_secs(5);

async fn terminate(client: &Client, pid: i32) {
    let ok: bool = client
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .expect("pg_terminate_backend")
        .get(0);
    assert!(ok, "pg_terminate_backend({pid}) found no such backend");
}

#[advisory_locked(key = "{key}", pool = "loss_attr")]
async fn long_body(key: &str, entered: &Notify, finished: &AtomicBool) -> u32 {
    entered.notify_one();
    tokio::time::sleep(Duration::from_secs(30)).await;
    finished.store(true, Ordering::SeqCst);
    1
}

#[advisory_locked(key = "{key}", wait = "10s", pool = "loss_attr")]
async fn short_body(key: &str) -> i32 {
    // The pid of the session holding the key now.
    let client = raw_connect(&db_url()).await;
    let held = wait_until_locked(&client, &[named(key)], Duration::from_millis(1)).await;
    assert_eq!(held.len(), 1, "{held:?}");
    held[0].pid
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_session_stops_the_body_with_lock_lost() {
    LockConfig::from_url(&db_url())
        .unwrap()
        .name("loss_attr")
        .sessions(1)
        .install()
        .await
        .unwrap();
    let client = raw_connect(&db_url()).await;
    let key = unique("loss:attr");
    let id = named(&key);
    let entered = Arc::new(Notify::new());
    let finished = Arc::new(AtomicBool::new(false));

    let call = {
        let (key, entered, finished) = (key.clone(), entered.clone(), finished.clone());
        tokio::spawn(async move { long_body(&key, &entered, &finished).await })
    };
    tokio::time::timeout(BOUND, entered.notified())
        .await
        .expect("the body did not start");
    let held = wait_until_locked(&client, &[id], BOUND).await;
    assert_eq!(held.len(), 1, "{held:?}");
    let old_pid = held[0].pid;

    let killed = Instant::now();
    terminate(&client, old_pid).await;
    let result = tokio::time::timeout(BOUND, call)
        .await
        .expect("the holder was not told of the lost lock within 5 s")
        .expect("the call panicked");
    let told_after = killed.elapsed();
    println!("LockLost {told_after:?} after pg_terminate_backend: {result:?}");
    match &result {
        Err(Error::LockLost { key: k }) => assert_eq!(k, &key),
        other => panic!("expected Err(LockLost), got {other:?}"),
    }
    assert!(result.as_ref().unwrap_err().is_transient());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !finished.load(Ordering::SeqCst),
        "the body went on after its lock was lost"
    );

    // The server freed the lock with the session ...
    let left = wait_until_unlocked(&client, &[id], BOUND).await;
    assert!(left.is_empty(), "{left:?}");
    // ... and the next call runs, on a fresh session.
    let new_pid = tokio::time::timeout(BOUND, short_body(&key))
        .await
        .expect("the next call hung")
        .expect("the next call failed");
    assert_ne!(new_pid, old_pid, "the next call must run on a new session");
    let entered = Notify::new();
    let finished = AtomicBool::new(false);
    // And skip mode works again too (a quick body this time).
    let quick = tokio::time::timeout(
        Duration::from_millis(300),
        long_body(&key, &entered, &finished),
    )
    .await;
    assert!(
        quick.is_err(),
        "the 30 s body was cut by the test's own timeout"
    );
    let left = wait_until_unlocked(&client, &[id], BOUND).await;
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn a_guard_learns_its_session_died() {
    let locker = LockConfig::from_url(&db_url())
        .unwrap()
        .sessions(1)
        .connect()
        .await
        .unwrap();
    let client = raw_connect(&db_url()).await;
    let key = LockKey::named(unique("loss:guard"));

    let guard = locker
        .try_lock(key.clone(), Mode::Exclusive)
        .await
        .unwrap()
        .expect("free key");
    assert!(guard.is_held());
    let old_pid = guard.backend_pid();
    let held = wait_until_locked(&client, &[key.id()], BOUND).await;
    assert_eq!(
        held.iter().map(|l| l.pid).collect::<Vec<_>>(),
        vec![old_pid]
    );

    let killed = Instant::now();
    terminate(&client, old_pid).await;
    tokio::time::timeout(BOUND, guard.lost())
        .await
        .expect("guard.lost() did not resolve within 5 s");
    println!(
        "guard.lost() {:?} after pg_terminate_backend",
        killed.elapsed()
    );
    assert!(!guard.is_held());
    assert!(matches!(guard.release().await, Err(Error::LockLost { .. })));

    // The next lock comes from a fresh session.
    let guard = tokio::time::timeout(
        BOUND,
        locker.lock(key.clone(), Mode::Exclusive, Some(BOUND)),
    )
    .await
    .expect("lock hung")
    .expect("lock on a fresh session");
    assert_ne!(guard.backend_pid(), old_pid);
    assert!(guard.is_held());
    guard.release().await.unwrap();
    let left = wait_until_unlocked(&client, &[key.id()], BOUND).await;
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn a_session_killed_while_idle_is_replaced_transparently() {
    LockConfig::from_url(&db_url())
        .unwrap()
        .name("loss_idle")
        .sessions(1)
        .install()
        .await
        .unwrap();
    #[advisory_locked(key = "{key}", pool = "loss_idle")]
    async fn f(key: &str) -> i32 {
        let client = raw_connect(&db_url()).await;
        wait_until_locked(&client, &[named(key)], BOUND).await[0].pid
    }
    let client = raw_connect(&db_url()).await;
    let key = unique("loss:idle");
    for round in 0..3 {
        let pid = f(&key).await.unwrap().ran().expect("free key");
        terminate(&client, pid).await;
        // No pause: the next call may still find the dead session first.
        let next = tokio::time::timeout(BOUND, f(&key)).await.expect("hung");
        match next {
            Ok(Outcome::Ran(new_pid)) => assert_ne!(new_pid, pid, "round {round}"),
            other => panic!("round {round}: a call after an idle session died must run on a new one, got {other:?}"),
        }
    }
}

#[advisory_locked(key = "{key}", pool = "loss_continue", on_lost = "continue")]
async fn finishing_body(key: &str, entered: &Notify, go_on: &Notify) -> (bool, bool) {
    let state = advisory_locked::current_lock().expect("a body has its current lock");
    assert_eq!(state.key().name(), key);
    let held_before = state.is_held();
    entered.notify_one();
    go_on.notified().await;
    // The session was killed meanwhile: the body is still running, and sees it.
    tokio::time::timeout(BOUND, state.lost())
        .await
        .expect("the body's lock state never turned lost");
    (held_before, state.is_held())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_lost_continue_lets_the_body_finish_and_see_the_loss() {
    LockConfig::from_url(&db_url())
        .unwrap()
        .name("loss_continue")
        .sessions(1)
        .install()
        .await
        .unwrap();
    let client = raw_connect(&db_url()).await;
    let key = unique("loss:continue");
    let (entered, go_on) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let call = {
        let (key, entered, go_on) = (key.clone(), entered.clone(), go_on.clone());
        tokio::spawn(async move { finishing_body(&key, &entered, &go_on).await })
    };
    tokio::time::timeout(BOUND, entered.notified())
        .await
        .expect("the body did not start");
    let held = wait_until_locked(&client, &[named(&key)], BOUND).await;
    assert_eq!(held.len(), 1, "{held:?}");
    terminate(&client, held[0].pid).await;
    go_on.notify_one();
    let result = tokio::time::timeout(BOUND, call)
        .await
        .expect("the body did not finish")
        .expect("the call panicked");
    // The body ran to its end and its value came back.
    match result {
        Ok(Outcome::Ran((held_before, held_after))) => {
            assert!(held_before);
            assert!(!held_after);
        }
        other => panic!("expected Ran, got {other:?}"),
    }
    assert!(advisory_locked::current_lock().is_none());
}
