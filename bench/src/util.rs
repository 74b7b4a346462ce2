//! Small helpers: latency summaries, spreads over rounds, keys unique to the
//! run, a PRNG, RSS.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

pub type BoxErr = Box<dyn std::error::Error + Send + Sync>;

/// A latency distribution, in microseconds.
#[derive(Debug, Clone, Copy)]
pub struct Lat {
    pub n: usize,
    pub median: f64,
    pub p99: f64,
    /// The fast end: on this VM, round trips without a cross-thread wake-up.
    pub p10: f64,
    pub p25: f64,
    pub p75: f64,
    pub p90: f64,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
}

impl Lat {
    /// From samples in nanoseconds.
    pub fn from_nanos(mut v: Vec<u64>) -> Lat {
        if v.is_empty() {
            return Lat {
                n: 0,
                median: f64::NAN,
                p99: f64::NAN,
                p10: f64::NAN,
                p25: f64::NAN,
                p75: f64::NAN,
                p90: f64::NAN,
                mean: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
            };
        }
        v.sort_unstable();
        let n = v.len();
        let us = |ns: u64| ns as f64 / 1000.0;
        let median = if n % 2 == 1 {
            us(v[n / 2])
        } else {
            (us(v[n / 2 - 1]) + us(v[n / 2])) / 2.0
        };
        // Nearest rank: the smallest sample with at least q of them at or below.
        let q = |q: f64| us(v[((n as f64 * q).ceil() as usize).clamp(1, n) - 1]);
        Lat {
            n,
            median,
            p99: q(0.99),
            p10: q(0.10),
            p25: q(0.25),
            p75: q(0.75),
            p90: q(0.90),
            mean: v.iter().map(|&x| x as f64).sum::<f64>() / n as f64 / 1000.0,
            min: us(v[0]),
            max: us(v[n - 1]),
        }
    }

    pub fn json(&self) -> Value {
        json!({
            "n": self.n,
            "p10_us": round2(self.p10),
            "p25_us": round2(self.p25),
            "median_us": round2(self.median),
            "p75_us": round2(self.p75),
            "p90_us": round2(self.p90),
            "p99_us": round2(self.p99),
            "mean_us": round2(self.mean),
            "min_us": round2(self.min),
            "max_us": round2(self.max),
        })
    }
}

pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// A value measured once per round (a paired ratio): its median over the
/// rounds and how far the rounds spread.
#[derive(Debug, Clone, Copy)]
pub struct Spread {
    pub n: usize,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// Quartiles over the rounds (the IQR is `p75 - p25`).
    pub p25: f64,
    pub p75: f64,
}

impl Spread {
    /// Over the rounds' values; NaNs (a round without samples) are left out.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Spread {
        let mut v: Vec<f64> = values.into_iter().filter(|x| !x.is_nan()).collect();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n == 0 {
            return Spread {
                n,
                median: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
                p25: f64::NAN,
                p75: f64::NAN,
            };
        }
        let at = |q: f64| {
            // Linear interpolation between the closest ranks.
            let pos = q * (n - 1) as f64;
            let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
            v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
        };
        Spread {
            n,
            median: at(0.5),
            min: v[0],
            max: v[n - 1],
            p25: at(0.25),
            p75: at(0.75),
        }
    }

    /// `1.03× (IQR 1.01–1.05, range 0.97–1.12)`.
    pub fn text(&self) -> String {
        format!(
            "{:.2}× (IQR {:.2}–{:.2}, range {:.2}–{:.2})",
            self.median, self.p25, self.p75, self.min, self.max
        )
    }

    pub fn json(&self) -> Value {
        json!({
            "median": round3(self.median), "p25": round3(self.p25), "p75": round3(self.p75),
            "min": round3(self.min), "max": round3(self.max), "rounds": self.n,
        })
    }
}

/// The median of some values (NaN if none).
pub fn median_of(xs: impl IntoIterator<Item = f64>) -> f64 {
    Spread::of(xs).median
}

/// `12345` as `12,345`.
pub fn thousands(n: u64) -> String {
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

/// Scenario numbers, bits 24..32 of an integer key.
pub mod scn {
    pub const FLOOR: u8 = 1;
    pub const P1_LOCKER: u8 = 2;
    pub const P1_RELEASE: u8 = 3;
    pub const P1_SEEN_FREE: u8 = 5;
    pub const P2_LOCKER: u8 = 4;
    pub const P2_RELEASE: u8 = 17;
    pub const P2_SQLX: u8 = 6;
    pub const P2_SQLX_NO_PING: u8 = 18;
    pub const P2_SQLX_ONE: u8 = 19;
    pub const P2_RAW: u8 = 7;
    pub const P3_OURS: u8 = 8;
    pub const P3_SQLX: u8 = 9;
    pub const P3_RAW: u8 = 16;
    pub const P4_OURS: u8 = 10;
    pub const P4_RAW: u8 = 11;
    pub const P5: u8 = 12;
    pub const P6_FLOOR: u8 = 13;
    pub const P6_OTHERS: u8 = 14;
    pub const P3_OURS_DROP: u8 = 20;
    pub const P3_RAW_SQL: u8 = 21;
}

/// Keys unique to this run: every integer key has the run's tag in its high
/// 32 bits (so it shows as `pg_locks.classid` = tag), then the scenario
/// number, then a 24-bit index.
#[derive(Debug, Clone, Copy)]
pub struct Keys {
    /// This process's id: also used in the attribute's template keys.
    pub run: u32,
    /// `0x5A` and the low 24 bits of the process id; below 2^31.
    pub tag: u32,
}

impl Keys {
    pub fn for_this_process() -> Keys {
        let run = std::process::id();
        Keys {
            run,
            tag: 0x5A00_0000 | (run & 0x00FF_FFFF),
        }
    }

    pub fn int(&self, scenario: u8, n: u32) -> i64 {
        ((self.tag as i64) << 32) | ((scenario as i64) << 24) | (n as i64 & 0x00FF_FFFF)
    }
}

/// xorshift64*: enough to pick keys, no dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn below(&mut self, n: u32) -> u32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        ((self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) % n as u64) as u32
    }
}

/// Nanoseconds of the realtime clock: comparable between processes of one machine.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_nanos() as u64
}

/// Resident set size in bytes (`VmRSS` of `/proc/self/status`).
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Where P1 runs: the client (this process, all its threads) and the
/// backends of the measured connections, pinned with `taskset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Client and backends on CPU 0: no cross-CPU wake-up in a round trip.
    SameCpu,
    /// Client on CPU 0, backends on CPU 1: every round trip wakes the
    /// other CPU (as with a database on another machine).
    CrossCpu,
}

impl Placement {
    pub fn label(self) -> &'static str {
        match self {
            Placement::SameCpu => "same CPU",
            Placement::CrossCpu => "cross CPU",
        }
    }

    pub fn slug(self) -> &'static str {
        match self {
            Placement::SameCpu => "same-cpu",
            Placement::CrossCpu => "cross-cpu",
        }
    }

    /// Pins this process (every thread) and the backends `pids`.
    pub fn pin(self, pids: &[i32]) -> Result<(), String> {
        self.pin_processes(&[std::process::id() as i32], pids)
    }

    /// Pins `clients` (every thread) on CPU 0, and `backends` on CPU 0
    /// (same CPU) or CPU 1 (cross CPU).
    pub fn pin_processes(self, clients: &[i32], backends: &[i32]) -> Result<(), String> {
        let backend = match self {
            Placement::SameCpu => "0",
            Placement::CrossCpu => "1",
        };
        for &pid in clients {
            taskset("0", pid)?;
        }
        for &pid in backends {
            taskset(backend, pid)?;
        }
        Ok(())
    }
}

/// The CPUs online as the kernel lists them (`0-1`), not this process's
/// affinity: once a placement has pinned the process, that is one CPU.
fn online_cpus() -> Option<String> {
    let list = std::fs::read_to_string("/sys/devices/system/cpu/online").ok()?;
    let list = list.trim();
    (!list.is_empty()).then(|| list.to_owned())
}

/// How many CPUs the machine has online (see [`online_cpus`]; else this
/// process's available parallelism).
pub fn cpus() -> usize {
    let counted = online_cpus().and_then(|list| {
        list.split(',')
            .map(|part| match part.split_once('-') {
                Some((a, b)) => Some(b.parse::<usize>().ok()? + 1 - a.parse::<usize>().ok()?),
                None => part.parse::<usize>().ok().map(|_| 1),
            })
            .sum::<Option<usize>>()
    });
    counted.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The placements this machine can pin: both with 2 CPUs or more, else
/// same CPU; an error if `taskset` can't even unpin this process (which
/// every scenario that pins does first).
pub fn pinnable() -> Result<Vec<Placement>, String> {
    unpin()?;
    Ok(if cpus() >= 2 {
        vec![Placement::SameCpu, Placement::CrossCpu]
    } else {
        vec![Placement::SameCpu]
    })
}

/// Lets this process run on every CPU again (children started after this
/// inherit it).
pub fn unpin() -> Result<(), String> {
    let list = online_cpus().unwrap_or_else(|| format!("0-{}", cpus() - 1));
    taskset(&list, std::process::id() as i32)
}

/// `taskset -a -p -c CPUS PID` (all threads of the process).
fn taskset(cpus: &str, pid: i32) -> Result<(), String> {
    let out = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .output()
        .map_err(|e| format!("taskset: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "taskset -a -p -c {cpus} {pid}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The `application_name` of the bench's own raw and sqlx connections (the
/// crate's sessions have theirs: `advisory-locked:<entry> bench[<pid>]`);
/// both end in `[<pid>]`, which finds the run's backends to pin.
pub fn tagged_url(url: &str) -> String {
    let name = format!("advisory-locked-bench[{}]", std::process::id());
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let sep = if url.contains('?') { '&' } else { '?' };
        format!(
            "{url}{sep}application_name={}",
            name.replace('[', "%5B").replace(']', "%5D")
        )
    } else {
        format!("{url} application_name='{name}'")
    }
}
