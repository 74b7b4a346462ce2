//! Wait mode: `Result<T, Error>`, waiting forever or with a timeout.
use advisory_locked::{advisory_locked, Error};

#[advisory_locked(key = "migrations", wait)]
async fn migrate() -> Result<(), std::io::Error> {
    Ok(())
}

#[advisory_locked(key = "tenant:rebuild", wait = "30s")]
async fn thirty_seconds() -> u64 {
    30
}

#[advisory_locked(key = "a", wait = "250ms")]
async fn millis() {}

#[advisory_locked(key = "b", wait = "1m30s")]
async fn combined() {}

#[advisory_locked(key = "c", wait = "1.5 s")]
async fn decimal_with_space() {}

#[advisory_locked(key = "d", wait = "2h 15m")]
async fn hours_and_minutes() {}

#[advisory_locked(key = "e", wait = "8760h")]
async fn longest() {}

async fn callers() -> Result<(), Error> {
    let m: Result<Result<(), std::io::Error>, Error> = migrate().await;
    let n: u64 = thirty_seconds().await?;
    let (): () = millis().await?;
    combined().await?;
    decimal_with_space().await?;
    hours_and_minutes().await?;
    longest().await?;
    let _ = (m, n);
    Ok(())
}

fn main() {
    drop(callers());
}
