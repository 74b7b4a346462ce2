//! Raw 64-bit keys and keys of the two-int4 key space.
use advisory_locked::{advisory_locked, Error, Outcome};

#[advisory_locked(key = 42)]
async fn int_key() {}

#[advisory_locked(key = -5)]
async fn negative_key() {}

#[advisory_locked(key = 9_223_372_036_854_775_807i64)]
async fn largest_key() {}

#[advisory_locked(key = -9223372036854775808)]
async fn smallest_key() {}

#[advisory_locked(key = 0x7f)]
async fn hex_key() {}

#[advisory_locked(key = (7, 42))]
async fn pair_key() {}

#[advisory_locked(key = (-2147483648, 2147483647i32), wait)]
async fn pair_extremes() -> u8 {
    1
}

async fn callers() -> Result<(), Error> {
    let _: Outcome<()> = int_key().await?;
    let _: Outcome<()> = negative_key().await?;
    let _: Outcome<()> = largest_key().await?;
    let _: Outcome<()> = smallest_key().await?;
    let _: Outcome<()> = hex_key().await?;
    let _: Outcome<()> = pair_key().await?;
    let _: u8 = pair_extremes().await?;
    Ok(())
}

fn main() {
    drop(callers());
}
