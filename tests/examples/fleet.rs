//! `cargo run --example fleet`: a fleet of worker processes sharing one
//! PostgreSQL database, showing each use case of `#[advisory_locked]`:
//!
//! 1. a job that runs once across the fleet (skip when busy);
//! 2. at most N concurrent operations across the fleet (N lock slots);
//! 3. a leader that hands over when its process exits;
//! 4. one-at-a-time access per tenant (keys built from arguments, wait mode).
//!
//! The database: `DATABASE_URL`, else postgres://postgres@127.0.0.1:5432/postgres;
//! when nothing answers there and PostgreSQL's binaries are installed, a
//! throwaway server is started for the run (as root, through `runuser`).

use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use advisory_locked::{advisory_locked, Outcome};
use advisory_locked_tests::ThrowawayServer;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const WORKERS: usize = 4;
const EXPORT_SLOTS: u32 = 2;

// ---------------------------------------------------------------- use cases

/// 1. Runs once across the fleet: every worker calls it at the same moment;
///    one runs it, the others are told it was busy and skip.
#[advisory_locked(key = "fleet:nightly-report")]
async fn nightly_report(worker: usize) -> String {
    tokio::time::sleep(Duration::from_millis(1500)).await;
    format!("report built by worker {worker}")
}

/// 2. One of `EXPORT_SLOTS` fleet-wide slots: a worker takes any free slot.
#[advisory_locked(key = "fleet:export-slot:{slot}")]
async fn export_in_slot(slot: u32, worker: usize, job: usize) {
    event(worker, &format!("export-start slot={slot} job={job}"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    event(worker, &format!("export-end slot={slot} job={job}"));
}

/// Tries every slot; when all are busy, tries again a little later.
async fn export(worker: usize, job: usize) -> Result<(), advisory_locked::Error> {
    loop {
        for slot in 0..EXPORT_SLOTS {
            if let Outcome::Ran(()) = export_in_slot(slot, worker, job).await? {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// 3. Leadership: wait for the key, then lead until this process exits.
///    The process ends inside the body: it never unlocks; the server frees
///    the lock when the connection closes, and the next campaigner takes over.
#[advisory_locked(key = "fleet:leader", wait = "60s")]
async fn lead(worker: usize) {
    event(worker, "leader-start");
    for tick in 1..=3 {
        tokio::time::sleep(Duration::from_millis(200)).await;
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

// ------------------------------------------------------------------ workers

/// Prints one event line: `EVENT <millis since epoch> <worker> <text>`.
fn event(worker: usize, text: &str) {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    println!("EVENT {ms} {worker} {text}");
}

async fn worker(phase: &str, id: usize) -> Result<(), Box<dyn std::error::Error>> {
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
            lead(id).await?;
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
    at_ms: u128,
    worker: usize,
    text: String,
}

/// Starts `WORKERS` processes for one phase, echoes their events, and
/// returns them once all have exited.
async fn run_phase(url: &str, phase: &str) -> Result<Vec<Event>, Box<dyn std::error::Error>> {
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
                if let (Some("EVENT"), Some(ms), Some(w), Some(text)) =
                    (parts.next(), parts.next(), parts.next(), parts.next())
                {
                    events.push(Event {
                        at_ms: ms.parse().unwrap_or(0),
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
    events.sort_by_key(|e| e.at_ms);
    let t0 = events.first().map(|e| e.at_ms).unwrap_or(0);
    for e in &events {
        println!(
            "    {:>6} ms  worker {}  {}",
            e.at_ms - t0,
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

async fn coordinator() -> Result<(), Box<dyn std::error::Error>> {
    let (url, _server) = find_or_start_server().await?;
    println!(
        "advisory-locked fleet demo: {WORKERS} worker processes, database {}",
        describe(&url)
    );

    println!("\n1. A job that runs once across the fleet (#[advisory_locked(key = \"fleet:nightly-report\")])");
    let ev = run_phase(&url, "once").await?;
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

    println!("\n2. At most {EXPORT_SLOTS} exports at once across the fleet (key = \"fleet:export-slot:{{slot}}\")");
    let ev = run_phase(&url, "limit").await?;
    let max = max_concurrent(&ev, "export", |_| String::new());
    let done = ev
        .iter()
        .filter(|e| e.text.starts_with("export-end"))
        .count();
    println!("  => {done} exports, at most {max} at once");
    check(
        max <= EXPORT_SLOTS as usize && done == WORKERS * 3,
        "the fleet-wide limit held",
    )?;

    println!("\n3. A leader that hands over when its process exits (key = \"fleet:leader\", wait = \"60s\")");
    let ev = run_phase(&url, "leader").await?;
    let leaders: Vec<usize> = ev
        .iter()
        .filter(|e| e.text == "leader-start")
        .map(|e| e.worker)
        .collect();
    let exits = ev.iter().filter(|e| e.text == "leader-exit").count();
    let most = max_overlap_leaders(&ev);
    println!("  => leadership passed {leaders:?}; at most {most} leader at a time");
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

    println!("\nAll four use cases behaved as documented.");
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

/// The database to use: `DATABASE_URL`, else the default local server, else
/// a throwaway server started from the installed binaries (kept alive, and
/// stopped, by the returned value).
async fn find_or_start_server(
) -> Result<(String, Option<ThrowawayServer>), Box<dyn std::error::Error>> {
    if let Ok(url) = std::env::var("DATABASE_URL") {
        return Ok((url, None));
    }
    let url = "postgres://postgres@127.0.0.1:5432/postgres".to_owned();
    let answers = match url
        .parse::<tokio_postgres::Config>()?
        .connect_timeout(Duration::from_secs(3))
        .connect(tokio_postgres::NoTls)
        .await
    {
        Ok(_) => true,
        Err(e) => {
            println!("no PostgreSQL answers at 127.0.0.1:5432 ({e})");
            false
        }
    };
    if answers {
        return Ok((url, None));
    }
    let installed = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dirs| dirs.flatten().any(|d| d.path().join("bin/initdb").exists()))
        .unwrap_or(false);
    if !installed {
        return Err("no PostgreSQL server to use. Either set DATABASE_URL=postgres://user:password@host:port/db, \
                    start a server on 127.0.0.1:5432 that lets user postgres in, \
                    or install the server binaries (Debian/Ubuntu: apt-get install postgresql) so that this demo can start a throwaway one"
            .into());
    }
    println!("starting a throwaway PostgreSQL server from the installed binaries ...");
    let server = std::panic::catch_unwind(ThrowawayServer::start)
        .map_err(|_| "could not start a throwaway server (see the message above)")?;
    Ok((server.url("postgres"), Some(server)))
}

/// `host:port/dbname` of a connection string, never its password.
fn describe(url: &str) -> String {
    match url.parse::<tokio_postgres::Config>() {
        Ok(c) => {
            let host = match c.get_hosts().first() {
                Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
                Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
                None => "localhost".to_owned(),
            };
            let port = c.get_ports().first().copied().unwrap_or(5432);
            format!("{host}:{port}/{}", c.get_dbname().unwrap_or("postgres"))
        }
        Err(_) => "(unparsable DATABASE_URL)".to_owned(),
    }
}

fn check(ok: bool, what: &str) -> Result<(), Box<dyn std::error::Error>> {
    if ok {
        Ok(())
    } else {
        Err(format!("expected: {what}").into())
    }
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
