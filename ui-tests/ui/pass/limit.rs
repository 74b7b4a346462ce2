// A fleet-wide limit: `limit = N`, and its rate form with `per`.
use advisory_locked::{advisory_locked, Error, Outcome};

#[advisory_locked(key = "thumbnails", limit = 4)]
async fn thumbnails() -> u32 {
    4
}

#[advisory_locked(key = "mailer:{account}", limit = 10, per = "1m", wait = "30s")]
async fn send_mail(account: u64) -> Result<(), String> {
    let _ = account;
    Ok(())
}

#[advisory_locked(key = "single", limit = 1, per = "1.5s", exclusive)]
async fn single() {}

async fn types() {
    let _: Result<Outcome<u32>, Error> = thumbnails().await;
    let _: Result<Result<(), String>, Error> = send_mail(7).await;
    let _: Result<Outcome<()>, Error> = single().await;
}

fn main() {
    drop(types());
}
