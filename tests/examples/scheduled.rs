//! A scheduled job that runs once per tick across the replicas of a
//! service, even when a replica's clock or start is late.
//!
//! ```text
//! cargo run -p advisory-locked-tests --example scheduled
//! ```
//!
//! Two processes stand for two replicas. Each runs the same schedule, a
//! plain `tokio::time::interval` of 2 s (a cron library such as
//! tokio-cron-scheduler calls the job the same way), for three ticks; the
//! second replica's ticks come 400 ms late, as with a clock that lags or a
//! pod that started later. At every tick each replica calls the job:
//!
//! ```ignore
//! #[advisory_locked(key = "jobs:send-digest", limit = 1, per = "1.5s")]
//! async fn send_digest(tick: u64) { ... }
//! ```
//!
//! **The minimum hold.** A plain skip-mode lock (`key = "…"` alone) only
//! excludes *concurrent* runs: the early replica's run is over (and its lock
//! released) after a few milliseconds, so the late replica finds the lock
//! free 400 ms later and runs the same tick again. `limit = 1, per = "1.5s"`
//! is the minimum hold (ShedLock's `lockAtLeastFor`): one slot, kept for at
//! least 1.5 s from the start of the body even when the body returns sooner,
//! so any replica arriving within 1.5 s of the run is skipped
//! (`Outcome::Skipped`). Choose `per` longer than the worst lateness and
//! shorter than the tick interval (or the next tick would find the slot
//! still taken). There is no `lockAtMostFor`: the lock is held while its
//! session lives, so a crashed replica's lock is freed by the server at once,
//! without a timeout to guess. The hold is kept by the process that ran the
//! job: a replica that exits right after a run gives the slot back early
//! (services keep running, and so do these replicas, until the last hold
//! ends).
//!
//! The example runs both variants side by side, prints who ran each tick,
//! and checks that with the minimum hold each tick ran exactly once.
//!
//! The database: `DATABASE_URL`, else postgres://postgres@127.0.0.1:5432/postgres,
//! else a throwaway server started from the installed PostgreSQL binaries
//! (`advisory_locked_tests::demo`).

use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use advisory_locked::{advisory_locked, Outcome};
use advisory_locked_tests::demo::{check, describe, find_or_start_server, DemoError};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const TICK: Duration = Duration::from_secs(2);
const TICKS: u64 = 3;
/// How late the second replica's schedule is.
const LATE: Duration = Duration::from_millis(400);
/// The minimum hold, `per` below (less than `TICK`, more than `LATE`).
const HOLD: Duration = Duration::from_millis(1500);

/// The job, with a minimum hold: once per tick across the replicas.
#[advisory_locked(key = "jobs:send-digest", limit = 1, per = "1.5s")]
async fn send_digest(tick: u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(50)).await; // the work
    tick
}

/// The same job without a minimum hold: excludes only concurrent runs.
#[advisory_locked(key = "jobs:send-digest-naive")]
async fn send_digest_naive(tick: u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(50)).await;
    tick
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One replica: the schedule from `start_ms` (unix milliseconds), `late` later.
async fn replica(id: u64, start_ms: u64) -> Result<(), DemoError> {
    advisory_locked::configure_from_env().await?;
    let late = if id == 2 { LATE } else { Duration::ZERO };
    let first = Duration::from_millis(start_ms.saturating_sub(unix_millis())) + late;
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + first, TICK);
    for tick in 0..TICKS {
        ticks.tick().await;
        match send_digest(tick).await? {
            Outcome::Ran(t) => println!("RUN held {t} {id}"),
            Outcome::Skipped => println!("SKIP held {tick} {id}"),
        }
        match send_digest_naive(tick).await? {
            Outcome::Ran(t) => println!("RUN naive {t} {id}"),
            Outcome::Skipped => println!("SKIP naive {tick} {id}"),
        }
    }
    // A live service keeps its slot for the whole hold; so does this replica.
    tokio::time::sleep(HOLD).await;
    Ok(())
}

/// Starts both replicas, returns their `RUN`/`SKIP` lines.
async fn run_replicas(url: &str) -> Result<Vec<String>, DemoError> {
    let exe = std::env::current_exe()?;
    // Far enough ahead for both processes to start and connect.
    let start_ms = (unix_millis() + 3000).to_string();
    let mut children = Vec::new();
    for id in ["1", "2"] {
        children.push(
            Command::new(&exe)
                .args(["replica", id, &start_ms])
                .env("DATABASE_URL", url)
                .stdout(Stdio::piped())
                .kill_on_drop(true)
                .spawn()?,
        );
    }
    let mut lines = Vec::new();
    for child in &mut children {
        let out = child.stdout.take().ok_or("no stdout")?;
        let mut reader = BufReader::new(out).lines();
        while let Some(line) =
            tokio::time::timeout(Duration::from_secs(60), reader.next_line()).await??
        {
            lines.push(line);
        }
        let status = tokio::time::timeout(Duration::from_secs(60), child.wait()).await??;
        check(status.success(), "both replicas exit with success")?;
    }
    Ok(lines)
}

async fn coordinator() -> Result<(), DemoError> {
    let (url, _server) = find_or_start_server().await?;
    println!(
        "two replicas, a tick every {} s, replica 2 late by {} ms; database {}",
        TICK.as_secs(),
        LATE.as_millis(),
        describe(&url)
    );
    let lines = run_replicas(&url).await?;
    let runs = |variant: &str, tick: u64| -> Vec<String> {
        lines
            .iter()
            .filter_map(|l| {
                l.strip_prefix(&format!("RUN {variant} {tick} "))
                    .map(str::to_owned)
            })
            .collect()
    };
    let mut once = true;
    for tick in 0..TICKS {
        let held = runs("held", tick);
        let naive = runs("naive", tick);
        println!(
            "  tick {tick}: limit = 1, per = \"1.5s\": run by replica {held:?}; plain skip: run by replica {naive:?}"
        );
        once &= held.len() == 1;
    }
    check(once, "with the minimum hold, every tick ran exactly once")?;
    println!(
        "with the minimum hold every tick ran once; without it the late replica ran ticks again"
    );
    Ok(())
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let result = if args.get(1).map(String::as_str) == Some("replica") {
        let id = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(0);
        let start = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(0);
        replica(id, start).await
    } else {
        coordinator().await
    };
    if let Err(e) = result {
        eprintln!("scheduled: {e}");
        std::process::exit(1);
    }
}
