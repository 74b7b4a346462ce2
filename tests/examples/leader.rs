//! A background loop that only the leader of the fleet runs, with a
//! handover when the leader goes away (here: a rolling restart).
//!
//! ```text
//! cargo run -p advisory-locked-tests --example leader
//! ```
//!
//! Three replicas, each with its own [`Locker`] (its own sessions to the
//! server, as three processes would have), campaign for the key
//! `sweeper:leader` with [`Campaign`]. The leader runs the sweep loop, a
//! `tokio::time::interval` of 200 ms, for three sweeps, then resigns as a
//! replica does when it is shut down for a deploy; a follower takes over
//! within the retry interval (100 ms here, [`Campaign::retry_interval`]).
//! A leader that *loses* its lock instead (its session ended) sees
//! [`Leadership::Follower`] on its watch channel and stops sweeping at once,
//! which the loop below handles too.
//!
//! The example prints each term and sweep, and checks that every replica
//! led once, that terms never overlapped, and that nine sweeps ran.
//!
//! The database: `DATABASE_URL`, else postgres://postgres@127.0.0.1:5432/postgres,
//! else a throwaway server started from the installed PostgreSQL binaries
//! (`advisory_locked_tests::demo`).
//!
//! [`Locker`]: advisory_locked::Locker
//! [`Campaign`]: advisory_locked::Campaign
//! [`Campaign::retry_interval`]: advisory_locked::Campaign::retry_interval
//! [`Leadership::Follower`]: advisory_locked::Leadership::Follower

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use advisory_locked::{Campaign, Leadership, LockConfig, LockKey, Locker};
use advisory_locked_tests::demo::{check, describe, find_or_start_server, DemoError};

const REPLICAS: usize = 3;
const SWEEPS_PER_TERM: usize = 3;

/// What the replicas share, to check the example's claims.
#[derive(Default)]
struct Tally {
    leading: AtomicUsize,
    most_leading: AtomicUsize,
    sweeps: AtomicUsize,
}

/// One replica: campaign, sweep while leading, resign after a few sweeps.
async fn replica(
    id: usize,
    locker: Locker,
    tally: Arc<Tally>,
    t0: Instant,
) -> Result<(), DemoError> {
    let leader = Campaign::new(LockKey::named("sweeper:leader"))
        .retry_interval(Duration::from_millis(100))
        .start(&locker);
    let mut state = leader.watch();
    state.wait_for(|s| s.is_leader()).await?;
    let now = tally.leading.fetch_add(1, Ordering::SeqCst) + 1;
    tally.most_leading.fetch_max(now, Ordering::SeqCst);
    if let Leadership::Leader {
        backend_pid, term, ..
    } = leader.state()
    {
        println!(
            "  {:>5} ms  replica {id} leads (term {term}, lock held by backend pid {backend_pid})",
            t0.elapsed().as_millis()
        );
    }

    let mut sweeps = tokio::time::interval(Duration::from_millis(200));
    for n in 1..=SWEEPS_PER_TERM {
        tokio::select! {
            // Lost the lock (session ended): stop leading at once.
            _ = state.wait_for(|s| !s.is_leader()) => {
                println!("  replica {id} lost leadership; stops sweeping");
                break;
            }
            _ = sweeps.tick() => {
                // The leader-only work, e.g. deleting expired sessions.
                tally.sweeps.fetch_add(1, Ordering::SeqCst);
                println!("  {:>5} ms  replica {id} sweep {n}", t0.elapsed().as_millis());
            }
        }
    }
    // Shut down for a deploy: step down first (so that two replicas never
    // both think they lead), then hand the key over.
    tally.leading.fetch_sub(1, Ordering::SeqCst);
    println!("  {:>5} ms  replica {id} resigns", t0.elapsed().as_millis());
    leader.resign().await?;
    Ok(())
}

async fn run() -> Result<(), DemoError> {
    let (url, _server) = find_or_start_server().await?;
    println!(
        "{REPLICAS} replicas campaign for \"sweeper:leader\"; database {}",
        describe(&url)
    );
    let tally = Arc::new(Tally::default());
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for id in 1..=REPLICAS {
        // Its own registry entry and sessions, as a separate process has.
        let locker = LockConfig::from_url(&url)?
            .name(format!("replica-{id}"))
            .connect()
            .await?;
        tasks.push(tokio::spawn(replica(id, locker, tally.clone(), t0)));
    }
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(60), task).await???;
    }
    let sweeps = tally.sweeps.load(Ordering::SeqCst);
    let most = tally.most_leading.load(Ordering::SeqCst);
    println!(
        "{sweeps} sweeps in {} ms, at most {most} leader at a time",
        t0.elapsed().as_millis()
    );
    check(most == 1, "at most one leader at a time")?;
    check(
        sweeps == REPLICAS * SWEEPS_PER_TERM,
        "every replica led for its three sweeps",
    )?;
    Ok(())
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("leader: {e}");
        std::process::exit(1);
    }
}
