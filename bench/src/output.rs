//! Writing the results: the JSON document, the SVG charts and the Markdown
//! summary, all made from the JSON (so they always agree).

use std::path::Path;

use serde_json::Value;

use crate::charts::{self, LatRow, RatioRow};
use crate::report::Report;
use crate::util::BoxErr;
use crate::Opts;

pub fn write_all(o: &Opts, rep: &mut Report) -> Result<(), BoxErr> {
    rep.json.insert("table".into(), rep.table_json());
    let dir = &o.results;
    std::fs::create_dir_all(dir)?;
    let ct_file = dir.join("compile-time.json");
    match rep.json.get("compile_time") {
        Some(ct) => std::fs::write(&ct_file, serde_json::to_string_pretty(ct)? + "\n")?,
        None => {
            // The slow part is run on its own (`--compile-time`): keep its
            // last results in the summary.
            if let Ok(text) = std::fs::read_to_string(&ct_file) {
                if let Ok(ct) = serde_json::from_str::<Value>(&text) {
                    rep.json.insert("compile_time_earlier_run".into(), ct);
                }
            }
        }
    }
    let doc = Value::Object(rep.json.clone());
    let text = serde_json::to_string_pretty(&doc)? + "\n";
    if let Some(parent) = o.json.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&o.json, &text)?;
    std::fs::write(dir.join("bench-results.json"), &text)?;
    render(&doc, dir)?;
    println!("results written to {} and {}", o.json.display(), show(dir));
    Ok(())
}

/// The charts and the summary of `doc`, in `dir` (`bench --render`: again
/// from a results file, without measuring).
pub fn render(doc: &Value, dir: &Path) -> Result<(), BoxErr> {
    // Charts of an earlier run that this one has no data for go.
    for e in std::fs::read_dir(dir)?.flatten() {
        if e.path().extension().is_some_and(|x| x == "svg") {
            std::fs::remove_file(e.path())?;
        }
    }
    for (name, svg) in charts_of(doc) {
        std::fs::write(dir.join(name), svg)?;
    }
    std::fs::write(dir.join("summary.md"), crate::summary::render(doc))?;
    Ok(())
}

/// `bench --render DIR`: the charts and summary again from
/// `DIR/bench-results.json`.
pub fn render_dir(dir: &Path) -> Result<(), BoxErr> {
    let text = std::fs::read_to_string(dir.join("bench-results.json"))?;
    let doc: Value = serde_json::from_str(&text)?;
    render(&doc, dir)?;
    println!("charts and summary rendered again in {}", show(dir));
    Ok(())
}

fn show(p: &Path) -> String {
    p.display().to_string()
}

pub fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

pub fn lat_row(name: &str, l: &Value) -> LatRow {
    LatRow {
        name: name.to_owned(),
        p10: f(&l["p10_us"]),
        p25: f(&l["p25_us"]),
        p50: f(&l["median_us"]),
        p75: f(&l["p75_us"]),
        p90: f(&l["p90_us"]),
        p99: f(&l["p99_us"]),
    }
}

pub fn ratio_row(name: &str, s: &Value) -> RatioRow {
    RatioRow {
        name: name.to_owned(),
        median: f(&s["median"]),
        p25: f(&s["p25"]),
        p75: f(&s["p75"]),
        min: f(&s["min"]),
        max: f(&s["max"]),
    }
}

fn list(v: &Value) -> &[Value] {
    v.as_array().map_or(&[], Vec::as_slice)
}

fn name(v: &Value) -> &str {
    v["name"].as_str().unwrap_or("?")
}

/// P1's charts, one set per placement.
fn p1_charts(p1: &Value, out: &mut Vec<(String, String)>) {
    for pl in list(&p1["placements"]) {
        let (label, slug) = (
            pl["placement"].as_str().unwrap_or("?"),
            pl["slug"].as_str().unwrap_or("x"),
        );
        let rows: Vec<LatRow> = list(&pl["contenders"])
            .iter()
            .map(|c| lat_row(name(c), &c["latency"]))
            .collect();
        out.push((
            format!("p1-latency-{slug}.svg"),
            charts::latency(
                &format!("P1, {label}: one uncontended call, all rounds (µs)"),
                &rows,
            ),
        ));
        let mut ratios = Vec::new();
        for c in list(&pl["contenders"]).iter().skip(3) {
            let r = &pl["ratios"][name(c)]["vs_floor"];
            ratios.push(ratio_row(&format!("{}: p50", name(c)), &r["p50"]));
            ratios.push(ratio_row(&format!("{}: p99", name(c)), &r["p99"]));
        }
        let unit =
            "× its raw floor in the same round (bar: median over rounds; band: IQR; line: range)";
        out.push((
            format!("p1-ratios-{slug}.svg"),
            charts::ratios(
                &format!("P1, {label}: paired ratio to the raw floor"),
                unit,
                &ratios,
            ),
        ));
        let seen: Vec<LatRow> = list(&pl["seen_free"]["contenders"])
            .iter()
            .map(|c| lat_row(name(c), &c["latency"]))
            .collect();
        out.push((
            format!("p1-seen-free-{slug}.svg"),
            charts::latency(
                &format!(
                    "P1, {label}: from the release until another connection gets the key (µs)"
                ),
                &seen,
            ),
        ));
    }
}

/// The charts the document has data for: (file name, SVG).
fn charts_of(doc: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    p1_charts(&doc["p1"], &mut out);
    if doc["p2"]["contenders"].is_array() {
        let rows: Vec<RatioRow> = list(&doc["p2"]["contenders"])
            .iter()
            .map(|c| ratio_row(name(c), &c["vs_sqlx_defaults"]))
            .collect();
        out.push((
            "p2-throughput.svg".to_owned(),
            charts::ratios(
                "P2: locks/s, 256 tasks, 1,024 keys, 4 connections",
                "× sqlx (pool defaults) in the same round",
                &rows,
            ),
        ));
    }
    if doc["p6"]["contenders"].is_array() {
        let mut rows = Vec::new();
        for c in list(&doc["p6"]["contenders"]) {
            let short = name(c).split(" (").next().unwrap_or("?");
            for l in list(&c["levels"]) {
                rows.push(ratio_row(
                    &format!("{short} · {} held", l["others_held"]),
                    &l["vs_floor"]["p50"],
                ));
            }
        }
        out.push((
            "p6-levels.svg".to_owned(),
            charts::ratios(
                "P6: p50 by the locks the entry holds",
                "× the raw one-statement floor in the same round",
                &rows,
            ),
        ));
    }
    out
}
