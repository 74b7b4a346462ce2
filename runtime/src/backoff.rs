//! Backoff with jitter: how long a waiter sleeps between tries on a key held
//! by another process, and how long a slot waits before reconnecting.

use std::time::Duration;

/// How long [`crate::Locker::lock`] sleeps between tries on a key held by
/// another process: doubling from 2 ms to 250 ms, each 50-100 % of that.
pub(crate) fn retry_busy(attempt: u32) -> Duration {
    let full = Duration::from_millis(2)
        .saturating_mul(1 << attempt.min(7))
        .min(Duration::from_millis(250));
    half_and_jitter(full)
}

/// How long a session slot waits before its next connect attempt after
/// `failures` failed ones in a row: 50 ms doubling to 5 s, each 50-100 % of that.
pub(crate) fn reconnect(failures: u32) -> Duration {
    let full = Duration::from_millis(50)
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(Duration::from_secs(5));
    half_and_jitter(full)
}

/// Somewhere in `full / 2 ..= full`, so that processes that failed together
/// don't retry together.
fn half_and_jitter(full: Duration) -> Duration {
    let half = full / 2;
    half + Duration::from_micros(random_below(half.as_micros() as u64 + 1))
}

/// A cheap per-thread xorshift in `0..max` (not cryptographic).
fn random_below(max: u64) -> u64 {
    use std::cell::Cell;
    thread_local!(static STATE: Cell<u64> = const { Cell::new(0) });
    STATE.with(|s| {
        let mut x = s.get();
        if x == 0 {
            x = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0x2545_F491_4F6C_DD1D)
                | 1;
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        if max == 0 {
            0
        } else {
            x % max
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds() {
        for attempt in 0..40 {
            let d = retry_busy(attempt);
            assert!(
                d >= Duration::from_millis(1) && d <= Duration::from_millis(250),
                "{d:?}"
            );
            let r = reconnect(attempt + 1);
            assert!(
                r >= Duration::from_millis(25) && r <= Duration::from_secs(5),
                "{r:?}"
            );
        }
        assert!(retry_busy(0) <= Duration::from_millis(2));
        assert!(reconnect(1) <= Duration::from_millis(50));
        assert!(reconnect(30) >= Duration::from_millis(2500));
    }
}
