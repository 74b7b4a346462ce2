//! The lock sessions' own speaker of PostgreSQL's frontend/backend protocol.
//!
//! A lock statement is tiny (a Bind with one or two integers, an Execute, a
//! Sync) and its answer is one row of booleans. Sent through
//! `tokio_postgres::Client`, each one also pays for the driver's request and
//! response channels, type checks and a `Row` per answer: about 14,000
//! client instructions for a `SELECT 1`, the larger part of the client's
//! share of a round trip (see bench/README.md). [`Wire`]
//! encodes requests straight into its write buffer and decodes answers
//! straight from its read buffer, on the session's own task.
//!
//! Connecting stays with tokio-postgres ([`crate::pg::connect`]): the
//! session lends it the socket ([`Lent`]; with TLS, the stream its
//! connector makes) for the start-up (authentication, `sslmode`,
//! parameters) and the set-up, and takes it back; [`Wire::sync_idle`] then
//! checks that the stream is idle, with nothing pending. Messages are
//! encoded and decoded by [`crate::pg::protocol`], a pure codec.
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

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::error::{QueryError, ServerError};
use crate::pg::protocol::{self, Backend};
pub(crate) use crate::pg::protocol::{Param, Values};

pub(crate) type Answer = Result<Values, Arc<QueryError>>;

/// The largest answer kept for reuse, and how many are kept (see
/// [`Wire::recycle`]).
const SPARE_VALUES: usize = 64;
const SPARE_ANSWERS: usize = 4;

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
    /// The transaction status of the last ReadyForQuery (`I`: idle).
    last_status: u8,
    /// Written and not yet flushed.
    unflushed: bool,
    /// Server parameters reported since the hand-over (ParameterStatus).
    parameters: std::collections::HashMap<String, String>,
    /// Emptied answers given back ([`Wire::recycle`]), for the next
    /// requests: an answer then costs no allocation.
    spare: Vec<Values>,
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
            last_status: b'I',
            unflushed: false,
            parameters: Default::default(),
            spare: Vec::new(),
        }
    }

    /// Queues a simple-protocol query (statements without parameters, such
    /// as `LISTEN`), answered like any request.
    pub(crate) fn simple(&mut self, sql: &str) -> Result<(), QueryError> {
        protocol::query(sql, &mut self.write)?;
        self.pending.push_back(Gathering::default());
        Ok(())
    }

    /// Queues one execution of prepared statement `name` with `params`,
    /// results in binary. Sent by the next [`Wire::poll_answer`].
    pub(crate) fn execute(&mut self, name: &str, params: &[Param<'_>]) {
        protocol::execute(name, params, &mut self.write);
        let values = self.spare.pop().unwrap_or_default();
        self.pending.push_back(Gathering {
            values,
            error: None,
        });
    }

    /// Gives back an answer's values once read, to be reused by a later
    /// request (a few, and only small ones).
    pub(crate) fn recycle(&mut self, mut values: Values) {
        if values.capacity() != 0
            && values.capacity() <= SPARE_VALUES
            && self.spare.len() < SPARE_ANSWERS
        {
            values.clear();
            self.spare.push(values);
        }
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

    /// Sends a Sync and requires exactly one ReadyForQuery, idle (outside
    /// any transaction), with nothing before it but asynchronous messages:
    /// the stream is where a new request's answer will be first. For the
    /// hand-over from the driver that did the start-up.
    pub(crate) async fn sync_idle(
        &mut self,
        on_notify: &mut (dyn FnMut(&str, &str) + Send),
    ) -> Result<(), Arc<QueryError>> {
        if !self.pending.is_empty() {
            return Err(Arc::new(QueryError::Protocol(
                "requests in flight before the hand-over".into(),
            )));
        }
        protocol::sync(&mut self.write);
        self.pending.push_back(Gathering::default());
        let values = std::future::poll_fn(|cx| self.poll_answer(cx, on_notify)).await?;
        match (values.is_empty(), self.last_status) {
            (true, b'I') => Ok(()),
            (false, _) => Err(Arc::new(QueryError::Protocol(
                "rows arrived for a Sync at the hand-over".into(),
            ))),
            (_, status) => Err(Arc::new(QueryError::Protocol(format!(
                "the server is not idle at the hand-over (transaction status {:?})",
                status as char
            )))),
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
        if let Poll::Ready(Err(e)) = self.poll_write_all(cx) {
            return Poll::Ready(Err(e));
        }
        loop {
            while let Some(message) = protocol::decode(&mut self.read)? {
                if let Some(answer) = self.on_message(message, on_notify)? {
                    return Poll::Ready(Ok(answer));
                }
            }
            if self.read.capacity() - self.read.len() < 1024 {
                self.read.reserve(8 * 1024);
            }
            match tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.read) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(QueryError::Closed)),
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Writes what is queued and flushes it (a TLS stream may hold bytes
    /// that `poll_write` accepted until it is flushed). Pending while the
    /// socket can take no more: a write that can't finish now does not keep
    /// the answers of earlier requests from being read.
    fn poll_write_all(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), QueryError>> {
        while !self.write.is_empty() {
            match Pin::new(&mut self.stream).poll_write(cx, &self.write) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(QueryError::Closed)),
                Poll::Ready(Ok(n)) => {
                    self.write.advance(n);
                    self.unflushed = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                Poll::Pending => return Poll::Pending,
            }
        }
        if self.unflushed {
            match Pin::new(&mut self.stream).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Handles one message; `Some` when it completes the oldest request.
    #[allow(clippy::type_complexity)]
    fn on_message(
        &mut self,
        message: Backend,
        on_notify: &mut dyn FnMut(&str, &str),
    ) -> Result<Option<Result<Values, QueryError>>, QueryError> {
        match message {
            Backend::DataRow(row) => {
                let Some(g) = self.pending.front_mut() else {
                    return Err(QueryError::Protocol("a row with no request".into()));
                };
                protocol::row_values(&row, &mut g.values)?;
            }
            Backend::Error(e) => {
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
            Backend::ReadyForQuery(status) => {
                self.last_status = status;
                let Some(g) = self.pending.pop_front() else {
                    return Err(QueryError::Protocol("ReadyForQuery with no request".into()));
                };
                return Ok(Some(match g.error {
                    Some(e) => Err(QueryError::Server(e)),
                    None => Ok(g.values),
                }));
            }
            Backend::Notification { channel, payload } => on_notify(&channel, &payload),
            Backend::Notice(n) => {
                tracing::info!(target: "advisory_locked::server", severity = n.severity(), code = n.code().code(), "{}", n.message());
            }
            Backend::ParameterStatus { name, value } => {
                self.parameters.insert(name, value);
            }
            Backend::Step => {}
        }
        Ok(None)
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

    /// `f` of the stream, unless it was taken back.
    pub(crate) fn with_ref<T>(&self, f: impl FnOnce(&S) -> T) -> Option<T> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(f)
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_postgres::error::SqlState;

    /// A wire over a fresh connection to the test server, set up through
    /// tokio-postgres and taken back as a session does.
    async fn wire(prepare: &str) -> (Wire<Transport>, i32) {
        let url = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let settings = crate::LockConfig::from_url(&url)
            .unwrap()
            .into_settings()
            .unwrap();
        let mut c = crate::pg::connect::connect(&settings).await.unwrap();
        let work = async {
            c.client.batch_execute(prepare).await.unwrap();
            c.client
                .query_one("SELECT pg_backend_pid()", &[])
                .await
                .unwrap()
                .get::<_, i32>(0)
        };
        let pid = crate::pg::connect::drive(&mut c.connection, &mut |_, _| {}, work)
            .await
            .unwrap();
        drop(c.client);
        drop(c.connection);
        (Wire::new(c.handover.take().unwrap()), pid)
    }

    /// Pipelined requests answer in order, with their values; a failed one
    /// fails alone; arrays and every integer width go through.
    /// A transport that holds every byte written until it is flushed, as a
    /// TLS stream may: what `poll_write` accepts reaches the server only on
    /// `poll_flush`.
    struct HoldUntilFlush<S> {
        inner: S,
        held: Vec<u8>,
    }

    impl<S: AsyncRead + Unpin> AsyncRead for HoldUntilFlush<S> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl<S: AsyncWrite + Unpin> AsyncWrite for HoldUntilFlush<S> {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.held.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            let this = &mut *self;
            while !this.held.is_empty() {
                match Pin::new(&mut this.inner).poll_write(cx, &this.held) {
                    Poll::Ready(Ok(n)) => {
                        this.held.drain(..n);
                    }
                    other => return other.map(|r| r.map(drop)),
                }
            }
            Pin::new(&mut this.inner).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    /// Every burst of requests is flushed: over a transport that holds
    /// bytes until flushed, a single request and a batch of 512 (about
    /// 17 KB, as the dispatcher's largest statement) are answered.
    #[tokio::test]
    async fn requests_are_flushed() {
        let (w, _) = wire("PREPARE t_flush AS SELECT $1::int8 + 1; PREPARE t_flush_many AS SELECT count(*) FROM unnest($1::int8[]) k WHERE k >= 0").await;
        let mut w = Wire {
            stream: HoldUntilFlush {
                inner: w.stream,
                held: Vec::new(),
            },
            read: w.read,
            write: w.write,
            pending: w.pending,
            broken: w.broken,
            last_status: w.last_status,
            unflushed: false,
            parameters: w.parameters,
            spare: w.spare,
        };
        let bound = std::time::Duration::from_secs(5);
        w.execute("t_flush", &[Param::I64(41)]);
        let answer = tokio::time::timeout(bound, w.answer()).await;
        assert_eq!(answer.expect("answered").unwrap(), [Some(42)]);
        let keys: Vec<i64> = (0..2048).collect();
        for _ in 0..512 {
            w.execute("t_flush_many", &[Param::I64s(&keys[..4])]);
        }
        assert!(w.write.len() > 16 * 1024, "{} bytes", w.write.len());
        for _ in 0..512 {
            let answer = tokio::time::timeout(bound, w.answer()).await;
            assert_eq!(answer.expect("answered").unwrap(), [Some(4)]);
        }
    }

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
