//! Password authentication: wrong credentials are a typed error, and a
//! password never shows in `Debug`, `Display`, errors or tracing output.

use std::time::Duration;

use advisory_locked::{Error, LockConfig, LockKey, Mode};
use advisory_locked_tests::capture::Captured;
use advisory_locked_tests::{raw_connect, unique, ThrowawayServer};

const GOOD: &str = "gOOd-s3cret-pw";
const BAD: &str = "wr0ng-s3cret-pw";

/// A throwaway server where role `locker` needs a password (SCRAM) on TCP.
async fn password_server() -> ThrowawayServer {
    let server = ThrowawayServer::start();
    let admin = raw_connect(&server.url("postgres")).await;
    admin
        .batch_execute(&format!(
            "SET password_encryption = 'scram-sha-256'; CREATE ROLE locker LOGIN PASSWORD '{GOOD}'"
        ))
        .await
        .unwrap();
    // postgres stays trusted for the test's own admin connection.
    let hba = "host all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n";
    std::fs::write(server.data_dir().join("pg_hba.conf"), hba).unwrap();
    let load_time = "SELECT pg_conf_load_time()::text";
    let loaded: String = admin.query_one(load_time, &[]).await.unwrap().get(0);
    let reloaded: bool = admin
        .query_one("SELECT pg_reload_conf()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(reloaded);
    // New connections use the new pg_hba.conf once the postmaster has
    // reloaded: then a new connection's configuration is newer.
    let start = std::time::Instant::now();
    loop {
        let fresh = raw_connect(&server.url("postgres")).await;
        let now: String = fresh.query_one(load_time, &[]).await.unwrap().get(0);
        if now != loaded {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the server never reloaded its configuration"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server
}

fn url(server: &ThrowawayServer, password: &str) -> String {
    format!(
        "postgres://locker:{password}@127.0.0.1:{}/postgres",
        server.port()
    )
}

#[tokio::test(flavor = "current_thread")]
async fn wrong_credentials_are_typed_and_no_password_leaks_anywhere() {
    let server = password_server().await;
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    // The right password works.
    let config = LockConfig::from_url(&url(&server, GOOD)).unwrap();
    let shown = format!("{config:?}");
    assert!(!shown.contains(GOOD), "{shown}");
    let locker = config.connect().await.expect("the right password");
    let g = locker
        .try_lock(LockKey::named(unique("cred")), Mode::Exclusive)
        .await
        .unwrap()
        .expect("free");
    assert!(!format!("{g:?} {locker:?}").contains(GOOD));
    g.release().await.unwrap();

    // A wrong one is a typed Connect error with the server's reason.
    let e = LockConfig::from_url(&url(&server, BAD))
        .unwrap()
        .connect()
        .await
        .unwrap_err();
    println!("wrong password: {e}");
    assert!(matches!(e, Error::Connect { .. }), "{e:?}");
    // The server's reason is the cause (the source), in one shape.
    let refused = e.server_error().expect("the server's error");
    assert_eq!(refused.code().code(), "28P01", "{e:?}");
    let mut chain = e.to_string();
    let mut next = std::error::Error::source(&e);
    while let Some(cause) = next {
        chain = format!("{chain}: {cause}");
        next = cause.source();
    }
    assert!(chain.contains("password authentication failed"), "{chain}");
    for text in [chain, format!("{e:?}"), format!("{e:#?}")] {
        assert!(!text.contains(BAD) && !text.contains(GOOD), "{text}");
    }
    // Also through install() and a registry lookup afterwards.
    let name = unique("cred-pool");
    let e = LockConfig::from_url(&url(&server, BAD))
        .unwrap()
        .name(name.clone())
        .install()
        .await
        .unwrap_err();
    assert!(!format!("{e} {e:?}").contains(BAD));
    assert!(matches!(
        advisory_locked::locker(&name),
        Err(Error::NotConfigured { .. })
    ));

    let logs = logs.text();
    assert!(
        logs.contains("advisory-locked"),
        "nothing was logged, so the check below proves nothing:\n{logs}"
    );
    assert!(
        !logs.contains(GOOD) && !logs.contains(BAD),
        "a password in the logs:\n{logs}"
    );
    println!("{} bytes of tracing output, no password in it", logs.len());
}
