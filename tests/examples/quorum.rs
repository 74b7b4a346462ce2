//! A lock over three independent PostgreSQL servers: held when a majority
//! (two of three) granted it, so it survives one server going down.
//!
//! ```text
//! cargo run -p advisory-locked-tests --example quorum
//! ```
//!
//! Advisory locks of one server coordinate nothing with another server. A
//! quorum registry entry ([`QuorumConfig`]) asks every member at once and
//! keeps a lock that a majority granted. The example starts three throwaway
//! servers from the installed PostgreSQL binaries (it needs them even when
//! a server answers on 127.0.0.1:5432), then:
//!
//! 1. installs the quorum as registry entry `"fleet"` and runs an annotated
//!    fn on it, `#[advisory_locked(key = "billing:close-month", pool = "fleet")]`;
//! 2. while the body runs, a second locker on the same three servers (a
//!    replica elsewhere) tries the key: busy; the example shows which
//!    servers' `pg_locks` hold it;
//! 3. still in the body, one server is stopped (`pg_ctl stop -m immediate`):
//!    the lock stands on the other two, the second locker still finds it
//!    busy, and the body finishes normally;
//! 4. after the body, the second locker waits for the key and takes it with
//!    two of three;
//! 5. a second server is stopped: with one of three left no majority can
//!    answer, and a lock call fails closed with `Error::QuorumUnavailable`
//!    instead of granting a lock nobody else would see.
//!
//! Each step is checked; the servers are stopped and deleted at exit.

use std::sync::Mutex;
use std::time::Duration;

use advisory_locked::{
    advisory_locked, key_hash, Error, LockKey, Locker, Mode, Outcome, QuorumConfig,
};
use advisory_locked_tests::demo::{check, start_throwaway_servers, DemoError};
use advisory_locked_tests::ThrowawayServer;

const KEY: &str = "billing:close-month";

/// The three servers, for the body to stop one of them.
static SERVERS: Mutex<Vec<ThrowawayServer>> = Mutex::new(Vec::new());

/// On the quorum entry "fleet": runs when a majority granted the key.
#[advisory_locked(key = "billing:close-month", pool = "fleet")]
async fn close_month(other: &Locker, urls: &[String]) -> Result<(), DemoError> {
    println!(
        "2. the body runs; the key is held on {:?}",
        holders(urls).await
    );
    let busy = other
        .try_lock(LockKey::named(KEY), Mode::Exclusive)
        .await?
        .is_none();
    println!(
        "   a second locker on the same servers: {}",
        if busy { "busy" } else { "GOT IT" }
    );
    check(busy, "the second locker finds the key busy")?;

    println!("3. stopping server 3 (immediate) while the body runs ...");
    stop(2).await?;
    let busy = other
        .try_lock(LockKey::named(KEY), Mode::Exclusive)
        .await?
        .is_none();
    let still = advisory_locked::current_lock().is_some_and(|l| l.is_held());
    println!(
        "   the lock is still held: {still}; the second locker finds it {}",
        if busy { "busy" } else { "FREE" }
    );
    check(still && busy, "the lock stands on two of three servers")?;
    Ok(())
}

/// Stops server `i` (0-based), blocking a thread of the pool meanwhile.
async fn stop(i: usize) -> Result<(), DemoError> {
    tokio::task::spawn_blocking(move || {
        let mut servers = SERVERS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = servers.get_mut(i) {
            s.stop("immediate");
        }
    })
    .await?;
    Ok(())
}

/// Which servers (1-based) hold `KEY`, from their `pg_locks`; down ones are skipped.
async fn holders(urls: &[String]) -> Vec<usize> {
    let id = key_hash(KEY);
    let mut out = Vec::new();
    for (i, url) in urls.iter().enumerate() {
        let Ok((client, conn)) = tokio_postgres::connect(url, tokio_postgres::NoTls).await else {
            continue;
        };
        tokio::spawn(conn);
        let held: Option<i64> = client
            .query_one(
                "SELECT count(*) FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND granted \
                 AND objsubid = 1 AND ((classid::int8 << 32) | objid::int8) = $1",
                &[&id],
            )
            .await
            .ok()
            .map(|r| r.get(0));
        if held.unwrap_or(0) > 0 {
            out.push(i + 1);
        }
    }
    out
}

async fn run() -> Result<(), DemoError> {
    let servers = start_throwaway_servers(3)?;
    let urls: Vec<String> = servers.iter().map(|s| s.url("postgres")).collect();
    *SERVERS.lock().unwrap_or_else(|e| e.into_inner()) = servers;
    println!("1. a quorum over {urls:?}");
    QuorumConfig::from_urls(&urls)?
        .name("fleet")
        .install()
        .await?;
    let other = QuorumConfig::from_urls(&urls)?
        .name("replica-b")
        .connect()
        .await?;

    match close_month(&other, &urls).await? {
        Outcome::Ran(body) => body?,
        Outcome::Skipped => return Err("the key was busy at the start".into()),
    }

    // Wait mode: the body's unlocks go out as its call returns, so a try
    // at this very moment may still find the key busy.
    let guard = other
        .lock(
            LockKey::named(KEY),
            Mode::Exclusive,
            Some(Duration::from_secs(10)),
        )
        .await;
    println!(
        "4. after the body, the second locker waits for the key and {}; held on {:?}",
        if guard.is_ok() {
            "takes it"
        } else {
            "CANNOT TAKE IT"
        },
        holders(&urls).await
    );
    check(
        guard.is_ok(),
        "the second locker takes the key with two of three",
    )?;
    drop(guard);

    println!("5. stopping server 2 too ...");
    stop(1).await?;
    let again = tokio::time::timeout(
        Duration::from_secs(30),
        other.try_lock(LockKey::named("billing:another"), Mode::Exclusive),
    )
    .await?;
    match &again {
        Err(e @ Error::QuorumUnavailable { .. }) => println!("   fails closed: {e}"),
        other => println!("   unexpected: {other:?}"),
    }
    check(
        matches!(again, Err(Error::QuorumUnavailable { .. })),
        "with one server of three a lock call fails with QuorumUnavailable",
    )?;
    println!("the quorum held through one server's loss and failed closed without a majority");
    Ok(())
}

#[tokio::main]
async fn main() {
    let result = run().await;
    // Stop and delete the servers before exiting (exit skips destructors).
    drop(std::mem::take(
        &mut *SERVERS.lock().unwrap_or_else(|e| e.into_inner()),
    ));
    if let Err(e) = result {
        eprintln!("quorum: {e}");
        std::process::exit(1);
    }
}
