// A connection is not a transaction: a transaction-level lock on it would
// end with its own statement.
use advisory_locked::advisory_locked;

#[advisory_locked(key = "invoice:{id}", wait = "5s", on = conn)]
async fn bill(conn: &mut tokio_postgres::Client, id: i64) {
    let _ = (conn, id);
}

fn main() {}
