//! Measuring contenders side by side.
//!
//! Round-trip latency on this kind of machine (a small VM) moves by several
//! times with the machine's activity: an idle vCPU that must be woken adds
//! tens of microseconds to every round trip, a busy one doesn't. Measuring
//! one contender after the other would compare different machines. So the
//! latency contenders of a scenario run interleaved: in rounds, each round a
//! block of every contender (rotating which goes first), and the samples of
//! all rounds are pooled. Throughput contenders likewise run in rotating
//! windows.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::task::JoinSet;

use crate::util::{round2, BoxErr, Lat, Rng};

type ProbeFuture = Pin<Box<dyn Future<Output = Result<bool, BoxErr>> + Send>>;

/// One latency contender: a call that returns `Ok(true)` when it did what
/// it should (e.g. the lock was granted) and `Ok(false)` when not (busy).
pub struct Probe {
    pub name: &'static str,
    call: Box<dyn Fn() -> ProbeFuture + Send + Sync>,
}

pub fn probe<F, Fut>(name: &'static str, call: F) -> Probe
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<bool, BoxErr>> + Send + 'static,
{
    Probe {
        name,
        call: Box::new(move || Box::pin(call())),
    }
}

/// A contender's pooled samples and how many calls answered `false`.
pub struct Measured {
    pub lat: Lat,
    pub not_ok: usize,
    /// The timed calls, in nanoseconds (for pooling runs).
    pub samples: Vec<u64>,
}

impl Measured {
    /// Runs of one probe, pooled.
    pub fn pool(runs: impl IntoIterator<Item = Measured>) -> Measured {
        let (mut samples, mut not_ok) = (Vec::new(), 0);
        for m in runs {
            samples.extend(m.samples);
            not_ok += m.not_ok;
        }
        Measured {
            lat: Lat::from_nanos(samples.clone()),
            not_ok,
            samples,
        }
    }
}

/// `warm` untimed calls of each probe, then `rounds` rounds of
/// `total / rounds` timed calls of each probe, one probe after the other.
pub async fn interleave(
    probes: &[Probe],
    warm: usize,
    total: usize,
    rounds: usize,
) -> Result<Vec<Measured>, BoxErr> {
    let rounds = rounds.clamp(1, total.max(1));
    let block = total / rounds;
    let mut not_ok = vec![0usize; probes.len()];
    for p in probes {
        for _ in 0..warm {
            (p.call)().await.map_err(|e| format!("{}: {e}", p.name))?;
        }
    }
    let mut samples: Vec<Vec<u64>> = probes.iter().map(|_| Vec::with_capacity(total)).collect();
    for r in 0..rounds {
        for j in 0..probes.len() {
            let i = (r + j) % probes.len();
            let call = &probes[i].call;
            for _ in 0..block {
                let t = Instant::now();
                let ok = call()
                    .await
                    .map_err(|e| format!("{}: {e}", probes[i].name))?;
                samples[i].push(t.elapsed().as_nanos() as u64);
                if !ok {
                    not_ok[i] += 1;
                }
            }
        }
    }
    Ok(samples
        .into_iter()
        .zip(not_ok)
        .map(|(s, not_ok)| Measured {
            lat: Lat::from_nanos(s.clone()),
            not_ok,
            samples: s,
        })
        .collect())
}

type OpFuture = Pin<Box<dyn Future<Output = Result<bool, String>> + Send>>;

/// One throughput contender: `op(k)` on key index `k`; `Ok(true)`: locked,
/// empty body, released; `Ok(false)`: busy.
pub type Op = Arc<dyn Fn(u32) -> OpFuture + Send + Sync>;

pub fn op<F, Fut>(f: F) -> Op
where
    F: Fn(u32) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<bool, String>> + Send + 'static,
{
    Arc::new(move |k| Box::pin(f(k)))
}

/// Counts of a throughput contender, over all its measuring windows.
#[derive(Default)]
pub struct Tput {
    /// Locked calls that ended inside a measuring window.
    pub ok: u64,
    /// Busy calls that ended inside a measuring window.
    pub busy: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Calls of any outcome, warm-ups included (to divide counters by).
    pub all_calls: u64,
    /// Seconds of measuring windows.
    pub secs: f64,
}

impl Tput {
    pub fn per_sec(&self) -> f64 {
        self.ok as f64 / self.secs
    }

    pub fn json(&self) -> Value {
        json!({
            "locks_per_s": self.per_sec().round(),
            "locked_calls": self.ok,
            "busy_calls": self.busy,
            "errors": self.errors,
            "first_error": self.first_error,
            "window_s": round2(self.secs),
        })
    }
}

/// Shape of the throughput runs.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub tasks: usize,
    pub keys: u32,
    pub warmup: Duration,
    pub window: Duration,
    pub rounds: usize,
}

/// Every contender gets `rounds` windows of `window / rounds`, each after
/// its own warm-up, in rotating order.
pub async fn rotate(load: Load, ops: &[Op]) -> Vec<Tput> {
    let rounds = load.rounds.max(1);
    let window = load.window / rounds as u32;
    let mut totals: Vec<Tput> = ops.iter().map(|_| Tput::default()).collect();
    for r in 0..rounds {
        for j in 0..ops.len() {
            let i = (r + j) % ops.len();
            window_of(load, window, ops[i].clone(), &mut totals[i]).await;
        }
    }
    totals
}

/// `load.tasks` tasks each loop over random keys calling `op(k)`, for a
/// warm-up and then a measuring window; calls that end inside the window count.
async fn window_of(load: Load, window: Duration, op: Op, total: &mut Tput) {
    const WARMING: u8 = 0;
    const MEASURING: u8 = 1;
    const STOPPED: u8 = 2;
    let phase = Arc::new(AtomicU8::new(WARMING));
    let cap = load.warmup + window + Duration::from_secs(20);
    let mut set = JoinSet::new();
    for t in 0..load.tasks {
        let op = op.clone();
        let phase = phase.clone();
        let keys = load.keys;
        let seed = (t as u64 + 1) ^ (total.all_calls << 20);
        set.spawn(async move {
            let mut rng = Rng::new(seed);
            let until = Instant::now() + cap;
            let mut c = Tput::default();
            while phase.load(Ordering::Acquire) != STOPPED && Instant::now() < until {
                let r = op(rng.below(keys)).await;
                c.all_calls += 1;
                let counting = phase.load(Ordering::Acquire) == MEASURING;
                match r {
                    Ok(true) if counting => c.ok += 1,
                    Ok(false) if counting => c.busy += 1,
                    Ok(_) => {}
                    Err(e) => {
                        if counting {
                            c.errors += 1;
                        }
                        c.first_error.get_or_insert(e);
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
            c
        });
    }
    tokio::time::sleep(load.warmup).await;
    phase.store(MEASURING, Ordering::Release);
    let t = Instant::now();
    tokio::time::sleep(window).await;
    phase.store(STOPPED, Ordering::Release);
    total.secs += t.elapsed().as_secs_f64();
    let joined = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(r) = set.join_next().await {
            match r {
                Ok(c) => {
                    total.ok += c.ok;
                    total.busy += c.busy;
                    total.errors += c.errors;
                    total.all_calls += c.all_calls;
                    if total.first_error.is_none() {
                        total.first_error = c.first_error;
                    }
                }
                Err(e) => {
                    total.errors += 1;
                    total.first_error.get_or_insert(format!("task failed: {e}"));
                }
            }
        }
    })
    .await;
    if joined.is_err() {
        total
            .first_error
            .get_or_insert("tasks did not stop within 30 s".to_owned());
        set.abort_all();
    }
}
