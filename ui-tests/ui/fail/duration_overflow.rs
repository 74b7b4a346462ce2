use advisory_locked::advisory_locked;

#[advisory_locked(key = "a", wait = "8761h")]
async fn over_a_year() {}

#[advisory_locked(key = "b", wait = "99999999999999999999999999999999999999999h")]
async fn overflows_u128() {}

fn main() {}
