use advisory_locked::advisory_locked;

#[advisory_locked(key = (1, 2, 3))]
async fn three() {}

#[advisory_locked(key = (1))]
async fn one() {}

fn main() {}
