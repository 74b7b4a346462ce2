use advisory_locked::advisory_locked;

#[advisory_locked(key = "invoice:{id}", on = txn)]
async fn bill(tx: &mut tokio_postgres::Transaction<'_>, id: i64) {
    let _ = (tx, id);
}

#[advisory_locked(key = "b", on = db)]
async fn no_such(tx: &mut tokio_postgres::Transaction<'_>, id: i64) {
    let _ = (tx, id);
}

#[advisory_locked(key = "c", on = tx)]
async fn by_value(tx: tokio_postgres::Transaction<'_>) {
    let _ = tx;
}

#[advisory_locked(key = "d", on = "tx", pool = "jobs")]
async fn string(tx: &mut tokio_postgres::Transaction<'_>) {
    let _ = tx;
}

fn main() {}
