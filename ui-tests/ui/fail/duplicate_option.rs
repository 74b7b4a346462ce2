use advisory_locked::advisory_locked;

#[advisory_locked(key = "report:daily", pool = "jobs", shared, pool = "reports")]
async fn daily_report() {}

fn main() {}
