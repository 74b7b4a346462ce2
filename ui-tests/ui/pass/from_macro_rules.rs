//! The attribute inside `macro_rules!`, with the key and duration passed as
//! fragments.
use advisory_locked::{advisory_locked, Error, Outcome};

macro_rules! locked_job {
    ($name:ident, $key:literal, $wait:literal) => {
        #[advisory_locked(key = $key, wait = $wait)]
        async fn $name() -> &'static str {
            stringify!($name)
        }
    };
    ($name:ident, $key:expr) => {
        #[advisory_locked(key = $key)]
        async fn $name(id: u32) -> u32 {
            id
        }
    };
}

locked_job!(first, "job:first", "5s");
locked_job!(second, "job:second:{id}");
locked_job!(third, -3);

async fn callers() -> Result<(), Error> {
    let _: &'static str = first().await?;
    let _: Outcome<u32> = second(2).await?;
    let _: Outcome<u32> = third(3).await?;
    Ok(())
}

fn main() {
    drop(callers());
}
