//! Worker processes for the multi-process tests: start several, wait for
//! all (bounded), read their output line by line, and read what the
//! fencing workers recorded.

use std::collections::HashSet;
use std::process::Stdio;
use std::time::Duration;

use tokio_postgres::Client;

/// Starts one process of `exe` per argument list, all at once, and waits
/// for each (at most `limit` in all per process). Panics (failing the test)
/// if one does not finish in time or exits unsuccessfully, with its stderr.
/// Returns their standard outputs, in the order of `args`.
pub async fn run_processes(exe: &str, args: Vec<Vec<String>>, limit: Duration) -> Vec<String> {
    let children: Vec<_> = args
        .iter()
        .map(|a| {
            tokio::process::Command::new(exe)
                .args(a)
                .kill_on_drop(true)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {exe}: {e}"))
        })
        .collect();
    let mut outputs = Vec::with_capacity(children.len());
    for child in children {
        let out = tokio::time::timeout(limit, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("a worker did not finish within {limit:?}"))
            .expect("worker io");
        assert!(
            out.status.success(),
            "worker failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        outputs.push(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    outputs
}

/// What `fence_worker` processes recorded in `table` (`n`, `token`, `pid`):
/// the tokens in grant order, checked to strictly increase, and the
/// processes that took the lock.
pub async fn fence_rounds(client: &Client, table: &str) -> (Vec<i64>, HashSet<i32>) {
    let rows = client
        .query(&format!("SELECT token, pid FROM {table} ORDER BY n"), &[])
        .await
        .expect("the fencing rounds");
    let tokens: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    for w in tokens.windows(2) {
        assert!(w[1] > w[0], "tokens in grant order: {} then {}", w[0], w[1]);
    }
    (tokens, rows.iter().map(|r| r.get(1)).collect())
}

/// Microseconds since the Unix epoch on this host's clock: comparable across
/// the processes of one machine (and with the server's `clock_timestamp()`).
pub fn unix_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// The next line of a child's output, at most `limit` away; panics (failing
/// the test) naming `what` if it does not come.
pub async fn next_line<R>(lines: &mut tokio::io::Lines<R>, what: &str, limit: Duration) -> String
where
    R: tokio::io::AsyncBufRead + Unpin,
{
    tokio::time::timeout(limit, lines.next_line())
        .await
        .unwrap_or_else(|_| panic!("the worker did not say {what:?} within {limit:?}"))
        .expect("worker output")
        .unwrap_or_else(|| panic!("the worker ended before saying {what:?}"))
}
