use advisory_locked::advisory_locked;

#[advisory_locked(key = (7, "a"))]
async fn daily_report() {}

fn main() {}
