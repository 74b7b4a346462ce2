//! A worker process for the fault tests (`tests/faults_terminate.rs`,
//! `tests/faults_kill9.rs`): one lock, taken in wait mode, held, released.
//!
//! Usage: `fault_lock <database-url> <key> <hold-ms>`
//!
//! Connects a `Locker` (one session), prints `ready <unix-us>`, waits for the
//! key (exclusive, at most 60 s), prints `acquired <unix-us> <backend-pid>`,
//! holds it for `<hold-ms>` (the body awaits every millisecond, and stops if
//! the lock is lost), releases it, and prints `released <unix-us>` (or
//! `lost <unix-us>`). Every line is flushed at once. Exits 1 on any error.

use std::io::Write;
use std::time::{Duration, Instant};

use advisory_locked::{LockConfig, LockKey, Mode};
use advisory_locked_tests::unix_micros;

fn say(line: String) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: fault_lock <database-url> <key> <hold-ms>");
        std::process::exit(2);
    }
    let url = args[1].clone();
    let key = args[2].clone();
    let hold = Duration::from_millis(args[3].parse().expect("hold-ms"));

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let code = rt.block_on(async move {
        let locker = match LockConfig::from_url(&url)
            .expect("url")
            .sessions(1)
            .connect()
            .await
        {
            Ok(l) => l,
            Err(e) => {
                eprintln!("fault_lock: connect: {e}");
                return 1;
            }
        };
        say(format!("ready {}", unix_micros()));
        let guard = match locker
            .lock(
                LockKey::named(key.clone()),
                Mode::Exclusive,
                Some(Duration::from_secs(60)),
            )
            .await
        {
            Ok(g) => g,
            Err(e) => {
                eprintln!("fault_lock: lock: {e}");
                return 1;
            }
        };
        say(format!(
            "acquired {} {}",
            unix_micros(),
            guard.backend_pid()
        ));
        let start = Instant::now();
        let lost = guard.lost();
        let body = async {
            while start.elapsed() < hold {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        tokio::select! {
            biased;
            () = lost => {
                say(format!("lost {}", unix_micros()));
                return 1;
            }
            () = body => {}
        }
        match guard.release().await {
            Ok(()) => {
                say(format!("released {}", unix_micros()));
                0
            }
            Err(e) => {
                eprintln!("fault_lock: release: {e}");
                1
            }
        }
    });
    std::process::exit(code);
}
