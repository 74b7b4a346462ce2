//! What the attribute's options do, against a real server: skip and wait
//! modes, wait timeouts, shared and exclusive mode, pair / integer /
//! template keys, named registry entries, and the kinds of functions it
//! accepts (methods, trait impls, generic fns, `?` in the body).
//!
//! "Another holder" is either a plain tokio-postgres connection (another
//! session, as another process would be), another registry entry (its own
//! sessions), or another task of this process on the same entry.

use std::fmt::Display;
use std::num::ParseIntError;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use advisory_locked::{advisory_locked, Error, KeyId, LockConfig, Mode, Outcome};
use advisory_locked_tests::{
    advisory_locks, db_url, install, named, pg_lock, pg_unlock, raw_connect, unique,
    wait_until_locked, wait_until_unlocked,
};
use tokio::sync::{Barrier, Notify};

const SETTLE: Duration = Duration::from_secs(5);

// ---- skip ---------------------------------------------------------------------

#[advisory_locked(key = "skip:{k}", pool = "modes_skip")]
async fn skip_fn(k: &str, ran: &AtomicBool) -> u32 {
    ran.store(true, Ordering::SeqCst);
    7
}

#[advisory_locked(key = "skip:{k}", pool = "modes_skip")]
async fn skip_holder(k: &str) -> (Outcome<u32>, bool) {
    // The key is held by this call: a second call of this process must skip.
    let ran = AtomicBool::new(false);
    let inner = skip_fn(k, &ran).await.expect("lock machinery");
    (inner, ran.load(Ordering::SeqCst))
}

#[tokio::test]
async fn skip_mode_skips_a_key_busy_in_this_process() {
    install("modes_skip").await;
    let k = unique("skip-local");
    let (inner, inner_ran) = skip_holder(&k)
        .await
        .expect("lock machinery")
        .ran()
        .expect("free key runs");
    assert_eq!(
        inner,
        Outcome::Skipped,
        "a key held by this process must be skipped"
    );
    assert!(!inner_ran, "a skipped body must not run");
    // Free again afterwards.
    let ran = AtomicBool::new(false);
    assert_eq!(skip_fn(&k, &ran).await.unwrap(), Outcome::Ran(7));
    assert!(ran.load(Ordering::SeqCst));
}

#[tokio::test]
async fn skip_mode_skips_a_key_held_by_another_connection() {
    install("modes_skip_other").await;
    #[advisory_locked(key = "skip:{k}", pool = "modes_skip_other")]
    async fn f(k: &str, ran: &AtomicBool) {
        ran.store(true, Ordering::SeqCst);
    }

    let url = db_url();
    let other = raw_connect(&url).await;
    let k = unique("skip-other");
    let id = named(&format!("skip:{k}"));
    pg_lock(&other, id, Mode::Exclusive).await;

    let ran = AtomicBool::new(false);
    for _ in 0..3 {
        assert_eq!(f(&k, &ran).await.unwrap(), Outcome::Skipped);
    }
    assert!(
        !ran.load(Ordering::SeqCst),
        "the body ran while another session held the key"
    );

    assert!(pg_unlock(&other, id, Mode::Exclusive).await);
    assert_eq!(f(&k, &ran).await.unwrap(), Outcome::Ran(()));
    assert!(ran.load(Ordering::SeqCst));
    let left = wait_until_unlocked(&other, &[id], SETTLE).await;
    assert!(left.is_empty(), "{left:?}");
}

// ---- wait ---------------------------------------------------------------------

#[advisory_locked(key = "wait:{k}", wait = "20s", pool = "modes_wait")]
async fn wait_fn(k: &str, ran: &AtomicBool) -> Instant {
    ran.store(true, Ordering::SeqCst);
    Instant::now()
}

#[advisory_locked(key = "wait:{k}", wait = "300ms", pool = "modes_wait")]
async fn wait_short(k: &str, ran: &AtomicBool) {
    ran.store(true, Ordering::SeqCst);
}

#[advisory_locked(key = "wait:{k}", wait, pool = "modes_wait")]
async fn wait_forever(k: &str) -> &'static str {
    "ran"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_mode_waits_until_another_connection_releases() {
    install("modes_wait").await;
    let other = raw_connect(&db_url()).await;
    let k = unique("wait-release");
    let id = named(&format!("wait:{k}"));
    pg_lock(&other, id, Mode::Exclusive).await;

    let ran = Arc::new(AtomicBool::new(false));
    let entry = advisory_locked::locker("modes_wait").unwrap();
    let busy_before = entry.stats().busy;
    let call = {
        let (k, ran) = (k.clone(), ran.clone());
        tokio::spawn(async move { wait_fn(&k, &ran).await })
    };
    // It tried, found the key held, and waits (on the server or polling).
    advisory_locked_tests::until(
        "the waiter found the key held",
        Duration::from_secs(20),
        || entry.stats().busy > busy_before,
    )
    .await;
    assert!(
        !ran.load(Ordering::SeqCst),
        "the body ran while another session held the key"
    );
    assert!(!call.is_finished());

    let released = Instant::now();
    assert!(pg_unlock(&other, id, Mode::Exclusive).await);
    let entered = tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .expect("the waiter did not run within 5 s of the release")
        .unwrap()
        .expect("lock machinery");
    assert!(ran.load(Ordering::SeqCst));
    println!(
        "waiter ran {:?} after the release",
        entered.duration_since(released)
    );

    // `wait` without a limit, on a free key.
    assert_eq!(wait_forever(&k).await.unwrap(), "ran");
    let left = wait_until_unlocked(&other, &[id], SETTLE).await;
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn wait_mode_times_out_with_a_typed_error() {
    install("modes_wait_timeout").await;
    #[advisory_locked(key = "wait:{k}", wait = "300ms", pool = "modes_wait_timeout")]
    async fn f(k: &str, ran: &AtomicBool) {
        ran.store(true, Ordering::SeqCst);
    }

    let other = raw_connect(&db_url()).await;
    let k = unique("wait-timeout");
    let id = named(&format!("wait:{k}"));
    pg_lock(&other, id, Mode::Exclusive).await;

    let ran = AtomicBool::new(false);
    let start = Instant::now();
    let err = f(&k, &ran)
        .await
        .expect_err("must time out while the key is held");
    let took = start.elapsed();
    println!("wait timeout after {took:?}: {err}");
    match &err {
        Error::WaitTimeout { key, waited } => {
            assert_eq!(key, &format!("wait:{k}"));
            assert!(*waited >= Duration::from_millis(300), "{waited:?}");
        }
        other => panic!("expected WaitTimeout, got {other:?}"),
    }
    assert!(
        took >= Duration::from_millis(300),
        "gave up early: {took:?}"
    );
    assert!(took < Duration::from_secs(3), "gave up late: {took:?}");
    assert!(!ran.load(Ordering::SeqCst));
    assert!(err.is_transient());

    // A waiter in this process behind a holder of this process times out too.
    assert!(pg_unlock(&other, id, Mode::Exclusive).await);
    #[advisory_locked(key = "wait:{k}", pool = "modes_wait_timeout")]
    async fn holder(k: &str) -> Result<(), Error> {
        let ran = AtomicBool::new(false);
        let start = Instant::now();
        let r = f(k, &ran).await;
        assert!(start.elapsed() < Duration::from_secs(3));
        assert!(!ran.load(Ordering::SeqCst));
        r
    }
    let inner = holder(&k).await.unwrap().ran().expect("free key");
    assert!(matches!(inner, Err(Error::WaitTimeout { .. })), "{inner:?}");
    // And after all that the key is free.
    f(&k, &ran).await.expect("free key");
    assert!(ran.load(Ordering::SeqCst));
}

// ---- shared and exclusive ---------------------------------------------------------

#[advisory_locked(key = "rw:{k}", pool = "modes_rw_a", shared)]
async fn read_a(k: &str) -> usize {
    // While this shared lock is held: how many sessions hold the key shared?
    let client = raw_connect(&db_url()).await;
    let held = advisory_locks(&client, &[named(&format!("rw:{k}"))]).await;
    held.iter()
        .filter(|l| l.granted && l.mode == "ShareLock")
        .count()
}

#[advisory_locked(key = "rw:{k}", pool = "modes_rw_a")]
async fn write_a(k: &str) {}

#[advisory_locked(key = "rw:{k}", pool = "modes_rw_b", shared)]
async fn read_b_then(k: &str, then: Then) -> Outcome<usize> {
    match then {
        Then::ReadA => read_a(k).await.unwrap(),
        Then::WriteA => write_a(k).await.unwrap().map(|()| 0),
    }
}

#[advisory_locked(key = "rw:{k}", pool = "modes_rw_b")]
async fn write_b_then_read_a(k: &str) -> Outcome<usize> {
    read_a(k).await.unwrap()
}

#[derive(Clone, Copy)]
enum Then {
    ReadA,
    WriteA,
}

#[tokio::test]
async fn shared_holders_coexist_and_exclude_exclusive_ones() {
    // Two registry entries = two sets of sessions, as two processes would have.
    install("modes_rw_a").await;
    install("modes_rw_b").await;
    let other = raw_connect(&db_url()).await;
    let k = unique("rw");
    let id = named(&format!("rw:{k}"));

    // Shared (entry b) + shared (entry a): both run; pg_locks shows two shared holders.
    let r = read_b_then(&k, Then::ReadA).await.unwrap();
    assert_eq!(
        r,
        Outcome::Ran(Outcome::Ran(2)),
        "two shared holders must coexist"
    );
    // Shared (b) then exclusive (a): skipped.
    let r = read_b_then(&k, Then::WriteA).await.unwrap();
    assert_eq!(
        r,
        Outcome::Ran(Outcome::Skipped),
        "exclusive must skip while shared is held"
    );
    // Exclusive (b) then shared (a): skipped.
    let r = write_b_then_read_a(&k).await.unwrap();
    assert_eq!(
        r,
        Outcome::Ran(Outcome::Skipped),
        "shared must skip while exclusive is held"
    );

    // Against a plain connection holding it shared: shared runs, exclusive skips.
    pg_lock(&other, id, Mode::Shared).await;
    assert_eq!(read_a(&k).await.unwrap(), Outcome::Ran(2));
    assert_eq!(write_a(&k).await.unwrap(), Outcome::Skipped);
    assert!(pg_unlock(&other, id, Mode::Shared).await);
    // ... and holding it exclusive: shared skips too.
    pg_lock(&other, id, Mode::Exclusive).await;
    assert_eq!(read_a(&k).await.unwrap(), Outcome::Skipped);
    assert!(pg_unlock(&other, id, Mode::Exclusive).await);
    assert_eq!(write_a(&k).await.unwrap(), Outcome::Ran(()));
    let left = wait_until_unlocked(&other, &[id], SETTLE).await;
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_holders_of_one_process_run_together() {
    install("modes_rw_local").await;
    #[advisory_locked(key = "rw:{k}", pool = "modes_rw_local", shared)]
    async fn read(k: &str, barrier: &Barrier) {
        // Both readers must be inside at once to pass the barrier.
        barrier.wait().await;
    }
    #[advisory_locked(key = "rw:{k}", pool = "modes_rw_local")]
    async fn write(k: &str) {}
    #[advisory_locked(key = "rw:{k}", pool = "modes_rw_local", shared)]
    async fn read_then_write(k: &str) -> Outcome<()> {
        write(k).await.unwrap()
    }

    let k = unique("rw-local");
    let barrier = Barrier::new(2);
    let both = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(read(&k, &barrier), read(&k, &barrier))
    })
    .await
    .expect("two shared holders of one process did not run together");
    assert_eq!(both.0.unwrap(), Outcome::Ran(()));
    assert_eq!(both.1.unwrap(), Outcome::Ran(()));
    assert_eq!(
        read_then_write(&k).await.unwrap(),
        Outcome::Ran(Outcome::Skipped)
    );
    assert_eq!(write(&k).await.unwrap(), Outcome::Ran(()));
}

// ---- pair and integer keys --------------------------------------------------------

#[advisory_locked(key = (918_273, 645_546), pool = "modes_pair")]
async fn pair_fn(ran: &AtomicBool) {
    ran.store(true, Ordering::SeqCst);
}

#[advisory_locked(key = 645_546, pool = "modes_pair")]
async fn int_fn(ran: &AtomicBool) {
    ran.store(true, Ordering::SeqCst);
}

#[advisory_locked(key = -918_273_645_546, wait = "200ms", pool = "modes_pair")]
async fn negative_int_fn() {}

#[tokio::test]
async fn pair_and_integer_keys_lock_their_own_key_spaces() {
    install("modes_pair").await;
    let other = raw_connect(&db_url()).await;
    let pair = KeyId::Pair(918_273, 645_546);
    let int = KeyId::Int(645_546);

    pg_lock(&other, pair, Mode::Exclusive).await;
    let ran = AtomicBool::new(false);
    assert_eq!(pair_fn(&ran).await.unwrap(), Outcome::Skipped);
    assert!(!ran.load(Ordering::SeqCst));
    // The int key with the same number is another lock.
    assert_eq!(int_fn(&ran).await.unwrap(), Outcome::Ran(()));
    assert!(ran.load(Ordering::SeqCst));
    assert!(pg_unlock(&other, pair, Mode::Exclusive).await);

    pg_lock(&other, int, Mode::Exclusive).await;
    let ran = AtomicBool::new(false);
    assert_eq!(int_fn(&ran).await.unwrap(), Outcome::Skipped);
    assert_eq!(pair_fn(&ran).await.unwrap(), Outcome::Ran(()));
    assert!(pg_unlock(&other, int, Mode::Exclusive).await);

    let neg = KeyId::Int(-918_273_645_546);
    pg_lock(&other, neg, Mode::Exclusive).await;
    assert!(matches!(
        negative_int_fn().await,
        Err(Error::WaitTimeout { .. })
    ));
    assert!(pg_unlock(&other, neg, Mode::Exclusive).await);
    negative_int_fn().await.expect("free");

    let left = wait_until_unlocked(&other, &[pair, int, neg], SETTLE).await;
    assert!(left.is_empty(), "{left:?}");
}

// ---- template keys ------------------------------------------------------------

#[advisory_locked(key = "tenant:{tenant}", wait = "10s", pool = "modes_tenant")]
async fn rebuild(tenant: &str, barrier: &Barrier, inside: &AtomicUsize) -> usize {
    let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
    barrier.wait().await;
    inside.fetch_sub(1, Ordering::SeqCst);
    now
}

#[advisory_locked(key = "tenant:{tenant}", pool = "modes_tenant")]
async fn rebuild_skip(tenant: &str, held: &Notify, go: &Notify) {
    held.notify_one();
    go.notified().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_keys_lock_per_argument_value() {
    install("modes_tenant").await;
    let run = unique("tenant");
    let (t1, t2) = (format!("{run}-1"), format!("{run}-2"));

    // Different tenants run at once: each body waits for the other at a barrier.
    let barrier = Barrier::new(2);
    let inside = AtomicUsize::new(0);
    let (a, b) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(
            rebuild(&t1, &barrier, &inside),
            rebuild(&t2, &barrier, &inside)
        )
    })
    .await
    .expect("bodies of two different tenants did not run at the same time");
    assert_eq!(a.unwrap().max(b.unwrap()), 2);

    // The same tenant excludes: while one call holds it, another skips.
    let (held, go) = (Notify::new(), Notify::new());
    let client = raw_connect(&db_url()).await;
    let (first, second) = tokio::join!(rebuild_skip(&t1, &held, &go), async {
        held.notified().await;
        let locks = advisory_locks(&client, &[named(&format!("tenant:{t1}"))]).await;
        let skipped = rebuild_skip(&t1, &Notify::new(), &Notify::new()).await;
        let other_tenant = tokio::time::timeout(Duration::from_secs(5), async {
            let (h, g) = (Notify::new(), Notify::new());
            g.notify_one();
            rebuild_skip(&t2, &h, &g).await
        })
        .await;
        go.notify_one();
        (locks, skipped, other_tenant)
    });
    assert_eq!(first.unwrap(), Outcome::Ran(()));
    let (locks, skipped, other_tenant) = second;
    assert_eq!(
        locks.len(),
        1,
        "the held template key shows in pg_locks: {locks:?}"
    );
    assert_eq!(
        skipped.unwrap(),
        Outcome::Skipped,
        "the same tenant must skip"
    );
    assert_eq!(
        other_tenant.expect("other tenant hung").unwrap(),
        Outcome::Ran(())
    );
}

// ---- registry entries -----------------------------------------------------------

#[advisory_locked(key = "entry:{k}", pool = "modes_never_configured")]
async fn unconfigured(k: &str, ran: &AtomicBool) {
    ran.store(true, Ordering::SeqCst);
}

#[advisory_locked(key = "entry:{k}", wait = "1s", pool = "modes_never_configured")]
async fn unconfigured_wait(k: &str) {}

#[tokio::test]
async fn registry_entries_are_typed_errors_when_missing_or_doubled() {
    let ran = AtomicBool::new(false);
    let k = unique("entry");
    match unconfigured(&k, &ran).await {
        Err(Error::NotConfigured { pool }) => assert_eq!(pool, "modes_never_configured"),
        other => panic!("expected NotConfigured, got {other:?}"),
    }
    assert!(matches!(
        unconfigured_wait(&k).await,
        Err(Error::NotConfigured { .. })
    ));
    assert!(!ran.load(Ordering::SeqCst));
    assert!(matches!(
        advisory_locked::locker("modes_never_configured"),
        Err(Error::NotConfigured { .. })
    ));

    let name = unique("modes-entry");
    let first = install(&name).await;
    assert_eq!(first.name(), name);
    let again = LockConfig::from_url(&db_url())
        .unwrap()
        .name(name.clone())
        .install()
        .await;
    match again {
        Err(Error::AlreadyConfigured { pool }) => assert_eq!(pool, name),
        other => panic!("expected AlreadyConfigured, got {other:?}"),
    }
    // The first entry is untouched.
    assert_eq!(advisory_locked::locker(&name).unwrap().name(), name);
}

// ---- methods, trait impls, generic fns, `?` in the body --------------------------

struct Job {
    id: String,
    runs: u32,
}

impl Job {
    #[advisory_locked(key = "job:{self.id}", pool = "modes_methods")]
    async fn describe(&self) -> String {
        format!("job {}", self.id)
    }

    #[advisory_locked(key = "job:{self.id}", wait = "5s", pool = "modes_methods")]
    async fn run(&mut self) -> u32 {
        self.runs += 1;
        self.runs
    }
}

trait Task {
    async fn execute(&self, input: u32) -> Result<Outcome<u32>, Error>;
}

impl Task for Job {
    #[advisory_locked(key = "task:{self.id}", pool = "modes_methods")]
    async fn execute(&self, input: u32) -> u32 {
        input * 2
    }
}

#[advisory_locked(key = "generic:{item}", pool = "modes_methods")]
async fn generic<T: Display + Send + Sync>(item: T) -> String {
    format!("<{item}>")
}

#[advisory_locked(key = "parse:{k}", pool = "modes_methods")]
async fn parse_double(k: &str, s: &str) -> Result<i64, ParseIntError> {
    let n: i64 = s.parse()?;
    Ok(n * 2)
}

#[tokio::test]
async fn methods_trait_impls_and_generic_fns_are_locked() {
    install("modes_methods").await;
    let other = raw_connect(&db_url()).await;
    let id = unique("job");
    let mut job = Job {
        id: id.clone(),
        runs: 0,
    };

    assert_eq!(
        job.describe().await.unwrap(),
        Outcome::Ran(format!("job {id}"))
    );
    assert_eq!(job.run().await.unwrap(), 1);
    assert_eq!(job.run().await.unwrap(), 2);
    assert_eq!(job.execute(21).await.unwrap(), Outcome::Ran(42));
    assert_eq!(
        generic(id.clone()).await.unwrap(),
        Outcome::Ran(format!("<{id}>"))
    );
    assert_eq!(
        generic(17u8).await.unwrap(),
        Outcome::Ran("<17>".to_owned())
    );
    assert_eq!(parse_double(&id, "4").await.unwrap(), Outcome::Ran(Ok(8)));
    assert!(matches!(
        parse_double(&id, "four").await,
        Ok(Outcome::Ran(Err(_)))
    ));

    // The keys really come from the fields and arguments: held elsewhere, they skip or wait.
    let job_key = named(&format!("job:{id}"));
    let task_key = named(&format!("task:{id}"));
    let generic_key = named(&format!("generic:{id}"));
    pg_lock(&other, job_key, Mode::Exclusive).await;
    pg_lock(&other, task_key, Mode::Exclusive).await;
    pg_lock(&other, generic_key, Mode::Exclusive).await;
    assert_eq!(job.describe().await.unwrap(), Outcome::Skipped);
    assert_eq!(job.execute(1).await.unwrap(), Outcome::Skipped);
    assert_eq!(generic(id.clone()).await.unwrap(), Outcome::Skipped);
    let waiting = {
        let start = Instant::now();
        let unlock = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert!(pg_unlock(&other, job_key, Mode::Exclusive).await);
        };
        let (runs, ()) = tokio::join!(job.run(), unlock);
        assert!(start.elapsed() >= Duration::from_millis(200));
        runs
    };
    assert_eq!(
        waiting.unwrap(),
        3,
        "&mut self method ran after the release"
    );
    assert!(pg_unlock(&other, task_key, Mode::Exclusive).await);
    assert!(pg_unlock(&other, generic_key, Mode::Exclusive).await);
    let left = wait_until_unlocked(&other, &[job_key, task_key, generic_key], SETTLE).await;
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn body_errors_pass_through_as_ran_and_release_the_lock() {
    install("modes_body_err").await;
    #[advisory_locked(key = "parse:{k}", pool = "modes_body_err")]
    async fn parse(k: &str, s: &str) -> Result<i64, ParseIntError> {
        let n: i64 = s.parse()?;
        Ok(n * 2)
    }
    let client = raw_connect(&db_url()).await;
    let k = unique("parse");
    match parse(&k, "x").await {
        Ok(Outcome::Ran(Err(e))) => assert_eq!(e, "x".parse::<i64>().unwrap_err()),
        other => panic!("expected Ok(Ran(Err(_))), got {other:?}"),
    }
    let left = wait_until_unlocked(&client, &[named(&format!("parse:{k}"))], SETTLE).await;
    assert!(
        left.is_empty(),
        "the lock outlived a body that failed: {left:?}"
    );
    assert_eq!(parse(&k, "21").await.unwrap(), Outcome::Ran(Ok(42)));
}

// ---- the lock is visible to the server while the body runs -------------------------

#[tokio::test]
async fn the_body_runs_while_the_server_shows_the_lock() {
    install("modes_visible").await;
    #[advisory_locked(key = "visible:{k}", pool = "modes_visible")]
    async fn f(k: &str) -> Vec<advisory_locked_tests::AdvisoryLock> {
        let client = raw_connect(&db_url()).await;
        wait_until_locked(
            &client,
            &[named(&format!("visible:{k}"))],
            Duration::from_millis(1),
        )
        .await
    }
    let k = unique("visible");
    let seen = f(&k).await.unwrap().ran().expect("free key");
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(
        seen[0].granted && seen[0].mode == "ExclusiveLock",
        "{seen:?}"
    );
}
