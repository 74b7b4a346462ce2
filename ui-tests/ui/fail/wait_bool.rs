use advisory_locked::advisory_locked;

#[advisory_locked(key = "report:daily", wait = true)]
async fn daily_report() {}

fn main() {}
