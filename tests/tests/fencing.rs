//! Fencing tokens (`LockConfig::fencing_tokens`): every grant of a key gets
//! a token larger than every earlier grant's — across processes, after a
//! lock is lost, and for both key spaces — read from the guard or, in an
//! annotated body, from `current_lock()`.

use std::time::Duration;

use advisory_locked::{advisory_locked, LockConfig, LockKey, Mode, Outcome};
use advisory_locked_tests::workers::{fence_rounds, run_processes};
use advisory_locked_tests::{db_url, raw_connect, unique, ScratchTable};

async fn fenced(name: &str) -> advisory_locked::Locker {
    LockConfig::from_url(&db_url())
        .unwrap()
        .name(name)
        .fencing_tokens(true)
        .connect()
        .await
        .expect("a fenced entry connects (and creates its table)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_grow_with_every_grant_and_survive_lock_loss() {
    let a = fenced("fence-a").await;
    let b = fenced("fence-b").await;
    let key = LockKey::named(unique("fence:grow"));
    let admin = raw_connect(&db_url()).await;

    let mut last = 0;
    for i in 0..20 {
        let locker = if i % 2 == 0 { &a } else { &b };
        let guard = locker
            .try_lock(key.clone(), Mode::Exclusive)
            .await
            .unwrap()
            .expect("free");
        let token = guard.fencing_token().expect("a token");
        assert!(token > last, "grant {i}: token {token} after {last}");
        assert_eq!(guard.state().fencing_token(), Some(token));
        last = token;
        if i % 5 == 4 {
            // Lose it: the server ends the session; the next grant (on a
            // fresh session) still gets a larger token.
            let pid = guard.backend_pid();
            let _: bool = admin
                .query_one("SELECT pg_terminate_backend($1)", &[&pid])
                .await
                .unwrap()
                .get(0);
            tokio::time::timeout(Duration::from_secs(5), guard.lost())
                .await
                .expect("the loss is noticed");
            assert!(!guard.is_held());
            drop(guard);
            // The client hears the FATAL before the dying server process
            // frees its locks: the next grant is tried once it has.
            let left = advisory_locked_tests::wait_until_unlocked(
                &admin,
                &[key.id()],
                Duration::from_secs(5),
            )
            .await;
            assert!(left.is_empty(), "still held after the loss: {left:?}");
        } else {
            guard.release().await.unwrap();
        }
    }
    // The row the tokens live in.
    let stored: i64 = admin
        .query_one(
            "SELECT token FROM advisory_locked_fence WHERE space = 1 AND key = $1",
            &[&match key.id() {
                advisory_locked::KeyId::Int(k) => k,
                advisory_locked::KeyId::Pair(..) => unreachable!(),
            }],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, last);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_takes_no_token_and_pairs_have_their_own() {
    let a = fenced("fence-busy-a").await;
    let b = fenced("fence-busy-b").await;
    let name = unique("fence:busy");
    let key = LockKey::named(name.clone());
    let first = a
        .try_lock(key.clone(), Mode::Exclusive)
        .await
        .unwrap()
        .unwrap();
    let t1 = first.fencing_token().unwrap();
    for _ in 0..5 {
        assert!(b
            .try_lock(key.clone(), Mode::Exclusive)
            .await
            .unwrap()
            .is_none());
    }
    first.release().await.unwrap();
    let second = b
        .try_lock(key.clone(), Mode::Exclusive)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        second.fencing_token(),
        Some(t1 + 1),
        "busy tries took no token"
    );
    second.release().await.unwrap();

    // A pair key has a counter of its own (space 2).
    let pair = LockKey::pair(std::process::id() as i32, 77);
    let p1 = a
        .try_lock(pair.clone(), Mode::Exclusive)
        .await
        .unwrap()
        .unwrap();
    let pt1 = p1.fencing_token().unwrap();
    drop(p1);
    let p2 = b
        .lock(pair.clone(), Mode::Exclusive, Some(Duration::from_secs(5)))
        .await
        .unwrap();
    assert!(p2.fencing_token().unwrap() > pt1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_without_fencing_has_no_token() {
    let plain = LockConfig::from_url(&db_url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let guard = plain
        .try_lock(LockKey::named(unique("fence:none")), Mode::Exclusive)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(guard.fencing_token(), None);
}

#[advisory_locked(key = "{key}", pool = "fenced_attr")]
async fn token_in_body(key: &str) -> Option<i64> {
    advisory_locked::current_lock().and_then(|l| l.fencing_token())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_body_reads_its_token() {
    LockConfig::from_url(&db_url())
        .unwrap()
        .name("fenced_attr")
        .fencing_tokens(true)
        .install()
        .await
        .unwrap();
    let key = unique("fence:attr");
    let mut last = 0;
    for _ in 0..5 {
        let Outcome::Ran(Some(token)) = token_in_body(&key).await.unwrap() else {
            panic!("the body ran with a token");
        };
        assert!(token > last);
        last = token;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_strictly_increase_across_processes() {
    let admin = raw_connect(&db_url()).await;
    let table = ScratchTable::create(
        &admin,
        "fence_rounds",
        "(n bigserial PRIMARY KEY, token int8 NOT NULL, pid int4 NOT NULL)",
    )
    .await;
    let key = unique("fence:procs");
    const PROCESSES: usize = 4;
    const ROUNDS: u32 = 50;
    let args = vec![table.name.clone(), key, ROUNDS.to_string(), db_url()];
    run_processes(
        env!("CARGO_BIN_EXE_fence_worker"),
        vec![args; PROCESSES],
        Duration::from_secs(120),
    )
    .await;
    let (tokens, pids) = fence_rounds(&admin, &table.name).await;
    assert_eq!(tokens.len(), PROCESSES * ROUNDS as usize);
    assert_eq!(pids.len(), PROCESSES, "every process took the lock");
    eprintln!(
        "fencing: {} grants over {PROCESSES} processes, tokens {}..={}, strictly increasing",
        tokens.len(),
        tokens[0],
        tokens[tokens.len() - 1]
    );
}
