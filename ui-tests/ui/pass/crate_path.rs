// `crate = "…"`: the expansion names the runtime by the given path instead
// of `::advisory_locked`, so a renamed dependency or a re-export works.
// `extern crate … as al` at the crate root puts `al` in the extern prelude,
// as a dependency renamed in Cargo.toml does.
extern crate advisory_locked as al;

use al::{Error, Outcome, Transaction};

// A module re-exporting the whole crate: the glob includes `__private`.
mod reexported {
    pub use ::advisory_locked::*;
}

#[al::advisory_locked(key = "report:daily", crate = "al")]
async fn renamed() -> u8 {
    1
}

#[advisory_locked::advisory_locked(key = "tenant:{id}", wait = "5s", crate = "::advisory_locked")]
async fn absolute(id: u64) -> u64 {
    id
}

#[reexported::advisory_locked(
    key = (7, 8),
    wait,
    shared,
    pool = "jobs",
    on_lost = "continue",
    crate = "crate::reexported"
)]
async fn through_a_reexport() {}

#[reexported::advisory_locked(key = "slots", limit = 2, per = "1s", crate = "crate::reexported")]
async fn limited() {}

#[reexported::advisory_locked(key = 42, transaction = tx, crate = "self::reexported")]
async fn in_a_transaction() -> Result<(), Error> {
    let _: &Transaction = &tx;
    Ok(())
}

mod inner {
    #[super::reexported::advisory_locked(key = "inner:{n}", crate = "super::reexported")]
    pub async fn relative(n: u8) -> u8 {
        n
    }
}

async fn callers() -> Result<(), Error> {
    let _: Outcome<u8> = renamed().await?;
    let _: u64 = absolute(3).await?;
    let _: () = through_a_reexport().await?;
    let _: Outcome<()> = limited().await?;
    let _: Outcome<Result<(), Error>> = in_a_transaction().await?;
    let _: Outcome<u8> = inner::relative(2).await?;
    Ok(())
}

fn main() {
    drop(callers());
    // The keys are in the inventory of names whatever the path.
    let names: Vec<&str> = al::names::known().iter().map(|k| k.name()).collect();
    for name in ["report:daily", "tenant:{id}", "(7, 8)", "slots", "42", "inner:{n}"] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
}
