use advisory_locked::advisory_locked;

#[advisory_locked("report:daily")]
async fn daily_report() {}

fn main() {}
