//! P2: throughput, 256 tasks over 1,024 keys and 4 connections, in paired
//! rounds: every contender runs one short window per round (rotating order),
//! and each round's locks/s is divided by sqlx's (pool defaults) in the same
//! round.
//!
//! As in P1, a connection's round trip is bimodal on this machine; so the
//! bench (client) is pinned to CPU 0 and every backend of the run to CPU 1
//! (`taskset`; again before each window, as pools and sessions open
//! connections on demand): a database on another machine, for every
//! contender alike. One untimed window of each contender first opens their
//! connections.

use std::sync::Arc;

use advisory_locked::{advisory_locked, key_hash, LockConfig, LockKey, Locker, Mode};
use serde_json::{json, Map, Value};
use sqlx::postgres::{PgAdvisoryLock, PgAdvisoryLockKey, PgConnection, PgPoolOptions};
use sqlx::{Connection, Either, PgPool};

use std::time::Duration;

use tokio_postgres::Client;

use super::{connect_raw, pin_run, raw_statements, RawStatements};
use crate::harness::{op, rotate, Load, Op, Tput};
use crate::report::{Report, Verdict};
use crate::util::{round2, scn, tagged_url, thousands, unpin, BoxErr, Keys, Placement, Spread};
use crate::Opts;

/// The attribute form: one of 1,024 keys, the default registry entry (4
/// sessions).
#[advisory_locked(key = "bench:{run}:p2:{k}")]
async fn p2_attr(run: u32, k: u32) {}

/// The attribute's key ids of this run (to check none is left held).
pub fn attr_key_ids(keys: &Keys) -> Vec<i64> {
    let mut ids = vec![key_hash(&format!("bench:{}:p1", keys.run))];
    ids.extend((0..1_024).map(|k| key_hash(&format!("bench:{}:p2:{k}", keys.run))));
    ids
}

fn s(e: &dyn std::fmt::Display) -> String {
    e.to_string()
}

/// Raw: 4 tokio-postgres connections, a prepared try-lock then unlock per
/// call, keys spread over the connections, pipelined by tokio-postgres.
async fn raw_op(o: &Opts, keys: Keys) -> Result<Op, BoxErr> {
    let mut conns: Vec<(tokio_postgres::Client, RawStatements)> = Vec::new();
    for _ in 0..4 {
        let client = connect_raw(&tagged_url(&o.url)).await?;
        let st = raw_statements(&client).await?;
        conns.push((client, st));
    }
    let conns = Arc::new(conns);
    Ok(op(move |k| {
        let conns = conns.clone();
        async move {
            let (client, st) = &conns[(k % 4) as usize];
            let key = keys.int(scn::P2_RAW, k);
            let got: bool = client
                .query_one(&st.try_lock, &[&key])
                .await
                .map_err(|e| s(&e))?
                .get(0);
            if got {
                let row = client
                    .query_one(&st.unlock, &[&key])
                    .await
                    .map_err(|e| s(&e))?;
                if !row.get::<_, bool>(0) {
                    return Err("raw unlock returned false".to_owned());
                }
            }
            Ok(got)
        }
    }))
}

fn sqlx_locks(keys: Keys, scenario: u8, n: u32) -> Arc<Vec<PgAdvisoryLock>> {
    Arc::new(
        (0..n)
            .map(|k| PgAdvisoryLock::with_key(PgAdvisoryLockKey::BigInt(keys.int(scenario, k))))
            .collect(),
    )
}

/// sqlx's `PgAdvisoryLock` on a connection from `pool`, as its docs intend.
fn sqlx_pool_op(pool: &PgPool, locks: Arc<Vec<PgAdvisoryLock>>) -> Op {
    let pool = pool.clone();
    op(move |k| {
        let (pool, locks) = (pool.clone(), locks.clone());
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
    })
}

/// sqlx on one `PgConnection` (no pool), shared behind a mutex.
async fn sqlx_one_op(o: &Opts, locks: Arc<Vec<PgAdvisoryLock>>) -> Result<Op, BoxErr> {
    let conn = Arc::new(tokio::sync::Mutex::new(
        PgConnection::connect(&tagged_url(&o.url)).await?,
    ));
    Ok(op(move |k| {
        let (conn, locks) = (conn.clone(), locks.clone());
        async move {
            let mut c = conn.lock().await;
            let got = match locks[k as usize]
                .try_acquire(&mut *c)
                .await
                .map_err(|e| s(&e))?
            {
                Either::Left(guard) => {
                    guard.release_now().await.map_err(|e| s(&e))?;
                    true
                }
                Either::Right(_) => false,
            };
            Ok(got)
        }
    }))
}

/// A `Locker`'s try-lock, empty body, the guard dropped or `release().await`ed.
fn locker_op(locker: &Locker, keys: Keys, scenario: u8, awaited: bool) -> Op {
    let l = locker.clone();
    op(move |k| {
        let locker = l.clone();
        async move {
            let key = LockKey::int(keys.int(scenario, k));
            match locker
                .try_lock(key, Mode::Exclusive)
                .await
                .map_err(|e| s(&e))?
            {
                Some(g) if awaited => g.release().await.map(|()| true).map_err(|e| s(&e)),
                Some(_dropped) => Ok(true),
                None => Ok(false),
            }
        }
    })
}

const NAMES: [&str; 7] = [
    "sqlx, pool defaults",
    "sqlx, no test_before_acquire",
    "sqlx, one connection",
    "raw tokio-postgres, 4 connections",
    "attribute",
    "Locker, guard dropped",
    "Locker, release().await",
];

pub async fn run(o: &Opts, keys: &Keys, admin: &Client, rep: &mut Report) -> Result<(), BoxErr> {
    let keys = *keys;
    let n = o.p2.keys;
    let url = tagged_url(&o.url);
    let pool = |ping: bool| {
        PgPoolOptions::new()
            .max_connections(4)
            .test_before_acquire(ping)
            .connect(&url)
    };
    let (defaults, no_ping) = (pool(true).await?, pool(false).await?);
    let attr_entry = match advisory_locked::locker(advisory_locked::DEFAULT_POOL) {
        Ok(l) => l,
        Err(_) => LockConfig::from_url(&o.url)?.sessions(4).install().await?,
    };
    let locker = LockConfig::from_url(&o.url)?
        .name("bench-p2")
        .sessions(4)
        .connect()
        .await?;
    let run = keys.run;
    let ops = vec![
        sqlx_pool_op(&defaults, sqlx_locks(keys, scn::P2_SQLX, n)),
        sqlx_pool_op(&no_ping, sqlx_locks(keys, scn::P2_SQLX_NO_PING, n)),
        sqlx_one_op(o, sqlx_locks(keys, scn::P2_SQLX_ONE, n)).await?,
        raw_op(o, keys).await?,
        op(move |k| async move { p2_attr(run, k).await.map(|x| x.is_ran()).map_err(|e| s(&e)) }),
        locker_op(&locker, keys, scn::P2_LOCKER, false),
        locker_op(&locker, keys, scn::P2_RELEASE, true),
    ];
    let (s0, a0) = (locker.stats(), attr_entry.stats());
    let opening = Load {
        rounds: 1,
        warmup: Duration::from_millis(100),
        window: Duration::from_millis(100),
        ..o.p2
    };
    rotate(opening, &ops, || async { Ok(()) }).await?;
    let unpinned = std::sync::Mutex::new(None::<String>);
    let measured = rotate(o.p2, &ops, || async {
        if let Err(e) = pin_run(admin, Placement::CrossCpu).await {
            unpinned
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert(e.to_string());
        }
        Ok(())
    })
    .await;
    unpin()?;
    let t = measured?;
    let unpinned = unpinned.into_inner().unwrap_or_else(|p| p.into_inner());
    if let Some(e) = &unpinned {
        eprintln!("P2: cannot pin with taskset ({e}): measured unpinned");
    }
    let (s1, a1) = (locker.stats(), attr_entry.stats());
    defaults.close().await;
    no_ping.close().await;
    let per_call = |d: u64, calls: u64| d as f64 / calls.max(1) as f64;
    let calls = |i: usize| t[i].iter().map(|x| x.all_calls).sum::<u64>();
    let stmts = [
        per_call(a1.statements - a0.statements, calls(4)),
        per_call(s1.statements - s0.statements, calls(5) + calls(6)),
    ];
    report(&t, stmts, rep);
    let mut j = json_of(&t, stmts);
    j["placement"] = json!(if unpinned.is_some() {
        "unpinned"
    } else {
        "client CPU 0, backends CPU 1"
    });
    rep.json.insert("p2".into(), j);
    Ok(())
}

/// Per-round ratio of contender `i`'s locks/s over contender `r`'s.
fn ratio(t: &[Vec<Tput>], i: usize, r: usize) -> Spread {
    Spread::of(
        t[i].iter()
            .zip(&t[r])
            .map(|(a, b)| a.per_sec() / b.per_sec()),
    )
}

fn report(t: &[Vec<Tput>], stmts: [f64; 2], rep: &mut Report) {
    for (name, rounds) in NAMES.iter().zip(t) {
        let x = Tput::total(rounds);
        let err = x
            .first_error
            .as_deref()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        eprintln!(
            "P2: {name:<34} {:.0} locks/s, {:.0} busy/s, {} errors{err}",
            x.per_sec(),
            x.busy as f64 / x.secs,
            x.errors
        );
    }
    for (i, name) in NAMES.iter().enumerate() {
        let x = Tput::total(&t[i]);
        let mut value = format!("{} locks/s", thousands(x.per_sec() as u64));
        if x.errors > 0 {
            value += &format!(
                ", {} errors: {}",
                x.errors,
                x.first_error.as_deref().unwrap_or("")
            );
        }
        let vs = format!(
            "{} sqlx defaults; {:.2}× sqlx no ping",
            ratio(t, i, 0).text(),
            ratio(t, i, 1).median
        );
        let (goal, verdict) = match i {
            4 | 5 => {
                let ok =
                    x.errors == 0 && ratio(t, i, 0).median >= 20.0 && ratio(t, i, 1).median >= 15.0;
                ("≥ 20× sqlx defaults, ≥ 15× no ping", Verdict::of(ok))
            }
            6 => (
                "≥ 12× sqlx defaults",
                Verdict::of(x.errors == 0 && ratio(t, i, 0).median >= 12.0),
            ),
            _ => ("peer", Verdict::Info),
        };
        let name = match i {
            4 => format!("{name} (~{:.3} statements/call)", stmts[0]),
            5 | 6 => format!("{name} (~{:.3} statements/call, both)", stmts[1]),
            _ => (*name).to_owned(),
        };
        rep.row(
            "P2",
            name,
            value,
            vs,
            goal,
            if x.errors > 0 {
                Verdict::Error
            } else {
                verdict
            },
        );
    }
}

fn json_of(t: &[Vec<Tput>], stmts: [f64; 2]) -> Value {
    let mut cs = Vec::new();
    for (i, name) in NAMES.iter().enumerate() {
        let x = Tput::total(&t[i]);
        let mut j = Map::new();
        j.insert("name".into(), json!(name));
        j.insert("total".into(), x.json());
        j.insert(
            "per_round_locks_per_s".into(),
            json!(t[i].iter().map(|r| r.per_sec().round()).collect::<Vec<_>>()),
        );
        j.insert("vs_sqlx_defaults".into(), ratio(t, i, 0).json());
        j.insert("vs_sqlx_no_ping".into(), ratio(t, i, 1).json());
        j.insert("vs_raw".into(), ratio(t, i, 3).json());
        cs.push(Value::Object(j));
    }
    json!({
        "contenders": cs,
        "statements_per_call": { "attribute": round2(stmts[0]), "locker": round2(stmts[1]) },
    })
}
