//! The PostgreSQL server that unit tests talk to: `DATABASE_URL`, else
//! `postgres://postgres@127.0.0.1:5432/postgres` (as the integration tests).

use tokio_postgres::tls::NoTlsStream;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Connection, NoTls, Row, Socket, Statement};

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

/// The server process id behind `client`.
pub(crate) async fn backend_pid(client: &Client) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

/// Polls (at most 500 times, 5 ms apart) until the server shows backend
/// `pid` waiting for an advisory lock; `blocked`, that backend's wait,
/// must stay pending meanwhile. Panics, saying `what`, otherwise.
pub(crate) async fn until_waiting(
    observer: &Client,
    pid: i32,
    blocked: &mut (impl std::future::Future + Unpin),
    what: &str,
) {
    use futures_util::FutureExt;
    for _ in 0..500 {
        assert!(blocked.now_or_never().is_none(), "{what}: not blocked");
        // (Other tests' waiters may be on the server too.)
        let n: i64 = observer
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND pid = $1",
                &[&pid],
            )
            .await
            .unwrap()
            .get(0);
        if n > 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    panic!("{what}: the waiter never showed as waiting");
}

/// A key of a unit test: a bigint, or a pair of integers.
#[derive(Clone, Copy)]
pub(crate) enum TestKey {
    Int(i64),
    Pair(i32, i32),
}

impl TestKey {
    /// The key as SQL arguments: `k`, or `a, b`.
    pub(crate) fn args(self) -> String {
        match self {
            TestKey::Int(k) => k.to_string(),
            TestKey::Pair(a, b) => format!("{a}, {b}"),
        }
    }

    /// A statement that takes the key by hand, shared or exclusive.
    pub(crate) fn take_sql(self, shared: bool) -> String {
        let f = if shared {
            "pg_advisory_lock_shared"
        } else {
            "pg_advisory_lock"
        };
        format!("SELECT {f}({})", self.args())
    }

    /// Runs `statement` with the key's parameters, then `more`.
    pub(crate) async fn query(
        self,
        client: &Client,
        statement: &Statement,
        more: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, tokio_postgres::Error> {
        let (k, a, b);
        let mut params: Vec<&(dyn ToSql + Sync)> = match self {
            TestKey::Int(int) => {
                k = int;
                vec![&k]
            }
            TestKey::Pair(x, y) => {
                (a, b) = (x, y);
                vec![&a, &b]
            }
        };
        params.extend_from_slice(more);
        client.query_one(statement, &params).await
    }
}
