//! TLS with rustls (feature `tls-rustls`): a throwaway server that accepts
//! only TLS connections on TCP, with certificates this test makes with the
//! `openssl` command line. Locks work over TLS; an untrusted certificate, no
//! TLS at all, or `sslmode=disable` are typed errors.
#![cfg(feature = "tls-rustls")]

use std::time::Duration;

use advisory_locked::{Error, LockConfig, LockKey, Mode};
use advisory_locked_tests::{
    advisory_locks, unique, wait_until_unlocked, TestCertificates, TlsServer,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_work_over_tls() {
    let certs = TestCertificates::make();
    let tls = TlsServer::start(&certs, "server.crt", "server.key");
    let local = tls.local_client().await;
    let ca = certs.pem("ca.crt");

    // sslmode=require, trusting the authority that signed the server's certificate.
    let a = LockConfig::from_url(&tls.url("sslmode=require"))
        .unwrap()
        .tls_root_certificates_pem(&ca)
        .unwrap()
        .connect()
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", tls.server.log()));
    // The default sslmode (prefer) with TLS configured uses it too (the
    // server refuses anything else).
    let b = LockConfig::from_url(&tls.url(""))
        .unwrap()
        .tls_root_certificates_pem(&ca)
        .unwrap()
        .connect()
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", tls.server.log()));

    let key = LockKey::named(unique("tls"));
    let guard = a
        .try_lock(key.clone(), Mode::Exclusive)
        .await
        .unwrap()
        .expect("a free key");
    let held = advisory_locks(&local, &[key.id()]).await;
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0].pid, guard.backend_pid());
    assert!(held[0].granted);
    let row = local
        .query_one(
            "SELECT ssl, version FROM pg_stat_ssl WHERE pid = $1",
            &[&guard.backend_pid()],
        )
        .await
        .unwrap();
    let (ssl, version): (bool, Option<String>) = (row.get(0), row.get(1));
    println!(
        "lock session {}: ssl {ssl}, {version:?}",
        guard.backend_pid()
    );
    assert!(ssl, "the lock session's connection uses TLS");

    // Exclusion between two lockers, both over TLS.
    assert!(b
        .try_lock(key.clone(), Mode::Exclusive)
        .await
        .unwrap()
        .is_none());
    guard.release().await.unwrap();
    let guard = b
        .lock(key.clone(), Mode::Exclusive, Some(Duration::from_secs(5)))
        .await
        .unwrap();
    let ssl: bool = local
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = $1",
            &[&guard.backend_pid()],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl, "sslmode=prefer used TLS");
    guard.release().await.unwrap();
    let left = wait_until_unlocked(&local, &[key.id()], Duration::from_secs(5)).await;
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_failures_are_typed_errors() {
    let certs = TestCertificates::make();
    // This server presents a self-signed certificate.
    let tls = TlsServer::start(&certs, "self.crt", "self.key");
    let password = "s3cret-tls-password";
    let url = |params: &str| {
        tls.url(params)
            .replace("postgres@", &format!("postgres:{password}@"))
    };
    let connect = |config: LockConfig| async move {
        let text = format!("{config:?}");
        assert!(!text.contains(password), "Debug shows the password: {text}");
        let result = config
            .connect_timeout(Duration::from_secs(10))
            .connect()
            .await;
        if let Err(e) = &result {
            for text in [e.to_string(), format!("{e:?}")] {
                assert!(
                    !text.contains(password),
                    "the error shows the password: {text}"
                );
            }
        }
        result
    };

    // Trusting the self-signed certificate itself: accepted.
    let locker = connect(
        LockConfig::from_url(&url("sslmode=require"))
            .unwrap()
            .tls_root_certificates_pem(&certs.pem("self.crt"))
            .unwrap(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", tls.server.log()));
    let guard = locker
        .try_lock(LockKey::named(unique("tls-self")), Mode::Exclusive)
        .await
        .unwrap()
        .expect("a free key");
    guard.release().await.unwrap();

    // Trusting another authority: the certificate can't be verified.
    let e = connect(
        LockConfig::from_url(&url("sslmode=require"))
            .unwrap()
            .tls_root_certificates_pem(&certs.pem("other-ca.crt"))
            .unwrap(),
    )
    .await
    .unwrap_err();
    println!("untrusted certificate: {e}");
    assert!(matches!(e, Error::Connect { .. }), "{e:?}");
    assert!(report(&e).contains("certificate"), "{}", report(&e));

    // No TLS configured (sslmode=prefer, the default): the server rejects
    // the plain connection.
    let e = connect(LockConfig::from_url(&url("")).unwrap())
        .await
        .unwrap_err();
    println!("no TLS: {e}");
    assert!(matches!(e, Error::Connect { .. }), "{e:?}");
    assert!(report(&e).contains("no encryption"), "{}", report(&e));

    // TLS configured, but sslmode=disable: plain, rejected as well.
    let e = connect(
        LockConfig::from_url(&url("sslmode=disable"))
            .unwrap()
            .tls_root_certificates_pem(&certs.pem("self.crt"))
            .unwrap(),
    )
    .await
    .unwrap_err();
    println!("sslmode=disable: {e}");
    assert!(matches!(e, Error::Connect { .. }), "{e:?}");

    // sslmode=require without TLS: refused before connecting.
    let e = connect(LockConfig::from_url(&url("sslmode=require")).unwrap())
        .await
        .unwrap_err();
    println!("sslmode=require without TLS: {e}");
    assert!(matches!(e, Error::InvalidConfig { .. }), "{e:?}");
    assert!(e.to_string().contains("tls_root_certificates_pem"), "{e}");

    // PEM without a certificate, or broken.
    for pem in [
        &b"not a certificate"[..],
        &certs.pem("self.key")[..],
        b"-----BEGIN CERTIFICATE-----\nAAAA\n",
    ] {
        let e = LockConfig::from_url(&url(""))
            .unwrap()
            .tls_root_certificates_pem(pem)
            .unwrap_err();
        assert!(matches!(e, Error::InvalidConfig { .. }), "{e:?}");
    }
}

/// A batch of 512 requests over TLS (about 17 KB in one statement, more than
/// one TLS record): every request is answered and the session lives on.
/// Before the dispatcher flushed its writes, bytes that the TLS stream
/// accepted could sit in its buffer, the answer never came, and the
/// heartbeat's timeout killed the session with all its locks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_512_requests_over_tls_is_answered() {
    let certs = TestCertificates::make();
    let tls = TlsServer::start(&certs, "server.crt", "server.key");
    let local = tls.local_client().await;
    let locker = LockConfig::from_url(&tls.url("sslmode=require"))
        .unwrap()
        .tls_root_certificates_pem(&certs.pem("ca.crt"))
        .unwrap()
        .sessions(1)
        .connect()
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", tls.server.log()));
    let base = unique("tls-batch");
    // Queued at once: the dispatcher sends what is queued in statements of
    // up to 512 requests.
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..1024 {
        let locker = locker.clone();
        let key = LockKey::named(format!("{base}:{i}"));
        calls.spawn(async move { locker.try_lock(key, Mode::Exclusive).await });
    }
    let results = tokio::time::timeout(Duration::from_secs(30), calls.join_all())
        .await
        .expect("every request answered");
    let mut guards = Vec::new();
    for r in results {
        guards.push(r.unwrap().expect("a free key"));
    }
    let pid = guards[0].backend_pid();
    let held: i64 = local
        .query_one(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = $1 AND granted",
            &[&pid],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(held, 1024);
    assert!(guards.iter().all(|g| g.is_held()));
    for g in guards {
        g.release().await.unwrap();
    }
}

/// The error and its causes (the `source()` chain), as an error reporter
/// prints them: `Display` leaves the cause to the chain.
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
