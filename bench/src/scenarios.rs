//! The scenarios of issue #5, measured in order in one run: the floor, then
//! P1..P6; a table and a JSON file at the end.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use advisory_locked::{advisory_locked, key_hash, LockConfig, LockGuard, LockKey, Locker, Mode};
use serde_json::{json, Map, Value};
use sqlx::postgres::{PgAdvisoryLock, PgAdvisoryLockKey, PgPoolOptions};
use sqlx::Either;
use tokio::task::JoinSet;
use tokio_postgres::{Client, NoTls, Statement};

use crate::child::handover;
use crate::harness::{interleave, op, probe, rotate, Load, Measured, Probe, Tput};
use crate::util::{round2, rss_bytes, scn, BoxErr, Keys, Lat};
use crate::Opts;

// The attribute forms measured. Template keys carry the run id so that runs
// never share keys (with each other or with the tests).

/// P1 (a): an uncontended locked call with an empty body, skip mode.
#[advisory_locked(key = "bench:{run}:p1")]
async fn p1_attr(run: u32) {}

/// P2, attribute form: one of 1,024 keys.
#[advisory_locked(key = "bench:{run}:p2:{k}")]
async fn p2_attr(run: u32, k: u32) {}

fn attr_key_ids(keys: &Keys, p2_keys: u32) -> Vec<i64> {
    let mut ids = vec![key_hash(&format!("bench:{}:p1", keys.run))];
    ids.extend((0..p2_keys).map(|k| key_hash(&format!("bench:{}:p2:{k}", keys.run))));
    ids
}

// ---------------------------------------------------------------- report --

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Pass,
    Miss,
    Info,
    Error,
}

impl Verdict {
    fn of(ok: bool) -> Verdict {
        if ok {
            Verdict::Pass
        } else {
            Verdict::Miss
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Miss => "MISS",
            Verdict::Info => "-",
            Verdict::Error => "ERROR",
        }
    }
}

struct Row {
    id: &'static str,
    contender: String,
    value: String,
    ratio: String,
    goal: String,
    verdict: Verdict,
}

struct Report {
    rows: Vec<Row>,
    json: Map<String, Value>,
}

impl Report {
    fn row(
        &mut self,
        id: &'static str,
        contender: impl Into<String>,
        value: impl Into<String>,
        ratio: impl Into<String>,
        goal: impl Into<String>,
        verdict: Verdict,
    ) {
        self.rows.push(Row {
            id,
            contender: contender.into(),
            value: value.into(),
            ratio: ratio.into(),
            goal: goal.into(),
            verdict,
        });
    }

    fn error(&mut self, id: &'static str, e: BoxErr) {
        eprintln!("{id}: ERROR: {e}");
        self.row(
            id,
            "(scenario failed)",
            e.to_string(),
            "",
            "",
            Verdict::Error,
        );
        self.json
            .insert(id.to_lowercase(), json!({ "error": e.to_string() }));
    }

    fn print(&self) {
        let headers = ["id", "contender", "value", "ratio", "goal", "result"];
        let cells: Vec<[String; 6]> = self
            .rows
            .iter()
            .map(|r| {
                [
                    r.id.to_owned(),
                    r.contender.clone(),
                    r.value.clone(),
                    r.ratio.clone(),
                    r.goal.clone(),
                    r.verdict.as_str().to_owned(),
                ]
            })
            .collect();
        let mut w = headers.map(|h| h.chars().count());
        for c in &cells {
            for (i, s) in c.iter().enumerate() {
                w[i] = w[i].max(s.chars().count());
            }
        }
        let line = |c: &[String]| {
            let parts: Vec<String> = c
                .iter()
                .enumerate()
                .map(|(i, s)| format!("{s}{}", " ".repeat(w[i] - s.chars().count())))
                .collect();
            println!("| {} |", parts.join(" | "));
        };
        line(&headers.map(str::to_owned));
        println!(
            "|{}|",
            w.iter()
                .map(|n| "-".repeat(n + 2))
                .collect::<Vec<_>>()
                .join("|")
        );
        for c in &cells {
            line(c);
        }
    }
}

fn lat_value(l: &Lat) -> String {
    format!(
        "med {:.1} / p99 {:.1} µs (p10 {:.1})",
        l.median, l.p99, l.p10
    )
}

fn lat_ratio(l: &Lat, floor: &Lat) -> String {
    format!(
        "{:.2}× / {:.2}× (p10 {:.2}×)",
        l.median / floor.median,
        l.p99 / floor.p99,
        l.p10 / floor.p10
    )
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

// ------------------------------------------------------------------ main --

pub async fn run(o: Opts) -> Result<(), BoxErr> {
    let started = Instant::now();
    let keys = Keys::for_this_process();
    let admin = connect_raw(&o.url).await?;
    let version: String = admin.query_one("SHOW server_version", &[]).await?.get(0);
    let max_locks: String = admin
        .query_one("SHOW max_locks_per_transaction", &[])
        .await?
        .get(0);
    let max_conns: String = admin.query_one("SHOW max_connections", &[]).await?.get(0);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "advisory-locked benchmark (issue #5){}",
        if o.quick { " — QUICK run" } else { "" }
    );
    println!(
        "PostgreSQL {version} (max_connections {max_conns}, max_locks_per_transaction {max_locks}); \
         {cores} cores; tokio multi-thread runtime ({cores} workers); run key tag {:#x}",
        keys.tag
    );
    println!(
        "latency: {} warm-up + {} timed calls per contender, interleaved in {} rounds; \
         P2: {} tasks, {} keys, {} rotating windows of {:.1} s (+{:.1} s warm-up each) per contender",
        o.warm,
        o.seq,
        o.rounds,
        o.p2_tasks,
        o.p2_keys,
        o.rounds_p2,
        o.p2_window.as_secs_f64() / o.rounds_p2 as f64,
        o.p2_warmup.as_secs_f64()
    );
    println!(
        "note: on this machine a loopback round trip is bimodal (~10 µs when client and backend \
         share a CPU, ~50-70 µs with a cross-CPU wake-up); contenders are interleaved, and p10 \
         shows the fast mode"
    );
    let mut rep = Report {
        rows: Vec::new(),
        json: Map::new(),
    };
    rep.json.insert(
        "header".into(),
        json!({
            "postgresql": version,
            "max_connections": max_conns,
            "max_locks_per_transaction": max_locks,
            "cores": cores,
            "quick": o.quick,
            "seq_warmup": o.warm,
            "seq_iterations": o.seq,
            "p2_tasks": o.p2_tasks,
            "p2_keys": o.p2_keys,
            "p2_warmup_s": o.p2_warmup.as_secs_f64(),
            "p2_window_s": o.p2_window.as_secs_f64(),
            "key_tag": keys.tag,
            "pid": keys.run,
        }),
    );

    if o.runs("p1") {
        if let Err(e) = floor_and_p1(&o, &keys, &mut rep).await {
            rep.error("P1", e);
        }
    }
    if o.runs("p2") {
        if let Err(e) = p2(&o, &keys, &mut rep).await {
            rep.error("P2", e);
        }
    }
    // After P2's load the machine takes about a second to come back to its
    // usual round trips (P6 run right after P2 had its first five phases 3-5x
    // slower, then the usual): the latency scenarios after a load wait for it.
    let quiet = || tokio::time::sleep(Duration::from_secs(if o.quick { 0 } else { 1 }));
    if o.runs("p3") {
        quiet().await;
        if let Err(e) = p3(&o, &keys, &mut rep).await {
            rep.error("P3", e);
        }
    }
    if o.runs("p4") {
        if let Err(e) = p4(&o, &keys, &admin, &mut rep).await {
            rep.error("P4", e);
        }
    }
    if o.runs("p5") {
        if let Err(e) = p5(&o, &keys, &mut rep).await {
            rep.error("P5", e);
        }
    }
    if o.runs("p6") {
        quiet().await;
        if let Err(e) = p6(&o, &keys, &admin, &mut rep).await {
            rep.error("P6", e);
        }
    }

    // Everything this run took must be gone (background unlocks included).
    let attr_ids = attr_key_ids(&keys, o.p2_keys);
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
    let total = started.elapsed().as_secs_f64();
    rep.json.insert(
        "end".into(),
        json!({ "locks_left_on_server": left, "total_seconds": round2(total) }),
    );

    println!();
    rep.print();
    println!();
    println!("locks of this run left on the server at the end: {left}; total time {total:.1} s");
    let table: Vec<Value> = rep
        .rows
        .iter()
        .map(|r| {
            json!({"id": r.id, "contender": r.contender, "value": r.value, "ratio": r.ratio,
                   "goal": r.goal, "result": r.verdict.as_str()})
        })
        .collect();
    rep.json.insert("table".into(), Value::Array(table));
    if let Some(dir) = o.json.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(
        &o.json,
        serde_json::to_string_pretty(&Value::Object(rep.json))? + "\n",
    )?;
    println!("results written to {}", o.json.display());
    if left != 0 {
        return Err(format!("{left} locks of this run were still held at the end").into());
    }
    Ok(())
}

/// The registry's default entry (4 sessions), used by the attribute forms;
/// installed by the first scenario that needs it.
async fn default_entry(o: &Opts) -> Result<Locker, BoxErr> {
    match advisory_locked::locker(advisory_locked::DEFAULT_POOL) {
        Ok(l) => Ok(l),
        Err(_) => Ok(LockConfig::from_url(&o.url)?.sessions(4).install().await?),
    }
}

async fn connect_raw(url: &str) -> Result<Client, BoxErr> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("bench: raw connection ended: {e}");
        }
    });
    Ok(client)
}

// ------------------------------------------------------------ floor + P1 --

async fn raw_statements(client: &Client) -> Result<(Statement, Statement, Statement), BoxErr> {
    Ok((
        client.prepare("SELECT 1").await?,
        client
            .prepare("SELECT pg_try_advisory_lock($1::int8)")
            .await?,
        client
            .prepare("SELECT pg_advisory_unlock($1::int8)")
            .await?,
    ))
}

/// A probe: a prepared `SELECT 1` on a raw connection.
fn select1_probe(client: &Arc<Client>, stmt: &Statement) -> Probe {
    let (client, stmt) = (client.clone(), stmt.clone());
    probe("SELECT 1", move || {
        let (client, stmt) = (client.clone(), stmt.clone());
        async move {
            client.query_one(&stmt, &[]).await?;
            Ok(true)
        }
    })
}

/// The floor and P1, interleaved (see the harness): raw SELECT 1, raw
/// try-lock + unlock, our attribute, our Locker, sqlx with and without its
/// pool's ping on checkout. Returns the six, in that order, and our
/// statements per call.
async fn p1_measure(o: &Opts, keys: &Keys) -> Result<(Vec<Measured>, f64), BoxErr> {
    let client = Arc::new(connect_raw(&o.url).await?);
    let (sel, try_stmt, unlock_stmt) = raw_statements(&client).await?;
    // The registry entry the attribute uses; also P1 (b)'s Locker.
    let locker = default_entry(o).await?;
    let sqlx_pool = |ping: bool| {
        PgPoolOptions::new()
            .max_connections(4)
            .test_before_acquire(ping)
            .connect(&o.url)
    };
    let pool_ping = sqlx_pool(true).await?;
    let pool_no_ping = sqlx_pool(false).await?;
    let sqlx_lock = Arc::new(PgAdvisoryLock::with_key(PgAdvisoryLockKey::BigInt(
        keys.int(scn::P1_SQLX, 0),
    )));
    let sqlx_probe = |name: &'static str, pool: &sqlx::PgPool| {
        let (pool, lock) = (pool.clone(), sqlx_lock.clone());
        probe(name, move || {
            let (pool, lock) = (pool.clone(), lock.clone());
            async move {
                let conn = pool.acquire().await?;
                Ok(match lock.try_acquire(conn).await? {
                    Either::Left(guard) => {
                        guard.release_now().await?;
                        true
                    }
                    Either::Right(_conn) => false,
                })
            }
        })
    };
    let raw_key = keys.int(scn::FLOOR, 0);
    // The floor of our design: a sequence of calls sends the last call's
    // unlock and this call's try-lock in one statement (see
    // runtime/src/dispatch.rs, pair_requests). Held between calls.
    let pair_key = keys.int(scn::FLOOR, 1);
    let pair_stmt = client
        .prepare("SELECT pg_advisory_unlock($1::int8), pg_try_advisory_lock($2::int8)")
        .await?;
    let held: bool = client.query_one(&try_stmt, &[&pair_key]).await?.get(0);
    if !held {
        return Err("floor: the raw pair key was busy".into());
    }
    let run = keys.run;
    let lk_key = keys.int(scn::P1_LOCKER, 0);
    let probes = vec![
        select1_probe(&client, &sel),
        {
            let (client, t, u) = (client.clone(), try_stmt.clone(), unlock_stmt.clone());
            probe("raw try+unlock", move || {
                let (client, t, u) = (client.clone(), t.clone(), u.clone());
                async move {
                    let got: bool = client.query_one(&t, &[&raw_key]).await?.get(0);
                    let released: bool = client.query_one(&u, &[&raw_key]).await?.get(0);
                    Ok(got && released)
                }
            })
        },
        {
            let (client, st) = (client.clone(), pair_stmt.clone());
            probe("raw unlock+try", move || {
                let (client, st) = (client.clone(), st.clone());
                async move {
                    let row = client.query_one(&st, &[&pair_key, &pair_key]).await?;
                    Ok(row.get::<_, bool>(0) && row.get::<_, bool>(1))
                }
            })
        },
        probe("attribute", move || async move {
            Ok(p1_attr(run).await?.is_ran())
        }),
        {
            let locker = locker.clone();
            probe("locker", move || {
                let locker = locker.clone();
                async move {
                    Ok(
                        match locker
                            .try_lock(LockKey::int(lk_key), Mode::Exclusive)
                            .await?
                        {
                            Some(guard) => {
                                drop(guard);
                                true
                            }
                            None => false,
                        },
                    )
                }
            })
        },
        sqlx_probe("sqlx", &pool_ping),
        sqlx_probe("sqlx no ping", &pool_no_ping),
    ];
    let s0 = locker.stats();
    let m = interleave(&probes, o.warm, o.seq, o.rounds).await?;
    drop(probes);
    client
        .query_one("SELECT pg_advisory_unlock($1::int8)", &[&pair_key])
        .await?;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let s1 = locker.stats();
    pool_ping.close().await;
    pool_no_ping.close().await;
    // Statements per call of ours: the attribute's and the Locker's calls
    // share the entry, and both cost the same number of statements.
    let ours_calls = 2 * (o.warm + o.rounds.clamp(1, o.seq) * (o.seq / o.rounds.clamp(1, o.seq)));
    let stmts = (s1.statements - s0.statements) as f64 / ours_calls as f64;
    Ok((m, stmts))
}

/// The `latency-child` subcommand: P1 on this process's runtime (the
/// parent starts it with one worker thread), printed as one JSON line.
pub async fn latency_child(o: Opts) -> Result<(), BoxErr> {
    let keys = Keys::for_this_process();
    let (m, stmts) = p1_measure(&o, &keys).await?;
    let v = json!({
        "stmts": stmts,
        "m": m.iter().map(|x| json!({ "lat": x.lat.json(), "not_ok": x.not_ok })).collect::<Vec<_>>(),
    });
    println!("{v}");
    Ok(())
}

/// Runs P1 again in a child process whose runtime has one worker thread.
async fn p1_one_worker(o: &Opts) -> Result<(Vec<Measured>, f64), BoxErr> {
    let exe = std::env::current_exe()?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("latency-child");
    if o.quick {
        cmd.arg("--quick");
    }
    cmd.stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .map_err(|_| "latency child did not finish within 120 s")??;
    if !out.status.success() {
        return Err(format!("latency child exited with {}", out.status).into());
    }
    let v: Value = serde_json::from_slice(&out.stdout)?;
    let m = v["m"]
        .as_array()
        .ok_or("latency child: no results")?
        .iter()
        .map(|x| {
            Ok(Measured {
                lat: Lat::from_json(&x["lat"]).ok_or("latency child: bad latency")?,
                not_ok: x["not_ok"].as_u64().unwrap_or(0) as usize,
                // (not sent back: only summaries cross the pipe)
                samples: Vec::new(),
            })
        })
        .collect::<Result<Vec<_>, BoxErr>>()?;
    Ok((m, v["stmts"].as_f64().unwrap_or(f64::NAN)))
}

async fn floor_and_p1(o: &Opts, keys: &Keys, rep: &mut Report) -> Result<(), BoxErr> {
    let (m, stmts) = p1_measure(o, keys).await?;
    let names = [
        "SELECT 1",
        "raw try+unlock",
        "raw unlock+try",
        "attribute",
        "locker",
        "sqlx",
        "sqlx no ping",
    ];
    let [sel1, two, pair, attr, lk, sq, sq_np] = <[Measured; 7]>::try_from(m)
        .map_err(|_| "interleave returned the wrong number of contenders")?;
    let f = &sel1.lat;
    for (name, x) in names
        .iter()
        .zip([&sel1, &two, &pair, &attr, &lk, &sq, &sq_np])
    {
        eprintln!("P1: {name:<15} {} ({} not ok)", lat_value(&x.lat), x.not_ok);
    }
    if two.not_ok > 0 || sel1.not_ok > 0 || pair.not_ok > 0 {
        return Err("floor: the raw try-lock key was busy".into());
    }
    let goal = "≤ 1.10× (median and p99)";
    let pass = |x: &Measured| {
        x.not_ok == 0 && x.lat.median <= 1.10 * f.median && x.lat.p99 <= 1.10 * f.p99
    };
    rep.row(
        "floor",
        "tokio-postgres prepared SELECT 1 (1 round trip)",
        lat_value(f),
        "1.00× / 1.00× (p10 1.00×)",
        "reference",
        Verdict::Info,
    );
    rep.row(
        "floor",
        "tokio-postgres try-lock + unlock, sequential (2 round trips)",
        lat_value(&two.lat),
        lat_ratio(&two.lat, f),
        "",
        Verdict::Info,
    );
    rep.row(
        "floor",
        "tokio-postgres unlock + try-lock in one statement (our design's floor)",
        lat_value(&pair.lat),
        lat_ratio(&pair.lat, f),
        "",
        Verdict::Info,
    );
    rep.row(
        "P1",
        format!("ours #[advisory_locked] skip, empty body (~{stmts:.2} stmts/call)"),
        lat_value(&attr.lat),
        lat_ratio(&attr.lat, f),
        goal,
        Verdict::of(pass(&attr)),
    );
    rep.row(
        "P1",
        format!("ours Locker::try_lock + drop guard (~{stmts:.2} stmts/call)"),
        lat_value(&lk.lat),
        lat_ratio(&lk.lat, f),
        goal,
        Verdict::of(pass(&lk)),
    );
    rep.row(
        "P1",
        "sqlx PgAdvisoryLock try_acquire + release_now (PgPool 4, defaults)",
        lat_value(&sq.lat),
        lat_ratio(&sq.lat, f),
        "peer (≈ 2×)",
        Verdict::Info,
    );
    rep.row(
        "P1",
        "sqlx same, pool without test_before_acquire",
        lat_value(&sq_np.lat),
        lat_ratio(&sq_np.lat, f),
        "peer",
        Verdict::Info,
    );
    let entry = |x: &Measured, goal: Option<bool>| {
        let mut v = json!({
            "latency": x.lat.json(),
            "not_ok": x.not_ok,
            "ratio_median": round2(x.lat.median / f.median),
            "ratio_p99": round2(x.lat.p99 / f.p99),
        });
        if let Some(pass) = goal {
            v["pass"] = json!(pass);
            v["statements_per_call"] = json!(round2(stmts));
        }
        v
    };
    rep.json.insert(
        "floor".into(),
        json!({ "select1": sel1.lat.json(), "try_lock_unlock": entry(&two, None),
                "unlock_try_lock_one_statement": entry(&pair, None) }),
    );
    rep.json.insert(
        "p1".into(),
        json!({
            "rounds": o.rounds,
            "ours_attribute": entry(&attr, Some(pass(&attr))),
            "ours_locker": entry(&lk, Some(pass(&lk))),
            "sqlx": entry(&sq, None),
            "sqlx_no_ping": entry(&sq_np, None),
        }),
    );

    // The same on one worker thread: no cross-thread wake-ups, so what is
    // left above the floor is software cost.
    let (m1, stmts1) = p1_one_worker(o).await?;
    let f1 = m1.first().ok_or("latency child: no results")?.lat;
    let labels = [
        "1 worker: tokio-postgres SELECT 1",
        "1 worker: tokio-postgres try-lock + unlock",
        "1 worker: tokio-postgres unlock + try-lock, one statement",
        "1 worker: ours #[advisory_locked]",
        "1 worker: ours Locker::try_lock + drop",
        "1 worker: sqlx (PgPool 4, defaults)",
        "1 worker: sqlx, pool without ping",
    ];
    let mut one = Map::new();
    for ((label, name), x) in labels.iter().zip(names).zip(&m1) {
        eprintln!(
            "P1, 1 worker: {name:<15} {} ({} not ok)",
            lat_value(&x.lat),
            x.not_ok
        );
        rep.row(
            "P1·1w",
            *label,
            lat_value(&x.lat),
            lat_ratio(&x.lat, &f1),
            "diagnostic",
            Verdict::Info,
        );
        one.insert(
            name.to_owned(),
            json!({ "latency": x.lat.json(), "not_ok": x.not_ok,
                    "ratio_median": round2(x.lat.median / f1.median), "ratio_p99": round2(x.lat.p99 / f1.p99) }),
        );
    }
    one.insert("ours_statements_per_call".into(), json!(round2(stmts1)));
    rep.json.insert("p1_one_worker".into(), Value::Object(one));
    Ok(())
}

// -------------------------------------------------------------------- P2 --

async fn p2(o: &Opts, keys: &Keys, rep: &mut Report) -> Result<(), BoxErr> {
    let keys = *keys;
    let s = |e: &dyn std::fmt::Display| e.to_string();

    // Raw: 4 connections, one prepared try-lock then one unlock per call,
    // tasks spread over the connections by key, pipelined by tokio-postgres.
    let mut conns = Vec::new();
    for _ in 0..4 {
        let client = connect_raw(&o.url).await?;
        let (_, try_lock, unlock) = raw_statements(&client).await?;
        conns.push((client, try_lock, unlock));
    }
    let conns = Arc::new(conns);
    let raw = op(move |k| {
        let conns = conns.clone();
        async move {
            let (client, try_lock, unlock) = &conns[(k % 4) as usize];
            let key = keys.int(scn::P2_RAW, k);
            let got: bool = client
                .query_one(try_lock, &[&key])
                .await
                .map_err(|e| s(&e))?
                .get(0);
            if got {
                let released: bool = client
                    .query_one(unlock, &[&key])
                    .await
                    .map_err(|e| s(&e))?
                    .get(0);
                if !released {
                    return Err("raw unlock returned false".to_owned());
                }
            }
            Ok(got)
        }
    });

    // sqlx: PgPool of 4, PgAdvisoryLock per key, as its docs intend.
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&o.url)
        .await?;
    let locks: Arc<Vec<PgAdvisoryLock>> = Arc::new(
        (0..o.p2_keys)
            .map(|k| PgAdvisoryLock::with_key(PgAdvisoryLockKey::BigInt(keys.int(scn::P2_SQLX, k))))
            .collect(),
    );
    let p = pool.clone();
    let sqlx = op(move |k| {
        let pool = p.clone();
        let locks = locks.clone();
        async move {
            let conn = pool.acquire().await.map_err(|e| s(&e))?;
            match locks[k as usize]
                .try_acquire(conn)
                .await
                .map_err(|e| s(&e))?
            {
                Either::Left(guard) => {
                    guard.release_now().await.map_err(|e| s(&e))?;
                    Ok(true)
                }
                Either::Right(_conn) => Ok(false),
            }
        }
    });

    // Ours: a Locker over 4 sessions; try_lock, empty body, drop the guard.
    let locker = LockConfig::from_url(&o.url)?
        .name("bench-p2")
        .sessions(4)
        .connect()
        .await?;
    let l = locker.clone();
    let ours = op(move |k| {
        let locker = l.clone();
        async move {
            match locker
                .try_lock(LockKey::int(keys.int(scn::P2_OURS, k)), Mode::Exclusive)
                .await
            {
                Ok(Some(guard)) => {
                    drop(guard);
                    Ok(true)
                }
                Ok(None) => Ok(false),
                Err(e) => Err(e.to_string()),
            }
        }
    });

    // Ours, attribute form (the registry entry of P1, 4 sessions).
    let reg = default_entry(o).await?;
    let run = keys.run;
    let attr = op(move |k| async move {
        match p2_attr(run, k).await {
            Ok(outcome) => Ok(outcome.is_ran()),
            Err(e) => Err(e.to_string()),
        }
    });

    let load = Load {
        tasks: o.p2_tasks,
        keys: o.p2_keys,
        warmup: o.p2_warmup,
        window: o.p2_window,
        rounds: o.rounds_p2,
    };
    let (s0, a0) = (locker.stats(), reg.stats());
    let mut t = rotate(load, &[ours, attr, sqlx, raw]).await.into_iter();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (s1, a1) = (locker.stats(), reg.stats());
    pool.close().await;
    drop(locker);
    let (Some(ours), Some(attr), Some(sqlx), Some(raw)) = (t.next(), t.next(), t.next(), t.next())
    else {
        return Err("P2: missing results".into());
    };
    for (name, x) in [
        ("ours", &ours),
        ("attribute", &attr),
        ("sqlx", &sqlx),
        ("raw", &raw),
    ] {
        eprintln!(
            "P2: {name:<10} {:.0} locks/s, {:.0} busy/s, {} errors{}",
            x.per_sec(),
            x.busy as f64 / x.secs,
            x.errors,
            x.first_error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        );
    }

    let goal = "≥ 10× sqlx";
    let vs = |t: &Tput| {
        format!(
            "{:.1}× sqlx, {:.2}× raw",
            t.per_sec() / sqlx.per_sec(),
            t.per_sec() / raw.per_sec()
        )
    };
    let val = |t: &Tput| {
        let mut v = format!(
            "{} locks/s ({} busy/s)",
            thousands(t.per_sec() as u64),
            thousands((t.busy as f64 / t.secs) as u64)
        );
        if t.errors > 0 {
            v += &format!(
                ", {} errors: {}",
                t.errors,
                t.first_error.as_deref().unwrap_or("")
            );
        }
        v
    };
    let per_call = |d: u64, t: &Tput| d as f64 / t.all_calls.max(1) as f64;
    let ours_stmts = per_call(s1.statements - s0.statements, &ours);
    let attr_stmts = per_call(a1.statements - a0.statements, &attr);
    let ok = |t: &Tput| t.errors == 0 && t.per_sec() >= 10.0 * sqlx.per_sec();
    rep.row(
        "P2",
        format!("ours Locker try_lock + drop, 4 sessions (~{ours_stmts:.3} stmts/call)"),
        val(&ours),
        vs(&ours),
        goal,
        Verdict::of(ok(&ours)),
    );
    rep.row(
        "P2",
        format!(
            "ours #[advisory_locked(key = \"…{{k}}\")], 4 sessions (~{attr_stmts:.3} stmts/call)"
        ),
        val(&attr),
        vs(&attr),
        goal,
        Verdict::of(ok(&attr)),
    );
    rep.row(
        "P2",
        "sqlx PgAdvisoryLock, PgPool max 4",
        val(&sqlx),
        vs(&sqlx),
        "peer",
        Verdict::Info,
    );
    rep.row(
        "P2",
        "raw tokio-postgres, 4 conns, try-lock + unlock pipelined",
        val(&raw),
        vs(&raw),
        "baseline",
        Verdict::Info,
    );
    rep.json.insert(
        "p2".into(),
        json!({
            "rounds": load.rounds,
            "ours_locker": { "result": ours.json(), "statements_per_call": (ours_stmts * 1000.0).round() / 1000.0, "sessions_opened": s1.sessions_opened,
                             "vs_sqlx": round2(ours.per_sec() / sqlx.per_sec()), "vs_raw": round2(ours.per_sec() / raw.per_sec()), "pass": ok(&ours) },
            "ours_attribute": { "result": attr.json(), "statements_per_call": (attr_stmts * 1000.0).round() / 1000.0,
                                "vs_sqlx": round2(attr.per_sec() / sqlx.per_sec()), "vs_raw": round2(attr.per_sec() / raw.per_sec()), "pass": ok(&attr) },
            "sqlx": sqlx.json(),
            "raw": raw.json(),
        }),
    );
    Ok(())
}

// -------------------------------------------------------------------- P3 --

async fn p3(o: &Opts, keys: &Keys, rep: &mut Report) -> Result<(), BoxErr> {
    // The reference: SELECT 1 from this (mostly idle) process before,
    // between and after the runs, pooled. The contenders run in rounds, in
    // a rotating order, so that a slow spell of the machine is shared.
    let client = Arc::new(connect_raw(&o.url).await?);
    let (sel, _, _) = raw_statements(&client).await?;
    let reference = [select1_probe(&client, &sel)];
    let n_ref = o.seq / 5;
    let rounds = if o.quick { 1 } else { 3 };
    let per_round = (o.p3_handovers / rounds).max(10);
    let timing = (o.p3_hold_us, o.p3_pause_us);
    let kinds = ["ours", "sqlx", "raw"];
    let scenarios = [scn::P3_OURS, scn::P3_SQLX, scn::P3_RAW];
    let mut ref_samples = Vec::new();
    let mut runs: [Vec<crate::child::Handover>; 3] = Default::default();
    for round in 0..rounds {
        for j in 0..kinds.len() {
            let i = (round + j) % kinds.len();
            let m = interleave(&reference, 50, n_ref / kinds.len(), 1).await?;
            ref_samples.push(m.into_iter().next().ok_or("no reference")?.lat);
            let key = keys.int(scenarios[i], round as u32);
            runs[i].push(handover(kinds[i], &o.url, key, per_round, timing).await?);
        }
    }
    let m = interleave(&reference, 50, n_ref / kinds.len(), 1).await?;
    ref_samples.push(m.into_iter().next().ok_or("no reference")?.lat);
    // Pool the reference runs by their medians and p99s (equal sizes).
    let f = Lat {
        n: ref_samples.iter().map(|l| l.n).sum(),
        median: median_of(ref_samples.iter().map(|l| l.median)),
        p99: median_of(ref_samples.iter().map(|l| l.p99)),
        p10: median_of(ref_samples.iter().map(|l| l.p10)),
        mean: ref_samples.iter().map(|l| l.mean).sum::<f64>() / ref_samples.len() as f64,
        min: ref_samples.iter().map(|l| l.min).fold(f64::MAX, f64::min),
        max: ref_samples.iter().map(|l| l.max).fold(f64::MIN, f64::max),
    };
    // A handover wakes processes that were asleep (the holder's server
    // process, the waiter's, the waiter): a round trip from a process idle
    // for the hold time, to a server process idle as long, shows that cost.
    let asleep = Duration::from_micros(o.p3_hold_us.max(1));
    let mut idle = Vec::with_capacity(200);
    for _ in 0..200 {
        tokio::time::sleep(asleep).await;
        let t = std::time::Instant::now();
        client.query_one(&sel, &[]).await?;
        idle.push(t.elapsed().as_nanos() as u64);
    }
    let idle = Lat::from_nanos(idle);
    let [ours, sqlx, raw] = runs.map(crate::child::Handover::pool);
    eprintln!(
        "P3: reference SELECT 1 medians {}",
        ref_samples
            .iter()
            .map(|l| format!("{:.1}", l.median))
            .collect::<Vec<_>>()
            .join(" / ")
    );
    for (name, h) in [("ours", &ours), ("sqlx", &sqlx), ("raw", &raw)] {
        eprintln!(
            "P3: {name} {} over {} handovers ({} re-acquired by the releaser, {} not waiting)",
            lat_value(&h.lat),
            h.lat.n,
            h.reacquired_by_releaser,
            h.not_waiting
        );
    }
    let pass = ours.lat.n > 0 && ours.lat.median <= 1.5 * f.median;
    let value = |h: &crate::child::Handover| {
        format!(
            "{} (n={}, releaser re-took {}×)",
            lat_value(&h.lat),
            h.lat.n,
            h.reacquired_by_releaser
        )
    };
    rep.row(
        "P3",
        "SELECT 1 reference, measured between the runs",
        lat_value(&f),
        "1.00× / 1.00× (p10 1.00×)",
        "reference",
        Verdict::Info,
    );
    rep.row(
        "P3",
        format!(
            "SELECT 1 after {} µs asleep (a handover's wake-ups)",
            o.p3_hold_us
        ),
        lat_value(&idle),
        lat_ratio(&idle, &f),
        "reference",
        Verdict::Info,
    );
    rep.row(
        "P3",
        "floor: raw tokio-postgres pg_advisory_lock / unlock, 2 processes",
        value(&raw),
        lat_ratio(&raw.lat, &f),
        "floor",
        Verdict::Info,
    );
    rep.row(
        "P3",
        "ours Locker::lock wait mode, 2 processes",
        value(&ours),
        format!(
            "{}; {:.2}× sqlx; {:.2}× the raw floor",
            lat_ratio(&ours.lat, &f),
            ours.lat.median / sqlx.lat.median,
            ours.lat.median / raw.lat.median
        ),
        "median ≤ 1.5× SELECT 1",
        Verdict::of(pass),
    );
    rep.row(
        "P3",
        "sqlx PgAdvisoryLock::acquire (blocks on the server)",
        value(&sqlx),
        lat_ratio(&sqlx.lat, &f),
        "peer",
        Verdict::Info,
    );
    let with_ratio = |h: &crate::child::Handover| {
        let mut j = h.json();
        j["ratio_median"] = json!(round2(h.lat.median / f.median));
        j
    };
    let mut oj = with_ratio(&ours);
    oj["pass"] = json!(pass);
    oj["over_sqlx"] = json!(round2(ours.lat.median / sqlx.lat.median));
    oj["over_raw_floor"] = json!(round2(ours.lat.median / raw.lat.median));
    rep.json.insert(
        "p3".into(),
        json!({
            "reference_select1": ref_samples.iter().map(Lat::json).collect::<Vec<_>>(),
            "reference_median_us": round2(f.median),
            "select1_after_hold_asleep": idle.json(),
            "ours_over_asleep_select1": round2(ours.lat.median / idle.median),
            "ours": oj, "sqlx": with_ratio(&sqlx), "raw_floor": with_ratio(&raw),
            "rounds": rounds,
            "hold_us": o.p3_hold_us, "pause_us": o.p3_pause_us,
        }),
    );
    Ok(())
}

fn median_of(xs: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = xs.collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

// -------------------------------------------------------------------- P4 --

/// Takes the keys with at most `concurrency` try-locks in flight.
async fn take_many(
    locker: &Locker,
    ids: impl Iterator<Item = i64>,
    concurrency: usize,
    guards: &mut Vec<LockGuard>,
) -> (usize, usize, Option<String>) {
    let (mut busy, mut errors, mut first) = (0, 0, None);
    let mut set = JoinSet::new();
    let mut absorb = |r: Result<Result<Option<LockGuard>, advisory_locked::Error>, _>,
                      guards: &mut Vec<LockGuard>| match r {
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

async fn count_held(admin: &Client, keys: &Keys, scenario: u8) -> Result<(i64, i64), BoxErr> {
    let row = admin
        .query_one(
            "SELECT count(*), count(DISTINCT pid) FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND objsubid = 1 AND classid::int8 = $1 AND (objid::int8 >> 24) = $2",
            &[&(keys.tag as i64), &(scenario as i64)],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

async fn wait_released(admin: &Client, keys: &Keys, scenario: u8) -> Result<Duration, BoxErr> {
    let t = Instant::now();
    for _ in 0..200 {
        if count_held(admin, keys, scenario).await?.0 == 0 {
            return Ok(t.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(format!("scenario {scenario}: locks still held 2 s after release").into())
}

async fn p4(o: &Opts, keys: &Keys, admin: &Client, rep: &mut Report) -> Result<(), BoxErr> {
    let n = o.p4_keys as usize;
    let locker = LockConfig::from_url(&o.url)?
        .name("bench-p4")
        .sessions(4)
        .connect()
        .await?;
    // Warm up: open all 4 sessions (keys spread over them), then settle.
    for i in 0..64 {
        if let Some(g) = locker
            .try_lock(
                LockKey::int(keys.int(scn::P4_OURS, 0xFF_0000 + i)),
                Mode::Exclusive,
            )
            .await?
        {
            g.release().await?;
        }
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut guards: Vec<LockGuard> = Vec::new();
    let rss0 = rss_bytes();
    let t = Instant::now();
    let (busy, errors, first) = take_many(
        &locker,
        (0..o.p4_keys).map(|i| keys.int(scn::P4_OURS, i)),
        256,
        &mut guards,
    )
    .await;
    let took = t.elapsed();
    let rss1 = rss_bytes();
    let held = guards.len();
    let stats = locker.stats();
    let our_pids: HashSet<i32> = guards.iter().map(|g| g.backend_pid()).collect();
    let (on_server, pids) = count_held(admin, keys, scn::P4_OURS).await?;
    let bytes_per_lock = match (rss0, rss1) {
        (Some(a), Some(b)) if held > 0 => Some((b as f64 - a as f64) / held as f64),
        _ => None,
    };
    let t = Instant::now();
    drop(guards);
    let released_in = t.elapsed() + wait_released(admin, keys, scn::P4_OURS).await?;
    drop(locker);
    eprintln!(
        "P4: ours held {held} ({busy} busy, {errors} errors{}) in {:.0} ms over {} sessions; pg_locks {on_server} over {pids} backends; {:.0} B/lock; all released in {:.0} ms",
        first.as_deref().map(|e| format!(": {e}")).unwrap_or_default(),
        took.as_secs_f64() * 1e3,
        stats.sessions_opened,
        bytes_per_lock.unwrap_or(f64::NAN),
        released_in.as_secs_f64() * 1e3
    );
    let pass = held == n && stats.sessions_opened <= 4 && on_server == n as i64 && errors == 0;
    rep.row(
        "P4",
        "ours Locker, 4 sessions: 10,000 distinct keys at once",
        format!(
            "{} held ({} in pg_locks over {} backends), sessions {}, taken in {:.0} ms{}",
            thousands(held as u64),
            thousands(on_server as u64),
            pids,
            stats.sessions_opened,
            took.as_secs_f64() * 1e3,
            if errors > 0 {
                format!(", {errors} errors: {}", first.as_deref().unwrap_or(""))
            } else {
                String::new()
            }
        ),
        format!("{} locks per connection", held / our_pids.len().max(1)),
        "10,000 over ≤ 4 connections",
        Verdict::of(pass),
    );
    rep.row(
        "P4",
        "ours: memory per held lock (RSS delta / held)",
        bytes_per_lock.map_or("n/a".to_owned(), |b| format!("{b:.0} B")),
        "",
        "report",
        Verdict::Info,
    );

    // sqlx: a guard keeps its connection, so a pool of 4 holds 4 locks.
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_millis(500))
        .connect(&o.url)
        .await?;
    let locks: Vec<PgAdvisoryLock> = (0..5)
        .map(|i| PgAdvisoryLock::with_key(PgAdvisoryLockKey::BigInt(keys.int(scn::P4_SQLX, i))))
        .collect();
    let mut sguards = Vec::new();
    let mut fifth = String::new();
    for (i, lock) in locks.iter().enumerate() {
        match pool.acquire().await {
            Ok(conn) => match lock.try_acquire(conn).await? {
                Either::Left(g) => sguards.push(g),
                Either::Right(_) => fifth = format!("key {i} busy"),
            },
            Err(e) => {
                fifth = format!("lock #{} not possible: {e}", i + 1);
                break;
            }
        }
    }
    let sqlx_held = sguards.len();
    for g in sguards {
        g.release_now().await?;
    }
    pool.close().await;
    wait_released(admin, keys, scn::P4_SQLX).await?;
    eprintln!("P4: sqlx held {sqlx_held}; {fifth}");
    rep.row(
        "P4",
        "sqlx PgAdvisoryLock, PgPool max 4",
        format!("{sqlx_held} held; {fifth}"),
        "1 lock per connection",
        "peer",
        Verdict::Info,
    );
    rep.json.insert(
        "p4".into(),
        json!({
            "ours": {
                "wanted": n, "held": held, "busy": busy, "errors": errors, "first_error": first,
                "take_ms": round2(took.as_secs_f64() * 1e3), "sessions_opened": stats.sessions_opened,
                "pg_locks": on_server, "backends": pids,
                "rss_before": rss0, "rss_holding": rss1, "bytes_per_lock": bytes_per_lock.map(|b| b.round()),
                "release_ms": round2(released_in.as_secs_f64() * 1e3), "pass": pass,
            },
            "sqlx": { "pool_max": 4, "held": sqlx_held, "fifth": fifth },
        }),
    );
    Ok(())
}

// -------------------------------------------------------------------- P5 --

async fn p5(o: &Opts, keys: &Keys, rep: &mut Report) -> Result<(), BoxErr> {
    let locker = LockConfig::from_url(&o.url)?
        .name("bench-p5")
        .sessions(4)
        .connect()
        .await?;
    let key = keys.int(scn::P5, 0);
    let guard = locker
        .try_lock(LockKey::int(key), Mode::Exclusive)
        .await?
        .ok_or("P5: the key was busy")?;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let s0 = locker.stats();
    let mut skipped = 0usize;
    let mut granted = 0usize;
    let mut samples = Vec::with_capacity(o.p5_tries);
    for _ in 0..o.p5_tries {
        let t = Instant::now();
        match locker.try_lock(LockKey::int(key), Mode::Exclusive).await? {
            None => skipped += 1,
            Some(g) => {
                granted += 1;
                drop(g);
            }
        }
        samples.push(t.elapsed().as_nanos() as u64);
    }
    let lat = Lat::from_nanos(samples);
    let s1 = locker.stats();
    guard.release().await?;
    let stmts = s1.statements - s0.statements;
    let local_busy = s1.local_busy - s0.local_busy;
    eprintln!(
        "P5: {skipped}/{} skipped locally, {granted} granted, {stmts} statements, local_busy +{local_busy}; {}, mean {:.2} µs",
        o.p5_tries,
        lat_value(&lat),
        lat.mean
    );
    let pass = stmts == 0 && skipped == o.p5_tries;
    rep.row(
        "P5",
        "ours try_lock of a key held in this process",
        format!(
            "{} tries: {} skipped, {} statements; mean {:.2} µs, p99 {:.2} µs",
            thousands(o.p5_tries as u64),
            thousands(skipped as u64),
            stmts,
            lat.mean,
            lat.p99
        ),
        format!("{:.0} statements/try", stmts as f64 / o.p5_tries as f64),
        "0 round trips",
        Verdict::of(pass),
    );
    rep.json.insert(
        "p5".into(),
        json!({ "tries": o.p5_tries, "skipped": skipped, "granted": granted, "statements": stmts,
                "local_busy": local_busy, "latency": lat.json(), "pass": pass }),
    );
    Ok(())
}

// -------------------------------------------------------------------- P6 --

/// Waits (bounded) until `locker` holds exactly `level` keys and every
/// unlock it sent is answered, then a little longer (longer still after a
/// `big` change).
async fn settle(locker: &Locker, level: usize, big: bool) -> Result<(), BoxErr> {
    for _ in 0..2_000 {
        let s = locker.stats();
        if s.keys == level as u64 && s.released == s.unlock_requests {
            let quiet = if big { 200 } else { 20 };
            tokio::time::sleep(Duration::from_millis(quiet)).await;
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Err(format!(
        "P6: the locker did not settle at {level} keys within 10 s: {:?}",
        locker.stats()
    )
    .into())
}

async fn p6(o: &Opts, keys: &Keys, admin: &Client, rep: &mut Report) -> Result<(), BoxErr> {
    // One Locker, one hot key, and 1 / 100 / 10,000 other locks held at
    // once, the level changed between phases (up, then down, in cycles,
    // after one unmeasured cycle up). Each phase is interleaved, in blocks
    // of 10 calls, with a raw SELECT 1; a level's value is the median of its
    // phases' ratios to that SELECT 1 (latencies are reported too). One
    // Locker, so that every level is measured over the same client/backend
    // pair: on this VM a pair's round trip stays slow or fast for seconds at
    // a time, which made separate Lockers per level differ by up to 2-4x
    // whatever they held (and two Lockers holding the same number of others
    // by up to 40%).
    let levels = [1u32, 100, 10_000];
    let cycles = if o.quick { 2 } else { 12 };
    let per_phase = (o.p6_seq / cycles).max(50);
    let locker = LockConfig::from_url(&o.url)?
        .name("bench-p6")
        .sessions(4)
        .connect()
        .await?;
    let client = Arc::new(connect_raw(&o.url).await?);
    let (sel, _, _) = raw_statements(&client).await?;
    let target = LockKey::int(keys.int(scn::P6_TARGET, 0));
    let hot = {
        let (locker, target) = (locker.clone(), target.clone());
        probe("p6", move || {
            let (locker, target) = (locker.clone(), target.clone());
            async move {
                Ok(match locker.try_lock(target, Mode::Exclusive).await? {
                    Some(guard) => {
                        drop(guard);
                        true
                    }
                    None => false,
                })
            }
        })
    };
    // The reference rotates over three connections: a single client/backend
    // pair can stay in the slow mode for seconds (see the module docs), and
    // the verdict divides by this.
    let mut refs = vec![(client.clone(), sel.clone())];
    for _ in 0..2 {
        let c = Arc::new(connect_raw(&o.url).await?);
        let (s, _, _) = raw_statements(&c).await?;
        refs.push((c, s));
    }
    let next_ref = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let reference = probe("SELECT 1 (3 connections)", move || {
        let i = next_ref.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % refs.len();
        let (client, stmt) = refs[i].clone();
        async move {
            client.query_one(&stmt, &[]).await?;
            Ok(true)
        }
    });
    let probes = vec![reference, hot];
    // The hot key is locked and released before any other is taken (so it
    // is "released lately" when the others arrive, as in P1).
    interleave(&probes, o.warm.min(300), 0, 1).await?;
    let mut held: Vec<LockGuard> = Vec::new();
    // Other keys are never reused: each is taken for the first time (a
    // key released lately would be routed as a hot one).
    let mut next_other = 0u32;
    let mut runs: Vec<Vec<Measured>> = (0..=levels.len()).map(|_| Vec::new()).collect();
    // Where the hot key was held, and how many other locks that backend
    // held meanwhile (pg_locks), per phase.
    let mut placement = Vec::new();
    // Per level, each phase's median over the SELECT 1 median of the same
    // phase.
    let mut ratios: Vec<Vec<f64>> = levels.iter().map(|_| Vec::new()).collect();
    // Cycle 0 is not measured: the levels once up, so that the hot key has
    // found its session (the lanes move it off sessions the others fill).
    for cycle in 0..=cycles {
        for j in 0..levels.len() {
            let li = if cycle % 2 == 0 {
                j
            } else {
                levels.len() - 1 - j
            };
            let level = levels[li] as usize;
            let moved = held.len().abs_diff(level);
            if held.len() < level {
                let want = level - held.len();
                let first = next_other;
                next_other += want as u32;
                let (busy, errors, first_error) = take_many(
                    &locker,
                    (first..next_other).map(|k| keys.int(scn::P6_OTHERS, k)),
                    256,
                    &mut held,
                )
                .await;
                if held.len() != level {
                    return Err(format!(
                        "P6: holding {} of {level} other locks ({busy} busy, {errors} errors{})",
                        held.len(),
                        first_error.map(|e| format!(": {e}")).unwrap_or_default()
                    )
                    .into());
                }
            } else {
                held.truncate(level);
            }
            // After thousands of locks taken or released, the machine takes
            // a moment to come back (the first phase after was 2-3x slow).
            settle(&locker, level, moved > 1_000).await?;
            if cycle == 0 {
                if j + 1 == levels.len() {
                    // The hot key's session may be new (the lanes moved
                    // it): a fresh backend is slow for its first few
                    // hundred calls on this VM.
                    interleave(&probes, 2 * o.warm, 0, 1).await?;
                }
                continue;
            }
            // In blocks of 10 calls, so that both probes see the same
            // spells of the machine.
            let m = interleave(&probes, 20, per_phase, (per_phase / 10).max(1)).await?;
            ratios[li].push(m[1].lat.median / m[0].lat.median);
            let pid = match locker.try_lock(target.clone(), Mode::Exclusive).await? {
                Some(g) => g.backend_pid(),
                None => return Err("P6: the hot key was busy".into()),
            };
            let others: i64 = admin
                .query_one(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = $1",
                    &[&pid],
                )
                .await?
                .get(0);
            placement.push((level, pid, others));
            if std::env::var_os("P6_DEBUG").is_some() {
                eprintln!("P6 phase: level {level} pid {pid} others {others}: SELECT 1 med {:.1}, ours p10 {:.1} med {:.1}", m[0].lat.median, m[1].lat.p10, m[1].lat.median);
            }
            for (i, x) in m.into_iter().enumerate() {
                runs[if i == 0 { 0 } else { 1 + li }].push(x);
            }
        }
    }
    drop(held);
    wait_released(admin, keys, scn::P6_OTHERS).await?;
    drop(locker);
    // A level's latency: the median of its phases' medians (a slow spell of
    // the machine spoils a phase or two, whichever level they measure).
    let phase_medians: Vec<f64> = runs
        .iter()
        .map(|phases| median_of(phases.iter().map(|x| x.lat.median)))
        .collect();
    let m: Vec<Measured> = runs.into_iter().map(Measured::pool).collect();
    let pids: std::collections::BTreeSet<i32> = placement.iter().map(|p| p.1).collect();
    let most_beside = placement.iter().map(|p| p.2).max().unwrap_or(0);
    eprintln!(
        "P6: the hot key was held on {} backend(s) {pids:?}; the most other locks that backend held in a phase: {most_beside}",
        pids.len()
    );

    // The server's part: SELECT 1 on a backend that holds 0, 2,500 (what
    // each of 4 sessions holds with 10,000 locks) or 10,000 advisory locks.
    let server_levels = [0i64, 2_500, 10_000];
    // And backends that held many locks and released them all: the
    // backend-local lock table does not shrink (see runtime/src/lanes.rs).
    // Made first, so that the server's lock table never holds more than
    // the 12,500 above at once.
    let released_levels = [4_096i64, 10_000];
    let mut raw = Vec::new();
    let mut released = Vec::new();
    for (i, &n) in released_levels.iter().chain(&server_levels).enumerate() {
        let c = Arc::new(connect_raw(&o.url).await?);
        let first = keys.int(scn::P6_RAW, i as u32 * 100_000);
        let got: i64 = c
            .query_one(
                "SELECT count(*) FILTER (WHERE pg_try_advisory_lock(k)) \
                 FROM generate_series($1::int8, $1::int8 + $2::int8 - 1) k",
                &[&first, &n],
            )
            .await?
            .get(0);
        if got != n {
            return Err(format!("P6: a raw session took {got} of {n} locks").into());
        }
        let (s, _, _) = raw_statements(&c).await?;
        if i < released_levels.len() {
            c.execute("SELECT pg_advisory_unlock_all()", &[]).await?;
            released.push((c, s));
        } else {
            raw.push((c, s));
        }
    }
    raw.extend(released);
    let raw_probes: Vec<Probe> = raw.iter().map(|(c, s)| select1_probe(c, s)).collect();
    let raw_m = interleave(&raw_probes, 100, o.p6_seq / 2, o.rounds).await?;
    for (c, _) in &raw {
        c.execute("SELECT pg_advisory_unlock_all()", &[]).await?;
    }
    drop(raw);
    wait_released(admin, keys, scn::P6_RAW).await?;

    let f = &m[0].lat;
    eprintln!("P6: SELECT 1 {}", lat_value(f));
    for (level, x) in levels.iter().zip(&m[1..]) {
        eprintln!(
            "P6: with {level} other locks held: {} ({} busy)",
            lat_value(&x.lat),
            x.not_ok
        );
    }
    let (raw_m, released_m) = raw_m.split_at(server_levels.len());
    for (n, x) in server_levels.iter().zip(raw_m) {
        eprintln!(
            "P6: raw SELECT 1 on a backend holding {n} locks: {}",
            lat_value(&x.lat)
        );
    }
    for (n, x) in released_levels.iter().zip(released_m) {
        eprintln!(
            "P6: raw SELECT 1 on a backend that held {n} locks and released them: {}",
            lat_value(&x.lat)
        );
    }
    let medians = &phase_medians[1..];
    // The verdict: a level's cost as the median of its phases' ratios to
    // the SELECT 1 measured with them, so that what slows every statement
    // on the machine (a slow spell, or the server holding 10,000 locks at
    // all) is not counted as this crate's cost growth.
    let level_ratios: Vec<f64> = ratios
        .iter()
        .map(|r| median_of(r.iter().copied()))
        .collect();
    let max = level_ratios.iter().cloned().fold(f64::MIN, f64::max);
    let min = level_ratios.iter().cloned().fold(f64::MAX, f64::min);
    let spread = max / min;
    let busy: usize = m[1..].iter().map(|x| x.not_ok).sum();
    let pass = spread <= 1.10 && busy == 0;
    let join = |xs: &[Measured]| {
        xs.iter()
            .map(|x| format!("{:.1}", x.lat.median))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    let fmt = |xs: &[f64]| {
        xs.iter()
            .map(|x| format!("{x:.1}"))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    rep.row(
        "P6",
        format!(
            "ours Locker try_lock + drop with 1 / 100 / 10,000 others held ({cycles} phases each)"
        ),
        format!(
            "{}× a SELECT 1 rotating over 3 connections (median of the phases' ratios); {} µs (median of the phases' medians; that SELECT 1 {:.1}); pooled medians {}",
            level_ratios
                .iter()
                .map(|x| format!("{x:.3}"))
                .collect::<Vec<_>>()
                .join(" / "),
            fmt(medians),
            phase_medians[0],
            join(&m[1..])
        ),
        format!("max/min {spread:.2}"),
        "flat within 10%",
        Verdict::of(pass),
    );
    rep.row(
        "P6",
        "server: raw SELECT 1 on a backend holding 0 / 2,500 / 10,000 locks",
        format!("med {} µs", join(raw_m)),
        format!(
            "max/min {:.2}",
            raw_m.last().map_or(f64::NAN, |x| x.lat.median) / raw_m[0].lat.median
        ),
        "reference",
        Verdict::Info,
    );
    let fresh = &raw_m[0].lat;
    rep.row(
        "P6",
        "server: raw SELECT 1 on a backend that held 4,096 / 10,000 locks, all released",
        format!(
            "med {} µs, p10 {} (p10 holding none ever: {:.1})",
            join(released_m),
            released_m
                .iter()
                .map(|x| format!("{:.1}", x.lat.p10))
                .collect::<Vec<_>>()
                .join(" / "),
            fresh.p10
        ),
        format!(
            "p10 {}",
            released_m
                .iter()
                .map(|x| format!("{:.2}×", x.lat.p10 / fresh.p10))
                .collect::<Vec<_>>()
                .join(" / ")
        ),
        "reference",
        Verdict::Info,
    );
    rep.json.insert(
        "p6".into(),
        json!({
            "select1": f.json(),
            "levels": levels.iter().zip(&m[1..]).zip(medians).zip(&level_ratios).map(|(((level, x), pm), r)| json!({ "others_held": level, "median_ratio_to_select1": (r * 1000.0).round() / 1000.0, "median_of_phase_medians_us": round2(*pm), "pooled_latency": x.lat.json(), "busy": x.not_ok })).collect::<Vec<_>>(),
            "max_over_min": (spread * 1000.0).round() / 1000.0,
            "pass": pass,
            "cycles": cycles,
            "hot_key_backends": pids.len(),
            "most_other_locks_on_the_hot_keys_backend": most_beside,
            "server_select1_by_locks_held_on_the_backend": server_levels.iter().zip(raw_m).map(|(n, x)| json!({ "locks_held": n, "latency": x.lat.json() })).collect::<Vec<_>>(),
            "server_select1_after_holding_and_releasing": released_levels.iter().zip(released_m).map(|(n, x)| json!({ "locks_held_before": n, "latency": x.lat.json() })).collect::<Vec<_>>(),
        }),
    );
    Ok(())
}
