// `on = tx`: the lock is taken in the caller's transaction, the argument
// `tx`; the caller keeps the transaction and commits it afterwards.
use advisory_locked::external::AdvisoryTransaction;
use advisory_locked::{advisory_locked, Error, Outcome};

#[advisory_locked(key = "invoice:{id}", on = tx)]
async fn bill(
    tx: &mut tokio_postgres::Transaction<'_>,
    id: i64,
) -> Result<u64, tokio_postgres::Error> {
    tx.execute("UPDATE invoices SET billed = true WHERE id = $1", &[&id])
        .await
}

// Wait mode, shared, a generic transaction type, `?` and `return` in the body.
#[advisory_locked(key = 42, on = conn, wait = "5s", shared)]
async fn read_side<T: AdvisoryTransaction>(conn: &mut T, fail: bool) -> Result<u8, String> {
    let _: &mut T = conn;
    if fail {
        return Err("failed".to_owned());
    }
    let n: u8 = "7".parse().map_err(|_| "nan".to_owned())?;
    Ok(n)
}

async fn caller(client: &mut tokio_postgres::Client) -> Result<(), Box<dyn std::error::Error>> {
    let mut tx = client.transaction().await?;
    let billed: Outcome<Result<u64, tokio_postgres::Error>> = bill(&mut tx, 7).await?;
    let read: Result<Result<u8, String>, Error> = read_side(&mut tx, false).await;
    let _ = (billed, read);
    tx.commit().await?;
    Ok(())
}

fn main() {
    let _ = caller;
}
