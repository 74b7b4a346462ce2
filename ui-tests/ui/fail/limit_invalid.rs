use advisory_locked::advisory_locked;

#[advisory_locked(key = "a", limit = 0)]
async fn zero() {}

#[advisory_locked(key = "b", limit = "2")]
async fn string() {}

#[advisory_locked(key = "c", limit = 5000)]
async fn too_many() {}

#[advisory_locked(key = "d", limit)]
async fn no_value() {}

#[advisory_locked(key = "e", limit = 2, shared)]
async fn shared_slots() {}

fn main() {}
