//! Locks do not cross servers or databases (docs/design.md: the lock space is per
//! database): the same key is granted at the same time on two independent
//! servers, and on two databases of one server. This backs the README's
//! statement that every participant must use the same database.

use std::time::Duration;

use advisory_locked::{advisory_locked, KeyId, LockConfig, LockKey, Mode, Outcome};
use advisory_locked_tests::{
    advisory_locks, db_url, named, raw_connect, unique, wait_until_unlocked, AdvisoryLock,
    TempDatabase, ThrowawayServer,
};
use tokio_postgres::Client;

/// What each side's `pg_locks` showed for the key while both held it.
#[derive(Debug)]
struct Seen {
    main: Vec<AdvisoryLock>,
    throwaway: Vec<AdvisoryLock>,
    /// `pg_try_advisory_lock` from another session of the throwaway server.
    throwaway_try_from_other_session: bool,
}

#[advisory_locked(key = "{key}", pool = "indep_main")]
async fn on_main(key: &str, main: &Client, throwaway: &Client) -> Outcome<Seen> {
    on_throwaway(key, main, throwaway)
        .await
        .expect("throwaway entry")
}

#[advisory_locked(key = "{key}", pool = "indep_throwaway")]
async fn on_throwaway(key: &str, main: &Client, throwaway: &Client) -> Seen {
    let id = named(key);
    let try_other: bool = throwaway
        .query_one(
            "SELECT pg_try_advisory_lock($1::int8)",
            &[&match id {
                KeyId::Int(k) => k,
                KeyId::Pair(..) => unreachable!(),
            }],
        )
        .await
        .unwrap()
        .get(0);
    Seen {
        main: advisory_locks(main, &[id]).await,
        throwaway: advisory_locks(throwaway, &[id]).await,
        throwaway_try_from_other_session: try_other,
    }
}

/// The control: the same entry twice must exclude (so the check above could fail).
#[advisory_locked(key = "{key}", pool = "indep_main")]
async fn on_main_twice(key: &str) -> Outcome<()> {
    on_main_again(key).await.unwrap()
}

#[advisory_locked(key = "{key}", pool = "indep_main")]
async fn on_main_again(key: &str) {}

#[tokio::test]
async fn the_same_key_is_granted_on_two_independent_servers_at_once() {
    let throwaway = tokio::task::spawn_blocking(ThrowawayServer::start)
        .await
        .expect("cannot start a throwaway server");
    LockConfig::from_url(&db_url())
        .unwrap()
        .name("indep_main")
        .install()
        .await
        .unwrap();
    LockConfig::from_url(&throwaway.url("postgres"))
        .unwrap()
        .name("indep_throwaway")
        .install()
        .await
        .unwrap();
    let main = raw_connect(&db_url()).await;
    let other = raw_connect(&throwaway.url("postgres")).await;
    let key = unique("indep:servers");

    let seen = on_main(&key, &main, &other)
        .await
        .unwrap()
        .ran()
        .expect("free on main");
    let seen = seen
        .ran()
        .expect("granted on the throwaway server while held on main");
    println!("{seen:?}");
    assert_eq!(seen.main.len(), 1, "main server: {:?}", seen.main);
    assert!(seen.main[0].granted);
    assert_eq!(
        seen.throwaway.len(),
        1,
        "throwaway server: {:?}",
        seen.throwaway
    );
    assert!(seen.throwaway[0].granted);
    assert!(
        !seen.throwaway_try_from_other_session,
        "the throwaway server's lock is real: another of its sessions can't take it"
    );

    // Control: on one server the same key excludes.
    assert_eq!(
        on_main_twice(&key).await.unwrap(),
        Outcome::Ran(Outcome::Skipped)
    );

    let left = wait_until_unlocked(&main, &[named(&key)], Duration::from_secs(5)).await;
    assert!(left.is_empty(), "{left:?}");
    drop(other);
    drop(throwaway);
}

#[tokio::test]
async fn the_same_key_is_granted_on_two_databases_of_one_server() {
    let main = raw_connect(&db_url()).await;
    let db = TempDatabase::create(&main, "advisory_locked_tmp").await;
    let other = raw_connect(&db.url()).await;

    let here = LockConfig::from_url(&db_url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let there = LockConfig::from_url(&db.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let key = LockKey::named(unique("indep:databases"));

    let a = here
        .try_lock(key.clone(), Mode::Exclusive)
        .await
        .unwrap()
        .expect("free here");
    let b = there.try_lock(key.clone(), Mode::Exclusive).await.unwrap();
    let b = b.expect("the same key must be granted in another database of the same server");
    let in_main = advisory_locks(&main, &[key.id()]).await;
    let in_other = advisory_locks(&other, &[key.id()]).await;
    assert_eq!(in_main.len(), 1, "{in_main:?}");
    assert_eq!(in_other.len(), 1, "{in_other:?}");
    assert_eq!(in_main[0].pid, a.backend_pid());
    assert_eq!(in_other[0].pid, b.backend_pid());

    // Control: a second locker on the same database is refused.
    let here_too = LockConfig::from_url(&db_url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    assert!(here_too
        .try_lock(key.clone(), Mode::Exclusive)
        .await
        .unwrap()
        .is_none());

    a.release().await.unwrap();
    b.release().await.unwrap();
    drop((here, there, here_too, other));
    let left = wait_until_unlocked(&main, &[key.id()], Duration::from_secs(5)).await;
    assert!(left.is_empty(), "{left:?}");
}
