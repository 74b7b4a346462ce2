//! `cargo run --example fleet`: a fleet of worker processes sharing one
//! PostgreSQL database, showing each use case of `#[advisory_locked]`:
//!
//! 1. a job that runs once across the fleet (skip when busy), and the
//!    `status` view of who holds it;
//! 2. at most N concurrent operations across the fleet (`limit = N`);
//! 3. a leader (`Campaign`) that hands over when its process dies;
//! 4. one-at-a-time access per tenant (keys built from arguments, wait mode);
//! 5. a ledger updated under a transaction-scoped lock (`transaction = tx`),
//!    with fencing tokens;
//! 6. a fleet-wide rate (`limit = N, per = "…"`).
//!
//! The database: `DATABASE_URL`, else postgres://postgres@127.0.0.1:5432/postgres;
//! when nothing answers there and PostgreSQL's binaries are installed, a
//! throwaway server is started for the run (as root, through `runuser`; see
//! `advisory_locked_tests::demo`, which every example shares).

use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use advisory_locked::{advisory_locked, Campaign, LockConfig, LockKey, Outcome};
use advisory_locked_tests::demo::{check, describe, find_or_start_server, DemoError};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const WORKERS: usize = 4;
const EXPORT_SLOTS: usize = 2;
const POSTS: usize = 5;
const RATE: usize = 2;

// ---------------------------------------------------------------- use cases

/// 1. Runs once across the fleet: every worker calls it at the same moment;
///    one runs it, the others are told it was busy and skip.
#[advisory_locked(key = "fleet:nightly-report")]
async fn nightly_report(worker: usize) -> String {
    tokio::time::sleep(Duration::from_millis(1500)).await;
    format!("report built by worker {worker}")
}

/// 2. At most `EXPORT_SLOTS` exports at once across the fleet: `limit = 2`
///    gives two slots (`fleet:export#0`, `fleet:export#1`); wait for one.
#[advisory_locked(key = "fleet:export", limit = 2, wait = "60s")]
async fn export(worker: usize, job: usize) {
    let slot = advisory_locked::current_lock()
        .map(|l| l.key().name().to_owned())
        .unwrap_or_default();
    event(worker, &format!("export-start slot={slot} job={job}"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    event(worker, &format!("export-end slot={slot} job={job}"));
}

/// 3. Leadership: campaign for the key; lead for a few ticks, then die
///    without letting go (`exit` inside leadership): the server frees the
///    lock when the connection closes, and the next campaigner takes over
///    within its retry interval.
async fn campaign_and_lead(worker: usize) -> Result<(), DemoError> {
    let locker = advisory_locked::locker("default")?;
    let leader = Campaign::new(LockKey::named("fleet:leader"))
        .retry_interval(Duration::from_millis(100))
        .start(&locker);
    let mut state = leader.watch();
    tokio::time::timeout(Duration::from_secs(60), state.wait_for(|s| s.is_leader())).await??;
    event(worker, "leader-start");
    for tick in 1..=3 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if !leader.is_leader() {
            event(worker, "leader-lost");
            return Ok(());
        }
        event(worker, &format!("leader-tick {tick}"));
    }
    event(worker, "leader-exit");
    std::process::exit(0);
}

/// 4. One rebuild at a time per tenant, across the fleet; different tenants
///    in parallel. Waits up to 30 s for the tenant's lock.
#[advisory_locked(key = "tenant:{tenant}", wait = "30s")]
async fn rebuild(tenant: &str, worker: usize) {
    event(worker, &format!("rebuild-start tenant={tenant}"));
    tokio::time::sleep(Duration::from_millis(150)).await;
    event(worker, &format!("rebuild-end tenant={tenant}"));
}

/// 5. Posts to a ledger: read the balance, add one, write it — in the body's
///    transaction, under a transaction-level lock, so no update is lost and
///    the write commits exactly when the lock ends. The fencing token (from a
///    second, fenced entry) is stored with it: a stale holder's write would be
///    refused by `token < $2`.
#[advisory_locked(key = "fleet:ledger", wait = "30s", transaction = tx)]
async fn post_entry(worker: usize) -> Result<i64, tokio_postgres::Error> {
    let balance: i64 = tx
        .query_one("SELECT balance FROM fleet_ledger WHERE id = 1", &[])
        .await?
        .get(0);
    tokio::time::sleep(Duration::from_millis(20)).await;
    tx.execute(
        "UPDATE fleet_ledger SET balance = $1 WHERE id = 1",
        &[&(balance + 1)],
    )
    .await?;
    event(worker, &format!("posted balance={}", balance + 1));
    Ok(balance + 1)
}

#[advisory_locked(key = "fleet:fenced-store", wait = "30s", pool = "fenced")]
async fn fenced_write(
    worker: usize,
    store: &tokio_postgres::Client,
) -> Result<u64, tokio_postgres::Error> {
    let token = advisory_locked::current_lock()
        .and_then(|l| l.fencing_token())
        .unwrap_or(0);
    let written = store
        .execute(
            "UPDATE fleet_fenced SET token = $1, writer = $2 WHERE id = 1 AND token < $1",
            &[&token, &(worker as i32)],
        )
        .await?;
    event(worker, &format!("fenced token={token} accepted={written}"));
    Ok(written)
}

/// 6. At most `RATE` starts per second across the fleet (each slot is held
///    at least 1 s from its start).
#[advisory_locked(key = "fleet:partner-api", limit = 2, per = "1s", wait = "60s")]
async fn call_partner(worker: usize, call: usize) {
    event(worker, &format!("partner-call {call}"));
}

// ------------------------------------------------------------------ workers

/// Prints one event line: `EVENT <millis since epoch> <worker> <text>`.
fn event(worker: usize, text: &str) {
    // Microseconds: a handover between processes can take well under a
    // millisecond, and an end and the next start must not tie.
    let us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    println!("EVENT {us} {worker} {text}");
}

async fn worker(phase: &str, id: usize) -> Result<(), DemoError> {
    advisory_locked::configure_from_env().await?;
    match phase {
        "once" => match nightly_report(id).await? {
            Outcome::Ran(report) => event(id, &format!("once-ran {report}")),
            Outcome::Skipped => event(id, "once-skipped"),
        },
        "limit" => {
            for job in 0..3 {
                export(id, id * 10 + job).await?;
            }
        }
        "leader" => {
            // Stagger the campaigners so the order is easy to read.
            tokio::time::sleep(Duration::from_millis(100 * id as u64)).await;
            event(id, "campaigning");
            campaign_and_lead(id).await?;
        }
        "ledger" => {
            LockConfig::from_env()?
                .name("fenced")
                .fencing_tokens(true)
                .install()
                .await?;
            let url = std::env::var("DATABASE_URL")?;
            let (store, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            for _ in 0..POSTS {
                post_entry(id).await??;
                fenced_write(id, &store).await??;
            }
        }
        "rate" => {
            for call in 0..2 {
                call_partner(id, call).await?;
            }
            // A slot is kept for its period by this process: exiting
            // earlier would free it early (the rate holds while the
            // processes that took the slots live, as services do).
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
        "tenants" => {
            let tenants = ["acme", "globex", "initech"];
            for i in 0..tenants.len() {
                rebuild(tenants[(i + id) % tenants.len()], id).await?;
            }
        }
        other => return Err(format!("unknown phase {other:?}").into()),
    }
    Ok(())
}

// ------------------------------------------------------------- coordinator

struct Event {
    /// Realtime clock, microseconds (comparable between the processes).
    at_us: u128,
    worker: usize,
    text: String,
}

/// Starts `WORKERS` processes for one phase, echoes their events, and
/// returns them once all have exited.
async fn run_phase(url: &str, phase: &str) -> Result<Vec<Event>, DemoError> {
    let exe = std::env::current_exe()?;
    let started = Instant::now();
    let mut children = Vec::new();
    for id in 1..=WORKERS {
        let child = Command::new(&exe)
            .args(["worker", phase, &id.to_string()])
            .env("DATABASE_URL", url)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        children.push(child);
    }
    let mut readers = Vec::new();
    for child in &mut children {
        let out = child.stdout.take().ok_or("no stdout")?;
        readers.push(tokio::spawn(async move {
            let mut lines = BufReader::new(out).lines();
            let mut events = Vec::new();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut parts = line.splitn(4, ' ');
                if let (Some("EVENT"), Some(us), Some(w), Some(text)) =
                    (parts.next(), parts.next(), parts.next(), parts.next())
                {
                    events.push(Event {
                        at_us: us.parse().unwrap_or(0),
                        worker: w.parse().unwrap_or(0),
                        text: text.to_owned(),
                    });
                } else {
                    println!("    {line}");
                }
            }
            events
        }));
    }
    for child in &mut children {
        let status = tokio::time::timeout(Duration::from_secs(120), child.wait()).await??;
        if !status.success() {
            return Err(format!("a worker of phase {phase} failed: {status}").into());
        }
    }
    let mut events = Vec::new();
    for r in readers {
        events.extend(r.await?);
    }
    // On a tie, ends before starts (an end is stamped before its release).
    events.sort_by_key(|e| {
        (
            e.at_us,
            !(e.text.contains("-end") || e.text.ends_with("-exit")),
        )
    });
    let t0 = events.first().map(|e| e.at_us).unwrap_or(0);
    for e in &events {
        println!(
            "    {:>6} ms  worker {}  {}",
            (e.at_us - t0) / 1000,
            e.worker,
            e.text
        );
    }
    println!(
        "    ({} workers, {:.1} s)",
        WORKERS,
        started.elapsed().as_secs_f64()
    );
    Ok(events)
}

/// Most bodies running at once, from `<prefix>-start` / `<prefix>-end` events.
fn max_concurrent(events: &[Event], prefix: &str, same: impl Fn(&str) -> String) -> usize {
    use std::collections::HashMap;
    let mut running: HashMap<String, usize> = HashMap::new();
    let mut max = 0;
    for e in events {
        let group = same(&e.text);
        if e.text.starts_with(&format!("{prefix}-start")) {
            let n = running.entry(group).or_default();
            *n += 1;
            max = max.max(*n);
        } else if e.text.starts_with(&format!("{prefix}-end")) {
            *running.entry(group).or_default() -= 1;
        }
    }
    max
}

async fn coordinator() -> Result<(), DemoError> {
    let (url, _server) = find_or_start_server().await?;
    println!(
        "advisory-locked fleet demo: {WORKERS} worker processes, database {}",
        describe(&url)
    );

    let (admin, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);

    println!("\n1. A job that runs once across the fleet (#[advisory_locked(key = \"fleet:nightly-report\")])");
    let status_url = url.clone();
    let status = tokio::spawn(async move {
        // While the report runs (1.5 s): who holds what, by name.
        tokio::time::sleep(Duration::from_millis(700)).await;
        let config = LockConfig::from_url(&status_url)?;
        advisory_locked::status::held_locks(&config).await
    });
    let ev = run_phase(&url, "once").await?;
    match status.await? {
        Ok(locks) => {
            println!("  status while it ran (advisory_locked::status, as `cargo run --example status` prints):");
            for line in advisory_locked::status::format_table(&locks).lines() {
                println!("    {line}");
            }
        }
        Err(e) => println!("  status: {e}"),
    }
    let ran = ev.iter().filter(|e| e.text.starts_with("once-ran")).count();
    let skipped = ev
        .iter()
        .filter(|e| e.text.starts_with("once-skipped"))
        .count();
    println!("  => ran {ran} time(s), skipped by {skipped} worker(s)");
    check(
        ran == 1 && skipped == WORKERS - 1,
        "the job ran exactly once",
    )?;

    println!("\n2. At most {EXPORT_SLOTS} exports at once across the fleet (key = \"fleet:export\", limit = 2, wait = \"60s\")");
    let ev = run_phase(&url, "limit").await?;
    let max = max_concurrent(&ev, "export", |_| String::new());
    let done = ev
        .iter()
        .filter(|e| e.text.starts_with("export-end"))
        .count();
    println!("  => {done} exports, at most {max} at once");
    check(
        max <= EXPORT_SLOTS && done == WORKERS * 3,
        "the fleet-wide limit held",
    )?;

    println!("\n3. A leader that hands over when its process dies (Campaign for \"fleet:leader\", retry every 100 ms)");
    let ev = run_phase(&url, "leader").await?;
    let leaders: Vec<usize> = ev
        .iter()
        .filter(|e| e.text == "leader-start")
        .map(|e| e.worker)
        .collect();
    let exits = ev.iter().filter(|e| e.text == "leader-exit").count();
    let most = max_overlap_leaders(&ev);
    let takeovers: Vec<u128> = ev
        .windows(2)
        .filter(|w| w[0].text == "leader-exit" && w[1].text == "leader-start")
        .map(|w| (w[1].at_us - w[0].at_us) / 1000)
        .collect();
    println!("  => leadership passed {leaders:?}; at most {most} leader at a time; takeovers after {takeovers:?} ms");
    check(
        leaders.len() == WORKERS && exits == WORKERS && most == 1,
        "one leader at a time",
    )?;

    println!("\n4. One rebuild at a time per tenant (key = \"tenant:{{tenant}}\", wait = \"30s\")");
    let ev = run_phase(&url, "tenants").await?;
    let per_tenant = max_concurrent(&ev, "rebuild", |t| {
        t.split("tenant=").nth(1).unwrap_or("").to_owned()
    });
    let overall = max_concurrent(&ev, "rebuild", |_| String::new());
    println!(
        "  => at most {per_tenant} rebuild per tenant at once; up to {overall} tenants in parallel"
    );
    check(per_tenant == 1, "per-tenant exclusion held")?;

    println!("\n5. A ledger under a transaction-scoped lock (transaction = tx), and fencing tokens (pool \"fenced\")");
    admin
        .batch_execute(
            "DROP TABLE IF EXISTS fleet_ledger, fleet_fenced; \
             CREATE TABLE fleet_ledger (id int PRIMARY KEY, balance int8 NOT NULL); \
             INSERT INTO fleet_ledger VALUES (1, 0); \
             CREATE TABLE fleet_fenced (id int PRIMARY KEY, token int8 NOT NULL, writer int NOT NULL); \
             INSERT INTO fleet_fenced VALUES (1, 0, 0)",
        )
        .await?;
    let ev = run_phase(&url, "ledger").await?;
    let balance: i64 = admin
        .query_one("SELECT balance FROM fleet_ledger WHERE id = 1", &[])
        .await?
        .get(0);
    let tokens: Vec<i64> = ev
        .iter()
        .filter_map(|e| e.text.strip_prefix("fenced token="))
        .filter_map(|t| t.split(' ').next()?.parse().ok())
        .collect();
    let accepted = ev.iter().filter(|e| e.text.ends_with("accepted=1")).count();
    let increasing = tokens.windows(2).all(|w| w[1] > w[0]);
    println!(
        "  => balance {balance} after {} posts (no lost update); {accepted} fenced writes accepted, tokens increasing: {increasing}",
        WORKERS * POSTS
    );
    check(
        balance == (WORKERS * POSTS) as i64 && accepted == WORKERS * POSTS && increasing,
        "every post counted once and every fenced write carried a larger token",
    )?;
    admin
        .batch_execute("DROP TABLE IF EXISTS fleet_ledger, fleet_fenced")
        .await?;

    println!(
        "\n6. At most {RATE} partner calls per second across the fleet (limit = 2, per = \"1s\")"
    );
    let ev = run_phase(&url, "rate").await?;
    let starts: Vec<u128> = ev
        .iter()
        .filter(|e| e.text.starts_with("partner-call"))
        .map(|e| e.at_us / 1000)
        .collect();
    // Any RATE + 1 consecutive starts span at least the period (less a
    // millisecond for the rounding to milliseconds here).
    let tightest = starts
        .windows(RATE + 1)
        .map(|w| w[RATE] - w[0])
        .min()
        .unwrap_or(u128::MAX);
    println!(
        "  => {} calls; the tightest {} in a row spanned {tightest} ms",
        starts.len(),
        RATE + 1
    );
    check(
        starts.len() == WORKERS * 2 && tightest >= 999,
        "at most 2 starts in any second",
    )?;

    println!("\nAll six use cases behaved as documented.");
    Ok(())
}

/// Leaders overlap if a `leader-start` comes before the previous leader's `leader-exit`.
fn max_overlap_leaders(events: &[Event]) -> usize {
    let mut leading = 0usize;
    let mut max = 0;
    for e in events {
        match e.text.as_str() {
            "leader-start" => {
                leading += 1;
                max = max.max(leading);
            }
            "leader-exit" => leading = leading.saturating_sub(1),
            _ => {}
        }
    }
    max
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let result = if args.get(1).map(String::as_str) == Some("worker") {
        let phase = args.get(2).cloned().unwrap_or_default();
        let id = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(0);
        worker(&phase, id).await
    } else {
        coordinator().await
    };
    if let Err(e) = result {
        eprintln!("fleet: {e}");
        std::process::exit(1);
    }
}
