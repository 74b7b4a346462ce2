// The loss policy per function; the body can look at its lock.
use advisory_locked::{advisory_locked, current_lock, Error, Outcome};

#[advisory_locked(key = "export", on_lost = "continue")]
async fn export() -> bool {
    current_lock().is_some_and(|l| l.is_held())
}

#[advisory_locked(key = "report", wait = "5s", on_lost = "abort")]
async fn report() -> u32 {
    7
}

async fn types() {
    let _: Result<Outcome<bool>, Error> = export().await;
    let _: Result<u32, Error> = report().await;
}

fn main() {
    // Outside a locked body there is no current lock.
    assert!(current_lock().is_none());
    drop(types());
}
