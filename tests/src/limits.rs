//! Helpers of the limit and leader tests (`tests/tests/limits.rs`,
//! `tests/tests/leader.rs`) and their worker binaries: the table the bodies
//! record into, and the arithmetic on the recorded intervals.

use std::time::Duration;

use advisory_locked::__private::{Limit, Spec, Wait};
use advisory_locked::Mode;
use tokio_postgres::Client;

/// The columns of a table of limited bodies: one row per body, stamped with
/// [`crate::unix_micros`] on entry and exit (this host's clock, shared by
/// the processes of one machine), and the slot's key name.
pub const SLOT_HOLDS_COLUMNS: &str = "(id bigserial PRIMARY KEY, pid int NOT NULL, \
     slot text NOT NULL, entered_us int8 NOT NULL, exited_us int8 NOT NULL)";

/// One recorded body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interval {
    /// The OS process id of the worker.
    pub pid: i32,
    /// The slot's key name (`"<name>#<i>"`).
    pub slot: String,
    /// Entry, µs since the Unix epoch.
    pub entered: i64,
    /// Exit, µs since the Unix epoch.
    pub exited: i64,
}

/// Every row of a [`SLOT_HOLDS_COLUMNS`] table, by entry time.
pub async fn intervals(client: &Client, table: &str) -> Vec<Interval> {
    client
        .query(
            &format!("SELECT pid, slot, entered_us, exited_us FROM {table} ORDER BY entered_us"),
            &[],
        )
        .await
        .expect("reading the holds table")
        .iter()
        .map(|r| Interval {
            pid: r.get(0),
            slot: r.get(1),
            entered: r.get(2),
            exited: r.get(3),
        })
        .collect()
}

/// The most intervals `[entered, exited)` open at one moment.
pub fn max_overlap(intervals: &[Interval]) -> usize {
    // Exits sort before entries at the same instant (half-open intervals).
    let mut events: Vec<(i64, i32)> = intervals
        .iter()
        .flat_map(|i| [(i.entered, 1), (i.exited, -1)])
        .collect();
    events.sort_by_key(|&(t, d)| (t, d));
    let (mut now, mut max) = (0i64, 0i64);
    for (_, d) in events {
        now += i64::from(d);
        max = max.max(now);
    }
    max as usize
}

/// The most entries in any half-open window `[t, t + window)`.
pub fn max_starts_in_window(intervals: &[Interval], window: Duration) -> usize {
    let mut starts: Vec<i64> = intervals.iter().map(|i| i.entered).collect();
    starts.sort_unstable();
    let w = window.as_micros() as i64;
    let mut best = 0;
    let mut lo = 0;
    for hi in 0..starts.len() {
        while starts[hi] - starts[lo] >= w {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}

/// The shortest time spanned by `n + 1` consecutive entries (`None` with
/// `n` or fewer entries): at most `n` starts per `per` means this is at
/// least `per`.
pub fn min_span_of(intervals: &[Interval], n: usize) -> Option<Duration> {
    let mut starts: Vec<i64> = intervals.iter().map(|i| i.entered).collect();
    starts.sort_unstable();
    starts
        .windows(n + 1)
        .map(|w| w[n] - w[0])
        .min()
        .map(|us| Duration::from_micros(us.max(0) as u64))
}

/// The spec `#[advisory_locked(key = …, limit = slots, per = …)]` expands
/// into (skip mode unless `wait` says otherwise).
pub fn limit_spec(pool: &'static str, slots: u32, per: Option<Duration>) -> Spec {
    Spec {
        pool,
        mode: Mode::Exclusive,
        on_lost: None,
        limit: Some(Limit { slots, per }),
    }
}

/// Skip mode (`None`) for 0 ms, else `Wait::Timeout`.
pub fn wait_from_millis(ms: u64) -> Option<Wait> {
    (ms > 0).then(|| Wait::Timeout(Duration::from_millis(ms)))
}

/// A line of `leader_worker`: its state changes, with this host's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaderLine {
    /// `ready <os-pid>`: connected, campaigning.
    Ready(u32),
    /// `LEADER <since_us> <backend_pid> <term>`.
    Leader {
        /// When the term began (µs since the epoch).
        since: i64,
        /// The lock session's server process.
        backend_pid: i32,
        /// The campaign's term number.
        term: u64,
    },
    /// `FOLLOWER <seen_us>`.
    Follower(i64),
    /// `RESIGNING <us>`: about to call `resign()`.
    Resigning(i64),
    /// `RESIGNED <us> <ok|error>`.
    Resigned(i64, bool),
}

impl LeaderLine {
    /// Parses one line; `None` for anything else.
    pub fn parse(line: &str) -> Option<LeaderLine> {
        let mut w = line.split_whitespace();
        let tag = w.next()?;
        let mut num = || w.next()?.parse::<i64>().ok();
        Some(match tag {
            "ready" => LeaderLine::Ready(num()? as u32),
            "LEADER" => LeaderLine::Leader {
                since: num()?,
                backend_pid: num()? as i32,
                term: num()? as u64,
            },
            "FOLLOWER" => LeaderLine::Follower(num()?),
            "RESIGNING" => LeaderLine::Resigning(num()?),
            "RESIGNED" => {
                let at = num()?;
                let ok = line.ends_with(" ok");
                LeaderLine::Resigned(at, ok)
            }
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iv(entered: i64, exited: i64) -> Interval {
        Interval {
            pid: 0,
            slot: String::new(),
            entered,
            exited,
        }
    }

    #[test]
    fn overlap_and_windows() {
        let v = [iv(0, 10), iv(5, 15), iv(10, 20), iv(12, 13)];
        assert_eq!(max_overlap(&v), 3);
        assert_eq!(max_starts_in_window(&v, Duration::from_micros(10)), 3);
        assert_eq!(max_starts_in_window(&v, Duration::from_micros(5)), 2);
        assert_eq!(min_span_of(&v, 1), Some(Duration::from_micros(2)));
        assert_eq!(min_span_of(&v, 3), Some(Duration::from_micros(12)));
        assert_eq!(min_span_of(&v, 4), None);
        assert_eq!(
            LeaderLine::parse("LEADER 5 7 2"),
            Some(LeaderLine::Leader {
                since: 5,
                backend_pid: 7,
                term: 2
            })
        );
        assert_eq!(
            LeaderLine::parse("RESIGNED 9 ok"),
            Some(LeaderLine::Resigned(9, true))
        );
    }
}
