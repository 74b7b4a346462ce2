use advisory_locked::advisory_locked;

#[advisory_locked(key = "a", per = "1m")]
async fn without_limit() {}

#[advisory_locked(key = "b", limit = 2, per = "0s")]
async fn zero() {}

#[advisory_locked(key = "c", limit = 2, per = 60)]
async fn no_unit() {}

fn main() {}
