use advisory_locked::advisory_locked;

#[advisory_locked(key = 9223372036854775808)]
async fn daily_report() {}

fn main() {}
