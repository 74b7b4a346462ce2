//! The metrics (feature `metrics`) and trace spans of lock calls, against
//! the real server: a recorder (metrics-util's `DebuggingRecorder`) is
//! installed before the entry is configured, a known sequence of calls is
//! made, and the numbers are checked exactly.
//!
//! One test holds the whole sequence: the recorder is global to the
//! process, and a snapshot resets what it reads.
#![cfg(feature = "metrics")]

use std::collections::HashMap;
use std::time::Duration;

use advisory_locked::{advisory_locked, Error, LockKey, Mode, Outcome};
use advisory_locked_tests::capture::Captured;
use advisory_locked_tests::{
    db_url, install, named, pg_lock, pg_unlock, raw_connect, wait_until_unlocked,
};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tracing_subscriber::fmt::format::FmtSpan;

const ENTRY: &str = "metrics";
const SETTLE: Duration = Duration::from_secs(10);

#[advisory_locked(key = "metrics:report", pool = "metrics")]
async fn report() -> u32 {
    // The body runs in the hold span (checked by `spans_separate_acquire_from_hold`).
    tracing::Span::current()
        .metadata()
        .map_or(0, |m| u32::from(m.name() == "advisory_locked.hold"))
}

#[advisory_locked(key = "metrics:wait", pool = "metrics", wait = "200ms")]
async fn wait_briefly() {}

#[advisory_locked(key = "metrics:waited", pool = "metrics", wait = "30s")]
async fn wait_long() {}

#[advisory_locked(key = "metrics:{name}", pool = "metrics")]
async fn templated(name: &str) {
    let _ = name;
}

/// Metric values by name and sorted labels.
type Values = HashMap<(String, Vec<(String, String)>), DebugValue>;

fn values(recorder: &metrics_util::debugging::Snapshotter) -> Values {
    recorder
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(ck, _, _, value)| {
            let (_, key) = ck.into_parts();
            let mut labels: Vec<(String, String)> = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            labels.sort();
            ((key.name().to_owned(), labels), value)
        })
        .collect()
}

fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    v.sort();
    v
}

fn get<'a>(values: &'a Values, name: &str, pairs: &[(&str, &str)]) -> Option<&'a DebugValue> {
    values.get(&(name.to_owned(), labels(pairs)))
}

fn counter(values: &Values, name: &str, pairs: &[(&str, &str)]) -> u64 {
    match get(values, name, pairs) {
        Some(DebugValue::Counter(n)) => *n,
        other => panic!("{name} {pairs:?}: not a counter: {other:?}"),
    }
}

fn gauge(values: &Values, name: &str, pairs: &[(&str, &str)]) -> f64 {
    match get(values, name, pairs) {
        Some(DebugValue::Gauge(n)) => n.into_inner(),
        other => panic!("{name} {pairs:?}: not a gauge: {other:?}"),
    }
}

fn samples(values: &Values, name: &str, pairs: &[(&str, &str)]) -> usize {
    match get(values, name, pairs) {
        Some(DebugValue::Histogram(s)) => s.len(),
        None => 0,
        other => panic!("{name} {pairs:?}: not a histogram: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_sequence_of_calls_gives_known_numbers() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this process");
    // The entry's handles are registered when it is configured: after the recorder.
    let locker = install(ENTRY).await;
    let other = raw_connect(&db_url()).await;

    // 3 acquired.
    for _ in 0..3 {
        assert!(report().await.expect("lock machinery").is_ran());
    }
    // 1 skipped: held by another session.
    let report_id = named("metrics:report");
    pg_lock(&other, report_id, Mode::Exclusive).await;
    assert_eq!(report().await.expect("lock machinery"), Outcome::Skipped);
    assert!(pg_unlock(&other, report_id, Mode::Exclusive).await);

    // 1 timed out.
    let wait_id = named("metrics:wait");
    pg_lock(&other, wait_id, Mode::Exclusive).await;
    let err = wait_briefly().await.expect_err("held elsewhere: times out");
    assert!(matches!(err, Error::WaitTimeout { .. }), "{err:?}");
    assert!(pg_unlock(&other, wait_id, Mode::Exclusive).await);

    // 1 waited: granted once the other session lets go.
    let waited_id = named("metrics:waited");
    pg_lock(&other, waited_id, Mode::Exclusive).await;
    let waiter = tokio::spawn(wait_long());
    wait_for_waiter(&other, waited_id).await;
    assert!(pg_unlock(&other, waited_id, Mode::Exclusive).await);
    waiter.await.expect("no panic").expect("granted");

    // 1 error (a NUL in a template's value); its label is the template's text.
    let err = templated("a\0b").await.expect_err("NUL is refused");
    assert!(matches!(err, Error::InvalidKey { .. }), "{err:?}");
    // A template that runs, labelled by the template, not by its value.
    assert!(templated("x").await.expect("lock machinery").is_ran());

    // Locker calls: a literal name is its own label; a computed one is not.
    let guard = locker
        .try_lock(LockKey::named("metrics:direct"), Mode::Shared)
        .await
        .expect("lock machinery")
        .expect("free");
    guard.release().await.expect("released");
    let computed = LockKey::named(format!("metrics:computed:{}", std::process::id()));
    let computed_id = computed.id();
    drop(
        locker
            .lock(computed, Mode::Exclusive, None)
            .await
            .expect("free"),
    );

    // Every unlock sent, so that statements are all counted.
    let all = [
        report_id,
        wait_id,
        waited_id,
        computed_id,
        named("metrics:x"),
    ];
    assert!(wait_until_unlocked(&other, &all, SETTLE).await.is_empty());
    let statements = locker.stats().statements;
    let v = values(&snapshotter);

    let report = [("entry", ENTRY), ("key", "metrics:report")];
    assert_eq!(counter(&v, "advisory_locked_acquired_total", &report), 3);
    assert_eq!(counter(&v, "advisory_locked_skipped_total", &report), 1);
    assert_eq!(samples(&v, "advisory_locked_acquire_seconds", &report), 3);
    assert_eq!(samples(&v, "advisory_locked_hold_seconds", &report), 3);
    assert_eq!(gauge(&v, "advisory_locked_locks_held", &report), 0.0);
    assert_eq!(samples(&v, "advisory_locked_wait_seconds", &report), 0);

    let wait = [("entry", ENTRY), ("key", "metrics:wait")];
    assert_eq!(counter(&v, "advisory_locked_timed_out_total", &wait), 1);
    assert_eq!(samples(&v, "advisory_locked_wait_seconds", &wait), 1);
    assert_eq!(samples(&v, "advisory_locked_hold_seconds", &wait), 0);

    let waited = [("entry", ENTRY), ("key", "metrics:waited")];
    assert_eq!(counter(&v, "advisory_locked_acquired_total", &waited), 1);
    assert_eq!(counter(&v, "advisory_locked_waited_total", &waited), 1);
    assert_eq!(samples(&v, "advisory_locked_wait_seconds", &waited), 1);
    assert_eq!(samples(&v, "advisory_locked_hold_seconds", &waited), 1);

    // Template keys are labelled "(dynamic)" for now: the expansion does
    // not pass the template's text to the runtime.
    let invalid = [
        ("entry", ENTRY),
        ("key", "(dynamic)"),
        ("kind", "invalid_key"),
    ];
    assert_eq!(counter(&v, "advisory_locked_errors_total", &invalid), 1);

    let direct = [("entry", ENTRY), ("key", "metrics:direct")];
    assert_eq!(counter(&v, "advisory_locked_acquired_total", &direct), 1);
    assert_eq!(samples(&v, "advisory_locked_hold_seconds", &direct), 1);
    // The template call that ran and the computed key.
    let dynamic = [("entry", ENTRY), ("key", "(dynamic)")];
    assert_eq!(counter(&v, "advisory_locked_acquired_total", &dynamic), 2);

    // No per-call value ever became a label.
    let leaked: Vec<_> = v
        .keys()
        .filter(|(_, l)| l.iter().any(|(k, v)| k == "key" && v.contains("computed")))
        .collect();
    assert!(
        leaked.is_empty(),
        "per-call key names as labels: {leaked:?}"
    );

    let entry = [("entry", ENTRY)];
    assert_eq!(
        counter(&v, "advisory_locked_statements_total", &entry),
        statements
    );
    assert!(gauge(&v, "advisory_locked_sessions_open", &entry) >= 1.0);
    assert!(counter(&v, "advisory_locked_sessions_opened_total", &entry) >= 1);
    assert_eq!(gauge(&v, "advisory_locked_wait_sessions_busy", &entry), 0.0);
    let lost: Vec<_> = v
        .keys()
        .filter(|(name, _)| name == "advisory_locked_lost_total")
        .collect();
    assert!(lost.is_empty(), "no lock was lost: {lost:?}");

    spans_separate_acquire_from_hold().await;
}

/// With a subscriber, the acquisition runs in `advisory_locked.acquire`
/// (its outcome recorded) and the body in `advisory_locked.hold`.
async fn spans_separate_acquire_from_hold() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_span_events(FmtSpan::CLOSE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
    let in_hold = report().await.expect("lock machinery").ran().expect("free");
    assert_eq!(in_hold, 1, "the body runs in the span advisory_locked.hold");
    let text = logs.text();
    let acquire = text
        .lines()
        .find(|l| l.contains("advisory_locked.acquire"))
        .unwrap_or_else(|| panic!("no acquire span closed: {text}"));
    for field in [
        "entry=\"metrics\"",
        "key=\"metrics:report\"",
        "mode=\"exclusive\"",
        "outcome=\"acquired\"",
    ] {
        assert!(acquire.contains(field), "{field} missing: {acquire}");
    }
    assert!(
        text.contains("advisory_locked.hold"),
        "no hold span: {text}"
    );
}

/// Until a session of this process waits for `key` in `pg_locks` (bounded).
async fn wait_for_waiter(client: &tokio_postgres::Client, key: advisory_locked::KeyId) {
    let start = std::time::Instant::now();
    loop {
        let locks = advisory_locked_tests::advisory_locks(client, &[key]).await;
        if locks.iter().any(|l| !l.granted) {
            return;
        }
        assert!(start.elapsed() < SETTLE, "no waiter showed up: {locks:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
