use advisory_locked::advisory_locked;

#[advisory_locked(key = "report:daily", skip, wait = "30s")]
async fn daily_report() {}

fn main() {}
