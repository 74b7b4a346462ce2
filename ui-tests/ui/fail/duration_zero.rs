use advisory_locked::advisory_locked;

#[advisory_locked(key = "report:daily", wait = "0s")]
async fn daily_report() {}

fn main() {}
