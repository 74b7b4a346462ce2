//! P4: memory per held lock, in a fresh process (`bench p4-child URL N`):
//! live heap counted by the bench's global allocator ([`crate::alloc`]), and
//! RSS growth (`VmRSS`), while N distinct keys are held at once; the raw
//! reference keeps N keys held on one tokio-postgres connection and their
//! ids in a `Vec<i64>`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use advisory_locked::{LockConfig, LockGuard, LockKey, Mode};
use serde_json::{json, Value};
use tokio::task::JoinSet;

use super::{connect_raw, take_many};
use crate::report::{Report, Verdict};
use crate::util::{rss_bytes, scn, thousands, BoxErr, Keys};
use crate::Opts;

/// Live heap bytes, allocations and RSS at one point.
#[derive(Clone, Copy)]
struct Mem {
    heap: i64,
    allocs: i64,
    rss: i64,
}

async fn mem_now() -> Mem {
    // Let background tasks (answers, unlocks) finish first.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (heap, allocs) = crate::alloc::live();
    let rss = rss_bytes().map_or(-1, |b| b as i64);
    Mem { heap, allocs, rss }
}

fn per_lock(a: Mem, b: Mem, n: usize) -> Value {
    let n = n.max(1) as f64;
    json!({
        "heap_bytes": ((b.heap - a.heap) as f64 / n).round(),
        "allocations": ((b.allocs - a.allocs) as f64 / n * 100.0).round() / 100.0,
        "rss_bytes": ((b.rss - a.rss) as f64 / n).round(),
    })
}

async fn ours(url: &str, keys: &Keys, n: u32) -> Result<Value, BoxErr> {
    let locker = LockConfig::from_url(url)?
        .name("bench-p4")
        .sessions(4)
        .connect()
        .await?;
    for i in 0..64 {
        let key = LockKey::int(keys.int(scn::P4_OURS, 0xFF_0000 + i));
        if let Some(g) = locker.try_lock(key, Mode::Exclusive).await? {
            g.release().await?;
        }
    }
    let mut guards: Vec<LockGuard> = Vec::with_capacity(n as usize);
    let before = mem_now().await;
    let ids = (0..n).map(|i| keys.int(scn::P4_OURS, i));
    let (busy, errors, first) = take_many(&locker, ids, 256, &mut guards).await;
    let holding = mem_now().await;
    let held = guards.len();
    drop(guards);
    for _ in 0..500 {
        if locker.stats().keys == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let after = mem_now().await;
    Ok(json!({
        "held": held, "busy": busy, "errors": errors, "first_error": first,
        "sessions_opened": locker.stats().sessions_opened,
        "guard_inline_bytes": std::mem::size_of::<LockGuard>(),
        "per_lock_holding": per_lock(before, holding, held),
        "per_lock_left_after_release": per_lock(before, after, held),
    }))
}

async fn raw(url: &str, keys: &Keys, n: u32) -> Result<Value, BoxErr> {
    let client = Arc::new(connect_raw(url).await?);
    let st = client
        .prepare("SELECT pg_try_advisory_lock($1::int8)")
        .await?;
    let mut held: Vec<i64> = Vec::with_capacity(n as usize);
    let before = mem_now().await;
    let mut set = JoinSet::new();
    for i in 0..n {
        if set.len() >= 256 {
            if let Some(r) = set.join_next().await {
                if let Some(k) = r?? {
                    held.push(k);
                }
            }
        }
        let (c, st, key) = (client.clone(), st.clone(), keys.int(scn::P4_RAW, i));
        set.spawn(async move {
            let got: bool = c.query_one(&st, &[&key]).await?.get(0);
            Ok::<_, tokio_postgres::Error>(got.then_some(key))
        });
    }
    while let Some(r) = set.join_next().await {
        if let Some(k) = r?? {
            held.push(k);
        }
    }
    let holding = mem_now().await;
    client
        .execute("SELECT pg_advisory_unlock_all()", &[])
        .await?;
    Ok(json!({
        "held": held.len(),
        "key_inline_bytes": std::mem::size_of::<i64>(),
        "per_lock_holding": per_lock(before, holding, held.len()),
    }))
}

/// The child process: counts from the start, prints one JSON line.
pub fn child_main(args: &[String]) -> ExitCode {
    crate::alloc::enable();
    let (Some(url), Some(Ok(n))) = (args.first(), args.get(1).map(|n| n.parse::<u32>())) else {
        eprintln!("usage: bench p4-child URL KEYS");
        return ExitCode::from(2);
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("p4-child: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let keys = Keys::for_this_process();
    let r: Result<Value, BoxErr> = rt.block_on(async {
        let o = ours(url, &keys, n).await?;
        let r = raw(url, &keys, n).await?;
        Ok(json!({ "keys": n, "ours": o, "raw": r }))
    });
    match r {
        Ok(v) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("p4-child: {e}");
            ExitCode::FAILURE
        }
    }
}

pub async fn run(o: &Opts, rep: &mut Report) -> Result<(), BoxErr> {
    let exe = std::env::current_exe()?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args(["p4-child", &o.url, &o.p4_keys.to_string()]);
    cmd.stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .map_err(|_| "P4 child did not finish within 120 s")??;
    if !out.status.success() {
        return Err(format!("P4 child exited with {}", out.status).into());
    }
    let line = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(line.lines().last().unwrap_or(""))?;
    eprintln!("P4: {v}");
    let (ours, raw) = (&v["ours"], &v["raw"]);
    let held = ours["held"].as_u64().unwrap_or(0);
    let heap = ours["per_lock_holding"]["heap_bytes"]
        .as_f64()
        .unwrap_or(f64::NAN);
    let guard = ours["guard_inline_bytes"].as_f64().unwrap_or(f64::NAN);
    let pass = held == u64::from(o.p4_keys) && heap + guard <= 100.0;
    rep.row(
        "P4",
        format!("Locker, 4 sessions, {} keys held at once (fresh process)", thousands(held)),
        format!(
            "heap {heap:.0} B + guard {guard:.0} B per lock ({} allocations); RSS +{} B per lock; left after release {} B",
            ours["per_lock_holding"]["allocations"], ours["per_lock_holding"]["rss_bytes"], ours["per_lock_left_after_release"]["heap_bytes"]
        ),
        "",
        "≤ 100 B of live heap per lock",
        Verdict::of(pass),
    );
    rep.row(
        "P4",
        "raw tokio-postgres, 1 connection, key ids in a Vec<i64>",
        format!(
            "heap {} B + 8 B per lock; RSS +{} B per lock",
            raw["per_lock_holding"]["heap_bytes"], raw["per_lock_holding"]["rss_bytes"]
        ),
        "",
        "reference",
        Verdict::Info,
    );
    rep.json.insert("p4".into(), v);
    Ok(())
}
