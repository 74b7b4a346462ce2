//! Failures are values (docs/design.md, invariant 4): not configured, twice
//! configured, a bad URL, an unknown database, an unreachable server, a
//! server that never answers, and a hot standby are each a typed `Error`,
//! returned within a bounded time, and no message repeats the password.

use std::time::{Duration, Instant};

use advisory_locked::{advisory_locked, Error, LockConfig, Outcome};
use advisory_locked_tests::{db_url, free_port, raw_connect, unique, ThrowawayServer};

const PASSWORD: &str = "s3cret";

/// The error and its causes, as an error reporter prints them (anyhow's
/// `{:#}`): each text of the `source()` chain, joined by ": ".
fn report(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        next = cause.source();
    }
    text
}

fn assert_no_password(e: &Error) {
    let (display, debug) = (report(e), format!("{e:?}"));
    assert!(
        !display.contains(PASSWORD),
        "Display leaks the password: {display}"
    );
    assert!(
        !debug.contains(PASSWORD),
        "Debug leaks the password: {debug}"
    );
}

/// `url` with user and password `s3cret` and database `db`.
fn with_password(db: &str) -> String {
    let url = db_url();
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(&url);
    let host = rest.split_once('@').map(|(_, h)| h).unwrap_or(rest);
    let host = host.split(['/', '?']).next().unwrap();
    format!("postgres://postgres:{PASSWORD}@{host}/{db}")
}

// The only test in this file that uses the default entry.
#[advisory_locked(key = "{k}")]
async fn default_entry(k: &str) -> u8 {
    1
}

#[tokio::test]
async fn the_default_entry_is_not_configured_until_configure() {
    let k = unique("errors:default");
    match default_entry(&k).await {
        Err(Error::NotConfigured { pool }) => assert_eq!(pool, advisory_locked::DEFAULT_POOL),
        other => panic!("expected NotConfigured, got {other:?}"),
    }
    let e = advisory_locked::locker("default").unwrap_err();
    assert!(matches!(e, Error::NotConfigured { .. }));
    assert!(
        e.to_string().contains("configure"),
        "the message says what to do: {e}"
    );
    assert!(!e.is_transient());

    if std::env::var("DATABASE_URL").is_ok() {
        advisory_locked::configure_from_env()
            .await
            .expect("configure_from_env");
    } else {
        let e = advisory_locked::configure_from_env().await.unwrap_err();
        assert!(matches!(e, Error::InvalidConfig { .. }), "{e:?}");
        assert!(matches!(
            default_entry(&k).await,
            Err(Error::NotConfigured { .. })
        ));
        advisory_locked::configure(&db_url())
            .await
            .expect("configure");
    }
    assert_eq!(default_entry(&k).await.unwrap(), Outcome::Ran(1));
    match advisory_locked::configure(&db_url()).await {
        Err(Error::AlreadyConfigured { pool }) => assert_eq!(pool, "default"),
        other => panic!("expected AlreadyConfigured, got {other:?}"),
    }
    assert_eq!(
        default_entry(&k).await.unwrap(),
        Outcome::Ran(1),
        "the first entry still works"
    );
}

#[tokio::test]
async fn a_bad_url_is_invalid_config_and_never_shows_the_password() {
    let bad = [
        format!("postgres://alice:{PASSWORD}@127.0.0.1:notaport/db"),
        format!("postgres://alice:{PASSWORD}@127.0.0.1:99999999/db"),
        format!("postgres://alice:{PASSWORD}@127.0.0.1/db?sslmode=bogus"),
        format!("postgres://alice:{PASSWORD}@127.0.0.1/db?no_such_option=1"),
        format!("host=127.0.0.1 password={PASSWORD} port=abc"),
        format!("host=127.0.0.1 password='{PASSWORD}"),
        format!("host=127.0.0.1 password={PASSWORD} connect_timeout=soon"),
    ];
    for url in &bad {
        match LockConfig::from_url(url) {
            Err(e @ Error::InvalidConfig { .. }) => {
                assert_no_password(&e);
                assert!(!e.is_transient());
                println!("{e}");
            }
            Err(e) => panic!("{url}: expected InvalidConfig, got {e:?}"),
            Ok(cfg) => panic!("{url}: parsed: {cfg:?}"),
        }
        assert!(matches!(
            advisory_locked::configure(url).await,
            Err(Error::InvalidConfig { .. })
        ));
    }

    // A good URL with a password: the config's Debug doesn't show it either.
    let cfg = LockConfig::from_url(&with_password("postgres")).unwrap();
    assert!(!format!("{cfg:?}").contains(PASSWORD), "{cfg:?}");

    // Invalid settings are InvalidConfig too, before any connection.
    let base = || LockConfig::from_url(&db_url()).unwrap();
    for (what, cfg) in [
        ("sessions(0)", base().sessions(0)),
        ("connect_timeout(0)", base().connect_timeout(Duration::ZERO)),
        ("name(\"\")", base().name("")),
    ] {
        let e = cfg.connect().await.unwrap_err();
        assert!(matches!(e, Error::InvalidConfig { .. }), "{what}: {e:?}");
    }
}

#[tokio::test]
async fn an_unknown_database_or_role_is_a_connect_error() {
    let db = unique("no_such_db");
    let start = Instant::now();
    let e = LockConfig::from_url(&with_password(&db))
        .unwrap()
        .connect()
        .await
        .unwrap_err();
    println!("unknown database after {:?}: {e}", start.elapsed());
    match &e {
        Error::Connect { target, .. } => assert!(target.ends_with(&format!("/{db}")), "{target}"),
        other => panic!("expected Connect, got {other:?}"),
    }
    assert_no_password(&e);
    // The server's own reason is in the error, not just "db error": as the
    // cause (the source), in one shape with its SQLSTATE.
    let server = e.server_error().expect("the server's error");
    assert_eq!(server.code().code(), "3D000", "{e:?}");
    assert!(server.message().contains("does not exist"), "{server}");
    assert!(report(&e).contains("does not exist"), "{}", report(&e));
    assert!(e.is_transient());
    assert!(start.elapsed() < Duration::from_secs(5));

    let url = db_url();
    let (scheme_less, _) = url
        .split_once("://")
        .map(|(_, r)| (r, ()))
        .unwrap_or((&url, ()));
    let host = scheme_less
        .split_once('@')
        .map(|(_, h)| h)
        .unwrap_or(scheme_less);
    let role_url = format!(
        "postgres://no_such_role_{}:{PASSWORD}@{host}",
        std::process::id()
    );
    let e = LockConfig::from_url(&role_url)
        .unwrap()
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Connect { .. }), "{e:?}");
    assert_no_password(&e);

    // install() fails the same way and installs nothing.
    let name = unique("errors-unknown-db");
    let e = LockConfig::from_url(&with_password(&db))
        .unwrap()
        .name(name.clone())
        .install()
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Connect { .. }), "{e:?}");
    assert!(matches!(
        advisory_locked::locker(&name),
        Err(Error::NotConfigured { .. })
    ));
}

#[tokio::test]
async fn an_unreachable_server_fails_fast() {
    let port = free_port();
    let start = Instant::now();
    let e = LockConfig::from_url(&format!(
        "postgres://postgres:{PASSWORD}@127.0.0.1:{port}/postgres"
    ))
    .unwrap()
    .connect_timeout(Duration::from_secs(10))
    .connect()
    .await
    .unwrap_err();
    let took = start.elapsed();
    println!("refused after {took:?}: {e}");
    match &e {
        Error::Connect { target, .. } => assert_eq!(target, &format!("127.0.0.1:{port}/postgres")),
        other => panic!("expected Connect, got {other:?}"),
    }
    assert_no_password(&e);
    assert!(
        took < Duration::from_secs(2),
        "a refused connection took {took:?}"
    );
}

#[tokio::test]
async fn a_server_that_never_answers_is_a_connect_timeout() {
    // Accepts connections and never says a word.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hole = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let url = format!("postgres://postgres:{PASSWORD}@127.0.0.1:{port}/postgres");
    let limit = Duration::from_millis(300);

    let start = Instant::now();
    let e = LockConfig::from_url(&url)
        .unwrap()
        .connect_timeout(limit)
        .connect()
        .await
        .unwrap_err();
    let took = start.elapsed();
    println!("blackhole: {e} after {took:?}");
    match &e {
        Error::ConnectTimeout { after, target } => {
            assert_eq!(*after, limit);
            assert_eq!(target, &format!("127.0.0.1:{port}/postgres"));
        }
        other => panic!("expected ConnectTimeout, got {other:?}"),
    }
    assert!(took >= limit, "gave up before the timeout: {took:?}");
    assert!(
        took < Duration::from_secs(3),
        "connect timeout not honoured: {took:?}"
    );
    assert_no_password(&e);
    assert!(e.is_transient());

    // install() too, and nothing is installed.
    let name = unique("errors-blackhole");
    let start = Instant::now();
    let e = LockConfig::from_url(&url)
        .unwrap()
        .name(name.clone())
        .connect_timeout(limit)
        .install()
        .await
        .unwrap_err();
    assert!(matches!(e, Error::ConnectTimeout { .. }), "{e:?}");
    assert!(start.elapsed() < Duration::from_secs(3));
    assert!(matches!(
        advisory_locked::locker(&name),
        Err(Error::NotConfigured { .. })
    ));
    hole.abort();
}

#[tokio::test]
async fn a_hot_standby_is_refused() {
    let start = Instant::now();
    let (primary, standby) = tokio::task::spawn_blocking(|| {
        let primary = ThrowawayServer::start();
        let standby = ThrowawayServer::standby_of(&primary);
        (primary, standby)
    })
    .await
    .expect("cannot start a primary and a standby");
    println!("primary and standby up in {:?}", start.elapsed());

    // The standby really is one.
    let raw = raw_connect(&standby.url("postgres")).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let in_recovery: bool = raw
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .unwrap()
            .get(0);
        if in_recovery {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the standby never reported recovery"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let e = LockConfig::from_url(&standby.url("postgres"))
        .unwrap()
        .connect()
        .await
        .unwrap_err();
    println!("{e}");
    match &e {
        Error::Standby { target } => {
            assert_eq!(target, &format!("127.0.0.1:{}/postgres", standby.port()))
        }
        other => panic!("expected Standby, got {other:?}"),
    }
    assert!(!e.is_transient());
    let name = unique("errors-standby");
    let e = LockConfig::from_url(&standby.url("postgres"))
        .unwrap()
        .name(name.clone())
        .install()
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Standby { .. }), "{e:?}");
    assert!(matches!(
        advisory_locked::locker(&name),
        Err(Error::NotConfigured { .. })
    ));

    // The refused attempts left no connection open on the standby.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n: i64 = raw
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE starts_with(application_name, 'advisory-locked:')",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if n == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{n} refused sessions still open on the standby"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The primary is accepted.
    let locker = LockConfig::from_url(&primary.url("postgres"))
        .unwrap()
        .connect()
        .await
        .expect("primary");
    let guard = locker
        .try_lock(
            advisory_locked::LockKey::named("standby-test"),
            advisory_locked::Mode::Exclusive,
        )
        .await
        .unwrap();
    assert!(guard.is_some());
    drop(raw);
    drop(standby);
    drop(primary);
}

/// A connection string that names no server (an empty `DATABASE_URL`, a
/// URL without a host) is `InvalidConfig` when it is read, not a `Connect`
/// error at the first connection naming a target that was never tried.
#[tokio::test]
async fn a_url_naming_no_server_is_invalid_config() {
    for url in ["", "postgres://", "postgres:///postgres", "user=postgres"] {
        match LockConfig::from_url(url) {
            Err(e @ Error::InvalidConfig { .. }) => {
                assert!(e.to_string().contains("names no server"), "{url:?}: {e}");
                assert!(!e.is_transient());
            }
            other => panic!("{url:?}: expected InvalidConfig, got {other:?}"),
        }
        let e = advisory_locked::configure(url).await.unwrap_err();
        assert!(matches!(e, Error::InvalidConfig { .. }), "{url:?}: {e:?}");
    }
    // A driver configuration without a host, given directly.
    let e = LockConfig::new(tokio_postgres::Config::new())
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(e, Error::InvalidConfig { .. }), "{e:?}");
    // A Unix socket directory is a server: accepted when read.
    LockConfig::from_url("host=/var/run/postgresql user=postgres").expect("a socket dir");
}

/// `from_env` with `DATABASE_URL` set but empty: run in a child process of
/// this test binary (the variable is process-wide), which runs the ignored
/// test below.
#[test]
fn an_empty_database_url_is_invalid_config() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "from_env_in_a_child_with_an_empty_url"])
        .args(["--ignored", "--nocapture", "--test-threads=1"])
        .env("DATABASE_URL", "")
        .output()
        .expect("cannot run the test binary");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("1 passed"),
        "the child test did not run: {text}"
    );
    assert!(
        text.contains("DATABASE_URL environment variable is empty"),
        "{text}"
    );
}

#[test]
#[ignore = "run by an_empty_database_url_is_invalid_config, with DATABASE_URL empty"]
fn from_env_in_a_child_with_an_empty_url() {
    assert_eq!(std::env::var("DATABASE_URL").as_deref(), Ok(""));
    match LockConfig::from_env() {
        Err(e @ Error::InvalidConfig { .. }) => println!("{e}"),
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
}

/// `Display` says what failed, the cause is the `source()`: an error
/// reporter that prints the chain shows the server's reason once.
#[tokio::test]
async fn display_leaves_the_cause_to_the_source_chain() {
    let e = LockConfig::from_url(&with_password(&unique("no_such_db")))
        .unwrap()
        .connect()
        .await
        .unwrap_err();
    let (display, chain) = (e.to_string(), report(&e));
    assert!(matches!(e, Error::Connect { .. }), "{e:?}");
    assert!(
        display.starts_with("advisory-locked: cannot connect to ") && !display.contains("exist"),
        "Display repeats the cause: {display}"
    );
    assert!(std::error::Error::source(&e).is_some());
    assert_eq!(chain.matches("does not exist").count(), 1, "{chain}");
}

/// Every field of a server error, in one shape, from the driver's error
/// (the crate's own protocol path is tested on bytes in `pg/protocol.rs`).
#[tokio::test]
async fn server_errors_carry_detail_hint_and_position() {
    use advisory_locked::QueryError;
    let client = raw_connect(&db_url()).await;
    let e = client
        .simple_query("SELECT no_such_function_here()")
        .await
        .unwrap_err();
    let q = QueryError::from(&e);
    let server = q.as_server_error().expect("a server error");
    assert_eq!(server.code().code(), "42883");
    assert_eq!(server.severity(), "ERROR");
    assert!(
        server
            .hint()
            .is_some_and(|h| h.contains("No function matches")),
        "{server:?}"
    );
    assert_eq!(server.position(), Some(8));
    let text = server.to_string();
    assert!(
        text.starts_with(
            "ERROR: function no_such_function_here() does not exist (SQLSTATE 42883); HINT: "
        ),
        "{text}"
    );
    let table = "errors_detail"; // (a temporary table: this session's own)
    client
        .batch_execute(&format!(
            "CREATE TEMP TABLE {table} (k int PRIMARY KEY); INSERT INTO {table} VALUES (1)"
        ))
        .await
        .unwrap();
    let e = client
        .batch_execute(&format!("INSERT INTO {table} VALUES (1)"))
        .await
        .unwrap_err();
    let dup = QueryError::from(&e);
    let dup = dup.as_server_error().unwrap();
    assert_eq!(dup.code().code(), "23505");
    assert_eq!(dup.detail(), Some("Key (k)=(1) already exists."), "{dup:?}");
    assert!(
        dup.to_string()
            .contains("; DETAIL: Key (k)=(1) already exists."),
        "{dup}"
    );
}
