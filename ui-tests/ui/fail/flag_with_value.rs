use advisory_locked::advisory_locked;

#[advisory_locked(key = "a", skip = true)]
async fn skip_true() {}

#[advisory_locked(key = "b", shared = false)]
async fn shared_false() {}

#[advisory_locked(key = "c", exclusive = "yes")]
async fn exclusive_string() {}

fn main() {}
