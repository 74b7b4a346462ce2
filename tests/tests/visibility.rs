//! Visibility for operators, against the real server: the key names
//! collected at compile time (`advisory_locked::names`), the locks seen
//! through `advisory_locked::status::held_locks` (holder, waiter, mode, pid,
//! application_name, age), and the `application_name` of lock sessions.

use std::time::Duration;

use advisory_locked::names::{self, KeyKind};
use advisory_locked::status::{self, HeldLock, LockAge};
use advisory_locked::{advisory_locked, key_hash, KeyId, LockConfig, Mode, Outcome};
use advisory_locked_tests::capture::Captured;
use advisory_locked_tests::visibility::{
    backends_with_app_prefix, expected_application_name, wait_for_locks,
};
use advisory_locked_tests::{
    db_url, db_url_with_app, install, named, pg_lock, pg_unlock, raw_connect, sessions_named,
    unique,
};
use tokio_postgres::Client;

/// `key_hash("report:daily")`: these two fns lock one number under two names.
const REPORT_DAILY: i64 = 754907581750802352;

#[allow(dead_code)]
#[advisory_locked(key = "report:daily", pool = "visibility-collide")]
async fn daily_report_by_name() {}

#[allow(dead_code)]
#[advisory_locked(key = 754907581750802352, pool = "visibility-collide")]
async fn daily_report_by_number() {}

const KNOWN_LINE: u32 = line!();
#[allow(dead_code)]
#[advisory_locked(
    key = "advisory-locked-tests:visibility:known",
    pool = "visibility-known",
    shared
)]
async fn known_fn() {}

#[tokio::test(flavor = "current_thread")]
async fn collisions_find_the_two_names_of_one_number_and_install_logs_them() {
    assert_eq!(key_hash("report:daily"), REPORT_DAILY);
    let all = names::collisions();
    let ours: Vec<_> = all
        .iter()
        .filter(|c| c.id == KeyId::Int(REPORT_DAILY))
        .collect();
    assert_eq!(ours.len(), 1, "{all:#?}");
    let keys: Vec<(&str, KeyKind)> = ours[0].keys.iter().map(|k| (k.name(), k.kind())).collect();
    assert_eq!(
        keys,
        [
            ("report:daily", KeyKind::Name),
            ("754907581750802352", KeyKind::Int)
        ]
    );
    assert!(ours[0]
        .keys
        .iter()
        .all(|k| k.file().ends_with("visibility.rs") && k.pool() == "visibility-collide"));
    // Every other key of this file (distinct names) is in no collision.
    for c in &all {
        for k in c
            .keys
            .iter()
            .filter(|k| k.file().ends_with("visibility.rs"))
        {
            assert_eq!(k.id(), Some(KeyId::Int(REPORT_DAILY)), "{c}");
        }
    }
    // The string name wins over the number written as a key.
    assert_eq!(
        names::name_of(KeyId::Int(REPORT_DAILY)),
        Some("report:daily")
    );
    println!("{}", ours[0]);

    // Installing the entry of those fns logs the collision as an error (and
    // succeeds); an entry without colliding fns logs none.
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    install("visibility-collide").await;
    let text = logs.take();
    let errors: Vec<&str> = text.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "{text}");
    assert!(
        errors[0].contains("\"report:daily\"") && errors[0].contains("754907581750802352"),
        "{text}"
    );
    assert!(errors[0].contains("visibility.rs:"), "{text}");
    install(&unique("visibility-no-collision")).await;
    // (A marker of this test shows that the capture still works; the
    // runtime's own info line may be filtered by the callsite cache of
    // another test thread.)
    tracing::error!("visibility test marker");
    let text = logs.take();
    let errors: Vec<&str> = text.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "{text}");
    assert!(errors[0].contains("visibility test marker"), "{text}");
}

#[test]
fn known_lists_a_fn_with_its_file_and_line() {
    let all = names::known();
    let k = all
        .iter()
        .find(|k| k.name() == "advisory-locked-tests:visibility:known")
        .unwrap_or_else(|| panic!("not listed: {all:#?}"));
    assert_eq!(
        k.id(),
        Some(KeyId::Int(key_hash(
            "advisory-locked-tests:visibility:known"
        )))
    );
    assert_eq!(
        (k.kind(), k.pool(), k.mode()),
        (KeyKind::Name, "visibility-known", Mode::Shared)
    );
    assert!(k.file().ends_with("tests/visibility.rs"), "{}", k.file());
    // The line of the fn's name: the attribute spans the 6 lines after the const.
    assert_eq!(k.line(), KNOWN_LINE + 7, "{k}");
    // A template is listed without a number.
    let t = all
        .iter()
        .find(|k| k.name() == "advisory-locked-tests:visibility:shared:{run}")
        .expect("template listed");
    assert_eq!((t.id(), t.kind()), (None, KeyKind::Template));
    println!("{} keys known, e.g. {k}", all.len());
}

const HELD: &str = "advisory-locked-tests:visibility:held";

/// Runs under an exclusive lock and checks, from inside, what `held_locks`
/// says about it and about a waiter.
#[advisory_locked(
    key = "advisory-locked-tests:visibility:held",
    pool = "visibility-held",
    wait = "20s"
)]
async fn hold_and_look(
    config: &LockConfig,
    admin: &Client,
) -> (Vec<HeldLock>, Client, i32, tokio::task::JoinHandle<Client>) {
    let key = named(HELD);
    let app = expected_application_name("visibility-held");
    let held = wait_for_locks(config, key, Duration::from_secs(5), "the held lock", |l| {
        l.iter().any(|l| l.granted)
    })
    .await;
    assert_eq!(held.len(), 1, "{held:#?}");
    let lock = &held[0];
    assert_eq!(lock.name.as_deref(), Some(HELD));
    assert_eq!(lock.mode, Mode::Exclusive);
    assert_eq!(lock.application_name.as_deref(), Some(app.as_str()));
    let sessions: Vec<i32> = backends_with_app_prefix(admin, &app)
        .await
        .into_iter()
        .filter(|(_, a)| *a == app)
        .map(|(pid, _)| pid)
        .collect();
    let pid = lock.pid.expect("a backend holds it");
    assert!(
        sessions.contains(&pid),
        "holder pid {pid} is not a session of the entry: {sessions:?}"
    );
    let at_most = lock.age.at_most().expect("the holder's times are visible");
    assert!(at_most < Duration::from_secs(3600), "{:?}", lock.age);
    assert!(
        matches!(
            lock.age,
            LockAge::Session { .. } | LockAge::InTransaction { .. }
        ),
        "{:?}",
        lock.age
    );

    // A waiter on a plain connection.
    let waiter_app = unique("vis-waiter");
    let waiter = raw_connect(&db_url_with_app(&waiter_app)).await;
    let waiter_pid: i32 = waiter
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let task = tokio::spawn(async move {
        pg_lock(&waiter, key, Mode::Exclusive).await;
        waiter
    });
    let seen = wait_for_locks(config, key, Duration::from_secs(5), "the waiter", |l| {
        l.iter()
            .any(|l| !l.granted && matches!(l.age, LockAge::Waiting { waited: Some(_) }))
    })
    .await;
    let waiting: Vec<&HeldLock> = seen.iter().filter(|l| !l.granted).collect();
    assert_eq!(waiting.len(), 1, "{seen:#?}");
    assert_eq!(waiting[0].pid, Some(waiter_pid));
    assert_eq!(
        waiting[0].application_name.as_deref(),
        Some(waiter_app.as_str())
    );
    assert_eq!(waiting[0].mode, Mode::Exclusive);
    assert_eq!(waiting[0].name.as_deref(), Some(HELD));
    (seen, raw_connect(&db_url()).await, waiter_pid, task)
}

#[tokio::test(flavor = "current_thread")]
async fn held_locks_show_the_holder_of_an_annotated_fn_and_a_waiter() {
    install("visibility-held").await;
    let config = LockConfig::from_url(&db_url()).unwrap();
    let admin = raw_connect(&db_url()).await;
    let (seen, _other, waiter_pid, task) = hold_and_look(&config, &admin).await.unwrap();
    let table = status::format_table(&seen);
    eprintln!("{table}");
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(
        lines[1].contains(HELD) && lines[1].contains("held"),
        "{table}"
    );
    assert!(
        lines[2].contains("waiting") && lines[2].contains(&waiter_pid.to_string()),
        "{table}"
    );
    // Released at the body's end: the waiter gets it.
    let waiter = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the waiter got the lock after the body ended")
        .unwrap();
    let after = wait_for_locks(
        &config,
        named(HELD),
        Duration::from_secs(5),
        "the waiter holding",
        |l| l.len() == 1 && l[0].granted && l[0].pid == Some(waiter_pid),
    )
    .await;
    assert!(matches!(after[0].age, LockAge::Session { .. }), "{after:?}");
    assert!(pg_unlock(&waiter, named(HELD), Mode::Exclusive).await);
}

#[advisory_locked(
    key = "advisory-locked-tests:visibility:shared:{run}",
    pool = "visibility-shared",
    shared
)]
async fn shared_and_look(run: &str, config: &LockConfig) -> Vec<HeldLock> {
    let name = format!("advisory-locked-tests:visibility:shared:{run}");
    let key = named(&name);
    // A second shared holder outside the crate is not blocked.
    let other = raw_connect(&db_url()).await;
    pg_lock(&other, key, Mode::Shared).await;
    let mut seen = wait_for_locks(
        config,
        key,
        Duration::from_secs(5),
        "two shared holders",
        |l| l.len() == 2 && l.iter().all(|l| l.granted),
    )
    .await;
    assert!(pg_unlock(&other, key, Mode::Shared).await);
    // A template's numbers are only known at run time: no name until given.
    assert!(seen.iter().all(|l| l.name.is_none()), "{seen:#?}");
    status::fill_names(&mut seen, &["unrelated", name.as_str()]);
    seen
}

#[tokio::test(flavor = "current_thread")]
async fn held_locks_show_shared_holders_named_at_run_time() {
    install("visibility-shared").await;
    let config = LockConfig::from_url(&db_url()).unwrap();
    let run = unique("run");
    let name = format!("advisory-locked-tests:visibility:shared:{run}");
    let seen = match shared_and_look(&run, &config).await.unwrap() {
        Outcome::Ran(seen) => seen,
        Outcome::Skipped => panic!("a fresh key was busy"),
    };
    assert_eq!(seen.len(), 2);
    let app = expected_application_name("visibility-shared");
    for l in &seen {
        assert_eq!(l.key, KeyId::Int(key_hash(&name)));
        assert_eq!(l.mode, Mode::Shared);
        assert_eq!(l.name.as_deref(), Some(name.as_str()));
    }
    assert_eq!(
        seen.iter()
            .filter(|l| l.application_name.as_deref() == Some(app.as_str()))
            .count(),
        1,
        "{seen:#?}"
    );
    assert_ne!(seen[0].pid, seen[1].pid);
    eprintln!("{}", status::format_table(&seen));
}

#[tokio::test(flavor = "current_thread")]
async fn lock_sessions_are_named_after_their_entry_and_program() {
    let admin = raw_connect(&db_url()).await;

    // The default name.
    let pool = unique("vis-app");
    let locker = LockConfig::from_url(&db_url())
        .unwrap()
        .name(pool.clone())
        .sessions(1)
        .connect()
        .await
        .unwrap();
    let app = expected_application_name(&pool);
    assert!(app.len() <= 63);
    // (The proxy check's probe connections carry the name too, and may
    // still be closing: one or more backends, all with this name.)
    let seen = backends_with_app_prefix(&admin, &format!("advisory-locked:{pool} ")).await;
    assert!(!seen.is_empty());
    assert!(seen.iter().all(|(_, a)| *a == app), "{seen:?} != {app}");
    println!("a lock session is called {:?}", seen[0].1);
    drop(locker);

    // A long entry name: cut to PostgreSQL's 63 bytes, the pid kept.
    let long = format!("{}-{}", unique("vis-long"), "x".repeat(80));
    let locker = LockConfig::from_url(&db_url())
        .unwrap()
        .name(long.clone())
        .sessions(1)
        .connect()
        .await
        .unwrap();
    let seen = backends_with_app_prefix(&admin, &format!("advisory-locked:{}", &long[..20])).await;
    assert!(!seen.is_empty());
    let name = &seen[0].1;
    assert!(name.len() <= 63, "{name}");
    assert!(
        name.ends_with(&format!("[{}]", std::process::id())),
        "{name}"
    );
    drop(locker);

    // An application_name the user set is kept.
    let mine = unique("vis-mine");
    let locker = LockConfig::from_url(&db_url_with_app(&mine))
        .unwrap()
        .name(unique("vis-mine-pool"))
        .sessions(1)
        .connect()
        .await
        .unwrap();
    assert!(sessions_named(&admin, &mine).await >= 1);
    assert!(
        backends_with_app_prefix(&admin, "advisory-locked:vis-mine-pool")
            .await
            .is_empty()
    );
    drop(locker);
}
