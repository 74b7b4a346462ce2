use advisory_locked::advisory_locked;

#[advisory_locked(key = 1.5)]
async fn daily_report() {}

fn main() {}
