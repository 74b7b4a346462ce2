//! A worker process for tests/tests/fencing.rs and tests/tests/quorum.rs:
//! takes one key `rounds` times (wait mode) on an entry with fencing tokens
//! and, while holding it, appends its token to a table, so that the table's
//! order is the order of the grants.
//!
//! Usage: `fence_worker <table> <key> <rounds> <url> [<url> ...]` — one URL:
//! a single-server entry; several: a quorum of them (the table lives on the
//! first). Prints `done <rounds>` at the end.

use std::time::Duration;

use advisory_locked::{LockConfig, LockKey, Mode, QuorumConfig};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [table, key, rounds, urls @ ..] = args.as_slice() else {
        eprintln!("usage: fence_worker <table> <key> <rounds> <url> [<url> ...]");
        std::process::exit(2);
    };
    let rounds: u32 = rounds.parse().expect("rounds");
    let locker = if urls.len() == 1 {
        LockConfig::from_url(&urls[0])
            .expect("url")
            .fencing_tokens(true)
            .connect()
            .await
    } else {
        QuorumConfig::from_urls(urls)
            .expect("urls")
            .fencing_tokens(true)
            .connect()
            .await
    }
    .expect("connect");
    let record = advisory_locked_tests::raw_connect(&urls[0]).await;
    let insert = format!("INSERT INTO {table} (token, pid) VALUES ($1, $2)");
    let pid = std::process::id() as i32;
    for _ in 0..rounds {
        let guard = locker
            .lock(
                LockKey::named(key.clone()),
                Mode::Exclusive,
                Some(Duration::from_secs(30)),
            )
            .await
            .expect("lock");
        let token = guard.fencing_token().expect("a fencing token");
        record
            .execute(&insert, &[&token, &pid])
            .await
            .expect("insert");
        guard.release().await.expect("release");
    }
    println!("done {rounds}");
}
