//! P1: one uncontended call, measured against the raw floor in paired
//! rounds (see [`crate::harness`]).
//!
//! Every contender has a connection of its own, of the same kind: the raw
//! references are tokio-postgres prepared statements on their own
//! connection, and the crate's contenders are registry entries / `Locker`s
//! of one session each. All run on the same tokio runtime.
//!
//! On a small VM a connection's round trip is bimodal, and the mode sticks
//! to the connection for seconds or for good (~13 µs when client and
//! backend run on one CPU, ~60 µs with a cross-CPU wake-up): a run with one
//! connection per contender compares modes, not code (the same contenders
//! measured 0.2× to 5× the floor from one run to the next). So P1 runs in
//! **epochs**: each epoch opens fresh connections for every contender (a
//! fresh registry entry for the attribute, fresh `Locker`s, fresh raw
//! connections), measures its rounds, and closes them (the entries stay
//! in the registry, idle); the per-round ratios of all epochs are pooled.
//! Each contender's p50 per epoch is in the JSON, to show the modes drawn.
//!
//! Then the full cost of a release: the time from the release until another
//! connection's try-lock gets the key, for the raw floor (unlock awaited)
//! and for the crate's two releases (guard dropped: the unlock is sent in
//! the background; `release().await`).

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use advisory_locked::{advisory_locked, LockConfig, LockKey, Locker, Mode};
use serde_json::{json, Map, Value};
use tokio_postgres::Client;

use super::{connect_raw, raw_statements, series_json, RawStatements};
use crate::harness::{cold, merge, paired, probe, timed_probe, Probe, Series};
use crate::report::{lat_value, Report, Verdict};
use crate::util::{scn, BoxErr, Keys, Placement};
use crate::Opts;

/// The most epochs (one registry entry each: entries are never removed).
pub const MAX_EPOCHS: usize = 12;

/// An uncontended locked call with an empty body, skip mode, on the
/// registry entry of epoch `N` (`bench-p1-eN`, one session).
macro_rules! epoch_attrs {
    ($($n:literal => $f:ident $pool:tt),*) => {
        $(
            #[advisory_locked(key = "bench:{run}:p1", pool = $pool)]
            async fn $f(run: u32) {}
        )*
        async fn p1_attr(epoch: usize, run: u32) -> Result<bool, advisory_locked::Error> {
            match epoch {
                $($n => $f(run).await.map(|o| o.is_ran()),)*
                _ => Err(advisory_locked::Error::NotConfigured { pool: entry(epoch) }),
            }
        }
    };
}

epoch_attrs!(
    0 => attr_e0 "bench-p1-e0", 1 => attr_e1 "bench-p1-e1", 2 => attr_e2 "bench-p1-e2",
    3 => attr_e3 "bench-p1-e3", 4 => attr_e4 "bench-p1-e4", 5 => attr_e5 "bench-p1-e5",
    6 => attr_e6 "bench-p1-e6", 7 => attr_e7 "bench-p1-e7", 8 => attr_e8 "bench-p1-e8",
    9 => attr_e9 "bench-p1-e9", 10 => attr_e10 "bench-p1-e10", 11 => attr_e11 "bench-p1-e11"
);

/// The registry entry of epoch `epoch`.
fn entry(epoch: usize) -> String {
    format!("bench-p1-e{epoch}")
}

type Raw = (Arc<Client>, Arc<RawStatements>);

/// A raw connection; its backend's pid goes to `pids` (to be pinned).
async fn raw_conn(o: &Opts, pids: &mut Vec<i32>) -> Result<Raw, BoxErr> {
    let c = connect_raw(&o.url).await?;
    let s = raw_statements(&c).await?;
    pids.push(c.query_one("SELECT pg_backend_pid()", &[]).await?.get(0));
    Ok((Arc::new(c), Arc::new(s)))
}

/// The backend of a one-session `Locker` (from a guard of a key of its own).
async fn session_pid(l: &Locker, key: i64) -> Result<i32, BoxErr> {
    let g = l.try_lock(LockKey::int(key), Mode::Exclusive).await?;
    let g = g.ok_or("P1: a Locker's own key was busy")?;
    let pid = g.backend_pid();
    g.release().await?;
    Ok(pid)
}

async fn one_session(o: &Opts, name: &str) -> Result<Locker, BoxErr> {
    Ok(LockConfig::from_url(&o.url)?
        .name(name)
        .sessions(1)
        .connect()
        .await?)
}

/// The raw references: `SELECT 1`, unlock + try-lock in one statement (the
/// key stays held between calls: each call releases the previous call's
/// lock), try-lock then unlock, both awaited.
async fn raw_probes(o: &Opts, keys: &Keys, pids: &mut Vec<i32>) -> Result<Vec<Probe>, BoxErr> {
    let (c, s) = raw_conn(o, pids).await?;
    let select1 = probe("SELECT 1", move || {
        let (c, s) = (c.clone(), s.clone());
        async move {
            c.query_one(&s.select1, &[]).await?;
            Ok(true)
        }
    });
    let (c, s) = raw_conn(o, pids).await?;
    let pair_key = keys.int(scn::FLOOR, 1);
    let got: bool = c.query_one(&s.try_lock, &[&pair_key]).await?.get(0);
    if !got {
        return Err("P1: the raw pair key was busy".into());
    }
    let pair = probe("raw unlock+try-lock, 1 statement", move || {
        let (c, s) = (c.clone(), s.clone());
        async move {
            let row = c.query_one(&s.unlock_try, &[&pair_key, &pair_key]).await?;
            Ok(row.get::<_, bool>(0) && row.get::<_, bool>(1))
        }
    });
    let (c, s) = raw_conn(o, pids).await?;
    let key = keys.int(scn::FLOOR, 0);
    let two = probe("raw try-lock + unlock", move || {
        let (c, s) = (c.clone(), s.clone());
        async move {
            let got: bool = c.query_one(&s.try_lock, &[&key]).await?.get(0);
            let released: bool = c.query_one(&s.unlock, &[&key]).await?.get(0);
            Ok(got && released)
        }
    });
    Ok(vec![select1, pair, two])
}

/// The crate's own protocol path alone (`advisory_locked::__bench`): the
/// one-statement floor's statement, prepared and sent by the crate's codec
/// and wire from the caller's task, on a lock session set up as the crate
/// does (no dispatcher, no table, no routing). Against the tokio-postgres
/// floor, it shows what the own protocol saves or costs per call (issue 13).
async fn own_protocol_probe(o: &Opts, keys: &Keys, pids: &mut Vec<i32>) -> Result<Probe, BoxErr> {
    use advisory_locked::__bench::OwnProtocol;
    let mut own = OwnProtocol::connect(LockConfig::from_url(&o.url)?.name("bench-p1-own")).await?;
    pids.push(own.backend_pid());
    let key = keys.int(scn::FLOOR, 2);
    // Held from here on: each call releases the previous call's lock.
    let (_, got) = own.unlock_and_try_lock(key, key).await?;
    if !got {
        return Err("P1: the own-protocol key was busy".into());
    }
    // A probe is called through a shared reference: the session sits
    // behind an (uncontended) async mutex.
    let own = Arc::new(tokio::sync::Mutex::new(own));
    Ok(probe(
        "own protocol, unlock+try-lock, 1 statement",
        move || {
            let own = own.clone();
            async move {
                let (held, got) = own.lock().await.unlock_and_try_lock(key, key).await?;
                Ok(held && got)
            }
        },
    ))
}

/// Waits until every unlock queued on `l`'s one session is answered: a
/// lock of `key` released with `release().await` is answered after them
/// (a session answers in order). For [`Probe::settled_by`].
fn settle(l: &Locker, key: i64) -> impl Fn() -> SettleFuture + Send + Sync + 'static {
    let l = l.clone();
    move || {
        let l = l.clone();
        Box::pin(async move {
            let g = l.try_lock(LockKey::int(key), Mode::Exclusive).await?;
            g.ok_or("P1: a settling key was busy")?.release().await?;
            Ok(())
        })
    }
}

type SettleFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), BoxErr>> + Send>>;

/// The crate's contenders: the attribute (on `attr_l`'s entry), a `Locker`
/// whose guard is dropped, a `Locker` whose guard is `release().await`ed.
/// The two that release in the background are settled after each block.
fn crate_probes(
    epoch: usize,
    keys: &Keys,
    [attr_l, drop_l, release_l]: [&Locker; 3],
) -> Vec<Probe> {
    let run = keys.run;
    let attr = probe("attribute", move || async move {
        Ok(p1_attr(epoch, run).await?)
    })
    .settled_by(settle(attr_l, keys.int(scn::FLOOR, 201)));
    let (l, key) = (drop_l.clone(), keys.int(scn::P1_LOCKER, 0));
    let dropped = probe("Locker, guard dropped", move || {
        let l = l.clone();
        async move {
            let g = l.try_lock(LockKey::int(key), Mode::Exclusive).await?;
            Ok(g.is_some())
        }
    })
    .settled_by(settle(drop_l, keys.int(scn::FLOOR, 202)));
    let (l, key) = (release_l.clone(), keys.int(scn::P1_RELEASE, 0));
    let released = probe("Locker, release().await", move || {
        let l = l.clone();
        async move {
            match l.try_lock(LockKey::int(key), Mode::Exclusive).await? {
                Some(g) => {
                    g.release().await?;
                    Ok(true)
                }
                None => Ok(false),
            }
        }
    });
    vec![attr, dropped, released]
}

/// What one placement measured, over its epochs.
#[derive(Default)]
pub struct Measured {
    pub latency: Vec<Series>,
    /// Calls from cold caches (see [`cold`]): one round per epoch.
    pub cold: Vec<Series>,
    pub free: SeenFree,
    /// Per epoch, every contender's p50 (µs).
    pub per_epoch: Vec<Vec<f64>>,
}

/// One epoch: fresh connections for every contender, pinned as
/// `placement` says; the paired latency rounds, the calls from cold
/// caches, then the seen-free rounds.
async fn epoch(
    o: &Opts,
    keys: &Keys,
    e: usize,
    placement: Option<Placement>,
    into: &mut Measured,
) -> Result<(), BoxErr> {
    let attr = LockConfig::from_url(&o.url)?
        .name(entry(e))
        .sessions(1)
        .install()
        .await?;
    let drop_l = one_session(o, "bench-p1-drop").await?;
    let release_l = one_session(o, "bench-p1-release").await?;
    let mut pids = Vec::new();
    for (l, i) in [(&attr, 1), (&drop_l, 2), (&release_l, 3)] {
        pids.push(session_pid(l, keys.int(scn::FLOOR, 100 + i)).await?);
    }
    let mut probes = raw_probes(o, keys, &mut pids).await?;
    probes.extend(crate_probes(e, keys, [&attr, &drop_l, &release_l]));
    probes.push(own_protocol_probe(o, keys, &mut pids).await?);
    let obs = Arc::new(raw_conn(o, &mut pids).await?);
    let holder = raw_conn(o, &mut pids).await?;
    if let Some(p) = placement {
        p.pin(&pids)?;
    }
    let m = paired(&probes, o.p1).await?;
    let c = cold(&probes, o.p1_cold).await?;
    drop(probes);
    let free = seen_free(o, keys, (obs, holder), &drop_l, &release_l).await?;
    into.per_epoch.push(
        m.iter()
            .chain(&free.series)
            .map(|s| s.pooled().median)
            .collect(),
    );
    merge(&mut into.latency, m);
    merge(&mut into.cold, c);
    merge(&mut into.free.series, free.series);
    into.free.first_try_busy.resize(3, 0);
    for (a, b) in into.free.first_try_busy.iter_mut().zip(free.first_try_busy) {
        *a += b;
    }
    Ok(())
}

/// The placements measured: both if `taskset` can pin (2 CPUs or more),
/// else none (unpinned, said in the results).
fn placements() -> Vec<Option<Placement>> {
    match crate::util::pinnable() {
        Ok(places) => places.into_iter().map(Some).collect(),
        Err(e) => {
            eprintln!("P1: cannot pin with taskset ({e}): measured unpinned");
            vec![None]
        }
    }
}

pub async fn run(o: &Opts, keys: &Keys, admin: &Client, rep: &mut Report) -> Result<(), BoxErr> {
    let places = placements();
    let per = o.p1_epochs.clamp(1, MAX_EPOCHS / places.len());
    let mut all: Vec<Measured> = places.iter().map(|_| Measured::default()).collect();
    let mut result = Ok(());
    // Epochs alternate between the placements.
    'outer: for i in 0..per {
        for (pi, p) in places.iter().enumerate() {
            result = epoch(o, keys, i * places.len() + pi, *p, &mut all[pi]).await;
            let unpinned = crate::util::unpin();
            result = result.and(unpinned.map_err(BoxErr::from));
            if result.is_err() {
                break 'outer;
            }
            super::wait_released(admin, keys, scn::FLOOR).await?;
        }
    }
    result?;
    let mut js = Vec::new();
    for (p, m) in places.iter().zip(&all) {
        let label = p.map_or("unpinned", Placement::label);
        report_latency(label, per, o, &m.latency, rep)?;
        report_cold(label, &m.cold, rep);
        report_seen_free(label, &m.free, rep);
        js.push(placement_json(
            label,
            p.map_or("unpinned", Placement::slug),
            per,
            m,
        ));
    }
    rep.json.insert("p1".into(), json!({ "placements": js }));
    Ok(())
}

fn placement_json(label: &str, slug: &str, epochs: usize, m: &Measured) -> Value {
    let names: Vec<&str> = m
        .latency
        .iter()
        .chain(&m.free.series)
        .map(|s| s.name)
        .collect();
    eprintln!("P1 ({label}): p50 per epoch (µs), in the order {names:?}:");
    for row in &m.per_epoch {
        eprintln!(
            "    {}",
            row.iter()
                .map(|x| format!("{x:.0}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    let mut j = Map::new();
    j.insert("placement".into(), json!(label));
    j.insert("slug".into(), json!(slug));
    j.insert("epochs".into(), json!(epochs));
    j.insert("contenders".into(), series_json(&m.latency));
    j.insert("ratios".into(), ratios_json(&m.latency));
    j.insert(
        "cold".into(),
        json!({ "contenders": series_json(&m.cold), "ratios": cold_ratios_json(&m.cold) }),
    );
    j.insert("seen_free".into(), seen_free_json(&m.free));
    j.insert(
        "p50_us_per_epoch".into(),
        json!({ "names": names, "epochs": m.per_epoch }),
    );
    Value::Object(j)
}

/// (contender, its floor): the attribute and the dropped guard pair the
/// previous call's unlock with this call's try-lock, as the one-statement
/// floor does; `release().await` waits for the unlock, as the two-statement
/// floor does; the own protocol path sends the one-statement floor's
/// statement.
const FLOORS: [(usize, usize); 4] = [(3, 1), (4, 1), (5, 2), (6, 1)];

fn ratios_json(m: &[Series]) -> Value {
    let mut j = Map::new();
    for (c, f) in FLOORS {
        j.insert(
            m[c].name.to_owned(),
            json!({ "vs_floor": m[c].ratios_json(&m[f]), "vs_select1": m[c].ratios_json(&m[0]) }),
        );
    }
    for f in [1, 2] {
        j.insert(
            m[f].name.to_owned(),
            json!({ "vs_select1": m[f].ratios_json(&m[0]) }),
        );
    }
    Value::Object(j)
}

/// The cold calls' p50 ratios to their floors (30 calls an epoch: no p99).
fn cold_ratios_json(m: &[Series]) -> Value {
    let mut j = Map::new();
    for (c, f) in FLOORS {
        let p50 = m[c].ratio(&m[f], |l| l.median).json();
        j.insert(
            m[c].name.to_owned(),
            json!({ "vs_floor": { "reference": m[f].name, "p50": p50 } }),
        );
    }
    Value::Object(j)
}

fn report_latency(
    label: &str,
    epochs: usize,
    o: &Opts,
    m: &[Series],
    rep: &mut Report,
) -> Result<(), BoxErr> {
    if m.len() != 7 {
        return Err("P1: wrong number of contenders".into());
    }
    for s in m {
        eprintln!(
            "P1 ({label}): {:<34} {} ({} busy)",
            s.name,
            lat_value(&s.pooled()),
            s.not_ok
        );
    }
    if m[..3].iter().chain(&m[6..]).any(|s| s.not_ok > 0) {
        return Err("P1: a raw reference's key was busy".into());
    }
    let both = |c: &Series, f: &Series| {
        format!(
            "p50 {} / p99 {}",
            c.ratio(f, |l| l.median).text(),
            c.ratio(f, |l| l.p99).text()
        )
    };
    for f in [1, 2] {
        let v = lat_value(&m[f].pooled());
        rep.row(
            "P1",
            format!("{label}: floor: {}", m[f].name),
            v,
            both(&m[f], &m[0]) + " SELECT 1",
            "reference",
            Verdict::Info,
        );
    }
    for (c, f) in FLOORS {
        let (r50, r99) = (
            m[c].ratio(&m[f], |l| l.median),
            m[c].ratio(&m[f], |l| l.p99),
        );
        let pass = m[c].not_ok == 0 && r50.median <= 1.05 && r99.median <= 1.05;
        let verdict = if c == 3 {
            Verdict::of(pass)
        } else {
            Verdict::Info
        };
        let goal = if c == 3 {
            "≤ 1.05× floor, p50 and p99"
        } else {
            ""
        };
        rep.row(
            "P1",
            format!(
                "{label}: {} ({epochs} epochs × {} rounds)",
                m[c].name, o.p1.rounds
            ),
            lat_value(&m[c].pooled()),
            format!(
                "{} {}; p50 {:.2}× SELECT 1",
                both(&m[c], &m[f]),
                m[f].name,
                m[c].ratio(&m[0], |l| l.median).median
            ),
            goal,
            verdict,
        );
    }
    Ok(())
}

/// A release's full cost: from the release until another connection's
/// try-lock gets the key.
#[derive(Default)]
pub struct SeenFree {
    pub series: Vec<Series>,
    /// Per contender: calls whose first observer try found the key still held.
    pub first_try_busy: Vec<usize>,
}

/// The observer's loop: try-lock until granted (at most 10,000 tries or
/// 2 s), then unlock (not timed). Returns when it got the key, and how many
/// tries found it busy.
async fn observe(obs: &Raw, key: i64, t0: Instant) -> Result<(Duration, usize), BoxErr> {
    let (c, s) = obs;
    for busy in 0..10_000 {
        let got: bool = c.query_one(&s.try_lock, &[&key]).await?.get(0);
        if got {
            let seen = t0.elapsed();
            c.query_one(&s.unlock, &[&key]).await?;
            return Ok((seen, busy));
        }
        if t0.elapsed() > Duration::from_secs(2) {
            break;
        }
    }
    Err(format!("key {key:#x} not free for another connection within 2 s").into())
}

/// `conns`: the observer's connection, and the raw holder's.
async fn seen_free(
    o: &Opts,
    keys: &Keys,
    conns: (Arc<Raw>, Raw),
    drop_l: &Locker,
    release_l: &Locker,
) -> Result<SeenFree, BoxErr> {
    let (obs, holder) = conns;
    let busy: Arc<Vec<AtomicUsize>> = Arc::new((0..3).map(|_| AtomicUsize::new(0)).collect());
    let key = keys.int(scn::P1_SEEN_FREE, 0);
    let (ob, b) = (obs.clone(), busy.clone());
    let raw = timed_probe("raw unlock awaited", move || {
        let (ob, b, (c, s)) = (ob.clone(), b.clone(), holder.clone());
        async move {
            let got: bool = c.query_one(&s.try_lock, &[&key]).await?.get(0);
            if !got {
                return Err("raw seen-free key busy".into());
            }
            let t0 = Instant::now();
            c.query_one(&s.unlock, &[&key]).await?;
            let (d, n) = observe(&ob, key, t0).await?;
            b[0].fetch_add(usize::from(n > 0), Relaxed);
            Ok(d)
        }
    });
    let ours = |name: &'static str, i: usize, l: &Locker, awaited: bool| {
        let (ob, b, l, key) = (
            obs.clone(),
            busy.clone(),
            l.clone(),
            keys.int(scn::P1_SEEN_FREE, i as u32),
        );
        timed_probe(name, move || {
            let (ob, b, l) = (ob.clone(), b.clone(), l.clone());
            async move {
                let g = l.try_lock(LockKey::int(key), Mode::Exclusive).await?;
                let g = g.ok_or("seen-free key busy")?;
                let t0 = Instant::now();
                if awaited {
                    g.release().await?;
                } else {
                    drop(g);
                }
                let (d, n) = observe(&ob, key, t0).await?;
                b[i].fetch_add(usize::from(n > 0), Relaxed);
                Ok(d)
            }
        })
    };
    let probes = vec![
        raw,
        ours("Locker, guard dropped", 1, drop_l, false),
        ours("Locker, release().await", 2, release_l, true),
    ];
    let series = paired(&probes, o.seen_free).await?;
    let first_try_busy = busy.iter().map(|b| b.load(Relaxed)).collect();
    Ok(SeenFree {
        series,
        first_try_busy,
    })
}

/// One call from cold caches, each contender against its floor from cold
/// caches too: the median per epoch, then over the epochs.
fn report_cold(label: &str, m: &[Series], rep: &mut Report) {
    for f in [1, 2] {
        rep.row(
            "P1",
            format!("{label}: from cold caches: floor: {}", m[f].name),
            lat_value(&m[f].pooled()),
            format!("p50 {} SELECT 1", m[f].ratio(&m[0], |l| l.median).text()),
            "reference",
            Verdict::Info,
        );
    }
    for (c, f) in FLOORS {
        rep.row(
            "P1",
            format!("{label}: from cold caches: {}", m[c].name),
            lat_value(&m[c].pooled()),
            format!(
                "p50 {} {}",
                m[c].ratio(&m[f], |l| l.median).text(),
                m[f].name
            ),
            "what a first call costs",
            Verdict::Info,
        );
    }
}

fn report_seen_free(label: &str, f: &SeenFree, rep: &mut Report) {
    let m = &f.series;
    for (s, b) in m.iter().zip(&f.first_try_busy) {
        eprintln!(
            "P1 seen free ({label}): {:<26} {} (observer's first try busy {b}×)",
            s.name,
            lat_value(&s.pooled())
        );
    }
    rep.row(
        "P1",
        format!(
            "{label}: until another connection gets the key: raw unlock awaited, then its try-lock"
        ),
        lat_value(&m[0].pooled()),
        "1.00×",
        "reference",
        Verdict::Info,
    );
    for (i, s) in m.iter().enumerate().skip(1) {
        let n = s.samples.len().max(1);
        rep.row(
            "P1",
            format!("{label}: until another connection gets the key: {}", s.name),
            format!(
                "{} (first try busy in {:.0}%)",
                lat_value(&s.pooled()),
                100.0 * f.first_try_busy[i] as f64 / n as f64
            ),
            format!(
                "p50 {} / p99 {}",
                s.ratio(&m[0], |l| l.median).text(),
                s.ratio(&m[0], |l| l.p99).text()
            ),
            "what it costs others",
            Verdict::Info,
        );
    }
}

fn seen_free_json(f: &SeenFree) -> Value {
    let m = &f.series;
    let mut contenders = Vec::new();
    for (i, s) in m.iter().enumerate() {
        let mut j = s.json();
        j["observer_first_try_busy"] = json!(f.first_try_busy[i]);
        if i > 0 {
            j["ratios"] = s.ratios_json(&m[0]);
        }
        contenders.push(j);
    }
    json!({ "contenders": contenders })
}
