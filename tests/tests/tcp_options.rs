//! The lock sessions open their own sockets (runtime/src/wire.rs); the TCP
//! options of the connection string apply to them as tokio-postgres applies
//! them to its own: keepalives on by default (2 hours idle), `keepalives=0`
//! turns them off, `keepalives_idle` sets the idle time. Checked in the
//! kernel's table of TCP sockets (`/proc/net/tcp`, Linux): an idle socket
//! with keepalives has its keepalive timer armed (`tr` = 2), due within the
//! idle time.

#![cfg(target_os = "linux")]

use std::time::{Duration, Instant};

use advisory_locked::{LockConfig, LockKey, Mode};
use advisory_locked_tests::{db_url, raw_connect, unique};

fn with_params(params: &str) -> String {
    let url = db_url();
    if params.is_empty() {
        return url;
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{params}")
}

/// The timer of the established TCP socket from local port `port` to
/// remote port `server_port`: its kind (`tr`: 0 none, 1 retransmit, 2
/// keepalive, ...) and when it fires, in clock ticks (USER_HZ, 100 a
/// second). Both ports: the kernel gives one local port to connections to
/// different servers, so another connection of this machine (to another
/// test's server, say) can have the same local port.
fn timer_of(port: u16, server_port: u16) -> Option<(u8, u64)> {
    let port_of = |field: &str| {
        field
            .rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 6 || f[3] != "01" {
                continue;
            }
            if port_of(f[1]) != Some(port) || port_of(f[2]) != Some(server_port) {
                continue;
            }
            let (tr, when) = f[5].split_once(':')?;
            return Some((
                u8::from_str_radix(tr, 16).ok()?,
                u64::from_str_radix(when, 16).ok()?,
            ));
        }
    }
    None
}

/// Connects a `Locker` with `params`, takes a lock on one of its sessions,
/// and samples that session's socket timer (bounded) until it shows the
/// keepalive timer or 40 samples over ~400 ms have passed: the keepalive
/// timer's due time if it was seen.
async fn keepalive_timer(params: &str) -> Option<u64> {
    let admin = raw_connect(&db_url()).await;
    let locker = LockConfig::from_url(&with_params(params))
        .unwrap()
        .name(unique("tcp-options"))
        .sessions(1)
        .connect()
        .await
        .unwrap();
    let guard = locker
        .try_lock(LockKey::named(unique("tcp-options")), Mode::Exclusive)
        .await
        .unwrap()
        .expect("a fresh key was busy");
    // The admin connection reaches the same server: its server port is the
    // lock session's.
    let row = admin
        .query_one(
            "SELECT client_port, inet_server_port() FROM pg_stat_activity WHERE pid = $1",
            &[&guard.backend_pid()],
        )
        .await
        .unwrap();
    let (port, server_port): (Option<i32>, Option<i32>) = (row.get(0), row.get(1));
    let port = port.expect("the lock session has no client port (not TCP?)");
    let server_port = u16::try_from(server_port.expect("the server has no TCP port")).unwrap();
    assert!(
        port > 0,
        "the lock session is not on TCP (client_port {port}): this test needs a TCP DATABASE_URL"
    );
    let port = u16::try_from(port).unwrap();
    let start = Instant::now();
    let mut seen = Vec::new();
    for _ in 0..40 {
        let t = timer_of(port, server_port).unwrap_or_else(|| {
            panic!("no established socket from local port {port} to port {server_port}")
        });
        if t.0 == 2 {
            return Some(t.1);
        }
        seen.push(t.0);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(start.elapsed() < Duration::from_secs(5));
    drop(guard);
    eprintln!("no keepalive timer seen on port {port}: timers {seen:?}");
    None
}

#[tokio::test]
async fn keepalives_are_on_by_default_with_two_hours_idle() {
    let when = keepalive_timer("")
        .await
        .expect("no keepalive timer on a default session");
    // Due in about 7,200 s (720,000 ticks), certainly more than a minute.
    assert!(when > 60 * 100, "keepalive due in {when} ticks");
}

#[tokio::test]
async fn keepalives_idle_is_applied() {
    let when = keepalive_timer("keepalives_idle=7")
        .await
        .expect("no keepalive timer with keepalives_idle=7");
    assert!(
        when <= 7 * 100,
        "keepalive due in {when} ticks, not within 7 s"
    );
}

#[tokio::test]
async fn keepalives_can_be_turned_off() {
    assert_eq!(keepalive_timer("keepalives=0").await, None);
}
