//! A worker process for `tests/faults_soak.rs`: many short rounds in wait
//! mode while the test kills lock sessions under it.
//!
//! Usage: `fault_soak_worker <lock-url> <record-url> <table> <rounds> <keys,comma,separated> <seed>`
//!
//! The lock sessions connect with `<lock-url>` (the test finds and kills
//! them by their `application_name`); the bodies record their entry and exit
//! over a separate connection (`<record-url>`), stamped with the server's
//! `clock_timestamp()`. Each round picks a key and one of two paths:
//!
//! - `attr`: an annotated function in wait mode (abort policy). `Ok` is a
//!   completed body; `Error::LockLost` an aborted one.
//! - `guard`: `Locker::lock`, the body raced against `guard.lost()` (biased
//!   to the loss, as the attribute does), then `guard.release().await`. A
//!   release the server confirms proves the session held the lock from the
//!   grant to the unlock, so the body's interval is certainly exclusive
//!   (`confirmed`); a release that reports `LockLost` means the lock was
//!   lost somewhere before it (`lost_release`).
//!
//! At the end the outcome of every round whose row id is known is written
//! to the table (`outcome` column); rows left without one are bodies that
//! were stopped mid-way. Prints one line of `name=value` counts. Exits
//! non-zero if recording fails (the recording connection is never killed).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use advisory_locked::{advisory_locked, Error, LockConfig, LockKey, Mode};
use tokio_postgres::{Client, NoTls, Statement};

struct Recorder {
    client: Client,
    enter: Statement,
    exit: Statement,
    pid: i32,
}

impl Recorder {
    async fn body(
        &self,
        key: &str,
        round: i32,
        path: &str,
        hold: Duration,
    ) -> Result<i64, tokio_postgres::Error> {
        let row = self
            .client
            .query_one(&self.enter, &[&key, &self.pid, &round, &path])
            .await?;
        let id: i64 = row.get(0);
        tokio::time::sleep(hold).await;
        self.client.execute(&self.exit, &[&id]).await?;
        Ok(id)
    }
}

#[advisory_locked(key = "{key}", wait = "60s")]
async fn attr_round(
    rec: &Recorder,
    key: &str,
    round: i32,
    hold: Duration,
) -> Result<i64, tokio_postgres::Error> {
    rec.body(key, round, "attr", hold).await
}

fn error_kind(e: &Error) -> &'static str {
    match e {
        Error::LockLost { .. } => "LockLost",
        Error::SessionEnded { .. } => "SessionEnded",
        Error::Query { .. } => "Query",
        Error::Connect { .. } => "Connect",
        Error::ConnectTimeout { .. } => "ConnectTimeout",
        Error::Unavailable { .. } => "Unavailable",
        Error::WaitTimeout { .. } => "WaitTimeout",
        _ => "Other",
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 7 {
        eprintln!(
            "usage: fault_soak_worker <lock-url> <record-url> <table> <rounds> <keys> <seed>"
        );
        std::process::exit(2);
    }
    let (lock_url, record_url, table) = (&args[1], &args[2], &args[3]);
    assert!(
        table.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "table name must be an identifier"
    );
    let rounds: i32 = args[4].parse().expect("rounds");
    let keys: Vec<&str> = args[5].split(',').collect();
    let seed: u64 = args[6].parse().expect("seed");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let code = rt.block_on(async {
        // The test may kill the first session while it is being set up
        // (a typed Connect error): try again, a bounded number of times.
        let mut install_failures = 0u64;
        let locker = loop {
            match LockConfig::from_url(lock_url)
                .expect("url")
                .sessions(1)
                .install()
                .await
            {
                Ok(l) => break l,
                Err(e) if install_failures < 20 => {
                    eprintln!("worker {}: install: {e}", std::process::id());
                    install_failures += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => panic!("configure the default registry entry: {e}"),
            }
        };
        let (client, connection) = tokio_postgres::connect(record_url, NoTls)
            .await
            .expect("connect");
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let enter = client
            .prepare(&format!(
                "INSERT INTO {table} (key, pid, round, path) VALUES ($1, $2, $3, $4) RETURNING id"
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
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        let mut count = |name: &str| *counts.entry(name.to_owned()).or_default() += 1;
        let (mut ids, mut outcomes): (Vec<i64>, Vec<String>) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            let key = keys[rng.below(keys.len() as u64) as usize];
            let hold = Duration::from_micros(500 + rng.below(1_500));
            if rng.chance(1, 2) {
                match attr_round(&rec, key, round, hold).await {
                    Ok(Ok(id)) => {
                        count("attr_ok");
                        ids.push(id);
                        outcomes.push("ok".to_owned());
                    }
                    Ok(Err(e)) => {
                        eprintln!("worker {}: round {round}: recording failed: {e}", rec.pid);
                        return 1;
                    }
                    Err(Error::LockLost { .. }) => count("attr_lost"),
                    Err(e) => {
                        eprintln!("worker {}: round {round}: attr: {e}", rec.pid);
                        count(&format!("attr_err_{}", error_kind(&e)));
                    }
                }
            } else {
                let guard = match locker
                    .lock(
                        LockKey::named(key.to_owned()),
                        Mode::Exclusive,
                        Some(Duration::from_secs(60)),
                    )
                    .await
                {
                    Ok(g) => g,
                    Err(e) => {
                        eprintln!("worker {}: round {round}: lock: {e}", rec.pid);
                        count(&format!("guard_err_{}", error_kind(&e)));
                        continue;
                    }
                };
                let lost = guard.lost();
                let body = rec.body(key, round, "guard", hold);
                let id = tokio::select! {
                    biased;
                    () = lost => {
                        count("guard_lost");
                        continue;
                    }
                    r = body => match r {
                        Ok(id) => id,
                        Err(e) => {
                            eprintln!("worker {}: round {round}: recording failed: {e}", rec.pid);
                            return 1;
                        }
                    },
                };
                ids.push(id);
                match guard.release().await {
                    Ok(()) => {
                        count("guard_confirmed");
                        outcomes.push("confirmed".to_owned());
                    }
                    Err(Error::LockLost { .. }) => {
                        count("guard_lost_release");
                        outcomes.push("lost_release".to_owned());
                    }
                    Err(e) => {
                        eprintln!("worker {}: round {round}: release: {e}", rec.pid);
                        count(&format!("release_err_{}", error_kind(&e)));
                        outcomes.push("release_error".to_owned());
                    }
                }
            }
        }
        let took = start.elapsed();
        if let Err(e) = rec
            .client
            .execute(
                &format!(
                    "UPDATE {table} t SET outcome = u.o \
                     FROM unnest($1::int8[], $2::text[]) AS u(id, o) WHERE t.id = u.id"
                ),
                &[&ids, &outcomes],
            )
            .await
        {
            eprintln!("worker {}: writing outcomes failed: {e}", rec.pid);
            return 1;
        }
        let stats = locker.stats();
        let mut line = format!(
            "worker={} rounds={rounds} ms={} sessions_opened={} install_failures={install_failures}",
            rec.pid,
            took.as_millis(),
            stats.sessions_opened
        );
        for (name, n) in &counts {
            line.push_str(&format!(" {name}={n}"));
        }
        println!("{line}");
        0
    });
    std::process::exit(code);
}
