//! The benchmark of issues #5 and #15: advisory-locked against the raw
//! tokio-postgres floor and against sqlx's `PgAdvisoryLock`, all in one run
//! against one server, every ratio paired round by round (see
//! [`harness`]).
//!
//! ```sh
//! cargo run --release -p bench                  # full run (~1-2 min); results in bench/results/
//! cargo run --release -p bench -- --quick       # smoke check (< 1 min); results in target/bench-results-quick/
//! cargo run --release -p bench -- --only none --compile-time   # the attribute's compile time (slow)
//! ```
//!
//! `DATABASE_URL` overrides `postgres://postgres@127.0.0.1:5432/postgres`.

mod alloc;
mod charts;
mod child;
mod harness;
mod output;
mod report;
mod scenarios;
mod summary;
mod util;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use harness::{Load, Rounds};
use util::BoxErr;

/// Counts live heap bytes for P4 (only while enabled: in P4's child).
#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

const USAGE: &str = "\
usage: bench [--quick] [--only p1,p2,..|none] [--compile-time] [--json PATH] [--results DIR]
             [--p2-secs SECS] [--p2-warmup SECS] [--p3-hold-us US] [--p3-pause-us US]
       bench --render [DIR]

  --render [DIR]    only write the charts and summary.md again from
                    DIR/bench-results.json (default DIR: bench/results)

  --quick           fewer rounds (a smoke check, well under a minute)
  --only LIST       run only these scenarios (p1..p6), or none
  --compile-time    also time builds of a generated crate of 200 annotated fns
                    against the same unannotated and under tracing (slow)
  --json PATH       the results as JSON (default: target/bench-results.json)
  --results DIR     charts, summary.md and the JSON (default: bench/results,
                    or target/bench-results-quick with --quick)
  --p2-secs SECS    P2 measuring window per contender and round (default 0.6)
  --p2-warmup SECS  P2 warm-up before each window (default 0.3)
  --p3-hold-us US   P3: how long each process holds the key (default 3000)
  --p3-pause-us US  P3: how long it pauses after a release (default 1000)

DATABASE_URL overrides postgres://postgres@127.0.0.1:5432/postgres.";

/// How much of everything to do.
#[derive(Debug, Clone)]
pub struct Opts {
    pub quick: bool,
    /// Scenarios to run (`p1`..`p6`); empty: all.
    pub only: Vec<String>,
    pub compile_time: bool,
    pub json: PathBuf,
    pub results: PathBuf,
    pub url: String,
    /// P1: epochs per placement (fresh connections each), and the rounds of
    /// each epoch.
    pub p1_epochs: usize,
    pub p1: Rounds,
    /// P1's calls from cold caches: cycles per epoch.
    pub p1_cold: usize,
    /// P1's "until another connection sees the key free".
    pub seen_free: Rounds,
    pub p2: Load,
    pub p3_handovers: usize,
    pub p3_hold_us: u64,
    pub p3_pause_us: u64,
    pub p4_keys: u32,
    pub p5_tries: usize,
    /// One phase of P6 (per level and cycle).
    pub p6: Rounds,
    pub p6_cycles: usize,
}

fn secs(v: Option<&String>, name: &str) -> Result<f64, String> {
    let v = v.ok_or(format!("{name} needs a value"))?;
    match v.parse::<f64>() {
        Ok(s) if (0.0..=600.0).contains(&s) => Ok(s),
        _ => Err(format!("{name}: not a number of seconds in 0..=600: {v}")),
    }
}

fn micros(v: Option<&String>, name: &str) -> Result<u64, String> {
    let v = v.ok_or(format!("{name} needs a value"))?;
    match v.parse::<u64>() {
        Ok(us) if us <= 100_000 => Ok(us),
        _ => Err(format!(
            "{name}: not a whole number of microseconds up to 100000: {v}"
        )),
    }
}

fn parse_only(list: Option<&String>) -> Result<Vec<String>, String> {
    let list = list.ok_or("--only needs a list, e.g. p1,p2")?;
    let mut only = Vec::new();
    for id in list.split(',') {
        let id = id.trim().to_lowercase();
        if !["p1", "p2", "p3", "p4", "p5", "p6", "none"].contains(&id.as_str()) {
            return Err(format!("--only: unknown scenario {id:?}"));
        }
        only.push(id);
    }
    Ok(only)
}

fn parse_args(args: &[String]) -> Result<Opts, String> {
    let mut o = defaults(args.iter().any(|a| a == "--quick"));
    let (mut json, mut results) = (None, None);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => {}
            "--only" => o.only = parse_only(it.next())?,
            "--compile-time" => o.compile_time = true,
            "--json" => json = Some(PathBuf::from(it.next().ok_or("--json needs a path")?)),
            "--results" => {
                results = Some(PathBuf::from(
                    it.next().ok_or("--results needs a directory")?,
                ))
            }
            "--p2-secs" => o.p2.window = Duration::from_secs_f64(secs(it.next(), "--p2-secs")?),
            "--p2-warmup" => o.p2.warmup = Duration::from_secs_f64(secs(it.next(), "--p2-warmup")?),
            "--p3-hold-us" => o.p3_hold_us = micros(it.next(), "--p3-hold-us")?,
            "--p3-pause-us" => o.p3_pause_us = micros(it.next(), "--p3-pause-us")?,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let ws = workspace();
    o.json = json.unwrap_or_else(|| ws.join("target").join("bench-results.json"));
    o.results = results.unwrap_or_else(|| {
        if o.quick {
            ws.join("target").join("bench-results-quick")
        } else {
            ws.join("bench").join("results")
        }
    });
    Ok(o)
}

/// The workspace root (this crate sits one level below).
fn workspace() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

fn defaults(quick: bool) -> Opts {
    let q = |quick_value, full| if quick { quick_value } else { full };
    Opts {
        quick,
        only: Vec::new(),
        compile_time: false,
        json: PathBuf::new(),
        results: PathBuf::new(),
        url: std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned()),
        p1_epochs: q(2, 6),
        p1: Rounds {
            warm: q(50, 200),
            rounds: q(4, 6),
            per_round: q(100, 1000),
            block: 10,
        },
        p1_cold: q(5, 30),
        seen_free: Rounds {
            warm: q(10, 30),
            rounds: q(2, 5),
            per_round: q(40, 100),
            block: 5,
        },
        p2: Load {
            tasks: 256,
            keys: 1_024,
            warmup: Duration::from_secs_f64(if quick { 0.1 } else { 0.3 }),
            window: Duration::from_secs_f64(if quick { 0.25 } else { 0.6 }),
            rounds: q(2, 5),
        },
        p3_handovers: q(60, 700),
        p3_hold_us: 3_000,
        p3_pause_us: 1_000,
        p4_keys: 10_000,
        p5_tries: q(2_000, 10_000),
        p6: Rounds {
            warm: 20,
            rounds: q(3, 6),
            per_round: q(40, 100),
            block: 10,
        },
        p6_cycles: q(1, 3),
    }
}

impl Opts {
    /// Whether scenario `id` (`p1`..`p6`) is to run.
    pub fn runs(&self, id: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|x| x == id)
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("handover-child") => return child::main(&args[1..]),
        Some("p4-child") => return scenarios::p4_child(&args[1..]),
        Some("--render") => {
            let dir = args
                .get(1)
                .map_or_else(|| workspace().join("bench").join("results"), PathBuf::from);
            return match output::render_dir(&dir) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("bench --render: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        _ => {}
    }
    let opts = match parse_args(&args) {
        Ok(o) => o,
        Err(msg) => {
            if !msg.is_empty() {
                eprintln!("bench: {msg}");
            }
            eprintln!("{USAGE}");
            return if msg.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            };
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The measuring task runs on a worker thread, as a server's handlers do.
    let result: Result<(), BoxErr> = rt.block_on(async move {
        match tokio::spawn(scenarios::run(opts)).await {
            Ok(r) => r,
            Err(e) => Err(format!("the benchmark task failed: {e}").into()),
        }
    });
    rt.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}
