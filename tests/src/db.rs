//! The server under test (`DATABASE_URL`), plain connections to it, and
//! what a test creates there for itself: temporary databases and tables,
//! registry entries, sessions it can find by `application_name`.

use tokio_postgres::{Client, NoTls};

use crate::unique_ident;

/// The server under test: `DATABASE_URL` when set, else the local default.
pub fn db_url() -> String {
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// `db_url()` with `application_name` set to `app`, so that a test can
/// count its own sessions in `pg_stat_activity`.
pub fn db_url_with_app(app: &str) -> String {
    let url = db_url();
    if url.contains("://") {
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}application_name={app}")
    } else {
        format!("{url} application_name={app}")
    }
}

/// A connection URL for database `db` of the test server (`db_url()` with
/// its database name replaced).
pub fn db_url_for_database(db: &str) -> String {
    let url = db_url();
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b.to_owned(), format!("?{q}")),
        None => (url.clone(), String::new()),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[scheme_end..].find('/') {
        Some(i) => base[..scheme_end + i].to_owned(),
        None => base,
    };
    format!("{base}/{db}{query}")
}

/// A plain tokio-postgres connection (its connection task runs on the
/// current runtime). Panics with a hint if the server does not answer.
pub async fn raw_connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot connect to the test server ({e}); start one on 127.0.0.1:5432 \
                 with trust auth (scripts/test does), or set DATABASE_URL"
            )
        });
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// Installs a registry entry named `pool` for the test server (2 sessions).
/// Call it inside the test that uses it: its sessions live on that test's runtime.
pub async fn install(pool: &str) -> advisory_locked::Locker {
    advisory_locked::LockConfig::from_url(&db_url())
        .expect("DATABASE_URL")
        .name(pool)
        .sessions(2)
        .install()
        .await
        .unwrap_or_else(|e| panic!("cannot install registry entry {pool:?}: {e}"))
}

/// How many sessions with this `application_name` are connected now.
pub async fn sessions_named(client: &Client, app: &str) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            &[&app],
        )
        .await
        .expect("pg_stat_activity query failed")
        .get(0)
}

/// The server pids of the client backends connected with `application_name` = `app`.
pub async fn backends_named(client: &Client, app: &str) -> Vec<i32> {
    client
        .query(
            "SELECT pid FROM pg_stat_activity \
             WHERE application_name = $1 AND backend_type = 'client backend' ORDER BY pid",
            &[&app],
        )
        .await
        .expect("pg_stat_activity query failed")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// `pg_terminate_backend(pid)`; true if a backend of that pid was signalled.
pub async fn terminate_backend(client: &Client, pid: i32) -> bool {
    client
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .expect("pg_terminate_backend failed")
        .get(0)
}

/// Runs `sql` on a fresh connection to `url`, best effort, on a thread with
/// a runtime of its own (a drop can't await, and may run inside a runtime
/// or outside any).
fn execute_detached(url: String, sql: String) {
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&url, NoTls).await.ok()?;
            tokio::spawn(conn);
            client.batch_execute(&sql).await.ok()
        })
    })
    .join();
}

/// A database of the test server made for one test, dropped (best effort,
/// `WITH (FORCE)`) when this is dropped.
#[derive(Debug)]
pub struct TempDatabase {
    /// Its name (an SQL identifier).
    pub name: String,
}

impl TempDatabase {
    /// `CREATE DATABASE <unique name from prefix>` through `admin`.
    pub async fn create(admin: &Client, prefix: &str) -> TempDatabase {
        let name = unique_ident(prefix);
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        TempDatabase { name }
    }

    /// A connection URL for it.
    pub fn url(&self) -> String {
        db_url_for_database(&self.name)
    }
}

impl Drop for TempDatabase {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        execute_detached(db_url(), sql);
    }
}

/// A table created for one test run and dropped (best effort) on drop.
#[derive(Debug)]
pub struct ScratchTable {
    /// The table's name (an identifier unique to this run).
    pub name: String,
    url: String,
}

impl ScratchTable {
    /// Creates `{prefix}_{pid}_{n}` with the given column list, e.g.
    /// `"(id bigserial primary key, key text)"`.
    pub async fn create(client: &Client, prefix: &str, columns: &str) -> ScratchTable {
        let name = unique_ident(prefix);
        client
            .batch_execute(&format!("CREATE UNLOGGED TABLE {name} {columns}"))
            .await
            .unwrap_or_else(|e| panic!("cannot create table {name}: {e}"));
        ScratchTable {
            name,
            url: db_url(),
        }
    }
}

impl Drop for ScratchTable {
    fn drop(&mut self) {
        let sql = format!("DROP TABLE IF EXISTS {}", self.name);
        execute_detached(self.url.clone(), sql);
    }
}
