//! Fault: 10,000 calls cut off at random points by random short timeouts
//! (0-3 ms) — while acquiring, in the body, while releasing — from many
//! concurrent tasks on a few keys, through `Locker::try_lock`/`lock` +
//! `guard.release().await` and through annotated functions.
//!
//! Afterwards nothing may be left: no lock of the test in `pg_locks`, no key
//! in the entry's in-process table, no extra session; and exclusion must
//! have held throughout (an in-body counter per key never above 1).

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use advisory_locked::{advisory_locked, Error, LockConfig, LockKey, Locker, Mode};
use advisory_locked_tests::{
    db_url, db_url_with_app, named, raw_connect, sessions_named, unique, unique_ident,
    wait_until_unlocked, Prng,
};

const POOL: &str = "faults_cancel";
const TASKS: usize = 40;
const CALLS_PER_TASK: usize = 250;
const KEYS: usize = 4;

/// In-body counters per key.
struct Inside {
    now: Vec<AtomicUsize>,
    max: AtomicUsize,
    overlaps: AtomicUsize,
}

/// Leaves the key's count when dropped (a body can be dropped mid-way).
struct InBody<'a>(&'a Inside, usize);

impl<'a> InBody<'a> {
    fn enter(inside: &'a Inside, key: usize) -> Self {
        let was = inside.now[key].fetch_add(1, Ordering::SeqCst);
        if was > 0 {
            inside.overlaps.fetch_add(1, Ordering::SeqCst);
        }
        inside.max.fetch_max(was + 1, Ordering::SeqCst);
        InBody(inside, key)
    }
}

impl Drop for InBody<'_> {
    fn drop(&mut self) {
        self.0.now[self.1].fetch_sub(1, Ordering::SeqCst);
    }
}

async fn body(inside: &Inside, key: usize, pause_us: u64, yields: u32) {
    let _in = InBody::enter(inside, key);
    for _ in 0..yields {
        tokio::task::yield_now().await;
    }
    if pause_us > 0 {
        tokio::time::sleep(Duration::from_micros(pause_us)).await;
    }
}

#[advisory_locked(key = "{name}", pool = "faults_cancel")]
async fn attr_skip(inside: &Inside, name: &str, key: usize, pause_us: u64, yields: u32) {
    body(inside, key, pause_us, yields).await
}

#[advisory_locked(key = "{name}", wait = "50ms", pool = "faults_cancel")]
async fn attr_wait(inside: &Inside, name: &str, key: usize, pause_us: u64, yields: u32) {
    body(inside, key, pause_us, yields).await
}

const ACQUIRING: u8 = 1;
const IN_BODY: u8 = 2;
const RELEASING: u8 = 3;
const DONE: u8 = 4;

#[derive(Debug, Default)]
struct Tally {
    completed: usize,
    skipped: usize,
    wait_timeouts: usize,
    cut_acquiring: usize,
    cut_in_body: usize,
    cut_releasing: usize,
    cut_attr: usize,
    unexpected: Vec<String>,
}

/// One call through the `Locker`, cut off after `limit`.
/// How one `Locker` call goes: its key (index and key), wait or skip mode,
/// the limit it is cut off at, and its body's pause and yields.
struct Call<'a> {
    key: (usize, &'a LockKey),
    wait: bool,
    limit: Duration,
    pause_us: u64,
    yields: u32,
}

async fn locker_call(locker: &Locker, inside: &Inside, call: Call<'_>, tally: &Mutex<Tally>) {
    let Call {
        key,
        wait,
        limit,
        pause_us,
        yields,
    } = call;
    let phase = AtomicU8::new(ACQUIRING);
    let call = async {
        let guard = if wait {
            Some(
                locker
                    .lock(
                        key.1.clone(),
                        Mode::Exclusive,
                        Some(Duration::from_millis(50)),
                    )
                    .await?,
            )
        } else {
            locker.try_lock(key.1.clone(), Mode::Exclusive).await?
        };
        let Some(guard) = guard else {
            phase.store(DONE, Ordering::SeqCst);
            return Ok(false);
        };
        phase.store(IN_BODY, Ordering::SeqCst);
        body(inside, key.0, pause_us, yields).await;
        phase.store(RELEASING, Ordering::SeqCst);
        guard.release().await?;
        phase.store(DONE, Ordering::SeqCst);
        Ok::<bool, Error>(true)
    };
    let result = tokio::time::timeout(limit, call).await;
    let mut t = tally.lock().unwrap();
    match result {
        Ok(Ok(true)) => t.completed += 1,
        Ok(Ok(false)) => t.skipped += 1,
        Ok(Err(Error::WaitTimeout { .. })) => t.wait_timeouts += 1,
        Ok(Err(e)) => t.unexpected.push(e.to_string()),
        Err(_) => match phase.load(Ordering::SeqCst) {
            ACQUIRING => t.cut_acquiring += 1,
            IN_BODY => t.cut_in_body += 1,
            RELEASING => t.cut_releasing += 1,
            p => t.unexpected.push(format!("cut in phase {p}")),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_calls_cut_at_random_points_leave_nothing_behind() {
    let app = unique_ident("faults_cancel");
    let locker = LockConfig::from_url(&db_url_with_app(&app))
        .unwrap()
        .name(POOL)
        .sessions(2)
        .install()
        .await
        .unwrap();
    let names: Arc<Vec<String>> = Arc::new(
        (0..KEYS)
            .map(|i| unique(&format!("faults:cancel:{i}")))
            .collect(),
    );
    let keys: Arc<Vec<LockKey>> =
        Arc::new(names.iter().map(|n| LockKey::named(n.clone())).collect());
    let inside = Arc::new(Inside {
        now: (0..KEYS).map(|_| AtomicUsize::new(0)).collect(),
        max: AtomicUsize::new(0),
        overlaps: AtomicUsize::new(0),
    });
    let tally = Arc::new(Mutex::new(Tally::default()));
    let mut rng = Prng::seeded("faults_cancel", 0xFA17_0005);

    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let (locker, names, keys, inside, tally) = (
            locker.clone(),
            names.clone(),
            keys.clone(),
            inside.clone(),
            tally.clone(),
        );
        let mut rng = Prng::new(rng.next_u64());
        tasks.push(tokio::spawn(async move {
            for _ in 0..CALLS_PER_TASK {
                let k = rng.below(KEYS as u64) as usize;
                // 0-3 ms; tokio's timer rounds up to the next millisecond tick.
                let limit = Duration::from_micros(rng.below(3_001));
                let pause_us = if rng.chance(1, 2) {
                    0
                } else {
                    rng.below(1_500)
                };
                let yields = rng.below(4) as u32;
                match rng.below(5) {
                    0 => {
                        let call = Call {
                            key: (k, &keys[k]),
                            wait: false,
                            limit,
                            pause_us,
                            yields,
                        };
                        locker_call(&locker, &inside, call, &tally).await
                    }
                    1 => {
                        let call = Call {
                            key: (k, &keys[k]),
                            wait: true,
                            limit,
                            pause_us,
                            yields,
                        };
                        locker_call(&locker, &inside, call, &tally).await
                    }
                    2 | 3 => {
                        let wait = rng.chance(1, 2);
                        let r = if wait {
                            tokio::time::timeout(
                                limit,
                                attr_wait(&inside, &names[k], k, pause_us, yields),
                            )
                            .await
                            .map(|r| r.map(|()| true))
                        } else {
                            tokio::time::timeout(
                                limit,
                                attr_skip(&inside, &names[k], k, pause_us, yields),
                            )
                            .await
                            .map(|r| r.map(|o| o.ran().is_some()))
                        };
                        let mut t = tally.lock().unwrap();
                        match r {
                            Ok(Ok(true)) => t.completed += 1,
                            Ok(Ok(false)) => t.skipped += 1,
                            Ok(Err(Error::WaitTimeout { .. })) => t.wait_timeouts += 1,
                            Ok(Err(e)) => t.unexpected.push(e.to_string()),
                            Err(_) => t.cut_attr += 1,
                        }
                    }
                    _ => {
                        // Acquired in full, then the release alone is cut
                        // (0-1 ms: usually while its answer is on the wire).
                        match locker
                            .lock(
                                keys[k].clone(),
                                Mode::Exclusive,
                                Some(Duration::from_millis(50)),
                            )
                            .await
                        {
                            Ok(guard) => {
                                body(&inside, k, pause_us.min(200), yields).await;
                                let cut = Duration::from_micros(rng.below(1_001));
                                let r = tokio::time::timeout(cut, guard.release()).await;
                                let mut t = tally.lock().unwrap();
                                match r {
                                    Ok(Ok(())) => t.completed += 1,
                                    Ok(Err(e)) => t.unexpected.push(e.to_string()),
                                    Err(_) => t.cut_releasing += 1,
                                }
                            }
                            Err(Error::WaitTimeout { .. }) => {
                                tally.lock().unwrap().wait_timeouts += 1
                            }
                            Err(e) => tally.lock().unwrap().unexpected.push(e.to_string()),
                        }
                    }
                }
            }
        }));
    }
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("a task hung")
            .expect("a task panicked");
    }
    let took = start.elapsed();

    // Nothing left: on the server, in the process, in connections.
    let client = raw_connect(&db_url()).await;
    let ids: Vec<_> = names.iter().map(|n| named(n)).collect();
    let left = wait_until_unlocked(&client, &ids, Duration::from_secs(5)).await;
    let settle = Instant::now();
    while (locker.stats().keys != 0 || locker.stats().granted != locker.stats().released)
        && settle.elapsed() < Duration::from_secs(5)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stats = locker.stats();
    let sessions = sessions_named(&client, &app).await;
    let t = std::mem::take(&mut *tally.lock().unwrap());
    let calls = t.completed
        + t.skipped
        + t.wait_timeouts
        + t.cut_acquiring
        + t.cut_in_body
        + t.cut_releasing
        + t.cut_attr
        + t.unexpected.len();
    println!(
        "faults_cancel: {calls} calls by {TASKS} tasks on {KEYS} keys in {:.2} s: {} completed, {} skipped (busy), \
         {} wait timeouts; cut while acquiring {}, in the body {}, while releasing {}, annotated calls cut {}; \
         unexpected {:?}; max bodies of one key at once {}, overlaps {}; left in pg_locks {}, keys in the process {}, \
         sessions {sessions} (opened {}); statements {}, grants {}, released {}",
        took.as_secs_f64(),
        t.completed,
        t.skipped,
        t.wait_timeouts,
        t.cut_acquiring,
        t.cut_in_body,
        t.cut_releasing,
        t.cut_attr,
        t.unexpected,
        inside.max.load(Ordering::SeqCst),
        inside.overlaps.load(Ordering::SeqCst),
        left.len(),
        stats.keys,
        stats.sessions_opened,
        stats.statements,
        stats.granted,
        stats.released,
    );
    assert_eq!(calls, TASKS * CALLS_PER_TASK);
    assert!(t.unexpected.is_empty(), "{:?}", t.unexpected);
    assert_eq!(
        inside.overlaps.load(Ordering::SeqCst),
        0,
        "exclusion violated"
    );
    assert!(inside.max.load(Ordering::SeqCst) <= 1);
    assert!(left.is_empty(), "locks left behind: {left:?}");
    assert_eq!(stats.keys, 0, "keys left in the in-process table");
    assert_eq!(
        stats.granted, stats.released,
        "grants not given back: {stats:?}"
    );
    assert!(sessions <= 2, "{sessions} sessions for a 2-session entry");
    assert!(
        t.cut_acquiring > 0 && t.cut_in_body > 0 && t.cut_releasing > 0,
        "{t:?}"
    );

    // Every key is free again, here and on the server.
    for key in keys.iter() {
        let guard = locker
            .try_lock(key.clone(), Mode::Exclusive)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{key:?} is still busy"));
        guard.release().await.unwrap();
    }
}
