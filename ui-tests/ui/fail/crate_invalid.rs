use advisory_locked::advisory_locked;

#[advisory_locked(key = "a", crate = advisory_locked)]
async fn unquoted() {}

#[advisory_locked(key = "b", crate = "advisory locked")]
async fn not_a_path() {}

#[advisory_locked(key = "c", crate = "")]
async fn empty() {}

#[advisory_locked(key = "d", crate = "advisory_locked::<u8>")]
async fn generic() {}

#[advisory_locked(key = "e", crate = "my::crate")]
async fn keyword_inside() {}

#[advisory_locked(key = "f", crate)]
async fn without_value() {}

fn main() {}
