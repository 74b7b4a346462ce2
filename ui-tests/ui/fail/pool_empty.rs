use advisory_locked::advisory_locked;

#[advisory_locked(key = "report:daily", pool = "")]
async fn daily_report() {}

fn main() {}
