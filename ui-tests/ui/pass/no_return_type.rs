//! Without `-> T`, `T` is `()`.
use advisory_locked::{advisory_locked, Error, Outcome};

#[advisory_locked(key = "side-effect")]
async fn side_effect() {
    println!("side effect");
}

#[advisory_locked(key = "side-effect", wait)]
async fn side_effect_waiting(n: u32) {
    if n == 0 {
        return;
    }
    println!("{n}");
}

async fn callers() -> Result<(), Error> {
    let _: Outcome<()> = side_effect().await?;
    let (): () = side_effect_waiting(1).await?;
    Ok(())
}

fn main() {
    drop(callers());
}
