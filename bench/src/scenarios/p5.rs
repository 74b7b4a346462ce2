//! P5: a try-lock of a key this process already holds is answered in
//! memory, without a round trip.

use std::time::{Duration, Instant};

use advisory_locked::{LockConfig, LockKey, Mode};
use serde_json::json;

use crate::report::{lat_value, Report, Verdict};
use crate::util::{scn, thousands, BoxErr, Keys, Lat};
use crate::Opts;

pub async fn run(o: &Opts, keys: &Keys, rep: &mut Report) -> Result<(), BoxErr> {
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
    let (mut skipped, mut granted) = (0usize, 0usize);
    let mut samples = Vec::with_capacity(o.p5_tries);
    for _ in 0..o.p5_tries {
        let t = Instant::now();
        match locker.try_lock(LockKey::int(key), Mode::Exclusive).await? {
            None => skipped += 1,
            Some(_granted) => granted += 1,
        }
        samples.push(t.elapsed().as_nanos() as u64);
    }
    let lat = Lat::from_nanos(samples);
    let s1 = locker.stats();
    guard.release().await?;
    let stmts = s1.statements - s0.statements;
    eprintln!(
        "P5: {skipped}/{} skipped locally, {granted} granted, {stmts} statements; {}",
        o.p5_tries,
        lat_value(&lat)
    );
    let pass = stmts == 0 && skipped == o.p5_tries;
    rep.row(
        "P5",
        "try_lock of a key held in this process",
        format!(
            "{} tries: {} skipped, {stmts} statements; mean {:.2} µs, p99 {:.2} µs",
            thousands(o.p5_tries as u64),
            thousands(skipped as u64),
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
                "latency": lat.json(), "pass": pass }),
    );
    Ok(())
}
