//! `shared`, an explicit `exclusive`, and a named registry entry.
use advisory_locked::{advisory_locked, Error, Outcome};

#[advisory_locked(key = "catalog", shared)]
async fn read_catalog() -> usize {
    3
}

#[advisory_locked(key = "catalog", exclusive, wait = "5s")]
async fn write_catalog() {}

#[advisory_locked(pool = "jobs", key = "cleanup", shared, wait,)]
async fn on_another_pool() -> bool {
    true
}

async fn callers() -> Result<(), Error> {
    let read: Outcome<usize> = read_catalog().await?;
    let (): () = write_catalog().await?;
    let flag: bool = on_another_pool().await?;
    let _ = (read, flag);
    Ok(())
}

fn main() {
    drop(callers());
}
