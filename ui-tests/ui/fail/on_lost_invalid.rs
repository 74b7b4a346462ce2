use advisory_locked::advisory_locked;

#[advisory_locked(key = "a", on_lost = "retry")]
async fn unknown_policy() {}

#[advisory_locked(key = "b", on_lost = true)]
async fn not_a_string() {}

#[advisory_locked(key = "c", on_lost)]
async fn no_value() {}

#[advisory_locked(key = "d", on_lost = "abort", on_lost = "continue")]
async fn twice() {}

fn main() {}
