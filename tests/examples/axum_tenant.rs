//! An axum handler that takes a per-tenant lock: at most one rebuild per
//! tenant runs at a time across every replica of the service, rebuilds of
//! different tenants run in parallel, and a request that cannot get its
//! tenant's lock within 5 s is answered `409 Conflict`.
//!
//! ```text
//! cargo run -p advisory-locked-tests --example axum_tenant
//! ```
//!
//! The example serves on a free port of 127.0.0.1, sends itself three
//! requests at once (two for tenant `acme`, one for `globex`) over plain
//! HTTP/1.1, prints the answers, checks that the two `acme` rebuilds did
//! not overlap while `globex` ran beside them, and exits.
//!
//! The lock is taken by the attribute on the function the handler calls:
//!
//! ```ignore
//! #[advisory_locked(key = "tenant:{tenant}", wait = "5s")]
//! async fn rebuild_index(tenant: String) -> String { ... }
//! ```
//!
//! `rebuild_index` now returns `Result<String, advisory_locked::Error>`;
//! `Error::WaitTimeout` after 5 s is mapped to `409`, any other error
//! (database unreachable, ...) to `503`.
//!
//! The database: `DATABASE_URL`, else postgres://postgres@127.0.0.1:5432/postgres,
//! else a throwaway server started from the installed PostgreSQL binaries
//! (`advisory_locked_tests::demo`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use advisory_locked::advisory_locked;
use advisory_locked_tests::demo::{check, describe, find_or_start_server, DemoError};
use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Per tenant: rebuilds running now, and the most that ever ran at once.
static RUNNING: Mutex<Option<HashMap<String, (usize, usize)>>> = Mutex::new(None);

fn note(tenant: &str, delta: isize) {
    let mut guard = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
    let entry = guard
        .get_or_insert_with(HashMap::new)
        .entry(tenant.to_owned())
        .or_default();
    entry.0 = entry.0.saturating_add_signed(delta);
    entry.1 = entry.1.max(entry.0);
}

fn most_at_once(tenant: &str) -> usize {
    let guard = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
    guard
        .as_ref()
        .and_then(|m| m.get(tenant))
        .map_or(0, |e| e.1)
}

/// One rebuild per tenant at a time, across the fleet; waits up to 5 s.
#[advisory_locked(key = "tenant:{tenant}", wait = "5s")]
async fn rebuild_index(tenant: String) -> String {
    note(&tenant, 1);
    tokio::time::sleep(Duration::from_millis(300)).await; // the work
    note(&tenant, -1);
    format!("rebuilt the index of {tenant}")
}

/// `POST /tenants/{tenant}/rebuild`.
async fn rebuild(Path(tenant): Path<String>) -> (StatusCode, String) {
    match rebuild_index(tenant).await {
        Ok(done) => (StatusCode::OK, done),
        Err(e @ advisory_locked::Error::WaitTimeout { .. }) => {
            (StatusCode::CONFLICT, format!("busy, try later: {e}"))
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// One HTTP/1.1 request to `addr`; the status line and the body.
async fn request(addr: std::net::SocketAddr, path: &str) -> Result<String, DemoError> {
    let mut stream = TcpStream::connect(addr).await?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await?;
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_string(&mut answer)).await??;
    let status = answer.lines().next().unwrap_or("").to_owned();
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    Ok(format!("{status}: {body}"))
}

async fn run() -> Result<(), DemoError> {
    let (url, _server) = find_or_start_server().await?;
    advisory_locked::configure(&url).await?; // once, at startup
    println!("database {}", describe(&url));

    let app = Router::new().route("/tenants/{tenant}/rebuild", post(rebuild));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
    });
    println!("serving on http://{addr}; three requests at once:");

    let paths = [
        "/tenants/acme/rebuild",
        "/tenants/acme/rebuild",
        "/tenants/globex/rebuild",
    ];
    let started = std::time::Instant::now();
    let calls: Vec<_> = paths
        .iter()
        .map(|p| tokio::spawn(request(addr, p)))
        .collect();
    let mut answers = Vec::new();
    for (path, call) in paths.iter().zip(calls) {
        let answer = call.await??;
        println!("  POST {path} -> {answer}");
        answers.push(answer);
    }
    let took = started.elapsed();
    println!("  (all three answered in {} ms)", took.as_millis());
    let _ = stop.send(());
    server.await??;

    check(
        answers.iter().all(|a| a.contains(" 200 OK")),
        "every request answered 200",
    )?;
    check(
        most_at_once("acme") == 1 && most_at_once("globex") == 1,
        "one rebuild at a time per tenant",
    )?;
    // Serialised acme rebuilds take two bodies' time (600 ms), globex runs
    // beside them, so the three take about 600 ms, not 900 ms.
    check(
        took >= Duration::from_millis(600),
        "the two acme rebuilds ran one after the other",
    )?;
    println!("the two acme rebuilds ran one after the other; globex ran beside them");
    Ok(())
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("axum_tenant: {e}");
        std::process::exit(1);
    }
}
