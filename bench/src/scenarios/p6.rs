//! P6: the cost of a call over the keys a user has — the first lock of a
//! new key, a hot key (one literal key again and again), a template key (a
//! few keys formatted from a template, again and again) — while the same
//! registry entry holds 0 / 100 / 10,000 other locks.
//!
//! Like P1 (see there), the bench and the backends measured are pinned to
//! one CPU (`taskset`), so that no connection runs in a faster or slower
//! mode than another; the entry's sessions are found by their
//! `application_name`, again before each phase (sessions open on demand).
//!
//! The levels change between phases (up, then down, in cycles); each phase
//! is a paired run against the raw one-statement floor (unlock + try-lock)
//! on its own connection, so that what slows every statement on the machine
//! or the server (a slow spell, the server's lock table holding 10,000
//! locks) is divided out. A level's value: the per-round ratios of all its
//! phases, their median and spread; the growth: a level's median ratio over
//! the median ratio with none held.

use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use advisory_locked::{advisory_locked, LockConfig, LockGuard, Locker};
use serde_json::{json, Value};
use tokio_postgres::Client;

use super::{connect_raw, raw_statements, take_many, wait_released};
use crate::harness::{merge, paired, probe, Probe, Rounds, Series};
use crate::report::{Report, Verdict};
use crate::util::{scn, BoxErr, Keys, Placement, Spread};
use crate::Opts;

const POOL: &str = "bench-p6";
const LEVELS: [usize; 3] = [0, 100, 10_000];

#[advisory_locked(key = "advisory-locked-bench:p6:hot", pool = "bench-p6")]
async fn p6_hot() {}

#[advisory_locked(key = "bench:{run}:p6:template:{k}", pool = "bench-p6")]
async fn p6_template(run: u32, k: u32) {}

#[advisory_locked(key = "bench:{run}:p6:new:{k}", pool = "bench-p6")]
async fn p6_new(run: u32, k: u32) {}

/// Pins this process, the floors' backends and the entry's sessions to one
/// CPU (nothing if `taskset` can't: said on stderr once).
async fn pin(admin: &Client, floor_pids: &[i32]) -> Result<(), BoxErr> {
    let rows = admin
        .query(
            "SELECT pid FROM pg_stat_activity WHERE application_name LIKE $1 AND application_name LIKE $2",
            &[&format!("advisory-locked:{POOL} %"), &format!("%[{}]", std::process::id())],
        )
        .await?;
    let mut pids: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    pids.extend_from_slice(floor_pids);
    if let Err(e) = Placement::SameCpu.pin(&pids) {
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| eprintln!("P6: cannot pin with taskset ({e}): measured unpinned"));
    }
    Ok(())
}

/// A raw floor: unlock + try-lock of its own key in one statement, on a
/// connection of its own (the key is taken first and stays held).
async fn floor(
    o: &Opts,
    name: &'static str,
    key: i64,
) -> Result<(Probe, Arc<Client>, i32), BoxErr> {
    let c = Arc::new(connect_raw(&o.url).await?);
    let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).await?.get(0);
    let s = Arc::new(raw_statements(&c).await?);
    let got: bool = c.query_one(&s.try_lock, &[&key]).await?.get(0);
    if !got {
        return Err("P6: a floor's key was busy".into());
    }
    let client = c.clone();
    let p = probe(name, move || {
        let (c, s) = (c.clone(), s.clone());
        async move {
            let row = c.query_one(&s.unlock_try, &[&key, &key]).await?;
            Ok(row.get::<_, bool>(0) && row.get::<_, bool>(1))
        }
    });
    Ok((p, client, pid))
}

/// Makes the loaded floor's backend hold `n` locks besides its own key.
async fn load_floor(c: &Client, keys: &Keys, n: usize) -> Result<(), BoxErr> {
    c.execute("SELECT pg_advisory_unlock_all()", &[]).await?;
    let own = keys.int(scn::P6_FLOOR, 1);
    let first = keys.int(scn::P6_FLOOR, 2);
    let got: i64 = c
        .query_one(
            "SELECT count(*) FILTER (WHERE pg_try_advisory_lock(k)) FROM \
             (SELECT $1::int8 AS k UNION ALL SELECT generate_series($2::int8, $2::int8 + $3::int8 - 1)) t",
            &[&own, &first, &(n as i64)],
        )
        .await?
        .get(0);
    if got != n as i64 + 1 {
        return Err(format!("P6: the loaded floor took {got} of {} locks", n + 1).into());
    }
    Ok(())
}

/// The probes: the floor, the loaded floor (its backend holding as many
/// locks as each of the entry's 4 sessions would), the three contenders.
struct Probes {
    probes: Vec<Probe>,
    loaded: Arc<Client>,
    pids: [i32; 2],
}

async fn probes(o: &Opts, keys: &Keys) -> Result<Probes, BoxErr> {
    let (plain, _, pid0) = floor(
        o,
        "raw unlock+try-lock, 1 statement",
        keys.int(scn::P6_FLOOR, 0),
    )
    .await?;
    let (loaded, client, pid1) = floor(
        o,
        "raw floor, backend holding level/4 locks",
        keys.int(scn::P6_FLOOR, 1),
    )
    .await?;
    let run = keys.run;
    let next = Arc::new(AtomicU32::new(0));
    let tpl = Arc::new(AtomicU32::new(0));
    let probes = vec![
        plain,
        loaded,
        probe("new key (template, never used before)", move || {
            let k = next.fetch_add(1, Relaxed);
            async move { Ok(p6_new(run, k).await?.is_ran()) }
        }),
        probe("hot key (literal)", || async {
            Ok(p6_hot().await?.is_ran())
        }),
        probe("template key (16 keys in turn)", move || {
            let k = tpl.fetch_add(1, Relaxed) % 16;
            async move { Ok(p6_template(run, k).await?.is_ran()) }
        }),
    ];
    Ok(Probes {
        probes,
        loaded: client,
        pids: [pid0, pid1],
    })
}

/// Waits (bounded) until the entry holds exactly `level` keys and every
/// unlock it sent is answered, then a little longer after a big change.
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
        "P6: the entry did not settle at {level} keys within 10 s: {:?}",
        locker.stats()
    )
    .into())
}

/// Holds exactly `level` other locks (new keys when going up).
async fn hold(
    locker: &Locker,
    keys: &Keys,
    held: &mut Vec<LockGuard>,
    next: &mut u32,
    level: usize,
) -> Result<(), BoxErr> {
    let moved = held.len().abs_diff(level);
    if held.len() < level {
        let first = *next;
        *next += (level - held.len()) as u32;
        let ids = (first..*next).map(|k| keys.int(scn::P6_OTHERS, k));
        let (busy, errors, e) = take_many(locker, ids, 256, held).await;
        if held.len() != level {
            let e = e.map(|e| format!(": {e}")).unwrap_or_default();
            return Err(format!(
                "P6: holding {} of {level} ({busy} busy, {errors} errors{e})",
                held.len()
            )
            .into());
        }
    } else {
        held.truncate(level);
    }
    settle(locker, level, moved > 1_000).await
}

/// Per level, per probe: the rounds of all its phases.
type ByLevel = Vec<Vec<Series>>;

async fn measure(o: &Opts, keys: &Keys, admin: &Client) -> Result<ByLevel, BoxErr> {
    let locker = match advisory_locked::locker(POOL) {
        Ok(l) => l,
        Err(_) => {
            LockConfig::from_url(&o.url)?
                .name(POOL)
                .sessions(4)
                .install()
                .await?
        }
    };
    let Probes {
        probes,
        loaded,
        pids,
    } = probes(o, keys).await?;
    paired(&probes, Rounds { rounds: 0, ..o.p6 }).await?;
    let mut by_level: ByLevel = LEVELS.iter().map(|_| Vec::new()).collect();
    let (mut held, mut next) = (Vec::new(), 0u32);
    for cycle in 0..o.p6_cycles {
        for j in 0..LEVELS.len() {
            let li = if cycle % 2 == 0 {
                j
            } else {
                LEVELS.len() - 1 - j
            };
            hold(&locker, keys, &mut held, &mut next, LEVELS[li]).await?;
            load_floor(&loaded, keys, LEVELS[li] / 4).await?;
            // Untimed calls first (a session may open for them), then pin.
            paired(&probes, Rounds { rounds: 0, ..o.p6 }).await?;
            pin(admin, &pids).await?;
            merge(
                &mut by_level[li],
                paired(&probes, Rounds { warm: 0, ..o.p6 }).await?,
            );
        }
    }
    drop(held);
    settle(&locker, 0, true).await?;
    Ok(by_level)
}

/// A contender's per-level ratios to floor `f` (p50 and p99 spreads), and
/// the growth from none held to 10,000 (p50, p99).
fn against(by_level: &ByLevel, p: usize, f: usize) -> (Vec<(Spread, Spread)>, (f64, f64)) {
    let per: Vec<(Spread, Spread)> = (0..LEVELS.len())
        .map(|li| {
            let (c, r) = (&by_level[li][p], &by_level[li][f]);
            (c.ratio(r, |l| l.median), c.ratio(r, |l| l.p99))
        })
        .collect();
    let growth = (
        per[2].0.median / per[0].0.median,
        per[2].1.median / per[0].1.median,
    );
    (per, growth)
}

fn medians(per: &[(Spread, Spread)]) -> String {
    per.iter()
        .map(|x| format!("{:.2}", x.0.median))
        .collect::<Vec<_>>()
        .join(" / ")
}

pub async fn run(o: &Opts, keys: &Keys, admin: &Client, rep: &mut Report) -> Result<(), BoxErr> {
    let by_level = measure(o, keys, admin).await;
    crate::util::unpin()?;
    let by_level = by_level?;
    wait_released(admin, keys, scn::P6_OTHERS).await?;
    if by_level.iter().any(|l| l.len() != 5) {
        return Err("P6: a level was not measured".into());
    }
    let mut contenders = Vec::new();
    for p in 1..5 {
        let name = by_level[0][p].name;
        let (per, (g50, g99)) = against(&by_level, p, 0);
        let busy: usize = by_level.iter().map(|l| l[p].not_ok).sum();
        eprintln!("P6: {name:<40} p50 vs floor {}; 10,000 / 0: p50 {g50:.2}×, p99 {g99:.2}× ({busy} busy)", medians(&per));
        let (goal, verdict) = match p {
            2 => (
                "10,000 held ≤ 1.2× none held (p50)",
                Verdict::of(busy == 0 && g50 <= 1.2),
            ),
            _ => ("", Verdict::Info),
        };
        let loaded = if p >= 2 {
            format!(
                "; vs the loaded floor {}",
                medians(&against(&by_level, p, 1).0)
            )
        } else {
            String::new()
        };
        rep.row(
            "P6",
            format!("{name}, 0 / 100 / 10,000 others held"),
            format!("p50 {} × the floor{loaded}", medians(&per)),
            format!("10,000 / 0: p50 {g50:.2}×, p99 {g99:.2}×"),
            goal,
            verdict,
        );
        contenders.push(json!({
            "name": name, "busy": busy,
            "growth_10000_over_0": { "p50": g50, "p99": g99 },
            "levels": LEVELS.iter().enumerate().map(|(li, n)| json!({
                "others_held": n, "vs_floor": by_level[li][p].ratios_json(&by_level[li][0]),
                "vs_loaded_floor": by_level[li][p].ratios_json(&by_level[li][1]),
                "latency": by_level[li][p].pooled().json(),
            })).collect::<Vec<Value>>(),
        }));
    }
    let floor: Vec<Value> = LEVELS
        .iter()
        .enumerate()
        .map(|(li, n)| json!({ "others_held": n, "latency": by_level[li][0].pooled().json() }))
        .collect();
    rep.json.insert("p6".into(), json!({ "levels": LEVELS, "cycles": o.p6_cycles, "floor": floor, "contenders": contenders }));
    Ok(())
}
