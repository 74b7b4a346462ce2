// The trait must declare the rewritten return type; declaring the body's
// type is reported by rustc on the impl's return type.
use advisory_locked::advisory_locked;

trait Job {
    async fn run(&self) -> u32;
}

struct Nightly;

impl Job for Nightly {
    #[advisory_locked(key = "nightly")]
    async fn run(&self) -> u32 {
        1
    }
}

fn main() {
    let _ = Nightly;
}
