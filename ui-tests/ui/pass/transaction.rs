// Transaction scope: the body gets the transaction under the name given.
use advisory_locked::{advisory_locked, Error, Outcome, Transaction};

#[derive(Debug)]
struct MyError;

#[advisory_locked(key = "ledger:close", transaction = tx)]
async fn close_ledger() -> Result<u32, MyError> {
    let _: &Transaction = &tx;
    Ok(1)
}

#[advisory_locked(key = "tenant:{tenant_id}", transaction = conn, wait = "10s")]
async fn rebuild(tenant_id: u64) -> Result<(), MyError> {
    let _ = tenant_id;
    let _conn = conn;
    Ok(())
}

// `()` commits; a shared transaction-level lock.
#[advisory_locked(key = 42, transaction = tx, shared, wait)]
async fn read_side() {
    let _ = tx;
}

// `?` and `return` keep their meaning in the body.
#[advisory_locked(key = (7, 8), transaction = tx)]
async fn early(fail: bool) -> Result<u8, MyError> {
    let _ = &tx;
    if fail {
        return Err(MyError);
    }
    Err(MyError)?;
    Ok(2)
}

struct Service {
    id: u64,
}

impl Service {
    #[advisory_locked(key = "service:{self.id}", transaction = tx, shared)]
    async fn read(&self) -> Result<u64, MyError> {
        let _ = tx;
        Ok(self.id)
    }
}

async fn types() {
    let _: Result<Outcome<Result<u32, MyError>>, Error> = close_ledger().await;
    let _: Result<Result<(), MyError>, Error> = rebuild(7).await;
    let _: Result<(), Error> = read_side().await;
    let _: Result<Outcome<Result<u8, MyError>>, Error> = early(true).await;
    let s = Service { id: 3 };
    let _: Result<Outcome<Result<u64, MyError>>, Error> = s.read().await;
}

fn assert_send<T: Send>(_: T) {}

fn main() {
    assert_send(close_ledger());
    assert_send(rebuild(1));
    drop(types());
}
