use advisory_locked::advisory_locked;

#[advisory_locked(wait = "30s", shared)]
async fn daily_report() {}

fn main() {}
