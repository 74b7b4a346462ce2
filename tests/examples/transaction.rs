//! A lock in the same transaction as the writes it protects
//! (`transaction = tx`): the writes commit exactly when the lock ends, and
//! a body that fails rolls back its writes and ends the lock together.
//!
//! ```text
//! cargo run -p advisory-locked-tests --example transaction
//! ```
//!
//! Eight payments of 100 arrive at once for one invoice of 500. Each runs
//!
//! ```ignore
//! #[advisory_locked(key = "invoice:{invoice}", wait = "10s", transaction = tx)]
//! async fn pay(invoice: i64, cents: i64) -> Result<i64, PayError> { ... }
//! ```
//!
//! whose body records the attempt, reads what is still due, and either
//! books the payment or refuses it with `Err(PayError::Overpaid)`. The lock
//! is a transaction-level advisory lock (`pg_advisory_xact_lock`) of the
//! transaction the body's statements run in (`tx`, an
//! `advisory_locked::Transaction`, which dereferences to a
//! `tokio_postgres::Client`): `Ok` commits, `Err` rolls back, and the next
//! payment for the invoice gets the lock only once the previous one has
//! committed, so it reads the new balance. The example checks that exactly
//! five payments were booked, the invoice was not overpaid, and the refused
//! attempts left no row behind.
//!
//! To lock in a transaction of your own instead (a sqlx `PgTransaction`, a
//! deadpool-postgres or tokio-postgres one), use `on = tx`: see the
//! `sqlx_transaction` example.
//!
//! The database: `DATABASE_URL`, else postgres://postgres@127.0.0.1:5432/postgres,
//! else a throwaway server started from the installed PostgreSQL binaries
//! (`advisory_locked_tests::demo`). The example's tables are dropped at exit.

use advisory_locked::advisory_locked;
use advisory_locked_tests::demo::{check, describe, find_or_start_server, DemoError};

const PAYMENTS: i64 = 8;
const AMOUNT: i64 = 100;
const TOTAL: i64 = 500;

/// Why a payment was not booked.
#[derive(Debug)]
enum PayError {
    /// It would pay more than is due.
    Overpaid {
        due: i64,
    },
    Db(tokio_postgres::Error),
}

impl From<tokio_postgres::Error> for PayError {
    fn from(e: tokio_postgres::Error) -> Self {
        PayError::Db(e)
    }
}

/// Books a payment under the invoice's lock, in the lock's transaction.
#[advisory_locked(key = "invoice:{invoice}", wait = "10s", transaction = tx)]
async fn pay(invoice: i64, cents: i64) -> Result<i64, PayError> {
    // Written first, kept only if the transaction commits.
    tx.execute(
        "INSERT INTO example_payments (invoice, cents) VALUES ($1, $2)",
        &[&invoice, &cents],
    )
    .await?;
    let due: i64 = tx
        .query_one(
            "SELECT total - paid FROM example_invoices WHERE id = $1",
            &[&invoice],
        )
        .await?
        .get(0);
    if cents > due {
        return Err(PayError::Overpaid { due }); // rolled back: no payment row
    }
    tx.execute(
        "UPDATE example_invoices SET paid = paid + $2 WHERE id = $1",
        &[&invoice, &cents],
    )
    .await?;
    Ok(due - cents)
}

async fn run(admin: &tokio_postgres::Client) -> Result<(), DemoError> {
    admin
        .batch_execute(&format!(
            "CREATE TABLE example_invoices (id int8 PRIMARY KEY, total int8 NOT NULL, paid int8 NOT NULL); \
             CREATE TABLE example_payments (invoice int8 NOT NULL, cents int8 NOT NULL); \
             INSERT INTO example_invoices VALUES (7, {TOTAL}, 0)"
        ))
        .await?;
    let calls: Vec<_> = (0..PAYMENTS)
        .map(|_| tokio::spawn(pay(7, AMOUNT)))
        .collect();
    let (mut booked, mut refused) = (0, 0);
    for call in calls {
        match call.await?? {
            Ok(due) => {
                booked += 1;
                println!("  booked {AMOUNT}; {due} still due");
            }
            Err(PayError::Overpaid { due }) => {
                refused += 1;
                println!("  refused {AMOUNT}: only {due} due (its attempt row rolled back)");
            }
            Err(PayError::Db(e)) => return Err(e.into()),
        }
    }
    let paid: i64 = admin
        .query_one("SELECT paid FROM example_invoices WHERE id = 7", &[])
        .await?
        .get(0);
    let rows: i64 = admin
        .query_one("SELECT count(*) FROM example_payments", &[])
        .await?
        .get(0);
    println!(
        "{booked} booked, {refused} refused; invoice paid {paid} of {TOTAL}; {rows} payment rows"
    );
    check(
        booked == TOTAL / AMOUNT && refused == PAYMENTS - booked,
        "five payments booked, three refused",
    )?;
    check(
        paid == TOTAL && rows == booked,
        "no overpayment, and the refused attempts' rows rolled back",
    )?;
    Ok(())
}

async fn main_inner() -> Result<(), DemoError> {
    let (url, _server) = find_or_start_server().await?;
    println!(
        "{PAYMENTS} payments of {AMOUNT} at once for an invoice of {TOTAL}; database {}",
        describe(&url)
    );
    advisory_locked::configure(&url).await?;
    let (admin, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    admin
        .batch_execute("DROP TABLE IF EXISTS example_invoices, example_payments")
        .await?;
    let result = run(&admin).await;
    admin
        .batch_execute("DROP TABLE IF EXISTS example_invoices, example_payments")
        .await?;
    result
}

#[tokio::main]
async fn main() {
    if let Err(e) = main_inner().await {
        eprintln!("transaction: {e}");
        std::process::exit(1);
    }
}
