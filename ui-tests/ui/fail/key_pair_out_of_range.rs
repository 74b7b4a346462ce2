use advisory_locked::advisory_locked;

#[advisory_locked(key = (7, 2147483648))]
async fn daily_report() {}

fn main() {}
