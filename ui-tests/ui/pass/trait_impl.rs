//! `async fn` in a trait impl: the trait declares the rewritten return type.
use advisory_locked::{advisory_locked, Error, Outcome};

trait Job {
    async fn run(&self, attempt: u32) -> Result<Outcome<u32>, Error>;
    async fn run_waiting(&self) -> Result<String, Error>;
}

struct Nightly {
    name: String,
}

impl Job for Nightly {
    #[advisory_locked(key = "nightly:{self.name}:{attempt}")]
    async fn run(&self, attempt: u32) -> u32 {
        attempt
    }

    #[advisory_locked(key = "nightly", wait = "1m")]
    async fn run_waiting(&self) -> String {
        self.name.clone()
    }
}

async fn generic_caller<J: Job>(job: &J) -> Result<(), Error> {
    let _: Outcome<u32> = job.run(1).await?;
    let _: String = job.run_waiting().await?;
    Ok(())
}

fn main() {
    let job = Nightly { name: "n".into() };
    drop(generic_caller(&job));
}
