// A path that does not lead to the whole crate: each item the expansion
// names through it is reported missing.
use advisory_locked::advisory_locked;

mod partial {
    // Not a glob: the expansion's other items are missing.
    pub use ::advisory_locked::Error;
}

#[advisory_locked(key = "a", crate = "partial")]
async fn f() {}

fn main() {}
