use advisory_locked::advisory_locked;

// PostgreSQL text cannot hold NUL: no `hashtextextended` gives these numbers.
#[advisory_locked(key = "a\0b")]
async fn literal() {}

#[advisory_locked(key = "tenant:\x00:{id}")]
async fn template(id: u64) {
    let _ = id;
}

fn main() {}
