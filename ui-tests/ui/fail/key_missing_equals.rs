use advisory_locked::advisory_locked;

#[advisory_locked(key "report:daily")]
async fn daily_report() {}

fn main() {}
