//! Soak under faults: 16 worker processes run short wait-mode rounds on 8
//! keys while the test kills their lock sessions at random with
//! `pg_terminate_backend` (one every 50-150 ms).
//!
//! Every body stamps its entry and exit with the server's clock. At the end:
//!
//! - no two bodies whose release the server confirmed overlap (a confirmed
//!   unlock proves the session held the lock from grant to unlock): 0;
//! - every overlap among completed bodies at all (confirmed, annotated calls
//!   that returned `Ok`, releases that reported `LockLost`) has a kill
//!   between the two entries — an overlap with no kill in between would be
//!   an exclusion failure, not the loss window the abort policy allows;
//! - aborted bodies (lock lost mid-body) are counted, not checked;
//! - every call ends in one of the counted outcomes; errors while acquiring
//!   (a kill during a reconnect) must be typed, and none is a failed lock
//!   statement (`Error::Query`);
//! - nothing is left in `pg_locks` once the workers are gone.
//!
//! The killer also hits sessions being set up: a worker whose `install`
//! fails that way (a typed `Error::Connect`) tries again, at most 20 times.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use advisory_locked_tests::{
    backends_named, db_url, db_url_with_app, named, raw_connect, unique, unique_ident,
    wait_until_unlocked, Prng, ScratchTable,
};

const WORKER: &str = env!("CARGO_BIN_EXE_fault_soak_worker");
const PROCESSES: usize = 16;
const ROUNDS: usize = 1_000;
const KEYS: usize = 8;
const MAX_KILLS: usize = 2_000;
const WORKER_LIMIT: Duration = Duration::from_secs(150);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusion_holds_and_nothing_leaks_while_lock_sessions_are_killed() {
    let url = db_url();
    let client = raw_connect(&url).await;
    let holds = ScratchTable::create(
        &client,
        "faults_soak",
        "(id bigserial PRIMARY KEY, key text NOT NULL, pid int NOT NULL, round int NOT NULL, \
          path text NOT NULL, entered timestamptz NOT NULL DEFAULT clock_timestamp(), \
          exited timestamptz, outcome text)",
    )
    .await;
    let kills = ScratchTable::create(
        &client,
        "faults_soak_kills",
        "(pid int NOT NULL, at timestamptz NOT NULL)",
    )
    .await;
    let app = unique_ident("faults_soak");
    let lock_url = db_url_with_app(&app);
    let record_url = db_url_with_app(&format!("{app}_rec"));
    let keys: Vec<String> = (0..KEYS)
        .map(|i| unique(&format!("faults:soak:key{i}")))
        .collect();
    let mut rng = Prng::seeded("faults_soak", 0xFA17_0004);

    let start = Instant::now();
    let mut children = Vec::new();
    for _ in 0..PROCESSES {
        let child = tokio::process::Command::new(WORKER)
            .args([
                lock_url.as_str(),
                record_url.as_str(),
                holds.name.as_str(),
                &ROUNDS.to_string(),
                &keys.join(","),
                &rng.next_u64().to_string(),
            ])
            .kill_on_drop(true)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("cannot start the worker");
        children.push(tokio::spawn(async move {
            tokio::time::timeout(WORKER_LIMIT, child.wait_with_output()).await
        }));
    }

    // The killer: a random lock session of the workers, every 50-150 ms.
    let kill_sql = format!(
        "INSERT INTO {} (pid, at) SELECT $1, clock_timestamp() WHERE pg_terminate_backend($1)",
        kills.name
    );
    let mut killed = 0;
    let mut tries = 0;
    while killed < MAX_KILLS && !children.iter().all(|c| c.is_finished()) {
        assert!(start.elapsed() < WORKER_LIMIT, "the workers did not finish");
        tokio::time::sleep(Duration::from_millis(50 + rng.below(101))).await;
        let pids = backends_named(&client, &app).await;
        if pids.is_empty() {
            continue;
        }
        tries += 1;
        let pid = pids[rng.below(pids.len() as u64) as usize];
        killed += client.execute(&kill_sql, &[&pid]).await.expect("kill") as usize;
    }
    let mut totals: BTreeMap<String, u64> = BTreeMap::new();
    let mut slowest = 0;
    for child in children {
        let out = child
            .await
            .expect("join")
            .expect("a worker did not finish within 150 s")
            .expect("worker io");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "worker failed ({}): {}\n{stdout}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        for pair in stdout.split_whitespace() {
            if let Some((name, n)) = pair.split_once('=') {
                let n: u64 = n.parse().unwrap_or(0);
                match name {
                    "worker" => {}
                    "ms" => slowest = slowest.max(n),
                    _ => *totals.entry(name.to_owned()).or_default() += n,
                }
            }
        }
    }
    let took = start.elapsed();

    // Nothing left behind.
    let ids: Vec<_> = keys.iter().map(|k| named(k)).collect();
    let left = wait_until_unlocked(&client, &ids, Duration::from_secs(5)).await;
    assert!(
        left.is_empty(),
        "locks left after the workers exited: {left:?}"
    );
    assert!(backends_named(&client, &app).await.is_empty());

    // Overlaps, by the server's clock.
    let t = &holds.name;
    let row = client
        .query_one(
            &format!(
                "WITH done AS (SELECT * FROM {t} WHERE exited IS NOT NULL \
                                 AND outcome IN ('ok', 'confirmed', 'lost_release')), \
                      pairs AS ( \
                        SELECT a.outcome AS ao, b.outcome AS bo, \
                               least(a.entered, b.entered) AS first_in, \
                               greatest(a.entered, b.entered) AS second_in \
                        FROM done a JOIN done b ON a.key = b.key AND a.id < b.id \
                         AND tstzrange(a.entered, a.exited, '[)') && tstzrange(b.entered, b.exited, '[)')) \
                 SELECT (SELECT count(*) FROM {t}), \
                        (SELECT count(*) FROM done), \
                        (SELECT count(*) FROM {t} WHERE outcome IS NULL), \
                        (SELECT count(*) FROM pairs WHERE ao = 'confirmed' AND bo = 'confirmed'), \
                        (SELECT count(*) FROM pairs), \
                        (SELECT count(*) FROM pairs p WHERE NOT EXISTS ( \
                            SELECT 1 FROM {k} k WHERE k.at BETWEEN p.first_in AND p.second_in))",
                k = kills.name
            ),
            &[],
        )
        .await
        .expect("overlap query");
    let (rows, completed, aborted_rows): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    let (confirmed_overlaps, overlaps, unexplained): (i64, i64, i64) =
        (row.get(3), row.get(4), row.get(5));
    let server_kills: i64 = client
        .query_one(&format!("SELECT count(*) FROM {}", kills.name), &[])
        .await
        .unwrap()
        .get(0);
    let get = |n: &str| totals.get(n).copied().unwrap_or(0);
    let lock_lost = get("attr_lost") + get("guard_lost") + get("guard_lost_release");
    let errors: BTreeMap<_, _> = totals.iter().filter(|(n, _)| n.contains("_err_")).collect();
    println!(
        "faults_soak: {PROCESSES} processes x {ROUNDS} rounds on {KEYS} keys in {:.1} s (slowest worker {:.1} s); \
         {killed} lock sessions killed ({tries} tries, {server_kills} recorded); \
         {rows} bodies entered, {completed} completed, {aborted_rows} stopped mid-body; \
         LockLost {lock_lost} (annotated {}, guard in body {}, at release {}); confirmed releases {}; \
         annotated Ok {}; errors while acquiring {errors:?}; sessions opened {} ({} installs retried after a kill); \
         overlaps: {confirmed_overlaps} between confirmed bodies, {overlaps} among all completed \
         ({unexplained} without a kill in between)",
        took.as_secs_f64(),
        slowest as f64 / 1e3,
        get("attr_lost"),
        get("guard_lost"),
        get("guard_lost_release"),
        get("guard_confirmed"),
        get("attr_ok"),
        get("sessions_opened"),
        get("install_failures"),
    );
    let accounted = get("attr_ok")
        + get("attr_lost")
        + get("guard_confirmed")
        + get("guard_lost")
        + get("guard_lost_release")
        + errors.values().copied().sum::<u64>();
    assert_eq!(accounted, (PROCESSES * ROUNDS) as u64, "{totals:?}");
    assert!(killed >= 20, "too few kills to mean anything: {killed}");
    assert!(lock_lost > 0, "no kill ever hit a held lock");
    assert_eq!(
        confirmed_overlaps, 0,
        "bodies with confirmed releases overlapped"
    );
    assert_eq!(
        unexplained, 0,
        "overlapping bodies with no kill between their entries"
    );
    assert_eq!(
        get("release_err_Query") + get("guard_err_Query") + get("attr_err_Query"),
        0
    );
}
