//! Measuring contenders side by side, in pairs.
//!
//! Round-trip latency on a small VM moves by several times with the
//! machine's activity (an idle vCPU that must be woken adds tens of
//! microseconds to a round trip, a busy one doesn't), and it stays in one
//! mode for a while. Measuring one contender after the other would compare
//! different machines, and pooling every sample of a run lets one slow spell
//! decide a ratio. So contenders run **interleaved in short rounds**: in each
//! round every contender makes the same number of calls, in blocks of a few
//! calls that alternate between contenders (in an order drawn anew for each
//! cycle of blocks, so that no contender always follows the same one).
//! A ratio is computed **per round** (the contender's median in the round
//! over the reference's median in the same round) and reported as the
//! median over the rounds with its spread ([`Spread`]). Throughput
//! contenders likewise run one short window each per round.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::task::JoinSet;

use crate::util::{round2, BoxErr, Lat, Rng, Spread};

/// What one call reports: whether it did what it should (e.g. the lock was
/// granted; `false`: busy), and, for calls that time themselves (a part of
/// what they do), the nanoseconds to count instead of the whole call.
pub type Sample = (bool, Option<u64>);
type ProbeFuture = Pin<Box<dyn Future<Output = Result<Sample, BoxErr>> + Send>>;

/// One latency contender.
pub struct Probe {
    pub name: &'static str,
    call: Box<dyn Fn() -> ProbeFuture + Send + Sync>,
    /// Untimed, after each of this contender's blocks (see
    /// [`Probe::settled_by`]).
    settle: Option<Box<dyn Fn() -> ProbeFuture + Send + Sync>>,
}

impl Probe {
    /// After each block of this contender's calls, `settle` runs untimed: it
    /// returns once what the calls left running in the background (a
    /// dropped guard's unlock) is done. Without it, the first calls of the
    /// next contender in the round would pay for that work (on one CPU, its
    /// server time and the answer's wake-up) and this contender's would not.
    /// What a background release costs others is measured apart (P1's
    /// "seen free", P2).
    pub fn settled_by<F, Fut>(mut self, settle: F) -> Probe
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxErr>> + Send + 'static,
    {
        self.settle = Some(Box::new(move || {
            let fut = settle();
            Box::pin(async move { fut.await.map(|()| (true, None)) })
        }));
        self
    }

    /// One call, untimed; an error names the probe.
    async fn once(&self) -> Result<Sample, BoxErr> {
        (self.call)()
            .await
            .map_err(|e| format!("{}: {e}", self.name).into())
    }

    /// One timed call: whether it did what it should, and its nanoseconds
    /// (its own, for a probe that times itself).
    async fn timed(&self) -> Result<(bool, u64), BoxErr> {
        let t = Instant::now();
        let (ok, own) = self.once().await?;
        Ok((ok, own.unwrap_or_else(|| t.elapsed().as_nanos() as u64)))
    }

    async fn settle(&self) -> Result<(), BoxErr> {
        match &self.settle {
            Some(settle) => settle()
                .await
                .map(|_| ())
                .map_err(|e| format!("{}: settling: {e}", self.name).into()),
            None => Ok(()),
        }
    }
}

/// A contender timed from the call to its return.
pub fn probe<F, Fut>(name: &'static str, call: F) -> Probe
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<bool, BoxErr>> + Send + 'static,
{
    Probe {
        name,
        call: Box::new(move || {
            let fut = call();
            Box::pin(async move { fut.await.map(|ok| (ok, None)) })
        }),
        settle: None,
    }
}

/// A contender that times itself: it returns the duration to count.
pub fn timed_probe<F, Fut>(name: &'static str, call: F) -> Probe
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Duration, BoxErr>> + Send + 'static,
{
    Probe {
        name,
        call: Box::new(move || {
            let fut = call();
            Box::pin(async move { fut.await.map(|d| (true, Some(d.as_nanos() as u64))) })
        }),
        settle: None,
    }
}

/// The shape of a paired latency run.
#[derive(Debug, Clone, Copy)]
pub struct Rounds {
    /// Untimed calls of each contender before the first round.
    pub warm: usize,
    pub rounds: usize,
    /// Timed calls of each contender per round.
    pub per_round: usize,
    /// Calls of one contender in a row inside a round.
    pub block: usize,
}

/// One contender's samples: pooled over the run and per round.
pub struct Series {
    pub name: &'static str,
    /// Every timed call, in nanoseconds.
    pub samples: Vec<u64>,
    /// Each round's distribution.
    pub rounds: Vec<Lat>,
    /// Calls that answered `false` (busy).
    pub not_ok: usize,
}

impl Series {
    pub fn pooled(&self) -> Lat {
        Lat::from_nanos(self.samples.clone())
    }

    /// The per-round ratio of `stat` over `reference`'s in the same round.
    pub fn ratio(&self, reference: &Series, stat: impl Fn(&Lat) -> f64) -> Spread {
        Spread::of(
            self.rounds
                .iter()
                .zip(&reference.rounds)
                .map(|(a, b)| stat(a) / stat(b)),
        )
    }

    /// Median and p99 ratios to `reference`, as JSON.
    pub fn ratios_json(&self, reference: &Series) -> Value {
        json!({
            "reference": reference.name,
            "p50": self.ratio(reference, |l| l.median).json(),
            "p99": self.ratio(reference, |l| l.p99).json(),
        })
    }

    /// Pooled distribution and the busy count, as JSON.
    pub fn json(&self) -> Value {
        json!({ "name": self.name, "latency": self.pooled().json(), "not_ok": self.not_ok })
    }
}

/// Appends `from`'s samples and rounds to `into`'s, contender by contender
/// (the phases or epochs of one scenario); `into` empty: takes `from`.
pub fn merge(into: &mut Vec<Series>, from: Vec<Series>) {
    if into.is_empty() {
        *into = from;
        return;
    }
    for (a, b) in into.iter_mut().zip(from) {
        a.samples.extend(b.samples);
        a.rounds.extend(b.rounds);
        a.not_ok += b.not_ok;
    }
}

/// `r.warm` untimed calls of each probe, then `r.rounds` rounds; in each
/// round every probe makes `r.per_round` timed calls, in blocks of
/// `r.block` calls that alternate between the probes, each probe once per
/// cycle, in an order drawn anew for every cycle. (In a fixed order each
/// probe would always follow the same one.)
///
/// Each block opens with one untimed call. Without it, a block's first
/// call runs with whatever the blocks before it left in the CPU's caches,
/// and its cost depends on which contenders ran before and what code they
/// share with it: the floor after `SELECT 1` (both tokio-postgres), a
/// crate's `Locker` after any settle (the same `try_lock`). Those first
/// calls are a tenth of a round's calls, so they made its p99. The cost of
/// a call from cold caches is measured apart, the same for every contender
/// ([`cold`]).
pub async fn paired(probes: &[Probe], r: Rounds) -> Result<Vec<Series>, BoxErr> {
    for probe in probes {
        for _ in 0..r.warm {
            probe.once().await?;
        }
        probe.settle().await?;
    }
    let block = r.block.clamp(1, r.per_round.max(1));
    let mut out: Vec<Series> = probes
        .iter()
        .map(|p| Series {
            name: p.name,
            samples: Vec::with_capacity(r.rounds * r.per_round),
            rounds: Vec::with_capacity(r.rounds),
            not_ok: 0,
        })
        .collect();
    // A fixed seed: the same orders in every run.
    let mut rng = Rng::new(0x0bde_5eed);
    let mut order: Vec<usize> = (0..probes.len()).collect();
    for _ in 0..r.rounds {
        let mut this: Vec<Vec<u64>> = probes.iter().map(|_| Vec::new()).collect();
        let mut done = 0;
        while done < r.per_round {
            let n = block.min(r.per_round - done);
            shuffle(&mut order, &mut rng);
            for &i in &order {
                probes[i].once().await?;
                for _ in 0..n {
                    let (ok, ns) = probes[i].timed().await?;
                    this[i].push(ns);
                    out[i].not_ok += usize::from(!ok);
                }
                probes[i].settle().await?;
            }
            done += n;
        }
        for (s, v) in out.iter_mut().zip(this) {
            s.samples.extend_from_slice(&v);
            s.rounds.push(Lat::from_nanos(v));
        }
    }
    Ok(out)
}

/// Calls from cold caches: `cycles` cycles, each probe once per cycle in an
/// order drawn anew for every cycle; before each call the CPU's caches are
/// filled with other data ([`evict_caches`]), then the call is timed and
/// the probe settled. One round per run of this: a ratio over rounds pairs
/// each contender with the reference measured in the same run.
pub async fn cold(probes: &[Probe], cycles: usize) -> Result<Vec<Series>, BoxErr> {
    let mut this: Vec<Vec<u64>> = probes.iter().map(|_| Vec::new()).collect();
    let mut not_ok = vec![0; probes.len()];
    let mut rng = Rng::new(0xc01d);
    let mut order: Vec<usize> = (0..probes.len()).collect();
    for _ in 0..cycles {
        shuffle(&mut order, &mut rng);
        for &i in &order {
            evict_caches();
            let (ok, ns) = probes[i]
                .timed()
                .await
                .map_err(|e| -> BoxErr { format!("cold calls: {e}").into() })?;
            this[i].push(ns);
            not_ok[i] += usize::from(!ok);
            probes[i].settle().await?;
        }
    }
    Ok(probes
        .iter()
        .zip(this)
        .zip(not_ok)
        .map(|((p, v), not_ok)| Series {
            name: p.name,
            samples: v.clone(),
            rounds: vec![Lat::from_nanos(v)],
            not_ok,
        })
        .collect())
}

/// Writes one byte in every cache line of 16 MiB, more than the L2 cache
/// of one core of common servers (this VM's: 4 MiB): the code and data of
/// what ran before (this process's and, on the same CPU, the server's) are
/// then out of the L1 and L2 caches. About a millisecond.
fn evict_caches() {
    static BUF: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());
    let mut buf = BUF.lock().unwrap_or_else(|e| e.into_inner());
    if buf.is_empty() {
        buf.resize(16 << 20, 0);
    }
    for line in buf.chunks_mut(64) {
        line[0] = line[0].wrapping_add(1);
    }
    std::hint::black_box(&*buf);
}

/// A uniform random permutation of `v` (Fisher–Yates).
fn shuffle(v: &mut [usize], rng: &mut Rng) {
    for i in (1..v.len()).rev() {
        let j = rng.below(i as u32 + 1) as usize;
        v.swap(i, j);
    }
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

/// Counts of a throughput contender in one window (or summed over several).
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
    /// The rounds of one contender, summed.
    pub fn total(rounds: &[Tput]) -> Tput {
        let mut t = Tput::default();
        for r in rounds {
            t.ok += r.ok;
            t.busy += r.busy;
            t.errors += r.errors;
            t.all_calls += r.all_calls;
            t.secs += r.secs;
            if t.first_error.is_none() {
                t.first_error.clone_from(&r.first_error);
            }
        }
        t
    }

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

/// Every contender gets `load.rounds` windows of `load.window` each (after
/// its own warm-up), one per round, in rotating order; `before` runs before
/// each window. Per contender: the counts of each round.
pub async fn rotate<F, Fut>(load: Load, ops: &[Op], before: F) -> Result<Vec<Vec<Tput>>, BoxErr>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), BoxErr>>,
{
    let mut out: Vec<Vec<Tput>> = ops.iter().map(|_| Vec::new()).collect();
    for r in 0..load.rounds.max(1) {
        for j in 0..ops.len() {
            let i = (r + j) % ops.len();
            before().await?;
            let mut t = Tput::default();
            let seed = ((r * ops.len() + i) as u64) << 20;
            window_of(load, seed, ops[i].clone(), &mut t).await;
            out[i].push(t);
        }
    }
    Ok(out)
}

/// `load.tasks` tasks each loop over random keys calling `op(k)`, for a
/// warm-up and then a measuring window; calls that end inside the window count.
async fn window_of(load: Load, seed: u64, op: Op, total: &mut Tput) {
    let window = load.window;
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
        let seed = (t as u64 + 1) ^ seed;
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
