//! Connecting: every plain connection the crate opens (probes, set-up
//! checks, status) goes through here.

use tokio_postgres::{Client, NoTls};

use crate::config::Settings;

/// A plain connection with an entry's settings (the same transport as the
/// lock sessions, TLS included), its connection driven by a spawned task:
/// for one-off probes at configuration time. Dropping the client closes it.
pub(crate) async fn connect_probe(settings: &Settings) -> Result<Client, tokio_postgres::Error> {
    #[cfg(feature = "tls-rustls")]
    if let Some(tls) = &settings.tls {
        let (client, connection) = settings.pg.connect(tls.clone()).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        return Ok(client);
    }
    let (client, connection) = settings.pg.connect(NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// True if `e` means the session is gone even though its connection task
/// may not have noticed yet: the connection is closed, or the server sent a
/// FATAL/PANIC error (e.g. `pg_terminate_backend`), after which it always
/// ends the connection.
pub(crate) fn ends_session(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::Severity;
    e.is_closed()
        || e.as_db_error().is_some_and(|db| {
            matches!(
                db.parsed_severity(),
                Some(Severity::Fatal | Severity::Panic)
            )
        })
}
