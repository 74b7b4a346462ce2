use advisory_locked::advisory_locked;

#[advisory_locked(key = true)]
async fn daily_report() {}

fn main() {}
