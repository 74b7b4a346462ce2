//! What the runnable examples (`tests/examples/*.rs`) share: a database to
//! run against, found or started ([`find_or_start_server`],
//! [`start_throwaway_servers`]), a printable form of its URL ([`describe`]),
//! and the check an example ends with ([`check`]).
//!
//! The rule every example follows: `DATABASE_URL` if set, else
//! postgres://postgres@127.0.0.1:5432/postgres if something answers there,
//! else a [`ThrowawayServer`] started from the installed PostgreSQL binaries
//! for the run (as root, through `runuser`), stopped and deleted when the
//! returned value is dropped.

use std::time::Duration;

use crate::ThrowawayServer;

/// The error type of the examples: anything, printed by `main`.
pub type DemoError = Box<dyn std::error::Error + Send + Sync>;

/// The default local server the examples try before starting their own.
pub const LOCAL_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The database to use: `DATABASE_URL`, else the default local server, else
/// a throwaway server started from the installed binaries (kept alive, and
/// stopped, by the returned value).
pub async fn find_or_start_server() -> Result<(String, Option<ThrowawayServer>), DemoError> {
    if let Ok(url) = std::env::var("DATABASE_URL") {
        if !url.trim().is_empty() {
            return Ok((url, None));
        }
    }
    let answers = match LOCAL_URL
        .parse::<tokio_postgres::Config>()?
        .connect_timeout(Duration::from_secs(3))
        .connect(tokio_postgres::NoTls)
        .await
    {
        Ok(_) => true,
        Err(e) => {
            println!("no PostgreSQL answers at 127.0.0.1:5432 ({e})");
            false
        }
    };
    if answers {
        return Ok((LOCAL_URL.to_owned(), None));
    }
    let mut servers = start_throwaway_servers(1)?;
    let server = servers.pop().ok_or("no throwaway server started")?;
    Ok((server.url("postgres"), Some(server)))
}

/// `n` independent throwaway servers (for a quorum, which needs servers
/// that share nothing), started from the installed PostgreSQL binaries.
/// Fails with a message saying what to install when they are missing.
pub fn start_throwaway_servers(n: usize) -> Result<Vec<ThrowawayServer>, DemoError> {
    let installed = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dirs| dirs.flatten().any(|d| d.path().join("bin/initdb").exists()))
        .unwrap_or(false);
    if !installed {
        return Err("no PostgreSQL server to use. Either set DATABASE_URL=postgres://user:password@host:port/db, \
                    start a server on 127.0.0.1:5432 that lets user postgres in, \
                    or install the server binaries (Debian/Ubuntu: apt-get install postgresql) so that this example can start a throwaway one"
            .into());
    }
    let mut servers = Vec::with_capacity(n);
    for i in 1..=n {
        println!("starting throwaway PostgreSQL server {i}/{n} from the installed binaries ...");
        let server = std::panic::catch_unwind(ThrowawayServer::start)
            .map_err(|_| "could not start a throwaway server (see the message above)")?;
        servers.push(server);
    }
    Ok(servers)
}

/// `host:port/dbname` of a connection string, never its password.
pub fn describe(url: &str) -> String {
    match url.parse::<tokio_postgres::Config>() {
        Ok(c) => {
            let host = match c.get_hosts().first() {
                Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
                Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
                None => "localhost".to_owned(),
            };
            let port = c.get_ports().first().copied().unwrap_or(5432);
            format!("{host}:{port}/{}", c.get_dbname().unwrap_or("postgres"))
        }
        Err(_) => "(unparsable DATABASE_URL)".to_owned(),
    }
}

/// `Ok` if `ok`, else an error saying what was `expected`: an example ends
/// with the checks of what it showed, and exits with status 1 when one
/// fails.
pub fn check(ok: bool, expected: &str) -> Result<(), DemoError> {
    if ok {
        Ok(())
    } else {
        Err(format!("expected: {expected}").into())
    }
}
