//! Mutual exclusion (docs/design.md, invariant 1): two holders of one exclusive key
//! never run their bodies at the same time, across OS processes and across
//! tasks of one process; shared holders never overlap an exclusive one.
//!
//! The bodies stamp their entry and exit with the server's
//! `clock_timestamp()`; a self-join on overlapping `[entered, exited)`
//! intervals of one key must find nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use advisory_locked::{advisory_locked, LockConfig};
use advisory_locked_tests::workers::run_processes;
use advisory_locked_tests::{
    db_url, db_url_with_app, hold_stats, raw_connect, sessions_named, unique, unique_ident,
    HoldStats, Prng, ScratchTable, HOLDS_COLUMNS,
};
use tokio_postgres::Client;

const WORKER: &str = env!("CARGO_BIN_EXE_exclusion_worker");

/// Runs `processes` workers against one holds table; returns its stats.
async fn run_workers(
    test: &str,
    processes: usize,
    rounds: usize,
    keys: usize,
    shared_percent: u32,
) -> HoldStats {
    let url = db_url();
    let client = raw_connect(&url).await;
    let table = ScratchTable::create(&client, test, HOLDS_COLUMNS).await;
    let keys: Vec<String> = (0..keys)
        .map(|i| unique(&format!("{test}:key{i}")))
        .collect();
    let mut rng = Prng::seeded(test, 0x5EED_0001);

    let start = Instant::now();
    let args = (0..processes)
        .map(|_| {
            vec![
                url.clone(),
                table.name.clone(),
                rounds.to_string(),
                keys.join(","),
                shared_percent.to_string(),
                rng.next_u64().to_string(),
            ]
        })
        .collect();
    for stdout in run_processes(WORKER, args, Duration::from_secs(150)).await {
        print!("{stdout}");
    }
    let stats = hold_stats(&client, &table.name).await;
    println!(
        "{test}: {processes} processes x {rounds} rounds on {} keys in {:?}: {stats:?}",
        keys.len(),
        start.elapsed()
    );
    stats
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_bodies_never_overlap_across_processes() {
    let (processes, rounds) = (8, 200);
    let stats = run_workers("excl_procs", processes, rounds, 4, 0).await;
    assert_eq!(
        stats.rows,
        (processes * rounds) as i64,
        "every round must have run once"
    );
    assert_eq!(
        stats.unfinished, 0,
        "every body must have recorded its exit"
    );
    assert_eq!(
        stats.conflicting_overlaps, 0,
        "two exclusive holders of one key overlapped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_and_exclusive_never_overlap_across_processes() {
    let (processes, rounds) = (4, 100);
    let stats = run_workers("mixed_procs", processes, rounds, 2, 60).await;
    assert_eq!(stats.rows, (processes * rounds) as i64);
    assert_eq!(stats.unfinished, 0);
    assert_eq!(
        stats.conflicting_overlaps, 0,
        "an exclusive holder overlapped another holder of its key"
    );
}

// ---- in-process: many tasks of one multi-thread runtime -------------------

/// What the in-process bodies share: per key, how many bodies run right now
/// (exclusive, shared), and the highest counts ever seen.
#[derive(Default)]
struct Occupancy {
    now: Mutex<HashMap<String, (usize, usize)>>,
    violations: AtomicUsize,
    max_shared: AtomicUsize,
    runs: AtomicUsize,
}

impl Occupancy {
    fn enter(&self, key: &str, shared: bool) {
        let mut now = self.now.lock().unwrap();
        let (excl, sh) = now.entry(key.to_owned()).or_default();
        if *excl > 0 || (!shared && *sh > 0) {
            self.violations.fetch_add(1, Ordering::SeqCst);
        }
        if shared {
            *sh += 1;
            self.max_shared.fetch_max(*sh, Ordering::SeqCst);
        } else {
            *excl += 1;
        }
        self.runs.fetch_add(1, Ordering::SeqCst);
    }

    fn exit(&self, key: &str, shared: bool) {
        let mut now = self.now.lock().unwrap();
        let (excl, sh) = now.get_mut(key).expect("exit without enter");
        if shared {
            *sh -= 1;
        } else {
            *excl -= 1;
        }
    }
}

struct Ctx {
    client: Client,
    table: String,
    occupancy: Occupancy,
}

async fn body(
    ctx: &Ctx,
    key: &str,
    task: i32,
    shared: bool,
    hold: Duration,
) -> Result<(), tokio_postgres::Error> {
    ctx.occupancy.enter(key, shared);
    let row = ctx
        .client
        .query_one(
            &format!(
                "INSERT INTO {} (key, pid, round, shared) VALUES ($1, $2, 0, $3) RETURNING id",
                ctx.table
            ),
            &[&key, &task, &shared],
        )
        .await?;
    let id: i64 = row.get(0);
    tokio::time::sleep(hold).await;
    ctx.client
        .execute(
            &format!(
                "UPDATE {} SET exited = clock_timestamp() WHERE id = $1",
                ctx.table
            ),
            &[&id],
        )
        .await?;
    ctx.occupancy.exit(key, shared);
    Ok(())
}

#[advisory_locked(key = "{key}", wait = "60s", pool = "excl_tasks")]
async fn tasks_exclusive(
    ctx: &Ctx,
    key: &str,
    task: i32,
    hold: Duration,
) -> Result<(), tokio_postgres::Error> {
    body(ctx, key, task, false, hold).await
}

#[advisory_locked(key = "{key}", wait = "60s", pool = "mixed_tasks")]
async fn mixed_exclusive(
    ctx: &Ctx,
    key: &str,
    task: i32,
    hold: Duration,
) -> Result<(), tokio_postgres::Error> {
    body(ctx, key, task, false, hold).await
}

#[advisory_locked(key = "{key}", wait = "60s", pool = "mixed_tasks", shared)]
async fn mixed_shared(
    ctx: &Ctx,
    key: &str,
    task: i32,
    hold: Duration,
) -> Result<(), tokio_postgres::Error> {
    body(ctx, key, task, true, hold).await
}

async fn run_tasks(
    test: &str,
    pool: &str,
    tasks: usize,
    rounds: usize,
    keys: usize,
    shared_percent: u64,
) -> (HoldStats, Arc<Ctx>) {
    let url = db_url();
    let app = unique_ident(pool);
    LockConfig::from_url(&db_url_with_app(&app))
        .unwrap()
        .name(pool)
        .sessions(2)
        .install()
        .await
        .expect("install");
    let client = raw_connect(&url).await;
    let table = ScratchTable::create(&client, test, HOLDS_COLUMNS).await;
    let ctx = Arc::new(Ctx {
        client: raw_connect(&url).await,
        table: table.name.clone(),
        occupancy: Occupancy::default(),
    });
    let keys: Arc<Vec<String>> = Arc::new(
        (0..keys)
            .map(|i| unique(&format!("{test}:key{i}")))
            .collect(),
    );
    let mut seeds = Prng::seeded(test, 0x5EED_0002);
    let start = Instant::now();
    let mut handles = Vec::new();
    for task in 0..tasks {
        let (ctx, keys) = (ctx.clone(), keys.clone());
        let mut rng = Prng::new(seeds.next_u64());
        let pool = pool.to_owned();
        handles.push(tokio::spawn(async move {
            for _ in 0..rounds {
                let key = &keys[rng.below(keys.len() as u64) as usize];
                let hold = Duration::from_micros(200 + rng.below(1_500));
                let result = if pool == "excl_tasks" {
                    tasks_exclusive(&ctx, key, task as i32, hold).await
                } else if rng.below(100) < shared_percent {
                    mixed_shared(&ctx, key, task as i32, hold).await
                } else {
                    mixed_exclusive(&ctx, key, task as i32, hold).await
                };
                result.expect("lock failed").expect("body failed");
            }
        }));
    }
    for h in handles {
        tokio::time::timeout(Duration::from_secs(120), h)
            .await
            .expect("a task did not finish within 120 s")
            .expect("a task panicked");
    }
    let stats = hold_stats(&client, &table.name).await;
    let open = sessions_named(&client, &app).await;
    assert!(
        (1..=2).contains(&open),
        "{open} lock sessions open, configured 2"
    );
    println!(
        "{test}: {open} lock sessions; {tasks} tasks x {rounds} rounds on {} keys in {:?}: {stats:?}, in-body violations {}, max shared at once {}",
        keys.len(),
        start.elapsed(),
        ctx.occupancy.violations.load(Ordering::SeqCst),
        ctx.occupancy.max_shared.load(Ordering::SeqCst),
    );
    (stats, ctx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exclusive_bodies_never_overlap_across_tasks() {
    let (tasks, rounds) = (64, 25);
    let (stats, ctx) = run_tasks("excl_tasks", "excl_tasks", tasks, rounds, 4, 0).await;
    assert_eq!(
        ctx.occupancy.violations.load(Ordering::SeqCst),
        0,
        "two bodies of one key ran at once"
    );
    assert_eq!(ctx.occupancy.runs.load(Ordering::SeqCst), tasks * rounds);
    assert_eq!(stats.rows, (tasks * rounds) as i64);
    assert_eq!(stats.unfinished, 0);
    assert_eq!(
        stats.conflicting_overlaps, 0,
        "two exclusive holders of one key overlapped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shared_and_exclusive_never_overlap_across_tasks() {
    let (tasks, rounds) = (32, 25);
    let (stats, ctx) = run_tasks("mixed_tasks", "mixed_tasks", tasks, rounds, 2, 70).await;
    assert_eq!(
        ctx.occupancy.violations.load(Ordering::SeqCst),
        0,
        "exclusive overlapped another holder"
    );
    assert_eq!(stats.rows, (tasks * rounds) as i64);
    assert_eq!(stats.unfinished, 0);
    assert_eq!(stats.conflicting_overlaps, 0);
}
