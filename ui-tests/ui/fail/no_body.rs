use advisory_locked::advisory_locked;

trait Job {
    #[advisory_locked(key = "job")]
    async fn run(&self);
}

fn main() {}
