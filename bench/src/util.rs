//! Small helpers: latency summaries, keys unique to the run, a PRNG, RSS.

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
        let p99_idx = ((n as f64 * 0.99).ceil() as usize).clamp(1, n) - 1;
        Lat {
            n,
            median,
            p99: us(v[p99_idx]),
            p10: us(v[n / 10]),
            mean: v.iter().map(|&x| x as f64).sum::<f64>() / n as f64 / 1000.0,
            min: us(v[0]),
            max: us(v[n - 1]),
        }
    }

    pub fn from_json(v: &Value) -> Option<Lat> {
        Some(Lat {
            n: v["n"].as_u64()? as usize,
            median: v["median_us"].as_f64()?,
            p99: v["p99_us"].as_f64()?,
            p10: v["p10_us"].as_f64()?,
            mean: v["mean_us"].as_f64()?,
            min: v["min_us"].as_f64()?,
            max: v["max_us"].as_f64()?,
        })
    }

    pub fn json(&self) -> Value {
        json!({
            "p10_us": round2(self.p10),
            "n": self.n,
            "median_us": round2(self.median),
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

/// Scenario numbers, bits 24..32 of an integer key.
pub mod scn {
    pub const FLOOR: u8 = 1;
    pub const P1_LOCKER: u8 = 2;
    pub const P1_SQLX: u8 = 3;
    pub const P2_OURS: u8 = 4;
    pub const P2_SQLX: u8 = 6;
    pub const P2_RAW: u8 = 7;
    pub const P3_OURS: u8 = 8;
    pub const P3_SQLX: u8 = 9;
    pub const P4_OURS: u8 = 10;
    pub const P4_SQLX: u8 = 11;
    pub const P5: u8 = 12;
    pub const P6_TARGET: u8 = 13;
    pub const P6_OTHERS: u8 = 14;
    pub const P6_RAW: u8 = 15;
    pub const P3_RAW: u8 = 16;
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

/// The page size from the auxiliary vector (AT_PAGESZ), else 4096.
fn page_size() -> u64 {
    const AT_PAGESZ: u64 = 6;
    if let Ok(bytes) = std::fs::read("/proc/self/auxv") {
        for pair in bytes.chunks_exact(16) {
            let key = u64::from_ne_bytes(pair[..8].try_into().unwrap_or([0; 8]));
            let val = u64::from_ne_bytes(pair[8..].try_into().unwrap_or([0; 8]));
            if key == AT_PAGESZ && val > 0 {
                return val;
            }
        }
    }
    4096
}

/// Resident set size in bytes (`/proc/self/statm` resident pages × page size).
pub fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}
