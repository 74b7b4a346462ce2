use advisory_locked::advisory_locked;

#[advisory_locked(key)]
async fn daily_report() {}

fn main() {}
