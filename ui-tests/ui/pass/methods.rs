//! Methods with every kind of receiver.
use std::sync::Arc;

use advisory_locked::{advisory_locked, Error, Outcome};

#[derive(Clone)]
struct Service {
    id: u64,
    runs: u32,
}

impl Service {
    #[advisory_locked(key = "service")]
    async fn by_ref(&self) -> u64 {
        self.id
    }

    #[advisory_locked(key = "service:{self.id}")]
    async fn by_mut(&mut self) -> u32 {
        self.runs += 1;
        self.runs
    }

    #[advisory_locked(key = "service:{self.id}", wait)]
    async fn by_value(self) -> Self {
        self
    }

    #[advisory_locked(key = "service:{self.id}")]
    async fn by_arc(self: Arc<Self>) -> Arc<Self> {
        self
    }

    #[advisory_locked(key = "service:{self.runs}")]
    async fn by_box(self: Box<Self>) -> u32 {
        self.runs
    }

    #[advisory_locked(key = "service:new:{id}", wait = "1s")]
    async fn constructor(id: u64) -> Self {
        Service { id, runs: 0 }
    }
}

async fn callers(mut service: Service) -> Result<(), Error> {
    let _: Outcome<u64> = service.by_ref().await?;
    let _: Outcome<u32> = service.by_mut().await?;
    let _: Outcome<Arc<Service>> = Arc::new(service.clone()).by_arc().await?;
    let _: Outcome<u32> = Box::new(service.clone()).by_box().await?;
    let _: Service = service.by_value().await?;
    let _: Service = Service::constructor(1).await?;
    Ok(())
}

fn main() {
    drop(callers(Service { id: 1, runs: 0 }));
}
