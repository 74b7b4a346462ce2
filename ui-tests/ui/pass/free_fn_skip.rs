//! Skip mode (the default) on free fns: `Result<Outcome<T>, Error>`.
use advisory_locked::{advisory_locked, Error, Outcome};

#[advisory_locked(key = "report:daily")]
async fn daily_report() -> Result<u32, std::io::Error> {
    Ok(7)
}

#[advisory_locked(key = "report:weekly", skip)]
async fn weekly_report() -> String {
    String::from("done")
}

// The same key written as a raw string.
#[advisory_locked(key = r"report:daily")]
async fn same_key_raw_string() {}

async fn callers() -> Result<(), Error> {
    let daily: Result<Outcome<Result<u32, std::io::Error>>, Error> = daily_report().await;
    let weekly: Outcome<String> = weekly_report().await?;
    let unit: Outcome<()> = same_key_raw_string().await?;
    let _ = (daily, weekly, unit);
    Ok(())
}

fn main() {
    // Builds the future without polling it: no database is needed.
    drop(callers());
}
