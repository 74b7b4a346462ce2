use advisory_locked::advisory_locked;

struct Worker;

impl Worker {
    #[advisory_locked(key = "worker:{self.id}")]
    async fn start(id: u32) {
        let _ = id;
    }
}

fn main() {
    let _ = Worker;
}
