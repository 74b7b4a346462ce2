use advisory_locked::advisory_locked;

struct Job {
    id: u64,
}

#[advisory_locked(key = "job:{job.name}")]
async fn run(job: Job) -> u64 {
    job.id
}

fn main() {
    drop(run(Job { id: 1 }));
}
