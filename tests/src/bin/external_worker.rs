//! A worker process for `tests/external.rs`: bring-your-own-connection
//! locks across processes.
//!
//! Usage: `external_worker <database-url> <table> <key> <rounds>`
//!
//! Per round, on its own tokio-postgres connection: begins a transaction,
//! takes the transaction-level lock of `<key>` with
//! `advisory_locked::external::lock_xact` (wait, at most 10 s), reads the
//! counter of row 1 of `<table>`, writes it back plus one, commits (which
//! ends the lock). A read-then-write like this loses updates unless the
//! lock excludes the other processes. Exits non-zero on any error.

use std::time::Duration;

use advisory_locked::external::lock_xact;
use advisory_locked::{LockKey, Mode};
use tokio_postgres::NoTls;

async fn run(url: &str, table: &str, key: &str, rounds: usize) -> Result<(), String> {
    let (mut client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    tokio::spawn(connection);
    let read = format!("SELECT n FROM {table} WHERE id = 1");
    let write = format!("UPDATE {table} SET n = $1 WHERE id = 1");
    for round in 0..rounds {
        let mut tx = client
            .transaction()
            .await
            .map_err(|e| format!("round {round}: begin: {e}"))?;
        lock_xact(
            &mut tx,
            LockKey::named(key.to_owned()),
            Mode::Exclusive,
            Some(Duration::from_secs(10)),
        )
        .await
        .map_err(|e| format!("round {round}: lock: {e}"))?;
        let n: i64 = tx
            .query_one(&read, &[])
            .await
            .map_err(|e| format!("round {round}: read: {e}"))?
            .get(0);
        tx.execute(&write, &[&(n + 1)])
            .await
            .map_err(|e| format!("round {round}: write: {e}"))?;
        tx.commit()
            .await
            .map_err(|e| format!("round {round}: commit: {e}"))?;
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, table, key, rounds] = args.as_slice() else {
        eprintln!("usage: external_worker <database-url> <table> <key> <rounds>");
        std::process::exit(2);
    };
    let Ok(rounds) = rounds.parse::<usize>() else {
        eprintln!("rounds must be a number");
        std::process::exit(2);
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if let Err(e) = rt.block_on(run(url, table, key, rounds)) {
        eprintln!("external_worker: {e}");
        std::process::exit(1);
    }
}
