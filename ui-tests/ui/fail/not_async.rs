use advisory_locked::advisory_locked;

#[advisory_locked(key = "report:daily")]
fn daily_report() {}

fn main() {
    daily_report();
}
