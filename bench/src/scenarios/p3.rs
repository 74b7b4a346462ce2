//! P3: cross-process handover (see [`crate::child`]): two processes
//! alternate on one key in wait mode; the time from one's release to the
//! other's grant. The crate, sqlx and the raw floor (tokio-postgres blocking
//! in `pg_advisory_lock`) run in rounds, in rotating order; each round's
//! median is divided by the raw floor's median in the same round. One more
//! contender, the floor's client sending the crate's two statements, splits
//! the crate's distance to the floor into the server's part and the rest.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use super::{connect_raw, raw_statements};
use crate::child::{handover, Handover};
use crate::report::{lat_value, Report, Verdict};
use crate::util::{round2, scn, BoxErr, Keys, Lat, Placement, Spread};
use crate::Opts;

const KINDS: [&str; 5] = ["ours", "ours-drop", "sqlx", "raw", "raw-sql"];
/// The raw floor's index in [`KINDS`].
const RAW: usize = 3;
/// The floor's client with the crate's statements.
const RAW_SQL: usize = 4;

struct Measured {
    /// Per contender, per round.
    runs: [Vec<Handover>; 5],
    /// `SELECT 1` after sleeping the hold time (a handover's wake-ups).
    idle: Lat,
}

async fn measure(o: &Opts, keys: &Keys, placement: Option<Placement>) -> Result<Measured, BoxErr> {
    let rounds = if o.quick { 1 } else { 7 };
    let per_round = (o.p3_handovers / rounds).max(10);
    let timing = (o.p3_hold_us, o.p3_pause_us);
    let scenarios = [
        scn::P3_OURS,
        scn::P3_OURS_DROP,
        scn::P3_SQLX,
        scn::P3_RAW,
        scn::P3_RAW_SQL,
    ];
    let mut runs: [Vec<Handover>; 5] = Default::default();
    for round in 0..rounds {
        for j in 0..KINDS.len() {
            let i = (round + j) % KINDS.len();
            let key = keys.int(scenarios[i], round as u32);
            let h = handover(KINDS[i], &o.url, key, per_round, timing, placement).await?;
            runs[i].push(h);
        }
    }
    let client = Arc::new(connect_raw(&o.url).await?);
    let st = raw_statements(&client).await?;
    let asleep = Duration::from_micros(o.p3_hold_us.max(1));
    let mut idle = Vec::with_capacity(200);
    for _ in 0..200 {
        tokio::time::sleep(asleep).await;
        let t = Instant::now();
        client.query_one(&st.select1, &[]).await?;
        idle.push(t.elapsed().as_nanos() as u64);
    }
    Ok(Measured {
        runs,
        idle: Lat::from_nanos(idle),
    })
}

fn ratio(m: &Measured, i: usize, r: usize) -> Spread {
    Spread::of(
        m.runs[i]
            .iter()
            .zip(&m.runs[r])
            .map(|(a, b)| a.lat.median / b.lat.median),
    )
}

/// The placements of the children and their backends besides the
/// scheduler's own (see [`crate::util::pinnable`]).
fn pinned() -> Vec<Placement> {
    match crate::util::pinnable() {
        Ok(places) => places,
        Err(e) => {
            eprintln!("P3: cannot pin with taskset ({e}): measured unpinned only");
            Vec::new()
        }
    }
}

pub async fn run(o: &Opts, keys: &Keys, rep: &mut Report) -> Result<(), BoxErr> {
    // First: this process may be pinned by an earlier scenario, and the
    // children would inherit it.
    let places = pinned();
    let m = measure(o, keys, None).await?;
    let mut doc = report(o, &m, None, rep);
    let mut placed = Map::new();
    for p in places {
        let m = measure(o, keys, Some(p)).await?;
        placed.insert(p.slug().to_owned(), report(o, &m, Some(p), rep));
    }
    doc["pinned"] = Value::Object(placed);
    rep.json.insert("p3".into(), doc);
    Ok(())
}

/// The rows of one placement's measurement, and its JSON.
fn report(o: &Opts, m: &Measured, placement: Option<Placement>, rep: &mut Report) -> Value {
    let at = placement.map_or(String::new(), |p| format!("{}: ", p.label()));
    let (r_ours, r_drop, r_sqlx) = (ratio(m, 0, RAW), ratio(m, 1, RAW), ratio(m, 2, RAW));
    let r_sql = ratio(m, RAW_SQL, RAW);
    let [ours, dropped, sqlx, raw, raw_sql] = m
        .runs
        .each_ref()
        .map(|r| Handover::pool(r.iter().map(Handover::clone_summary).collect()));
    log_pooled(&at, [&ours, &dropped, &sqlx, &raw, &raw_sql]);
    let value = |h: &Handover| {
        format!(
            "{} (n={}, releaser re-took {}×)",
            lat_value(&h.lat),
            h.lat.n,
            h.reacquired_by_releaser
        )
    };
    rep.row(
        "P3",
        format!(
            "{at}SELECT 1 after {} µs asleep (a handover's wake-ups)",
            o.p3_hold_us
        ),
        lat_value(&m.idle),
        "",
        "reference",
        Verdict::Info,
    );
    rep.row(
        "P3",
        format!("{at}floor: raw tokio-postgres pg_advisory_lock / unlock, 2 processes"),
        value(&raw),
        "1.00×",
        "floor",
        Verdict::Info,
    );
    for (name, h, r) in [
        ("release().await", &ours, &r_ours),
        ("guard dropped", &dropped, &r_drop),
    ] {
        rep.row(
            "P3",
            format!("{at}Locker::lock wait mode + {name}, 2 processes"),
            value(h),
            format!("p50 {} the floor", r.text()),
            "≤ 1.05× the floor",
            Verdict::of(h.lat.n > 0 && r.median <= 1.05),
        );
    }
    rep.row(
        "P3",
        format!("{at}the floor's client with the crate's statements (wait, release)"),
        value(&raw_sql),
        format!("p50 {} the floor", r_sql.text()),
        "the server's part",
        Verdict::Info,
    );
    rep.row(
        "P3",
        format!("{at}sqlx PgAdvisoryLock::acquire (blocks on the server)"),
        value(&sqlx),
        format!("p50 {} the floor", r_sqlx.text()),
        "peer",
        Verdict::Info,
    );
    json!({
        "ours": ours.json(), "ours_drop": dropped.json(), "sqlx": sqlx.json(), "raw_floor": raw.json(), "raw_crate_sql": raw_sql.json(),
        "ours_vs_floor": r_ours.json(), "ours_drop_vs_floor": r_drop.json(), "sqlx_vs_floor": r_sqlx.json(), "raw_crate_sql_vs_floor": r_sql.json(),
        "select1_after_hold_asleep": m.idle.json(),
        "ours_over_asleep_select1": round2(ours.lat.median / m.idle.median),
        "hold_us": o.p3_hold_us, "pause_us": o.p3_pause_us,
        "placement": placement.map_or("unpinned", Placement::slug),
    })
}

/// Each contender's pooled handovers, on stderr.
fn log_pooled(at: &str, pooled: [&Handover; 5]) {
    for (name, h) in KINDS.iter().zip(pooled) {
        eprintln!(
            "P3: {at}{name} {} over {} handovers ({} re-acquired by the releaser, {} not waiting)",
            lat_value(&h.lat),
            h.lat.n,
            h.reacquired_by_releaser,
            h.not_waiting
        );
    }
}
