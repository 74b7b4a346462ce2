//! The lock sessions' own speaker of PostgreSQL's frontend/backend protocol.
//!
//! A lock statement is tiny (a Bind with one or two integers, an Execute, a
//! Sync) and its answer is one row of booleans. Sent through
//! `tokio_postgres::Client`, each one also pays for the driver's request and
//! response channels, type checks and a `Row` per answer: about 14,000
//! client instructions for a `SELECT 1`, the larger part of the client's
//! share of a round trip (see the README's performance section). [`Wire`]
//! encodes requests straight into its write buffer and decodes answers
//! straight from its read buffer, on the session's own task.
//!
//! Connecting stays with tokio-postgres: the session lends it the socket
//! ([`Lent`]; with TLS, the stream its connector makes, `LendTls`) for the
//! start-up (authentication, `sslmode`, parameters) and the set-up, and takes
//! it back idle, with nothing unread: the set-up has no `LISTEN`, so the
//! server sends nothing unasked before the hand-over (see
//! `Session::set_up`). Backend messages are parsed with `postgres-protocol`,
//! tokio-postgres's own codec.
//!
//! The session sends only prepared statements with binary parameters and
//! binary results (booleans and integers), one Sync each, so every request
//! ends with exactly one ReadyForQuery, and a failed statement fails only
//! itself. Requests are pipelined: their answers arrive in order.

use std::collections::VecDeque;

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, BytesMut};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::error::SqlState;

use crate::error::{QueryError, ServerError};

/// Reads an `ErrorResponse` or `NoticeResponse` body.
fn parse_error(
    fields: &mut postgres_protocol::message::backend::ErrorFields<'_>,
) -> io::Result<ServerError> {
    use fallible_iterator::FallibleIterator;
    let (mut localized, mut severity, mut code, mut message) = (None, None, None, None);
    while let Some(field) = fields.next()? {
        let value = String::from_utf8_lossy(field.value_bytes());
        match field.type_() {
            b'S' => localized = Some(value.into_owned()),
            b'V' => severity = Some(value.into_owned()),
            b'C' => code = Some(SqlState::from_code(&value)),
            b'M' => message = Some(value.into_owned()),
            _ => {}
        }
    }
    Ok(ServerError {
        severity: severity.or(localized).unwrap_or_default(),
        code: code.unwrap_or(SqlState::INTERNAL_ERROR),
        message: message.unwrap_or_default(),
    })
}

/// One parameter of a prepared statement, sent in binary.
#[derive(Clone, Copy)]
pub(crate) enum Param<'a> {
    I16(i16),
    I32(i32),
    I64(i64),
    I16s(&'a [i16]),
    I32s(&'a [i32]),
    I64s(&'a [i64]),
}

/// The answer to one request: every column of every row, in order, as
/// integers (a boolean is 0 or 1; NULL is `None`).
pub(crate) type Values = Vec<Option<i64>>;

pub(crate) type Answer = Result<Values, Arc<QueryError>>;

/// A connection spoken to directly; see the module's docs.
pub(crate) struct Wire<S> {
    stream: S,
    read: BytesMut,
    write: BytesMut,
    /// Requests sent and not yet answered: the answer being gathered for
    /// the oldest.
    pending: VecDeque<Gathering>,
    /// Set once the connection failed: every later call fails alike.
    broken: Option<Arc<QueryError>>,
}

#[derive(Default)]
struct Gathering {
    values: Values,
    error: Option<ServerError>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Wire<S> {
    pub(crate) fn new(stream: S) -> Wire<S> {
        Wire {
            stream,
            read: BytesMut::with_capacity(8 * 1024),
            write: BytesMut::with_capacity(1024),
            pending: VecDeque::new(),
            broken: None,
        }
    }

    /// Queues a simple-protocol query (statements without parameters, such
    /// as `LISTEN`), answered like any request.
    pub(crate) fn simple(&mut self, sql: &str) -> Result<(), QueryError> {
        frontend::query(sql, &mut self.write)?;
        self.pending.push_back(Gathering::default());
        Ok(())
    }

    /// Queues one execution of prepared statement `name` with `params`,
    /// results in binary. Sent by the next [`Wire::poll_answer`].
    pub(crate) fn execute(&mut self, name: &str, params: &[Param<'_>]) {
        let buf = &mut self.write;
        buf.put_u8(b'B');
        let start = buf.len();
        buf.put_i32(0);
        buf.put_u8(0); // unnamed portal
        buf.put_slice(name.as_bytes());
        buf.put_u8(0);
        buf.put_i16(1); // one format code for all parameters: binary
        buf.put_i16(1);
        buf.put_i16(params.len() as i16);
        for p in params {
            encode(p, buf);
        }
        buf.put_i16(1); // one format code for all results: binary
        buf.put_i16(1);
        let len = (buf.len() - start) as i32;
        buf[start..start + 4].copy_from_slice(&len.to_be_bytes());
        // Execute the unnamed portal, all rows; then Sync.
        buf.put_slice(&[b'E', 0, 0, 0, 9, 0, 0, 0, 0, 0, b'S', 0, 0, 0, 4]);
        self.pending.push_back(Gathering::default());
    }

    /// Sends what is queued, and resolves to the oldest request's answer.
    /// Notifications that arrive meanwhile go to `on_notify` (channel,
    /// payload). Pending while nothing is in flight (the socket is still
    /// watched, so a connection that ends then is noticed: `Closed`).
    pub(crate) fn poll_answer(
        &mut self,
        cx: &mut Context<'_>,
        on_notify: &mut dyn FnMut(&str, &str),
    ) -> Poll<Answer> {
        if let Some(e) = &self.broken {
            return Poll::Ready(Err(e.clone()));
        }
        match self.poll_io(cx, on_notify) {
            // The request's own answer, a server error included.
            Poll::Ready(Ok(answer)) => Poll::Ready(answer.map_err(Arc::new)),
            // The connection's end.
            Poll::Ready(Err(e)) => {
                let e = Arc::new(e);
                self.broken = Some(e.clone());
                Poll::Ready(Err(e))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// [`Wire::poll_answer`] as a future.
    pub(crate) async fn answer(&mut self) -> Answer {
        std::future::poll_fn(|cx| self.poll_answer(cx, &mut |_, _| {})).await
    }

    fn poll_io(
        &mut self,
        cx: &mut Context<'_>,
        on_notify: &mut dyn FnMut(&str, &str),
    ) -> Poll<Result<Result<Values, QueryError>, QueryError>> {
        // Write first: a write that can't finish now does not keep the
        // answers of earlier requests from being read.
        while !self.write.is_empty() {
            match Pin::new(&mut self.stream).poll_write(cx, &self.write) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(QueryError::Closed)),
                Poll::Ready(Ok(n)) => self.write.advance(n),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                Poll::Pending => break,
            }
        }
        loop {
            while let Some(message) = Message::parse(&mut self.read)? {
                if let Some(answer) = self.on_message(message, on_notify)? {
                    return Poll::Ready(Ok(answer));
                }
            }
            if self.read.capacity() - self.read.len() < 1024 {
                self.read.reserve(8 * 1024);
            }
            let mut buf = ReadBuf::uninit(self.read.spare_capacity_mut());
            match Pin::new(&mut self.stream).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) => {
                    let n = buf.filled().len();
                    if n == 0 {
                        return Poll::Ready(Err(QueryError::Closed));
                    }
                    // SAFETY: poll_read initialized the first n bytes.
                    unsafe { self.read.set_len(self.read.len() + n) };
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Handles one message; `Some` when it completes the oldest request.
    #[allow(clippy::type_complexity)]
    fn on_message(
        &mut self,
        message: Message,
        on_notify: &mut dyn FnMut(&str, &str),
    ) -> Result<Option<Result<Values, QueryError>>, QueryError> {
        match message {
            Message::DataRow(row) => {
                let Some(g) = self.pending.front_mut() else {
                    return Err(QueryError::Protocol("a row with no request".into()));
                };
                let buf = row.buffer();
                let mut ranges = row.ranges();
                use fallible_iterator::FallibleIterator;
                while let Some(range) = ranges.next()? {
                    g.values.push(range.map(|r| int(&buf[r])));
                }
            }
            Message::ErrorResponse(body) => {
                let e = parse_error(&mut body.fields())?;
                if e.ends_session() {
                    // No ReadyForQuery follows: the server closes.
                    return Err(QueryError::Server(e));
                }
                match self.pending.front_mut() {
                    Some(g) => {
                        g.error.get_or_insert(e);
                    }
                    None => return Err(QueryError::Server(e)),
                }
            }
            Message::ReadyForQuery(_) => {
                let Some(g) = self.pending.pop_front() else {
                    return Err(QueryError::Protocol("ReadyForQuery with no request".into()));
                };
                return Ok(Some(match g.error {
                    Some(e) => Err(QueryError::Server(e)),
                    None => Ok(g.values),
                }));
            }
            Message::NotificationResponse(n) => {
                if let (Ok(channel), Ok(payload)) = (n.channel(), n.message()) {
                    on_notify(channel, payload);
                }
            }
            Message::BindComplete
            | Message::ParseComplete
            | Message::CloseComplete
            | Message::CommandComplete(_)
            | Message::EmptyQueryResponse
            | Message::NoData
            | Message::PortalSuspended
            | Message::ParameterStatus(_)
            | Message::NoticeResponse(_)
            | Message::RowDescription(_)
            | Message::ParameterDescription(_) => {}
            _ => return Err(QueryError::Protocol("unexpected message".into())),
        }
        Ok(None)
    }
}

/// A binary column as an integer: bool (1 byte), int2, int4, int8.
fn int(bytes: &[u8]) -> i64 {
    match *bytes {
        [b] => b as i64,
        [a, b] => i16::from_be_bytes([a, b]) as i64,
        [a, b, c, d] => i32::from_be_bytes([a, b, c, d]) as i64,
        _ => match <[u8; 8]>::try_from(bytes) {
            Ok(b) => i64::from_be_bytes(b),
            Err(_) => 0,
        },
    }
}

/// OIDs of the array element types.
const INT2: u32 = 21;
const INT4: u32 = 23;
const INT8: u32 = 20;

fn encode(p: &Param<'_>, buf: &mut BytesMut) {
    match *p {
        Param::I16(v) => {
            buf.put_i32(2);
            buf.put_i16(v);
        }
        Param::I32(v) => {
            buf.put_i32(4);
            buf.put_i32(v);
        }
        Param::I64(v) => {
            buf.put_i32(8);
            buf.put_i64(v);
        }
        Param::I16s(v) => array(buf, INT2, v.len(), 2, |b, i| b.put_i16(v[i])),
        Param::I32s(v) => array(buf, INT4, v.len(), 4, |b, i| b.put_i32(v[i])),
        Param::I64s(v) => array(buf, INT8, v.len(), 8, |b, i| b.put_i64(v[i])),
    }
}

/// A one-dimensional array without NULLs, in binary.
fn array(
    buf: &mut BytesMut,
    oid: u32,
    n: usize,
    size: i32,
    mut put: impl FnMut(&mut BytesMut, usize),
) {
    let dims = if n == 0 { 0 } else { 1 };
    let len = 12 + dims * 8 + n as i32 * (4 + size);
    buf.put_i32(len);
    buf.put_i32(dims);
    buf.put_i32(0); // no NULLs
    buf.put_u32(oid);
    if n > 0 {
        buf.put_i32(n as i32);
        buf.put_i32(1); // lower bound
    }
    for i in 0..n {
        buf.put_i32(size);
        put(buf, i);
    }
}

/// A socket lent to tokio-postgres for the start-up of a session and taken
/// back afterwards (see [`handoff`]).
pub(crate) struct Lent<S>(Arc<std::sync::Mutex<Option<S>>>);

impl<S> Lent<S> {
    /// Lends `stream`: the lent handle, and the one to take it back with.
    pub(crate) fn new(stream: S) -> (Lent<S>, Lent<S>) {
        let shared = Arc::new(std::sync::Mutex::new(Some(stream)));
        (Lent(shared.clone()), Lent(shared))
    }

    /// Takes the stream back: the lent handle then fails every call.
    pub(crate) fn take(self) -> Option<S> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    fn with<T>(&self, f: impl FnOnce(Pin<&mut S>) -> Poll<io::Result<T>>) -> Poll<io::Result<T>>
    where
        S: Unpin,
    {
        let mut guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_mut() {
            Some(s) => f(Pin::new(s)),
            None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Lent<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.with(|s| s.poll_read(cx, buf))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Lent<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.with(|s| s.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.with(|s| s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.with(|s| s.poll_shutdown(cx))
    }
}

/// What a lock session's dispatcher speaks over: a [`Socket`], or TLS over
/// one.
pub(crate) type Transport = Box<dyn Io>;

/// A byte stream a [`Wire`] can run over.
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// A lock session's socket: TCP, or a Unix-domain socket.
pub(crate) enum Socket {
    Tcp(tokio::net::TcpStream),
    #[cfg(unix)]
    Unix(tokio::net::UnixStream),
}

/// Opens a socket to the first of the configured hosts that answers, as
/// tokio-postgres would (`host`, `hostaddr`, `port`, `connect_timeout` per
/// host, TCP keepalives and `tcp_user_timeout`); returns it with the host
/// name (for TLS).
pub(crate) async fn open(config: &tokio_postgres::Config) -> io::Result<(Socket, String)> {
    use tokio_postgres::config::Host;
    let hosts = config.get_hosts();
    let addrs = config.get_hostaddrs();
    let ports = config.get_ports();
    let n = hosts.len().max(addrs.len());
    let mut last = io::Error::new(io::ErrorKind::InvalidInput, "no host configured");
    for i in 0..n {
        let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
        let name = match hosts.get(i) {
            Some(Host::Tcp(h)) => h.clone(),
            #[cfg(unix)]
            Some(Host::Unix(dir)) => {
                let path = dir.join(format!(".s.PGSQL.{port}"));
                match within_connect_timeout(config, tokio::net::UnixStream::connect(&path)).await {
                    Ok(s) => return Ok((Socket::Unix(s), String::new())),
                    Err(e) => {
                        last = e;
                        continue;
                    }
                }
            }
            None => String::new(),
        };
        let connect = async {
            match addrs.get(i) {
                Some(ip) => tokio::net::TcpStream::connect((*ip, port)).await,
                None => tokio::net::TcpStream::connect((name.as_str(), port)).await,
            }
        };
        match within_connect_timeout(config, connect).await {
            Ok(s) => {
                s.set_nodelay(true)?;
                tcp_options(config, &s)?;
                let name = if name.is_empty() {
                    addrs.get(i).map(|ip| ip.to_string()).unwrap_or_default()
                } else {
                    name
                };
                return Ok((Socket::Tcp(s), name));
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// A connect attempt to one host, bounded by the config's `connect_timeout`
/// as in tokio-postgres (so that one silent host leaves time for the next).
async fn within_connect_timeout<T>(
    config: &tokio_postgres::Config,
    connect: impl std::future::Future<Output = io::Result<T>>,
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

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(unix)]
            Socket::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(unix)]
            Socket::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_flush(cx),
            #[cfg(unix)]
            Socket::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            #[cfg(unix)]
            Socket::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// A TLS connector for tokio-postgres that keeps a handle on the TLS stream
/// it makes, so that the session can take it back after the start-up.
#[cfg(feature = "tls-rustls")]
pub(crate) struct LendTls<C, St> {
    pub(crate) inner: C,
    pub(crate) back: Arc<std::sync::Mutex<Option<Lent<St>>>>,
}

#[cfg(feature = "tls-rustls")]
impl<S, C> tokio_postgres::tls::TlsConnect<S> for LendTls<C, C::Stream>
where
    C: tokio_postgres::tls::TlsConnect<S>,
    C::Future: Send + 'static,
    C::Stream: Send + 'static,
{
    type Stream = Lent<C::Stream>;
    type Error = C::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Lent<C::Stream>, C::Error>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        let handshake = self.inner.connect(stream);
        let back = self.back;
        Box::pin(async move {
            let tls = handshake.await?;
            let (lent, kept) = Lent::new(tls);
            *back.lock().unwrap_or_else(|p| p.into_inner()) = Some(kept);
            Ok(lent)
        })
    }
}

#[cfg(feature = "tls-rustls")]
impl<St: tokio_postgres::tls::TlsStream + Unpin> tokio_postgres::tls::TlsStream for Lent<St> {
    fn channel_binding(&self) -> tokio_postgres::tls::ChannelBinding {
        match self.0.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            Some(s) => s.channel_binding(),
            None => tokio_postgres::tls::ChannelBinding::none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A wire over a fresh connection to the test server, set up through
    /// tokio-postgres and taken back as a session does.
    async fn wire(prepare: &str) -> (Wire<Socket>, i32) {
        let url = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let config: tokio_postgres::Config = url.parse().unwrap();
        let (socket, _) = open(&config).await.unwrap();
        let (lent, kept) = Lent::new(socket);
        let (client, mut connection) = config
            .connect_raw(lent, tokio_postgres::NoTls)
            .await
            .unwrap();
        let pid = {
            let work = async {
                client.batch_execute(prepare).await.unwrap();
                client
                    .query_one("SELECT pg_backend_pid()", &[])
                    .await
                    .unwrap()
                    .get::<_, i32>(0)
            };
            tokio::pin!(work);
            loop {
                tokio::select! {
                    pid = &mut work => break pid,
                    m = std::future::poll_fn(|cx| connection.poll_message(cx)) => {
                        assert!(matches!(m, Some(Ok(_))), "set-up connection ended");
                    }
                }
            }
        };
        drop(client);
        drop(connection);
        (Wire::new(kept.take().unwrap()), pid)
    }

    /// Pipelined requests answer in order, with their values; a failed one
    /// fails alone; arrays and every integer width go through.
    #[tokio::test]
    async fn pipelined_requests_answer_in_order_and_fail_alone() {
        let (mut w, _) = wire(
            "PREPARE t_add AS SELECT $1::int8 + $2::int4 + $3::int2, true, NULL::int8; \
             PREPARE t_div AS SELECT 1 / $1::int4; \
             PREPARE t_sum AS SELECT count(*)::int8, sum(x)::int8 FROM unnest($1::int8[], $2::int4[], $3::int2[]) AS t(x, y, z)",
        )
        .await;
        w.execute(
            "t_add",
            &[Param::I64(1 << 40), Param::I32(-5), Param::I16(7)],
        );
        w.execute("t_div", &[Param::I32(0)]);
        w.execute(
            "t_sum",
            &[
                Param::I64s(&[1, 2, 3]),
                Param::I32s(&[4, 5, 6]),
                Param::I16s(&[7, 8, 9]),
            ],
        );
        w.execute("t_div", &[Param::I32(1)]);
        let a = w.answer().await.unwrap();
        assert_eq!(a, vec![Some((1 << 40) + 2), Some(1), None]);
        let e = w.answer().await.unwrap_err();
        assert_eq!(e.code(), Some(&SqlState::DIVISION_BY_ZERO), "{e}");
        assert!(!e.ends_session());
        assert_eq!(w.answer().await.unwrap(), vec![Some(3), Some(6)]);
        assert_eq!(w.answer().await.unwrap(), vec![Some(1)]);
        // An empty array, and a simple query.
        w.execute(
            "t_sum",
            &[Param::I64s(&[]), Param::I32s(&[]), Param::I16s(&[])],
        );
        w.simple("SELECT 1; SELECT 2").unwrap();
        assert_eq!(w.answer().await.unwrap(), vec![Some(0), None]);
        // (Simple queries answer in text: here two one-byte values.)
        assert_eq!(
            w.answer().await.unwrap(),
            vec![Some(b'1' as i64), Some(b'2' as i64)]
        );
    }

    /// A notification reaches the callback; a terminated backend is a
    /// FATAL error that ends the session, and every later call fails.
    #[tokio::test]
    async fn notifications_arrive_and_termination_ends_the_session() {
        let (mut w, pid) = wire("PREPARE t_one AS SELECT 1::int4").await;
        w.simple("LISTEN wire_test").unwrap();
        w.answer().await.unwrap();
        let other = crate::pg::test_server::client().await;
        other
            .execute("SELECT pg_notify('wire_test', $1)", &[&pid.to_string()])
            .await
            .unwrap();
        let mut got = Vec::new();
        w.execute("t_one", &[]);
        // The notification may come before or after the answer.
        let answer = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            std::future::poll_fn(|cx| {
                w.poll_answer(cx, &mut |c, p| got.push((c.to_owned(), p.to_owned())))
            }),
        )
        .await
        .unwrap();
        assert_eq!(answer.unwrap(), vec![Some(1)]);
        let wait = async {
            while got.is_empty() {
                std::future::poll_fn(|cx| {
                    match w.poll_answer(cx, &mut |c, p| got.push((c.to_owned(), p.to_owned()))) {
                        Poll::Ready(r) => panic!("an answer nobody asked for: {:?}", r.err()),
                        Poll::Pending if got.is_empty() => Poll::Pending,
                        Poll::Pending => Poll::Ready(()),
                    }
                })
                .await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(5), wait)
            .await
            .expect("the notification");
        assert_eq!(got, vec![("wire_test".to_owned(), pid.to_string())]);

        other
            .execute("SELECT pg_terminate_backend($1)", &[&pid])
            .await
            .unwrap();
        w.execute("t_one", &[]);
        let e = tokio::time::timeout(std::time::Duration::from_secs(5), w.answer())
            .await
            .unwrap()
            .unwrap_err();
        assert!(e.ends_session(), "{e}");
        w.execute("t_one", &[]);
        assert!(w.answer().await.unwrap_err().ends_session());
    }
}
