use advisory_locked::advisory_locked;

const KEY: &str = "report:daily";

#[advisory_locked(key = KEY)]
async fn daily_report() {}

fn main() {
    let _ = KEY;
}
