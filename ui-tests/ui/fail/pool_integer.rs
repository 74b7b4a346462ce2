use advisory_locked::advisory_locked;

#[advisory_locked(key = "report:daily", pool = 1)]
async fn daily_report() {}

fn main() {}
