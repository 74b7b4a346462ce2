//! The scenarios of issues #5 and #15, each in its own file, run in order
//! in one process (P4 in a child process of its own); a table, a JSON
//! document, SVG charts and a Markdown summary at the end.

mod compile_time;
mod p1;
mod p2;
mod p3;
mod p4;
mod p5;
mod p6;

pub use p4::child_main as p4_child;

use std::time::{Duration, Instant};

use advisory_locked::{LockGuard, LockKey, Locker, Mode};
use serde_json::{json, Value};
use tokio::task::JoinSet;
use tokio_postgres::{Client, NoTls, Statement};

use crate::report::Report;
use crate::util::{round2, BoxErr, Keys};
use crate::Opts;

pub async fn run(o: Opts) -> Result<(), BoxErr> {
    let started = Instant::now();
    let keys = Keys::for_this_process();
    let admin = connect_raw(&o.url).await?;
    let mut rep = Report::default();
    header(&o, &keys, &admin, &mut rep).await?;
    let quiet = || tokio::time::sleep(Duration::from_secs(if o.quick { 0 } else { 1 }));
    if o.runs("p1") {
        if let Err(e) = p1::run(&o, &keys, &admin, &mut rep).await {
            rep.error("P1", e);
        }
    }
    if o.runs("p2") {
        if let Err(e) = p2::run(&o, &keys, &admin, &mut rep).await {
            rep.error("P2", e);
        }
    }
    // After P2's load the machine takes about a second to come back to its
    // usual round trips: the latency scenarios after a load wait for it.
    if o.runs("p3") {
        quiet().await;
        if let Err(e) = p3::run(&o, &keys, &mut rep).await {
            rep.error("P3", e);
        }
    }
    if o.runs("p4") {
        if let Err(e) = p4::run(&o, &mut rep).await {
            rep.error("P4", e);
        }
    }
    if o.runs("p5") {
        if let Err(e) = p5::run(&o, &keys, &mut rep).await {
            rep.error("P5", e);
        }
    }
    if o.runs("p6") {
        quiet().await;
        if let Err(e) = p6::run(&o, &keys, &admin, &mut rep).await {
            rep.error("P6", e);
        }
    }
    if o.compile_time {
        if let Err(e) = compile_time::run(&o, &mut rep).await {
            rep.error("CT", e);
        }
    }
    let left = locks_left(&admin, &keys).await?;
    let total = started.elapsed().as_secs_f64();
    rep.json.insert(
        "end".into(),
        json!({ "locks_left_on_server": left, "total_seconds": round2(total) }),
    );
    println!();
    rep.print();
    println!();
    println!("locks of this run left on the server at the end: {left}; total time {total:.1} s");
    crate::output::write_all(&o, &mut rep)?;
    if left != 0 {
        return Err(format!("{left} locks of this run were still held at the end").into());
    }
    Ok(())
}

/// The server, the machine and the run's shape: printed, and in the JSON.
async fn header(o: &Opts, keys: &Keys, admin: &Client, rep: &mut Report) -> Result<(), BoxErr> {
    let show = |name: &'static str| async move {
        let row = admin.query_one(&format!("SHOW {name}"), &[]).await?;
        Ok::<String, BoxErr>(row.get(0))
    };
    let version = show("server_version").await?;
    let max_locks = show("max_locks_per_transaction").await?;
    let max_conns = show("max_connections").await?;
    let cores = crate::util::cpus();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    println!(
        "advisory-locked benchmark (issues #5, #15){}",
        if o.quick { " — QUICK run" } else { "" }
    );
    println!(
        "PostgreSQL {version} (max_connections {max_conns}, max_locks_per_transaction {max_locks}); \
         {cores} cores, load average {load}; run key tag {:#x}",
        keys.tag
    );
    println!(
        "latency: paired rounds (P1: {} epochs per placement × {} rounds × {} calls per contender, blocks of {}); \
         P2: {} tasks, {} keys, {} rounds of {:.2} s (+{:.2} s warm-up) per contender",
        o.p1_epochs,
        o.p1.rounds,
        o.p1.per_round,
        o.p1.block,
        o.p2.tasks,
        o.p2.keys,
        o.p2.rounds,
        o.p2.window.as_secs_f64(),
        o.p2.warmup.as_secs_f64()
    );
    rep.json.insert(
        "header".into(),
        json!({
            "postgresql": version, "max_connections": max_conns,
            "max_locks_per_transaction": max_locks, "cores": cores, "load_average_at_start": load,
            "quick": o.quick, "p1_epochs": o.p1_epochs, "p1_rounds": o.p1.rounds, "p1_calls_per_round": o.p1.per_round,
            "p1_block": o.p1.block, "p2_tasks": o.p2.tasks, "p2_keys": o.p2.keys,
            "p2_rounds": o.p2.rounds, "p2_window_s": o.p2.window.as_secs_f64(),
            "p2_warmup_s": o.p2.warmup.as_secs_f64(), "key_tag": keys.tag, "pid": keys.run,
        }),
    );
    Ok(())
}

/// Locks of this run still on the server (waits up to 5 s for background
/// unlocks).
async fn locks_left(admin: &Client, keys: &Keys) -> Result<i64, BoxErr> {
    let attr_ids = p2::attr_key_ids(keys);
    let mut left = -1i64;
    for _ in 0..50 {
        left = admin
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1 \
                 AND (classid::int8 = $1 OR ((classid::int8 << 32) | objid::int8) = ANY($2::int8[]))",
                &[&(keys.tag as i64), &attr_ids],
            )
            .await?
            .get(0);
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(left)
}

pub async fn connect_raw(url: &str) -> Result<Client, BoxErr> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("bench: raw connection ended: {e}");
        }
    });
    Ok(client)
}

/// The raw floor's prepared statements on one connection.
pub struct RawStatements {
    pub select1: Statement,
    pub try_lock: Statement,
    pub unlock: Statement,
    /// The previous call's unlock and this call's try-lock in one statement.
    pub unlock_try: Statement,
}

pub async fn raw_statements(client: &Client) -> Result<RawStatements, BoxErr> {
    Ok(RawStatements {
        select1: client.prepare("SELECT 1").await?,
        try_lock: client
            .prepare("SELECT pg_try_advisory_lock($1::int8)")
            .await?,
        unlock: client
            .prepare("SELECT pg_advisory_unlock($1::int8)")
            .await?,
        unlock_try: client
            .prepare("SELECT pg_advisory_unlock($1::int8), pg_try_advisory_lock($2::int8)")
            .await?,
    })
}

/// Takes the keys with at most `concurrency` try-locks in flight; returns
/// (busy, errors, the first error).
pub async fn take_many(
    locker: &Locker,
    ids: impl Iterator<Item = i64>,
    concurrency: usize,
    guards: &mut Vec<LockGuard>,
) -> (usize, usize, Option<String>) {
    type Joined = Result<Result<Option<LockGuard>, advisory_locked::Error>, tokio::task::JoinError>;
    let (mut busy, mut errors, mut first) = (0, 0, None);
    let mut absorb = |r: Joined, guards: &mut Vec<LockGuard>| match r {
        Ok(Ok(Some(g))) => guards.push(g),
        Ok(Ok(None)) => busy += 1,
        Ok(Err(e)) => {
            errors += 1;
            first.get_or_insert(e.to_string());
        }
        Err(e) => {
            errors += 1;
            first.get_or_insert(format!("task failed: {e}"));
        }
    };
    let mut set = JoinSet::new();
    for id in ids {
        while set.len() >= concurrency {
            if let Some(r) = set.join_next().await {
                absorb(r, guards);
            }
        }
        let l = locker.clone();
        set.spawn(async move { l.try_lock(LockKey::int(id), Mode::Exclusive).await });
    }
    while let Some(r) = set.join_next().await {
        absorb(r, guards);
    }
    (busy, errors, first)
}

/// Locks of scenario `scenario` of this run held on the server: (locks,
/// backends holding them).
pub async fn count_held(admin: &Client, keys: &Keys, scenario: u8) -> Result<(i64, i64), BoxErr> {
    let row = admin
        .query_one(
            "SELECT count(*), count(DISTINCT pid) FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND objsubid = 1 AND classid::int8 = $1 AND (objid::int8 >> 24) = $2",
            &[&(keys.tag as i64), &(scenario as i64)],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// Waits (up to 2 s) until no lock of `scenario` is held on the server.
pub async fn wait_released(admin: &Client, keys: &Keys, scenario: u8) -> Result<Duration, BoxErr> {
    let t = Instant::now();
    for _ in 0..200 {
        if count_held(admin, keys, scenario).await?.0 == 0 {
            return Ok(t.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(format!("scenario {scenario}: locks still held 2 s after release").into())
}

/// Pins this process and every backend of this run (found by the
/// `application_name` suffix `[<pid>]`, see [`crate::util::tagged_url`]).
pub async fn pin_run(admin: &Client, placement: crate::util::Placement) -> Result<(), BoxErr> {
    let rows = admin
        .query(
            "SELECT pid FROM pg_stat_activity WHERE application_name LIKE $1",
            &[&format!("%[{}]", std::process::id())],
        )
        .await?;
    let pids: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    Ok(placement.pin(&pids)?)
}

/// JSON of a list of series by name.
pub fn series_json(series: &[crate::harness::Series]) -> Value {
    series.iter().map(|s| s.json()).collect()
}
