use advisory_locked::advisory_locked;

#[advisory_locked(key = "report:daily",, wait)]
async fn daily_report() {}

fn main() {}
