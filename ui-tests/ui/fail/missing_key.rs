use advisory_locked::advisory_locked;

#[advisory_locked]
async fn daily_report() {}

fn main() {}
