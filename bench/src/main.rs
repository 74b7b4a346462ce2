//! The benchmark of issue #5: advisory-locked against the raw tokio-postgres
//! floor and against sqlx's `PgAdvisoryLock`, all in one run against one
//! server.
//!
//! ```sh
//! cargo run --release -p bench                 # full run (~30 s)
//! cargo run --release -p bench -- --quick      # fewer iterations
//! cargo run --release -p bench -- --json PATH  # results as JSON (default target/bench-results.json)
//! ```
//!
//! `DATABASE_URL` overrides `postgres://postgres@127.0.0.1:5432/postgres`.

mod child;
mod harness;
mod scenarios;
mod util;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use util::BoxErr;

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

const USAGE: &str = "\
usage: bench [--quick] [--only p1,p2,..] [--json PATH] [--p2-secs SECS] [--p2-warmup SECS]
             [--p3-hold-us US] [--p3-pause-us US]

  --quick           fewer iterations, shorter P2 (a fast check)
  --only LIST       run only these scenarios (p1..p6; p1 includes the floor)
  --json PATH       where to write the results (default: target/bench-results.json
                    of the workspace)
  --p2-secs SECS    P2 measuring time per contender, split over 3 rotating
                    windows (default 3; quick: 1, one window)
  --p2-warmup SECS  P2 warm-up before each window (default 0.3, quick 0.2)
  --p3-hold-us US   P3: how long each process holds the key (default 3000)
  --p3-pause-us US  P3: how long it pauses after a release (default 1000);
                    below the hold, the other process is waiting at a release

DATABASE_URL overrides postgres://postgres@127.0.0.1:5432/postgres.
P6_DEBUG=1 prints each P6 phase (level, the hot key's backend, medians).";

/// How much of everything to do.
#[derive(Debug, Clone)]
pub struct Opts {
    pub quick: bool,
    /// Scenarios to run (`p1`..`p6`); empty: all.
    pub only: Vec<String>,
    pub json: PathBuf,
    pub url: String,
    /// Warm-up and timed iterations of the sequential latency loops.
    pub warm: usize,
    pub seq: usize,
    /// Rounds of the interleaved latency runs (P1, P6).
    pub rounds: usize,
    /// Rotating windows per P2 contender.
    pub rounds_p2: usize,
    pub p2_tasks: usize,
    pub p2_keys: u32,
    pub p2_warmup: Duration,
    pub p2_window: Duration,
    pub p3_handovers: usize,
    /// P3: each process holds the key this long, then pauses this long.
    pub p3_hold_us: u64,
    pub p3_pause_us: u64,
    pub p4_keys: u32,
    pub p5_tries: usize,
    pub p6_seq: usize,
}

fn parse_args(args: &[String]) -> Result<Opts, String> {
    let mut quick = false;
    let mut only = Vec::new();
    let mut json = None;
    let mut p2_secs = None;
    let mut p2_warm = None;
    let mut p3_hold_us = 3_000;
    let mut p3_pause_us = 1_000;
    let mut it = args.iter();
    let secs = |v: Option<&String>, name: &str| -> Result<f64, String> {
        let v = v.ok_or(format!("{name} needs a value"))?;
        let s: f64 = v
            .parse()
            .map_err(|_| format!("{name}: not a number: {v}"))?;
        if !(0.0..=600.0).contains(&s) {
            return Err(format!("{name}: out of range (0..=600): {v}"));
        }
        Ok(s)
    };
    let micros = |v: Option<&String>, name: &str| -> Result<u64, String> {
        let v = v.ok_or(format!("{name} needs a value"))?;
        match v.parse::<u64>() {
            Ok(us) if us <= 100_000 => Ok(us),
            _ => Err(format!(
                "{name}: not a whole number of microseconds up to 100000: {v}"
            )),
        }
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--only" => {
                let list = it.next().ok_or("--only needs a list, e.g. p1,p2")?;
                for id in list.split(',') {
                    let id = id.trim().to_lowercase();
                    if !["p1", "p2", "p3", "p4", "p5", "p6"].contains(&id.as_str()) {
                        return Err(format!("--only: unknown scenario {id:?}"));
                    }
                    only.push(id);
                }
            }
            "--json" => json = Some(PathBuf::from(it.next().ok_or("--json needs a path")?)),
            "--p2-secs" => p2_secs = Some(secs(it.next(), "--p2-secs")?),
            "--p2-warmup" => p2_warm = Some(secs(it.next(), "--p2-warmup")?),
            "--p3-hold-us" => p3_hold_us = micros(it.next(), "--p3-hold-us")?,
            "--p3-pause-us" => p3_pause_us = micros(it.next(), "--p3-pause-us")?,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let json = json.unwrap_or_else(|| {
        // The workspace's target directory (this crate sits one level below).
        let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        manifest
            .parent()
            .unwrap_or(manifest)
            .join("target")
            .join("bench-results.json")
    });
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());
    let (warm, seq, p3, p6) = if quick {
        (100, 500, 60, 500)
    } else {
        (500, 5_000, 300, 3_000)
    };
    Ok(Opts {
        quick,
        only,
        json,
        url,
        warm,
        seq,
        rounds: if quick { 10 } else { 50 },
        rounds_p2: if quick { 1 } else { 3 },
        p2_tasks: 256,
        p2_keys: 1_024,
        p2_warmup: Duration::from_secs_f64(p2_warm.unwrap_or(if quick { 0.2 } else { 0.3 })),
        p2_window: Duration::from_secs_f64(p2_secs.unwrap_or(if quick { 1.0 } else { 3.0 })),
        p3_handovers: p3,
        p3_hold_us,
        p3_pause_us,
        p4_keys: 10_000,
        p5_tries: 10_000,
        p6_seq: p6,
    })
}

impl Opts {
    /// Whether scenario `id` (`p1`..`p6`) is to run.
    pub fn runs(&self, id: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|x| x == id)
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("handover-child") {
        return child::main(&args[1..]);
    }
    let latency_child = args.first().map(String::as_str) == Some("latency-child");
    let args = if latency_child { &args[1..] } else { &args[..] };
    let opts = match parse_args(args) {
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
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if latency_child {
        // P1 without cross-thread wake-ups (see scenarios::p1_one_worker).
        builder.worker_threads(1);
    }
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The measuring task runs on a worker thread, as a server's handlers do.
    let result: Result<(), BoxErr> = rt.block_on(async move {
        let task = if latency_child {
            tokio::spawn(scenarios::latency_child(opts))
        } else {
            tokio::spawn(scenarios::run(opts))
        };
        match task.await {
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
