use advisory_locked::advisory_locked;

#[advisory_locked(key = "report:daily", key = "report:weekly")]
async fn daily_report() {}

fn main() {}
