//! Connecting: the one path by which the crate opens every connection —
//! lock sessions, wait sessions, the probes that vet a server, transaction
//! connections, fencing set-up and `status`.
//!
//! The host loop is the crate's own, as tokio-postgres's `connect` would run
//! it: every host of the connection string in order (shuffled with
//! `load_balance_hosts=random`), its `hostaddr` and port, each attempt
//! bounded by `connect_timeout`, the socket's TCP options. tokio-postgres
//! then does the start-up on that socket ([`tokio_postgres::Config::connect_raw`]:
//! authentication, `sslmode`, parameters) through one TLS connector type,
//! [`Handshake`], with or without TLS. A server in recovery (a hot standby)
//! is skipped: its advisory locks coordinate nothing with the primary, so
//! the crate needs a primary whatever `target_session_attrs` says
//! (`read-only` is refused as a configuration mistake); [`Error::Standby`]
//! comes only when no host qualifies.
//!
//! The socket (or the TLS stream over it) can be taken back after the
//! start-up ([`Handover`]), for a lock session's dispatcher.

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::IpAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::config::{Host, LoadBalanceHosts, SslMode};
use tokio_postgres::{AsyncMessage, CancelToken, Client, Connection};

use crate::config::Settings;
use crate::pg::sql;
use crate::pg::wire::{Lent, Socket, Transport};
use crate::Error;

/// One host of a connection string, where a connection can be attempted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    host: Option<Host>,
    addr: Option<IpAddr>,
    port: u16,
}

impl Target {
    /// The host's name for TLS (server name check) and messages.
    fn name(&self) -> String {
        match (&self.host, &self.addr) {
            (Some(Host::Tcp(h)), _) => h.clone(),
            #[cfg(unix)]
            (Some(Host::Unix(p)), _) => p.display().to_string(),
            (None, Some(ip)) => ip.to_string(),
            (None, None) => String::new(),
        }
    }

    /// `host:port`, for messages (never a password).
    pub(crate) fn describe(&self) -> String {
        format!("{}:{}", self.name(), self.port)
    }
}

/// The hosts of `config`, in the order to try them.
pub(crate) fn targets(config: &tokio_postgres::Config) -> Result<Vec<Target>, String> {
    let (hosts, addrs, ports) = (
        config.get_hosts(),
        config.get_hostaddrs(),
        config.get_ports(),
    );
    if let Some(reason) = crate::config::servers_reason(config) {
        return Err(reason);
    }
    let n = hosts.len().max(addrs.len());
    let mut out: Vec<Target> = (0..n)
        .map(|i| Target {
            host: hosts.get(i).cloned(),
            addr: addrs.get(i).copied(),
            port: ports.get(i).or(ports.first()).copied().unwrap_or(5432),
        })
        .collect();
    if config.get_load_balance_hosts() == LoadBalanceHosts::Random {
        shuffle(&mut out);
    }
    Ok(out)
}

/// Fisher–Yates with the standard library's randomly keyed hasher as the
/// source (load balancing needs no better randomness).
fn shuffle<T>(items: &mut [T]) {
    for i in (1..items.len()).rev() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(i);
        items.swap(i, (h.finish() % (i as u64 + 1)) as usize);
    }
}

/// Opens a socket to `target`: its `hostaddr`, else every address its name
/// resolves to, each attempt bounded by `connect_timeout`; TCP_NODELAY and
/// the connection string's TCP options set.
async fn open_socket(config: &tokio_postgres::Config, target: &Target) -> io::Result<Socket> {
    #[cfg(unix)]
    if let Some(Host::Unix(dir)) = &target.host {
        let path: PathBuf = dir.join(format!(".s.PGSQL.{}", target.port));
        let s = within(config, tokio::net::UnixStream::connect(&path)).await?;
        return Ok(Socket::Unix(s));
    }
    let addrs: Vec<std::net::SocketAddr> = match (target.addr, &target.host) {
        (Some(ip), _) => vec![(ip, target.port).into()],
        (None, Some(Host::Tcp(name))) => {
            let mut found: Vec<_> = tokio::net::lookup_host((name.as_str(), target.port))
                .await?
                .collect();
            if config.get_load_balance_hosts() == LoadBalanceHosts::Random {
                shuffle(&mut found);
            }
            found
        }
        _ => Vec::new(),
    };
    let mut last = io::Error::new(
        io::ErrorKind::InvalidInput,
        "the host resolved to no address",
    );
    for addr in addrs {
        match within(config, tokio::net::TcpStream::connect(addr)).await {
            Ok(s) => {
                s.set_nodelay(true)?;
                tcp_options(config, &s)?;
                return Ok(Socket::Tcp(s));
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// A connect attempt bounded by the config's `connect_timeout`, as in
/// tokio-postgres (so that one silent host leaves time for the next).
async fn within<T>(
    config: &tokio_postgres::Config,
    connect: impl Future<Output = io::Result<T>>,
) -> io::Result<T> {
    match config.get_connect_timeout() {
        Some(t) => tokio::time::timeout(*t, connect).await.unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection timed out",
            ))
        }),
        None => connect.await,
    }
}

/// The TCP options tokio-postgres would set on its own socket: keepalives
/// (on by default, 2 hours idle; `keepalives`, `keepalives_idle`,
/// `keepalives_interval`, `keepalives_retries`) and, on Linux,
/// `tcp_user_timeout`.
fn tcp_options(config: &tokio_postgres::Config, stream: &tokio::net::TcpStream) -> io::Result<()> {
    let sock = socket2::SockRef::from(stream);
    #[cfg(target_os = "linux")]
    if let Some(t) = config.get_tcp_user_timeout() {
        sock.set_tcp_user_timeout(Some(*t))?;
    }
    if config.get_keepalives() {
        let keepalive = socket2::TcpKeepalive::new().with_time(config.get_keepalives_idle());
        #[cfg(not(any(
            target_os = "aix",
            target_os = "redox",
            target_os = "solaris",
            target_os = "openbsd"
        )))]
        let keepalive = match config.get_keepalives_interval() {
            Some(interval) => keepalive.with_interval(interval),
            None => keepalive,
        };
        #[cfg(not(any(
            target_os = "aix",
            target_os = "redox",
            target_os = "solaris",
            target_os = "windows",
            target_os = "openbsd"
        )))]
        let keepalive = match config.get_keepalives_retries() {
            Some(retries) => keepalive.with_retries(retries),
            None => keepalive,
        };
        sock.set_tcp_keepalive(&keepalive)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// TLS: one connector type, with or without TLS
// ---------------------------------------------------------------------------

/// A TLS stream of any library, as one type.
pub(crate) trait TlsIo:
    AsyncRead + AsyncWrite + tokio_postgres::tls::TlsStream + Send + Unpin
{
}

impl<T: AsyncRead + AsyncWrite + tokio_postgres::tls::TlsStream + Send + Unpin> TlsIo for T {}

impl tokio_postgres::tls::TlsStream for Box<dyn TlsIo> {
    fn channel_binding(&self) -> tokio_postgres::tls::ChannelBinding {
        (**self).channel_binding()
    }
}

/// What the start-up speaks over once TLS is negotiated (lent, so that it
/// can be taken back).
pub(crate) type TlsStream = Lent<Box<dyn TlsIo>>;

/// Where a handshake's TLS stream is kept for [`Handover::take`].
type Back = Arc<Mutex<Option<Lent<Box<dyn TlsIo>>>>>;

/// The connector of an entry: its TLS configuration, if any.
#[derive(Clone)]
pub(crate) struct Connector {
    #[cfg(feature = "tls-rustls")]
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
}

impl Connector {
    pub(crate) fn of(settings: &Settings) -> Connector {
        #[cfg(not(feature = "tls-rustls"))]
        let _ = settings;
        Connector {
            #[cfg(feature = "tls-rustls")]
            tls: settings.tls.clone(),
        }
    }

    fn has_tls(&self) -> bool {
        #[cfg(feature = "tls-rustls")]
        return self.tls.is_some();
        #[cfg(not(feature = "tls-rustls"))]
        false
    }

    /// The handshake for one connection to host `name`.
    fn handshake(&self, name: &str) -> Result<Handshake, Error> {
        #[cfg(feature = "tls-rustls")]
        if let Some(tls) = &self.tls {
            use tokio_postgres::tls::MakeTlsConnect;
            let mut make = tls.clone();
            let inner =
                MakeTlsConnect::<Socket>::make_tls_connect(&mut make, name).map_err(|e| {
                    Error::Connect {
                        target: name.to_owned(),
                        source: e.into(),
                    }
                })?;
            return Ok(Handshake {
                inner: Some(inner),
                back: Back::default(),
            });
        }
        let _ = name;
        Ok(Handshake {
            #[cfg(feature = "tls-rustls")]
            inner: None,
            back: Back::default(),
        })
    }
}

/// rustls's handshake for one connection (its type is not nameable
/// otherwise).
#[cfg(feature = "tls-rustls")]
type RustlsConnect = <tokio_postgres_rustls::MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<Socket>>::TlsConnect;

/// One connection's TLS handshake (see [`Connector`]); keeps the stream it
/// makes for [`Handover::take`].
pub(crate) struct Handshake {
    #[cfg(feature = "tls-rustls")]
    inner: Option<RustlsConnect>,
    back: Back,
}

type HandshakeFuture = Pin<Box<dyn Future<Output = Result<TlsStream, io::Error>> + Send>>;

impl<S: AsyncRead + AsyncWrite + Send + Unpin + 'static> tokio_postgres::tls::TlsConnect<S>
    for Handshake
{
    type Stream = TlsStream;
    type Error = io::Error;
    type Future = HandshakeFuture;

    fn connect(self, stream: S) -> HandshakeFuture {
        let back = self.back;
        #[cfg(feature = "tls-rustls")]
        if let Some(inner) = self.inner {
            return Box::pin(async move {
                let tls = tokio_postgres::tls::TlsConnect::connect(inner, stream).await?;
                let (lent, kept) = Lent::new(Box::new(tls) as Box<dyn TlsIo>);
                *back.lock().unwrap_or_else(|p| p.into_inner()) = Some(kept);
                Ok(lent)
            });
        }
        drop((stream, back));
        // Not reached: without a TLS configuration, connections are made
        // with sslmode=disable (see `connect_at`).
        Box::pin(async { Err(io::Error::other("TLS is not configured")) })
    }
}

impl<St: tokio_postgres::tls::TlsStream + Unpin> tokio_postgres::tls::TlsStream for Lent<St> {
    fn channel_binding(&self) -> tokio_postgres::tls::ChannelBinding {
        self.with_ref(|s| s.channel_binding())
            .unwrap_or_else(tokio_postgres::tls::ChannelBinding::none)
    }
}

// ---------------------------------------------------------------------------
// Connecting
// ---------------------------------------------------------------------------

/// A connection after its start-up, on a primary.
pub(crate) struct Connected {
    pub(crate) client: Client,
    pub(crate) connection: Connection<Lent<Socket>, TlsStream>,
    /// The host it was made to.
    pub(crate) target: Target,
    pub(crate) handover: Handover,
}

/// Takes the socket (or the TLS stream over it) back from tokio-postgres.
pub(crate) struct Handover {
    kept: Lent<Socket>,
    back: Back,
}

impl Handover {
    /// The TLS stream if TLS was negotiated, else the plain socket; `None`
    /// if already taken.
    pub(crate) fn take(self) -> Option<Transport> {
        match self.back.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(tls) => tls.take().map(|t| Box::new(t) as Transport),
            None => self.kept.take().map(|s| Box::new(s) as Transport),
        }
    }
}

/// Connects to the first host of `settings` that answers and is not a
/// standby (see the module's docs); each host's attempt is bounded by the
/// connect timeout.
pub(crate) async fn connect(settings: &Settings) -> Result<Connected, Error> {
    let targets = targets(&settings.pg).map_err(|reason| Error::InvalidConfig { reason })?;
    let mut standby = None;
    let mut last = None;
    for target in targets {
        match connect_at(settings, &target).await {
            Ok(c) => return Ok(c),
            Err(e @ Error::Standby { .. }) => {
                tracing::info!(pool = %settings.name, host = %target.describe(), "advisory-locked: host is a standby; trying the next");
                standby = Some(e);
            }
            Err(e) => {
                tracing::debug!(pool = %settings.name, host = %target.describe(), error = %crate::error::cause(&e), "advisory-locked: host failed; trying the next");
                last = Some(e);
            }
        }
    }
    // A standby is the telling failure when no host qualified.
    Err(standby.or(last).unwrap_or_else(|| Error::InvalidConfig {
        reason: "the connection string names no host".to_owned(),
    }))
}

/// Connects to `target` only, within the connect timeout: the socket, the
/// start-up, and the standby check.
pub(crate) async fn connect_at(settings: &Settings, target: &Target) -> Result<Connected, Error> {
    let after = settings.connect_timeout;
    let described = format!("{}{}", target.describe(), database_suffix(settings));
    match tokio::time::timeout(after, attempt(settings, target, &described)).await {
        Ok(result) => result,
        Err(_) => Err(Error::ConnectTimeout {
            target: described,
            after,
        }),
    }
}

fn database_suffix(settings: &Settings) -> String {
    let db = settings
        .pg
        .get_dbname()
        .or(settings.pg.get_user())
        .unwrap_or("postgres");
    format!("/{db}")
}

async fn attempt(
    settings: &Settings,
    target: &Target,
    described: &str,
) -> Result<Connected, Error> {
    let connect_err = |source: Box<dyn std::error::Error + Send + Sync>| Error::Connect {
        target: described.to_owned(),
        source,
    };
    let connector = Connector::of(settings);
    let socket = open_socket(&settings.pg, target)
        .await
        .map_err(|e| connect_err(Box::new(e)))?;
    let (lent, kept) = Lent::new(socket);
    let handshake = connector.handshake(&target.name())?;
    let back = handshake.back.clone();
    let mut config = settings.pg.clone();
    if !connector.has_tls() {
        // Nothing to negotiate TLS with (`require` was refused at
        // configuration): a plain connection, as `prefer` allows.
        config.ssl_mode(SslMode::Disable);
    }
    let (client, mut connection) = config
        .connect_raw(lent, handshake)
        .await
        .map_err(|e| connect_err(Box::new(e)))?;
    let rows = drive(
        &mut connection,
        &mut |_, _| {},
        client.simple_query(sql::IS_STANDBY),
    )
    .await
    .and_then(|r| r)
    .map_err(|e| connect_err(Box::new(e)))?;
    let standby = rows
        .iter()
        .any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("t")));
    if standby {
        return Err(Error::Standby {
            target: described.to_owned(),
        });
    }
    Ok(Connected {
        client,
        connection,
        target: target.clone(),
        handover: Handover { kept, back },
    })
}

/// A plain connection (the same transport as the lock sessions, TLS
/// included), its connection driven by a spawned task: for probes,
/// fencing set-up and `status`. Dropping the client closes it.
pub(crate) async fn connect_client(settings: &Settings) -> Result<(Client, Target), Error> {
    let connected = connect(settings).await?;
    Ok((
        spawn(connected.connection, connected.client),
        connected.target,
    ))
}

/// [`connect_client`] to one host (the one a lock session is on).
pub(crate) async fn connect_client_at(
    settings: &Settings,
    target: &Target,
) -> Result<Client, Error> {
    let connected = connect_at(settings, target).await?;
    Ok(spawn(connected.connection, connected.client))
}

fn spawn(connection: Connection<Lent<Socket>, TlsStream>, client: Client) -> Client {
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "advisory-locked: probe connection ended");
        }
    });
    client
}

/// Awaits `work` while driving `connection` (which makes the requests of
/// `work` go out and their answers come in); notifications go to
/// `on_notify`, notices are logged; fails if the connection ends first.
pub(crate) async fn drive<S, T, F, N>(
    connection: &mut Connection<S, T>,
    on_notify: &mut N,
    work: F,
) -> Result<F::Output, tokio_postgres::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
    F: Future,
    N: FnMut(&str, &str),
{
    let mut work = std::pin::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return Ok(out),
            msg = std::future::poll_fn(|cx| connection.poll_message(cx)) => match msg {
                Some(Ok(AsyncMessage::Notification(n))) => on_notify(n.channel(), n.payload()),
                Some(Ok(AsyncMessage::Notice(n))) => {
                    tracing::info!(target: "advisory_locked::server", severity = n.severity(), code = n.code().code(), "{}", n.message());
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                // Closed: the work's own requests fail with that.
                None => return Ok(work.await),
            },
        }
    }
}

// ---------------------------------------------------------------------------
// Cancelling
// ---------------------------------------------------------------------------

/// What it takes to cancel the statement running on a connection: its
/// backend key data (in the token) and the host it is on.
pub(crate) struct Canceller {
    pub(crate) token: CancelToken,
    pub(crate) target: Target,
}

impl Canceller {
    /// Sends a cancel request to the connection's host, over a new socket
    /// (TLS if configured), bounded by the connect timeout.
    ///
    /// Over plain TCP the request's connection is kept open until the other
    /// side closes it: pgbouncer (1.18 checked) drops a cancel request whose
    /// client hangs up before it has forwarded it.
    pub(crate) async fn cancel(&self, settings: &Settings) -> Result<(), Error> {
        let after = settings.connect_timeout;
        let target = self.target.describe();
        let work = async {
            let socket =
                open_socket(&settings.pg, &self.target)
                    .await
                    .map_err(|e| Error::Connect {
                        target: target.clone(),
                        source: Box::new(e),
                    })?;
            let connector = Connector::of(settings);
            let handshake = connector.handshake(&self.target.name())?;
            let (lent, kept) = Lent::new(socket);
            let sent = if connector.has_tls() {
                self.token.cancel_query_raw(lent, handshake).await
            } else {
                self.token
                    .cancel_query_raw(KeepOpen(lent), tokio_postgres::NoTls)
                    .await
            };
            sent.map_err(|e| Error::Connect {
                target: target.clone(),
                source: Box::new(e),
            })?;
            wait_closed(kept).await;
            Ok(())
        };
        match tokio::time::timeout(after, work).await {
            Ok(r) => r,
            Err(_) => Err(Error::ConnectTimeout { target, after }),
        }
    }
}

/// Reads until the other side closes the socket: the request was handled.
async fn wait_closed(kept: Lent<Socket>) {
    use tokio::io::AsyncReadExt;
    let Some(mut socket) = kept.take() else {
        return;
    };
    let mut buf = [0u8; 64];
    while let Ok(n) = socket.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

/// A stream whose `shutdown` does nothing (see [`Canceller::cancel`]).
struct KeepOpen<S>(S);

impl<S: AsyncRead + Unpin> AsyncRead for KeepOpen<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for KeepOpen<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        self: Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
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

/// How many hosts a connect may try, each bounded by `connect_timeout`: a
/// caller that bounds a whole connect gives it that many timeouts.
pub(crate) fn attempts(settings: &Settings) -> u32 {
    targets(&settings.pg).map_or(1, |t| t.len().max(1) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> tokio_postgres::Config {
        url.parse().unwrap()
    }

    #[test]
    fn every_host_with_its_port_and_addr() {
        let c = config("host=a,b,c port=1,2,3 hostaddr=127.0.0.1,127.0.0.2,127.0.0.3");
        let t = targets(&c).unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(t[1].describe(), "b:2");
        assert_eq!(t[2].addr, Some("127.0.0.3".parse().unwrap()));
        let one_port = targets(&config("host=a,b port=7")).unwrap();
        assert_eq!((one_port[0].port, one_port[1].port), (7, 7));
    }

    #[test]
    fn bad_host_lists_are_refused() {
        assert!(targets(&config("user=x")).is_err());
        assert!(targets(&config("host=a,b port=1,2,3")).is_err());
        assert!(targets(&config("host=a,b hostaddr=127.0.0.1")).is_err());
        assert!(targets(&config("host=a target_session_attrs=read-only")).is_err());
        assert!(targets(&config("host=a target_session_attrs=read-write")).is_ok());
    }

    /// `load_balance_hosts=random` tries the hosts in varying orders; the
    /// default keeps the given one.
    #[test]
    fn load_balancing_shuffles_the_hosts() {
        let hosts = "host=a,b,c,d,e,f,g,h";
        let order = |c: &tokio_postgres::Config| -> Vec<String> {
            targets(c).unwrap().iter().map(Target::name).collect()
        };
        let plain = config(hosts);
        assert_eq!(order(&plain), ["a", "b", "c", "d", "e", "f", "g", "h"]);
        let random = config(&format!("{hosts} load_balance_hosts=random"));
        let orders: std::collections::HashSet<Vec<String>> =
            (0..20).map(|_| order(&random)).collect();
        assert!(orders.len() > 1, "20 shuffles gave one order");
    }
}
