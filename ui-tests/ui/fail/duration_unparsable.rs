use advisory_locked::advisory_locked;

#[advisory_locked(key = "a", wait = "30 secs")]
async fn unknown_unit() {}

#[advisory_locked(key = "b", wait = "30")]
async fn no_unit() {}

#[advisory_locked(key = "c", wait = "soon")]
async fn no_number() {}

fn main() {}
