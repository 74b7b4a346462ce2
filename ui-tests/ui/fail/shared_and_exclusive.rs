use advisory_locked::advisory_locked;

#[advisory_locked(key = "report:daily", exclusive, shared)]
async fn daily_report() {}

fn main() {}
