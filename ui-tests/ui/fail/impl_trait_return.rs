use advisory_locked::advisory_locked;

#[advisory_locked(key = "numbers")]
async fn numbers() -> impl Iterator<Item = u32> {
    0..3
}

#[advisory_locked(key = "boxed")]
async fn nested() -> Vec<impl std::fmt::Display> {
    vec![1]
}

fn main() {}
