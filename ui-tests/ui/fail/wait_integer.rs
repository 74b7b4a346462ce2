use advisory_locked::advisory_locked;

#[advisory_locked(key = "report:daily", wait = 30)]
async fn daily_report() {}

fn main() {}
