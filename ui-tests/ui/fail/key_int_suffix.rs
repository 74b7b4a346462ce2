use advisory_locked::advisory_locked;

#[advisory_locked(key = 42u32)]
async fn daily_report() {}

fn main() {}
