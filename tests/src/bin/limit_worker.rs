//! A worker process for `tests/limits.rs`: bodies under `limit = N` (and
//! `per = "…"`), called exactly as the attribute's expansion calls them.
//!
//! Usage: `limit_worker <database-url> <table> <key> <slots> <per-ms> <wait-ms> <tasks> <rounds> <hold-ms>`
//!
//! `per-ms` 0 is no rate form; `wait-ms` 0 is skip mode, else wait mode with
//! that timeout. Configures the default registry entry (2 sessions), then
//! runs `tasks` tasks of `rounds` calls each. A body stamps its entry and
//! exit with this host's clock, sleeps `hold-ms` in between, and records
//! both and its slot (from `current_lock()`) in `<table>` before it
//! returns. Prints `ran <n> skipped <n>` at the end; exits non-zero on any
//! error.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use advisory_locked::{LockKey, Outcome};
use advisory_locked_tests::limits::{limit_spec, wait_from_millis};
use advisory_locked_tests::{unix_micros, Prng};
use tokio_postgres::NoTls;

struct Ctx {
    client: tokio_postgres::Client,
    insert: tokio_postgres::Statement,
    pid: i32,
    hold: Duration,
}

async fn body(ctx: &Ctx) -> Result<(), tokio_postgres::Error> {
    let entered = unix_micros();
    let slot = advisory_locked::current_lock()
        .map(|l| l.key().name().to_owned())
        .unwrap_or_default();
    tokio::time::sleep(ctx.hold).await;
    let exited = unix_micros();
    ctx.client
        .execute(&ctx.insert, &[&ctx.pid, &slot, &entered, &exited])
        .await?;
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 10 {
        eprintln!("usage: limit_worker <database-url> <table> <key> <slots> <per-ms> <wait-ms> <tasks> <rounds> <hold-ms>");
        std::process::exit(2);
    }
    let url = args[1].clone();
    let table = args[2].clone();
    assert!(
        table.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "table name must be an identifier"
    );
    let key = args[3].clone();
    let num = |i: usize| -> u64 { args[i].parse().expect("a number") };
    let (slots, per_ms, wait_ms) = (num(4) as u32, num(5), num(6));
    let (tasks, rounds, hold_ms) = (num(7) as usize, num(8) as usize, num(9));
    let per = (per_ms > 0).then(|| Duration::from_millis(per_ms));
    let spec = limit_spec("default", slots, per);
    let wait = wait_from_millis(wait_ms);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let code = rt.block_on(async move {
        advisory_locked::LockConfig::from_url(&url)
            .expect("url")
            .sessions(2)
            .install()
            .await
            .expect("configure the default registry entry");
        let (client, connection) = tokio_postgres::connect(&url, NoTls).await.expect("connect");
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let insert = client
            .prepare(&format!(
                "INSERT INTO {table} (pid, slot, entered_us, exited_us) VALUES ($1, $2, $3, $4)"
            ))
            .await
            .expect("prepare");
        let ctx = Arc::new(Ctx {
            client,
            insert,
            pid: std::process::id() as i32,
            hold: Duration::from_millis(hold_ms),
        });
        let ran = Arc::new(AtomicUsize::new(0));
        let skipped = Arc::new(AtomicUsize::new(0));
        let mut handles = Vec::new();
        for task in 0..tasks {
            let (ctx, ran, skipped, key) = (ctx.clone(), ran.clone(), skipped.clone(), key.clone());
            handles.push(tokio::spawn(async move {
                let mut rng = Prng::new(u64::from(std::process::id()) << 8 | task as u64);
                for round in 0..rounds {
                    let key = LockKey::named(key.clone());
                    let outcome = match wait {
                        None => advisory_locked::__private::run_skip(spec, key, body(&ctx)).await,
                        Some(wait) => {
                            advisory_locked::__private::run_wait(spec, wait, key, body(&ctx))
                                .await
                                .map(Outcome::Ran)
                        }
                    };
                    match outcome {
                        Ok(Outcome::Ran(Ok(()))) => {
                            ran.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(Outcome::Skipped) => {
                            skipped.fetch_add(1, Ordering::SeqCst);
                            // Not a busy loop: a short pause before the next round.
                            tokio::time::sleep(Duration::from_millis(2 + rng.below(6))).await;
                        }
                        Ok(Outcome::Ran(Err(e))) => {
                            return Err(format!("round {round}: body failed: {e}"))
                        }
                        Err(e) => return Err(format!("round {round}: lock failed: {e}")),
                    }
                }
                Ok(())
            }));
        }
        for h in handles {
            match h.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    eprintln!("worker {}: {e}", std::process::id());
                    return 1;
                }
                Err(e) => {
                    eprintln!("worker {}: task panicked: {e}", std::process::id());
                    return 1;
                }
            }
        }
        println!(
            "ran {} skipped {}",
            ran.load(Ordering::SeqCst),
            skipped.load(Ordering::SeqCst)
        );
        // Rate slots still kept by background tasks would be freed by the
        // server when this process exits, before their period ends: wait.
        if let Some(per) = per {
            tokio::time::sleep(per + Duration::from_millis(50)).await;
        }
        0
    });
    std::process::exit(code);
}
