//! A worker process for `tests/exclusion_processes.rs`.
//!
//! Usage: `exclusion_worker <database-url> <table> <rounds> <keys,comma,separated> <shared-percent> <seed>`
//!
//! Configures the default registry entry, then per round picks a key and
//! calls an annotated function in wait mode (shared with the given
//! probability, else exclusive). The body records its entry and exit with
//! `clock_timestamp()` into `<table>` over the worker's own connection and
//! sleeps a few milliseconds in between. Exits non-zero on any error.

use std::time::{Duration, Instant};

use advisory_locked::advisory_locked;
use tokio_postgres::{Client, NoTls, Statement};

struct Recorder {
    client: Client,
    enter: Statement,
    exit: Statement,
    pid: i32,
}

impl Recorder {
    async fn record(
        &self,
        key: &str,
        round: i32,
        shared: bool,
        hold: Duration,
    ) -> Result<(), tokio_postgres::Error> {
        let row = self
            .client
            .query_one(&self.enter, &[&key, &self.pid, &round, &shared])
            .await?;
        let id: i64 = row.get(0);
        tokio::time::sleep(hold).await;
        self.client.execute(&self.exit, &[&id]).await?;
        Ok(())
    }
}

#[advisory_locked(key = "{key}", wait = "60s")]
async fn exclusive_round(
    rec: &Recorder,
    key: &str,
    round: i32,
    hold: Duration,
) -> Result<(), tokio_postgres::Error> {
    rec.record(key, round, false, hold).await
}

#[advisory_locked(key = "{key}", wait = "60s", shared)]
async fn shared_round(
    rec: &Recorder,
    key: &str,
    round: i32,
    hold: Duration,
) -> Result<(), tokio_postgres::Error> {
    rec.record(key, round, true, hold).await
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 7 {
        eprintln!("usage: exclusion_worker <database-url> <table> <rounds> <keys> <shared-percent> <seed>");
        std::process::exit(2);
    }
    let url = &args[1];
    let table = &args[2];
    assert!(
        table.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "table name must be an identifier"
    );
    let rounds: i32 = args[3].parse().expect("rounds");
    let keys: Vec<&str> = args[4].split(',').collect();
    let shared_percent: u64 = args[5].parse().expect("shared-percent");
    let seed: u64 = args[6].parse().expect("seed");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let code = rt.block_on(async {
        advisory_locked::LockConfig::from_url(url)
            .expect("url")
            .sessions(1)
            .install()
            .await
            .expect("configure the default registry entry");
        let (client, connection) = tokio_postgres::connect(url, NoTls).await.expect("connect");
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let enter = client
            .prepare(&format!(
                "INSERT INTO {table} (key, pid, round, shared) VALUES ($1, $2, $3, $4) RETURNING id"
            ))
            .await
            .expect("prepare");
        let exit = client
            .prepare(&format!(
                "UPDATE {table} SET exited = clock_timestamp() WHERE id = $1"
            ))
            .await
            .expect("prepare");
        let rec = Recorder {
            client,
            enter,
            exit,
            pid: std::process::id() as i32,
        };
        let mut rng = advisory_locked_tests::Prng::new(seed);
        let start = Instant::now();
        let mut shared_rounds = 0;
        for round in 0..rounds {
            let key = keys[rng.below(keys.len() as u64) as usize];
            let hold = Duration::from_micros(1_000 + rng.below(2_000));
            let result = if rng.below(100) < shared_percent {
                shared_rounds += 1;
                shared_round(&rec, key, round, hold).await
            } else {
                exclusive_round(&rec, key, round, hold).await
            };
            match result {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    eprintln!("worker {}: round {round}: body failed: {e}", rec.pid);
                    return 1;
                }
                Err(e) => {
                    eprintln!("worker {}: round {round}: lock failed: {e}", rec.pid);
                    return 1;
                }
            }
        }
        println!(
            "worker {}: {rounds} rounds ({shared_rounds} shared) in {:?}",
            rec.pid,
            start.elapsed()
        );
        0
    });
    std::process::exit(code);
}
