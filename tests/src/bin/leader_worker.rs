//! A worker process for `tests/leader.rs`: campaigns for a key and reports
//! every change of its leadership on stdout.
//!
//! Usage: `leader_worker <database-url> <key> <retry-ms>`
//!
//! Prints `ready <os-pid>` once connected and campaigning, then
//! `LEADER <since-µs> <backend-pid> <term>` (the term's start on this host's
//! clock) and `FOLLOWER <seen-µs>` as the watch channel reports them. On a
//! `resign` line on stdin it prints `RESIGNING <µs>`, resigns, prints
//! `RESIGNED <µs> ok|error` and exits; it exits when stdin closes.

use std::time::{Duration, UNIX_EPOCH};

use advisory_locked::{Campaign, Leadership, LockConfig, LockKey};
use advisory_locked_tests::unix_micros;

/// One line on stdout (line-buffered: flushed at the newline).
fn say(line: String) {
    println!("{line}");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: leader_worker <database-url> <key> <retry-ms>");
        std::process::exit(2);
    }
    let (url, key) = (args[1].clone(), args[2].clone());
    let retry = Duration::from_millis(args[3].parse().expect("retry-ms"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let code = rt.block_on(async move {
        let locker = LockConfig::from_url(&url)
            .expect("url")
            .sessions(1)
            .connect()
            .await
            .expect("connect");
        let leader = Campaign::new(LockKey::named(key))
            .retry_interval(retry)
            .start(&locker);
        let mut state = leader.watch();
        let reporter = {
            tokio::spawn(async move {
                loop {
                    let now = *state.borrow_and_update();
                    let line = match now {
                        Leadership::Leader {
                            since,
                            backend_pid,
                            term,
                        } => {
                            let since = since
                                .duration_since(UNIX_EPOCH)
                                .map_or(0, |d| d.as_micros() as i64);
                            format!("LEADER {since} {backend_pid} {term}")
                        }
                        Leadership::Follower => format!("FOLLOWER {}", unix_micros()),
                    };
                    say(line);
                    if state.changed().await.is_err() {
                        return;
                    }
                }
            })
        };
        say(format!("ready {}", std::process::id()));
        // Stdin is read by a thread of its own (blocking reads).
        let (tx, mut stdin) = tokio::sync::mpsc::unbounded_channel::<String>();
        std::thread::spawn(move || {
            for line in std::io::stdin().lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        while let Some(line) = stdin.recv().await {
            if line.trim() == "resign" {
                say(format!("RESIGNING {}", unix_micros()));
                let result = leader.resign().await;
                // Let the reporter print the step-down first.
                tokio::time::sleep(Duration::from_millis(20)).await;
                reporter.abort();
                let word = if result.is_ok() { "ok" } else { "error" };
                say(format!("RESIGNED {} {word}", unix_micros()));
                return 0;
            }
        }
        0
    });
    std::process::exit(code);
}
