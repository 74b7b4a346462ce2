//! A TCP proxy in the test process that can turn into a black hole: while
//! cut it forwards nothing, in either direction, and keeps every socket open
//! (no FIN, no RST) — a network that silently drops traffic. Loopback only.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A TCP proxy to a server that can turn into a black hole.
pub struct Proxy {
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    state: Arc<ProxyState>,
}

struct ProxyState {
    upstream: (String, u16),
    /// True: nothing is forwarded, in either direction; sockets stay open.
    cut: watch::Sender<bool>,
    /// Armed: cut right after the next chunk forwarded from the server.
    cut_after_reply: AtomicBool,
    /// When the last cut began.
    cut_at: Mutex<Option<Instant>>,
}

impl ProxyState {
    fn cut_now(&self) {
        *self.cut_at.lock().unwrap() = Some(Instant::now());
        self.cut.send_replace(true);
    }
}

impl Proxy {
    /// Starts forwarding 127.0.0.1:`port` to `upstream` (host, port).
    pub async fn start(upstream: (String, u16)) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(ProxyState {
            upstream,
            cut: watch::channel(false).0,
            cut_after_reply: AtomicBool::new(false),
            cut_at: Mutex::new(None),
        });
        let s = state.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    let Ok(server) =
                        TcpStream::connect((s.upstream.0.as_str(), s.upstream.1)).await
                    else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::spawn(pump(cr, sw, s.clone(), false));
                    tokio::spawn(pump(sr, cw, s, true));
                });
            }
        });
        Proxy { port, state }
    }

    /// Stops forwarding now.
    pub fn cut(&self) {
        self.state.cut_now();
    }

    /// Stops forwarding right after the next chunk from the server (e.g. a
    /// heartbeat's answer): the worst moment for the client's heartbeat.
    pub fn cut_after_next_reply(&self) {
        self.state.cut_after_reply.store(true, Ordering::SeqCst);
    }

    pub fn cut_at(&self) -> Option<Instant> {
        *self.state.cut_at.lock().unwrap()
    }

    /// Forwards again, what was held back included.
    pub fn heal(&self) {
        *self.state.cut_at.lock().unwrap() = None;
        self.state.cut.send_replace(false);
    }
}

/// Forwards one direction; while cut, reads nothing and writes nothing.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, s: Arc<ProxyState>, reply: bool) {
    let mut cut = s.cut.subscribe();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if cut.wait_for(|c| !*c).await.is_err() {
            return;
        }
        let read = tokio::select! {
            r = from.read(&mut buf) => Some(r),
            _ = cut.wait_for(|c| *c) => None,
        };
        let n = match read {
            None => continue,
            Some(Ok(0) | Err(_)) => {
                let _ = to.shutdown().await;
                return;
            }
            Some(Ok(n)) => n,
        };
        // Cut between the read and the write: hold the chunk until healed.
        if cut.wait_for(|c| !*c).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
        if reply && s.cut_after_reply.swap(false, Ordering::SeqCst) {
            s.cut_now();
        }
    }
}
