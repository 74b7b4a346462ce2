//! The lock in *your own* sqlx transaction (`on = tx`): the service keeps
//! its `PgPool` and its transactions; the advisory lock is a
//! transaction-level lock of the caller's transaction, so it ends exactly
//! when the caller commits or rolls back, together with its writes.
//!
//! ```text
//! cargo run -p advisory-locked-tests --example sqlx_transaction
//! ```
//!
//! Eight payments of 100 arrive at once for one invoice of 500, each on its
//! own connection of a sqlx pool. Each handler begins a transaction and
//! calls
//!
//! ```ignore
//! #[advisory_locked(key = "invoice:{invoice}", wait = "10s", on = tx)]
//! async fn book(tx: &mut sqlx::PgTransaction<'_>, invoice: i64, cents: i64)
//!     -> Result<i64, PayError> { ... }
//! ```
//!
//! which takes `pg_advisory_xact_lock` in `tx` (waiting at most 10 s, else
//! `Error::WaitTimeout`) and then runs the body: record the attempt, read
//! what is still due, book the payment or refuse it. The caller then commits
//! (`Ok`) or rolls back (`Err`): the lock is *not* released when `book`
//! returns, but when the caller's transaction ends, so the next payment
//! reads the committed balance. No registry entry is configured: the lock
//! uses the caller's connection only (`advisory_locked::external` has the
//! same without the attribute, and session-level locks on a connection).
//!
//! The example checks that exactly five payments were booked, the invoice
//! was not overpaid, and the refused attempts left no row behind. (The
//! `transaction` example does the same with a transaction the crate opens
//! itself, `transaction = tx`.)
//!
//! The database: `DATABASE_URL`, else postgres://postgres@127.0.0.1:5432/postgres,
//! else a throwaway server started from the installed PostgreSQL binaries
//! (`advisory_locked_tests::demo`). The example's tables are dropped at exit.

use advisory_locked::advisory_locked;
use advisory_locked_tests::demo::{check, describe, find_or_start_server, DemoError};
use sqlx::postgres::{PgPool, PgPoolOptions};

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
    Db(sqlx::Error),
}

impl From<sqlx::Error> for PayError {
    fn from(e: sqlx::Error) -> Self {
        PayError::Db(e)
    }
}

/// Books a payment in the caller's transaction, under the invoice's lock.
#[advisory_locked(key = "invoice:{invoice}", wait = "10s", on = tx)]
async fn book(tx: &mut sqlx::PgTransaction<'_>, invoice: i64, cents: i64) -> Result<i64, PayError> {
    sqlx::query("INSERT INTO example_sqlx_payments (invoice, cents) VALUES ($1, $2)")
        .bind(invoice)
        .bind(cents)
        .execute(&mut **tx)
        .await?;
    let due: i64 =
        sqlx::query_scalar("SELECT total - paid FROM example_sqlx_invoices WHERE id = $1")
            .bind(invoice)
            .fetch_one(&mut **tx)
            .await?;
    if cents > due {
        return Err(PayError::Overpaid { due });
    }
    sqlx::query("UPDATE example_sqlx_invoices SET paid = paid + $2 WHERE id = $1")
        .bind(invoice)
        .bind(cents)
        .execute(&mut **tx)
        .await?;
    Ok(due - cents)
}

/// A request handler: its own transaction, committed or rolled back by it.
async fn handle_payment(
    pool: PgPool,
    invoice: i64,
    cents: i64,
) -> Result<Result<i64, PayError>, DemoError> {
    let mut tx = pool.begin().await?;
    let booked = book(&mut tx, invoice, cents).await?; // Err: the lock wait failed
    if booked.is_ok() {
        tx.commit().await?; // the writes and the end of the lock, together
    } else {
        tx.rollback().await?; // the attempt row goes, and the lock with it
    }
    Ok(booked)
}

async fn run(pool: &PgPool) -> Result<(), DemoError> {
    sqlx::raw_sql(&format!(
        "CREATE TABLE example_sqlx_invoices (id int8 PRIMARY KEY, total int8 NOT NULL, paid int8 NOT NULL); \
         CREATE TABLE example_sqlx_payments (invoice int8 NOT NULL, cents int8 NOT NULL); \
         INSERT INTO example_sqlx_invoices VALUES (7, {TOTAL}, 0)"
    ))
    .execute(pool)
    .await?;
    let calls: Vec<_> = (0..PAYMENTS)
        .map(|_| tokio::spawn(handle_payment(pool.clone(), 7, AMOUNT)))
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
                println!("  refused {AMOUNT}: only {due} due (rolled back)");
            }
            Err(PayError::Db(e)) => return Err(e.into()),
        }
    }
    let paid: i64 = sqlx::query_scalar("SELECT paid FROM example_sqlx_invoices WHERE id = 7")
        .fetch_one(pool)
        .await?;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM example_sqlx_payments")
        .fetch_one(pool)
        .await?;
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
        "{PAYMENTS} payments of {AMOUNT} at once for an invoice of {TOTAL}, on a sqlx pool; database {}",
        describe(&url)
    );
    let pool = PgPoolOptions::new()
        .max_connections(PAYMENTS as u32 + 1)
        .connect(&url)
        .await?;
    let drop_tables = "DROP TABLE IF EXISTS example_sqlx_invoices, example_sqlx_payments";
    sqlx::raw_sql(drop_tables).execute(&pool).await?;
    let result = run(&pool).await;
    sqlx::raw_sql(drop_tables).execute(&pool).await?;
    pool.close().await;
    result
}

#[tokio::main]
async fn main() {
    if let Err(e) = main_inner().await {
        eprintln!("sqlx_transaction: {e}");
        std::process::exit(1);
    }
}
