use advisory_locked::advisory_locked;

#[advisory_locked(key = "a", transaction = "tx")]
async fn string() {}

#[advisory_locked(key = "b", transaction = tx, on_lost = "continue")]
async fn with_on_lost() {}

#[advisory_locked(key = "c", transaction = tx, limit = 2)]
async fn with_limit() {}

#[advisory_locked(key = "d", transaction)]
async fn no_name() {}

#[advisory_locked(key = "e", transaction = tx)]
async fn hides_an_argument(tx: u32) {
    let _ = tx;
}

fn main() {}
