//! The PostgreSQL server that unit tests talk to: `DATABASE_URL`, else
//! `postgres://postgres@127.0.0.1:5432/postgres` (as the integration tests).

use tokio_postgres::tls::NoTlsStream;
use tokio_postgres::{Client, Connection, NoTls, Socket};

/// A plain connection to the test server; the caller drives `Connection`.
pub(crate) async fn connect() -> (Client, Connection<Socket, NoTlsStream>) {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    tokio_postgres::connect(&url, NoTls)
        .await
        .expect("the test server (DATABASE_URL)")
}

/// A plain connection to the test server, driven by a spawned task.
pub(crate) async fn client() -> Client {
    let (client, conn) = connect().await;
    tokio::spawn(conn);
    client
}
