//! Concurrency and rate limits across the fleet (issue 6, part A): `N` slots
//! of one name, through the public API (`Slots`, `Locker::try_lock_slot`,
//! `Locker::lock_slot`) and through the attribute's entry points
//! (`__private::run_skip` / `run_wait` with `Spec { limit: Some(..) }`,
//! exactly what `limit = N, per = "…"` expands into).
//!
//! The process tests record every body's entry and exit (this host's clock,
//! shared by its processes) in a table: a recorded interval lies inside the
//! slot's hold, so the most recorded intervals open at once can't be more
//! than the bodies that really ran at once.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use advisory_locked::__private::Wait;
use advisory_locked::{Error, LockConfig, LockKey, Locker, Mode, Outcome, Slots};
use advisory_locked_tests::limits::{
    intervals, limit_spec, max_overlap, max_starts_in_window, min_span_of, Interval,
    SLOT_HOLDS_COLUMNS,
};
use advisory_locked_tests::workers::run_processes;
use advisory_locked_tests::{
    advisory_locks, db_url, install, named, pg_lock, pg_unlock, raw_connect, unique,
    wait_until_unlocked, ScratchTable,
};

const WORKER: &str = env!("CARGO_BIN_EXE_limit_worker");

async fn connect() -> Locker {
    LockConfig::from_url(&db_url())
        .unwrap()
        .sessions(2)
        .connect()
        .await
        .expect("connect")
}

/// A registry entry for one test, with a `'static` name as `Spec` wants.
async fn pool(test: &str) -> &'static str {
    let name: &'static str = Box::leak(unique(test).into_boxed_str());
    install(name).await;
    name
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_are_named_keys_visible_in_pg_locks() {
    let client = raw_connect(&db_url()).await;
    let locker = connect().await;
    let name = unique("limits:keys");
    let slots = Slots::new(LockKey::named(name.clone()), 3).unwrap();
    let ids: Vec<_> = (0..4).map(|i| named(&format!("{name}#{i}"))).collect();

    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(
            locker
                .try_lock_slot(&slots)
                .await
                .unwrap()
                .expect("a free slot"),
        );
    }
    assert!(
        locker.try_lock_slot(&slots).await.unwrap().is_none(),
        "a 4th slot of 3"
    );
    let indexes: BTreeSet<u32> = held.iter().map(|s| s.index()).collect();
    assert_eq!(indexes, BTreeSet::from([0, 1, 2]));
    for s in &held {
        assert_eq!(s.key(), &LockKey::named(format!("{name}#{}", s.index())));
    }
    // The server sees exactly the slots "<name>#0..2", held by the guards' sessions.
    let mut seen: Vec<_> = advisory_locks(&client, &ids)
        .await
        .into_iter()
        .map(|l| (l.key, l.pid, l.granted))
        .collect();
    seen.sort_by_key(|(k, ..)| format!("{k}"));
    let mut want: Vec<_> = held
        .iter()
        .map(|s| {
            (
                named(&format!("{name}#{}", s.index())),
                s.backend_pid(),
                true,
            )
        })
        .collect();
    want.sort_by_key(|(k, ..)| format!("{k}"));
    assert_eq!(seen, want);

    // A released slot is the one taken next.
    let freed = held.remove(1);
    let index = freed.index();
    freed.release().await.unwrap();
    let again = locker
        .try_lock_slot(&slots)
        .await
        .unwrap()
        .expect("the freed slot");
    assert_eq!(again.index(), index);
    drop(again);
    drop(held);
    assert!(wait_until_unlocked(&client, &ids, Duration::from_secs(5))
        .await
        .is_empty());

    // Contenders spread: the first slot tried is random.
    let mut firsts = BTreeSet::new();
    for _ in 0..40 {
        let s = locker
            .try_lock_slot(&slots)
            .await
            .unwrap()
            .expect("all free");
        firsts.insert(s.index());
        s.release().await.unwrap();
    }
    println!("first slots taken over 40 uncontended calls: {firsts:?}");
    assert_eq!(firsts.len(), 3, "random starts reach every slot");

    // Slots held by another session (psql, another process) are skipped over.
    pg_lock(&client, ids[0], Mode::Exclusive).await;
    pg_lock(&client, ids[2], Mode::Exclusive).await;
    for _ in 0..10 {
        let s = locker
            .try_lock_slot(&slots)
            .await
            .unwrap()
            .expect("slot 1 is free");
        assert_eq!(s.index(), 1);
        s.release().await.unwrap();
    }
    assert!(pg_unlock(&client, ids[0], Mode::Exclusive).await);
    assert!(pg_unlock(&client, ids[2], Mode::Exclusive).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_mode_takes_the_first_slot_freed_and_times_out() {
    let client = raw_connect(&db_url()).await;
    let locker = connect().await;
    let name = unique("limits:wait");
    let slots = Slots::new(LockKey::named(name.clone()), 3).unwrap();
    let ids: Vec<_> = (0..3).map(|i| named(&format!("{name}#{i}"))).collect();
    for id in &ids {
        pg_lock(&client, *id, Mode::Exclusive).await;
    }

    let start = Instant::now();
    match locker
        .lock_slot(&slots, Some(Duration::from_millis(300)))
        .await
    {
        Err(Error::WaitTimeout { key, waited }) => {
            assert_eq!(key, name);
            assert!(waited >= Duration::from_millis(300), "{waited:?}");
            println!("all 3 slots busy: WaitTimeout after {waited:?}");
        }
        other => panic!("expected WaitTimeout, got {other:?}"),
    }
    assert!(start.elapsed() < Duration::from_secs(5));

    for round in 0..3u32 {
        let index = (round + 1) % 3;
        let busy_before = locker.stats().busy;
        let wait = {
            let (locker, slots) = (locker.clone(), slots.clone());
            tokio::spawn(async move {
                let slot = locker
                    .lock_slot(&slots, Some(Duration::from_secs(20)))
                    .await;
                (Instant::now(), slot)
            })
        };
        // It tried every slot, and found each busy.
        advisory_locked_tests::until(
            "the waiter tried the 3 slots",
            Duration::from_secs(20),
            || locker.stats().busy - busy_before >= 3,
        )
        .await;
        assert!(
            !wait.is_finished(),
            "round {round}: a slot was granted while all were busy"
        );
        let freed = Instant::now();
        assert!(pg_unlock(&client, ids[index as usize], Mode::Exclusive).await);
        let (got_at, slot) = tokio::time::timeout(Duration::from_secs(20), wait)
            .await
            .expect("the waiter did not get the freed slot")
            .unwrap();
        let slot = slot.expect("lock_slot");
        assert_eq!(
            slot.index(),
            index,
            "the waiter got the slot that was freed"
        );
        // psql's unlock notifies nobody: the waiter's backoff (<= 250 ms) finds it.
        println!(
            "round {round}: slot {index} freed (no notification) -> taken after {:?}",
            got_at - freed
        );
        drop(slot);
        assert!(wait_until_unlocked(
            &client,
            &ids[index as usize..=index as usize],
            Duration::from_secs(5)
        )
        .await
        .is_empty());
        pg_lock(&client, ids[index as usize], Mode::Exclusive).await;
    }
    for id in &ids {
        assert!(pg_unlock(&client, *id, Mode::Exclusive).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_slot_outlives_the_call_for_its_period() {
    let client = raw_connect(&db_url()).await;
    let pool = pool("limits_rate_one").await;
    let name = unique("limits:rate-one");
    let id = named(&format!("{name}#0"));
    let per = Duration::from_millis(600);
    let spec = limit_spec(pool, 1, Some(per));

    let start = Instant::now();
    let out = advisory_locked::__private::run_skip(spec, LockKey::named(name.clone()), async {
        let slot = advisory_locked::current_lock()
            .expect("a lock")
            .key()
            .name()
            .to_owned();
        tokio::time::sleep(Duration::from_millis(20)).await;
        slot
    })
    .await
    .unwrap();
    let returned = start.elapsed();
    assert_eq!(out, Outcome::Ran(format!("{name}#0")));
    assert!(
        returned < per / 2,
        "the call waited for the period: {returned:?}"
    );
    // The slot is still held, so the next call (skip mode) skips.
    let again = advisory_locked::__private::run_skip(spec, LockKey::named(name.clone()), async {})
        .await
        .unwrap();
    assert_eq!(again, Outcome::Skipped);
    assert_eq!(advisory_locks(&client, &[id]).await.len(), 1);
    // And it is freed once the period has passed.
    assert!(wait_until_unlocked(&client, &[id], Duration::from_secs(5))
        .await
        .is_empty());
    let freed = start.elapsed();
    println!(
        "rate slot (per = {per:?}): call returned after {returned:?}, slot freed after ~{freed:?}"
    );
    assert!(
        freed >= per,
        "freed after {freed:?}, before the period {per:?}"
    );
    let third = advisory_locked::__private::run_skip(spec, LockKey::named(name.clone()), async {})
        .await
        .unwrap();
    assert_eq!(third, Outcome::Ran(()));

    // The public API: release() in the rate form waits for the period.
    let locker = connect().await;
    let slots = Slots::new(LockKey::named(unique("limits:rate-api")), 1)
        .unwrap()
        .per(per);
    let taken = Instant::now();
    let slot = locker.try_lock_slot(&slots).await.unwrap().expect("free");
    assert_eq!(slot.held_until(), Some(slot.taken() + per));
    slot.release().await.unwrap();
    assert!(
        taken.elapsed() >= per,
        "released after {:?}",
        taken.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_limits_are_typed_errors() {
    let pool = pool("limits_bad").await;
    let mut spec = limit_spec(pool, 0, None);
    let r =
        advisory_locked::__private::run_skip(spec, LockKey::named(unique("limits:bad")), async {})
            .await;
    assert!(matches!(r, Err(Error::InvalidConfig { .. })), "{r:?}");
    spec = limit_spec(pool, 2, None);
    spec.mode = Mode::Shared;
    let r = advisory_locked::__private::run_wait(
        spec,
        Wait::Forever,
        LockKey::named(unique("limits:bad")),
        async {},
    )
    .await;
    assert!(matches!(r, Err(Error::InvalidConfig { .. })), "{r:?}");
}

/// The public API accepts no limit the attribute rejects at compile time
/// (`limit` in 1..=1024, `per` more than zero and at most 8760h): the same
/// bounds are typed errors at run time, and nothing is locked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_refuses_what_the_attribute_rejects() {
    let locker = connect().await;
    let name = unique("limits:bounds");
    let key = || LockKey::named(name.clone());
    for count in [0, Slots::MAX_COUNT + 1, u32::MAX] {
        match Slots::new(key(), count) {
            Err(Error::InvalidConfig { reason }) => assert!(reason.contains(&name), "{reason}"),
            other => panic!("limit {count}: expected InvalidConfig, got {other:?}"),
        }
    }
    let most = Slots::new(key(), Slots::MAX_COUNT).expect("1024 slots are allowed");
    assert_eq!(most.count(), 1024);
    let two = || Slots::new(key(), 2).unwrap();
    for per in [
        Duration::ZERO,
        Slots::MAX_PERIOD + Duration::from_secs(1),
        Duration::MAX,
    ] {
        let slots = two().per(per);
        let skip = locker.try_lock_slot(&slots).await;
        assert!(
            matches!(skip, Err(Error::InvalidConfig { .. })),
            "per {per:?}: {skip:?}"
        );
        let wait = locker.lock_slot(&slots, Some(Duration::from_secs(1))).await;
        assert!(
            matches!(wait, Err(Error::InvalidConfig { .. })),
            "per {per:?}: {wait:?}"
        );
    }
    // The attribute's entry points, with values the macro would refuse.
    let pool = pool("limits_bounds").await;
    for (slots, per) in [(1025, None), (2, Some(Duration::ZERO))] {
        let spec = limit_spec(pool, slots, per);
        let r = advisory_locked::__private::run_skip(spec, key(), async {}).await;
        assert!(
            matches!(r, Err(Error::InvalidConfig { .. })),
            "{slots} {per:?}: {r:?}"
        );
    }
    // Nothing was taken; the longest period is accepted.
    let client = raw_connect(&db_url()).await;
    let ids: Vec<_> = (0..2).map(|i| two().slot_key(i).id()).collect();
    assert!(advisory_locks(&client, &ids).await.is_empty());
    let slot = locker
        .try_lock_slot(&two().per(Slots::MAX_PERIOD))
        .await
        .unwrap()
        .expect("a free slot");
    assert_eq!(slot.held_until(), Some(slot.taken() + Slots::MAX_PERIOD));
    // (Kept by a background task until this test's runtime ends.)
    drop(slot);
}

// ---- across processes ------------------------------------------------------

struct Run {
    intervals: Vec<Interval>,
    ran: usize,
    skipped: usize,
    elapsed: Duration,
}

/// Runs `processes` limit workers on one key; returns what their bodies recorded.
#[allow(clippy::too_many_arguments)]
async fn run_workers(
    test: &str,
    processes: usize,
    tasks: usize,
    rounds: usize,
    slots: u32,
    per: Option<Duration>,
    wait: Option<Duration>,
    hold: Duration,
) -> (String, Run) {
    let url = db_url();
    let client = raw_connect(&url).await;
    let table = ScratchTable::create(&client, test, SLOT_HOLDS_COLUMNS).await;
    let key = unique(&format!("limits:{test}"));
    let start = Instant::now();
    let args = vec![
        url.clone(),
        table.name.clone(),
        key.clone(),
        slots.to_string(),
        per.map_or(0, |p| p.as_millis()).to_string(),
        wait.map_or(0, |w| w.as_millis()).to_string(),
        tasks.to_string(),
        rounds.to_string(),
        hold.as_millis().to_string(),
    ];
    let outputs = run_processes(WORKER, vec![args; processes], Duration::from_secs(120)).await;
    let (mut ran, mut skipped) = (0, 0);
    for stdout in outputs {
        let w: Vec<usize> = stdout
            .split_whitespace()
            .filter_map(|s| s.parse().ok())
            .collect();
        assert_eq!(w.len(), 2, "worker said {stdout:?}");
        ran += w[0];
        skipped += w[1];
    }
    let run = Run {
        intervals: intervals(&client, &table.name).await,
        ran,
        skipped,
        elapsed: start.elapsed(),
    };
    (key, run)
}

fn slot_names(key: &str, run: &Run) -> BTreeSet<String> {
    let names: BTreeSet<String> = run.intervals.iter().map(|i| i.slot.clone()).collect();
    for n in &names {
        let index = n
            .strip_prefix(&format!("{key}#"))
            .and_then(|i| i.parse::<u32>().ok());
        assert!(
            index.is_some(),
            "a body ran under {n:?}, not a slot of {key:?}"
        );
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_n_bodies_at_once_across_processes_skip_mode() {
    let (processes, tasks, rounds, n) = (3, 2, 40, 3);
    let (key, run) = run_workers(
        "lim_skip",
        processes,
        tasks,
        rounds,
        n,
        None,
        None,
        Duration::from_millis(20),
    )
    .await;
    let max = max_overlap(&run.intervals);
    let slots = slot_names(&key, &run);
    println!(
        "skip mode, limit {n}: {processes} processes x {tasks} tasks x {rounds} rounds in {:?}: ran {}, skipped {}, max bodies at once {max}, slots used {}",
        run.elapsed, run.ran, run.skipped, slots.len()
    );
    assert_eq!(run.ran + run.skipped, processes * tasks * rounds);
    assert_eq!(run.intervals.len(), run.ran, "every body recorded itself");
    assert_eq!(
        max, n as usize,
        "the most bodies at once must be the limit: reached, never exceeded"
    );
    assert!(
        run.skipped > 0,
        "6 contenders for 3 slots must skip sometimes"
    );
    assert_eq!(slots.len(), n as usize, "every slot was used");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_n_bodies_at_once_across_processes_wait_mode() {
    let (processes, tasks, rounds, n) = (3, 2, 12, 2);
    let (key, run) = run_workers(
        "lim_wait",
        processes,
        tasks,
        rounds,
        n,
        None,
        Some(Duration::from_secs(60)),
        Duration::from_millis(20),
    )
    .await;
    let max = max_overlap(&run.intervals);
    let slots = slot_names(&key, &run);
    let busy: i64 = run.intervals.iter().map(|i| i.exited - i.entered).sum();
    let span = run.intervals.iter().map(|i| i.exited).max().unwrap_or(0)
        - run.intervals.iter().map(|i| i.entered).min().unwrap_or(0);
    println!(
        "wait mode, limit {n}: {processes} processes x {tasks} tasks x {rounds} rounds in {:?}: ran {}, max bodies at once {max}, slots busy {:.0} % of the span",
        run.elapsed,
        run.ran,
        100.0 * busy as f64 / (n as f64 * span.max(1) as f64),
    );
    assert_eq!(
        run.ran,
        processes * tasks * rounds,
        "wait mode runs every round"
    );
    assert_eq!(run.skipped, 0);
    assert_eq!(run.intervals.len(), run.ran);
    assert_eq!(
        max, n as usize,
        "the most bodies at once must be the limit: reached, never exceeded"
    );
    assert_eq!(slots.len(), n as usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_across_processes() {
    let (processes, tasks, rounds, n) = (3, 2, 4, 2u32);
    let per = Duration::from_millis(400);
    let (key, run) = run_workers(
        "lim_rate",
        processes,
        tasks,
        rounds,
        n,
        Some(per),
        Some(Duration::from_secs(60)),
        Duration::from_millis(10),
    )
    .await;
    let count = run.intervals.len();
    assert_eq!(count, processes * tasks * rounds);
    assert_eq!(run.ran, count);
    slot_names(&key, &run);
    // The entry stamp is taken a moment after the slot (whose period starts
    // when it is taken): allow that moment.
    let slack = Duration::from_millis(20);
    let min_span = min_span_of(&run.intervals, n as usize).expect("enough starts");
    let max_in_window = max_starts_in_window(&run.intervals, per - slack);
    let first = run.intervals.iter().map(|i| i.entered).min().unwrap();
    let last = run.intervals.iter().map(|i| i.entered).max().unwrap();
    // n starts at the beginning, then n per period.
    let achieved = (count - n as usize) as f64 / ((last - first) as f64 / 1e6);
    let target = n as f64 / per.as_secs_f64();
    println!(
        "rate limit {n} per {per:?}: {count} starts from {processes} processes x {tasks} tasks in {:?}; \
         shortest span of {} consecutive starts {min_span:?}; most starts in a window of {:?}: {max_in_window}; \
         achieved {achieved:.2}/s for a limit of {target:.2}/s ({:.0} %)",
        run.elapsed,
        n + 1,
        per - slack,
        100.0 * achieved / target
    );
    assert!(
        max_in_window <= n as usize,
        "more than {n} starts within {per:?}"
    );
    assert!(
        min_span + slack >= per,
        "{} starts within {min_span:?}",
        n + 1
    );
    assert!(
        achieved <= target * 1.05,
        "faster than the limit: {achieved:.2}/s"
    );
    assert!(
        achieved >= target * 0.5,
        "waiting contenders should keep the rate near the limit: {achieved:.2}/s of {target:.2}/s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_slot_stops_the_body() {
    let client = raw_connect(&db_url()).await;
    let pool = pool("limits_lost").await;
    let name = unique("limits:lost");
    let ids: Vec<_> = (0..2).map(|i| named(&format!("{name}#{i}"))).collect();
    let spec = limit_spec(pool, 2, Some(Duration::from_secs(30)));
    let (entered_tx, entered_rx) = tokio::sync::oneshot::channel();
    let call = tokio::spawn(advisory_locked::__private::run_skip(
        spec,
        LockKey::named(name.clone()),
        async move {
            let _ = entered_tx.send(());
            tokio::time::sleep(Duration::from_secs(30)).await;
        },
    ));
    entered_rx.await.expect("the body ran");
    let held = advisory_locks(&client, &ids).await;
    assert_eq!(held.len(), 1, "{held:?}");
    let cut = Instant::now();
    assert!(advisory_locked_tests::terminate_backend(&client, held[0].pid).await);
    let result = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("the body was not stopped")
        .unwrap();
    println!(
        "slot's session terminated -> body stopped after {:?}",
        cut.elapsed()
    );
    match result {
        Err(Error::LockLost { key }) => assert!(key.starts_with(&format!("{name}#")), "{key}"),
        other => panic!("expected LockLost, got {other:?}"),
    }
    // The server freed the slot with the session: the rate form can't keep
    // it. (The backend may still be exiting when the client sees its FATAL
    // message: polled, bounded.)
    let left = wait_until_unlocked(&client, &ids, Duration::from_secs(5)).await;
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_slot_outlives_the_call_until_its_process_dies() {
    let url = db_url();
    let client = raw_connect(&url).await;
    let table = ScratchTable::create(&client, "lim_rate_kill", SLOT_HOLDS_COLUMNS).await;
    let key = unique("limits:rate-kill");
    let id = named(&format!("{key}#0"));
    // One call, rate form with a 60 s period: the worker then waits for the
    // period before exiting (so that the slot is not freed early).
    let mut child = tokio::process::Command::new(WORKER)
        .args([
            url.as_str(),
            table.name.as_str(),
            key.as_str(),
            "1",
            "60000",
            "0",
            "1",
            "1",
            "10",
        ])
        .kill_on_drop(true)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("cannot start the worker");
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(child.stdout.take().unwrap()));
    let said =
        advisory_locked_tests::next_line(&mut lines, "ran 1 skipped 0", Duration::from_secs(20))
            .await;
    assert_eq!(said, "ran 1 skipped 0");
    // The call has returned; the slot is still held by the worker's session.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let held = advisory_locks(&client, &[id]).await;
    assert_eq!(
        held.len(),
        1,
        "the rate slot was released before its period: {held:?}"
    );
    let killed = Instant::now();
    child.start_kill().expect("SIGKILL");
    let _ = child.wait().await;
    // The documented non-guarantee: a dead process's slots are freed at once.
    assert!(wait_until_unlocked(&client, &[id], Duration::from_secs(10))
        .await
        .is_empty());
    println!(
        "rate slot (per 60 s) freed {:?} after its process was killed",
        killed.elapsed()
    );
    assert_eq!(intervals(&client, &table.name).await.len(), 1);
}
