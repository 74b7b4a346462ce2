use advisory_locked::advisory_locked;

#[advisory_locked(key = "report:daily")]
const fn daily_report() -> u32 {
    1
}

fn main() {
    let _ = daily_report();
}
