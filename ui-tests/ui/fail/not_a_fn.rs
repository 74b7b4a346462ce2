use advisory_locked::advisory_locked;

#[advisory_locked(key = "report:daily")]
pub struct Report;

fn main() {}
