use advisory_locked::advisory_locked;

// A transaction body must say whether to commit: `Result<T, E>` or `()`.
#[advisory_locked(key = "a", transaction = tx)]
async fn count() -> u32 {
    let _ = tx;
    7
}

fn main() {}
