//! The TLS side of the witness listener: accepts TCP connections on the bound listener, runs
//! each TLS handshake in a task of its own, and yields the established streams to tonic's
//! `serve_with_incoming_shutdown`. tonic reads the client's certificates from each stream
//! (its `Connected` impl for tokio-rustls' `TlsStream`), so `Request::peer_certs`, and with it
//! [`super::peer_identity`] and the access check's [`crate::access::Caller`], work as with
//! tonic's own server TLS.
//!
//! Why not tonic's own server TLS: it offers only `h2` in ALPN, so a client that offers only
//! `http/1.1` (`curl --http1.1` in a hook script calling the fencing endpoints) is refused in
//! the handshake with "no application protocol". The configuration served here is
//! [`super::TlsMaterial::server_config`], which offers both ([`super::SERVER_ALPN`]).
//!
//! It also bounds the connections one certificate identity holds open at once
//! ([`CONNECTIONS_PER_IDENTITY_MAX`]): a connection past it is closed as soon as its
//! handshake shows who it is, and reported to [`TlsIncoming::on_refused`]'s callback (the
//! witness counts it in its metrics).
//!
//! It must never yield a stream whose handshake did not complete (the configuration demands
//! a client certificate of the cluster CA), never let a slow or failed handshake hold up any
//! other connection, and never log a failed handshake above debug: anyone who can reach the
//! port can fail handshakes, and must not be able to flood the log with them.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tonic::transport::server::Connected;

use super::LiveTls;

/// Longest a client may take over its TLS handshake, from the accepted TCP connection to an
/// established session: a few round trips of the widest WAN, and short enough that silent
/// connections do not pile up.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Most handshakes in progress at once. Beyond it, new connections wait in the kernel's
/// accept backlog until one finishes: bounds the tasks and memory that clients who have not
/// yet shown a certificate can take (a witness has a handful of peers and clients).
pub const HANDSHAKES_MAX: usize = 512;

/// Most connections one certificate identity (its common name) holds open at once. Beyond
/// it, a new connection from that identity is closed right after its handshake. Bounds the
/// file descriptors and memory one certificate, a stolen one included, can take from a
/// witness, so other callers keep being served. Real callers need few: a witness or agent
/// keeps one connection per peer, a CLI call or a hook's `curl` one for its call; the
/// fence-check benchmark's widest level (4 096 clients, 32 per connection) needs 128.
pub const CONNECTIONS_PER_IDENTITY_MAX: usize = 128;

/// The established TLS connections of a bound listener, as a stream for tonic's
/// `serve_with_incoming_shutdown`.
///
/// Dropping it (tonic does on shutdown) closes the listener and aborts the handshakes in
/// progress.
pub struct TlsIncoming {
    /// The bound listener the connections come from.
    listener: TcpListener,
    /// Where each handshake's server configuration comes from.
    config: Config,
    /// The handshakes in progress, at most [`HANDSHAKES_MAX`]; each ends with its stream, or
    /// with `None` when it failed or outlasted `handshake_timeout` (logged where it ended).
    handshakes: JoinSet<Option<TlsStream<TcpStream>>>,
    /// How long a handshake may take; [`HANDSHAKE_TIMEOUT`] unless a test shortens it.
    handshake_timeout: Duration,
    /// Open connections per certificate identity, at most [`CONNECTIONS_PER_IDENTITY_MAX`]
    /// each; an identity leaves the map when its last connection closes.
    open: Arc<Mutex<HashMap<String, usize>>>,
    /// Told the identity of each connection closed for [`CONNECTIONS_PER_IDENTITY_MAX`].
    refused: Option<RefusalReport>,
}

/// What [`TlsIncoming`] calls with the identity of a connection it closed at the limit.
pub type RefusalReport = Arc<dyn Fn(&str) + Send + Sync>;

/// An established connection, counted against its identity's
/// [`CONNECTIONS_PER_IDENTITY_MAX`] until it is dropped. Reads, writes and the connection
/// info tonic takes the peer's certificates from are the TLS stream's.
pub struct Connection {
    stream: TlsStream<TcpStream>,
    identity: String,
    open: Arc<Mutex<HashMap<String, usize>>>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.identity) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.identity);
            }
        }
    }
}

impl Connected for Connection {
    type ConnectInfo = <TlsStream<TcpStream> as Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The server configuration of a listener: one for its lifetime, or the current one of a
/// [`LiveTls`] at each handshake.
enum Config {
    Fixed(TlsAcceptor),
    Live(Arc<LiveTls>),
}

impl TlsIncoming {
    /// Serves TLS with `config` (from [`super::TlsMaterial::server_config`]) on `listener`.
    pub fn new(listener: TcpListener, config: Arc<ServerConfig>) -> Self {
        Self::with_config(listener, Config::Fixed(TlsAcceptor::from(config)))
    }

    /// Serves TLS on `listener` with the material `tls` holds at each handshake, so a
    /// connection accepted after a reload presents and trusts the new certificate and CA.
    pub fn live(listener: TcpListener, tls: Arc<LiveTls>) -> Self {
        Self::with_config(listener, Config::Live(tls))
    }

    fn with_config(listener: TcpListener, config: Config) -> Self {
        Self {
            listener,
            config,
            handshakes: JoinSet::new(),
            handshake_timeout: HANDSHAKE_TIMEOUT,
            open: Arc::default(),
            refused: None,
        }
    }

    /// Calls `report` with the identity of every connection closed because its identity
    /// already held [`CONNECTIONS_PER_IDENTITY_MAX`] connections.
    pub fn on_refused(mut self, report: RefusalReport) -> Self {
        self.refused = Some(report);
        self
    }

    /// The established `stream` counted against its identity, or `None` (the stream
    /// dropped, so closed) when the identity already holds
    /// [`CONNECTIONS_PER_IDENTITY_MAX`] connections.
    fn admit(&self, stream: TlsStream<TcpStream>) -> Option<Connection> {
        let identity = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .and_then(super::common_name_of)
            .unwrap_or_else(|| super::UNNAMED_IDENTITY.to_string());
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(identity.clone()).or_default();
        if *n >= CONNECTIONS_PER_IDENTITY_MAX {
            // Debug only, like failed handshakes: a holder of the certificate can repeat it.
            tracing::debug!(
                identity = %identity,
                limit = CONNECTIONS_PER_IDENTITY_MAX,
                "connection closed: its identity holds the most connections allowed"
            );
            drop(open);
            if let Some(report) = &self.refused {
                report(&identity);
            }
            return None;
        }
        *n += 1;
        drop(open);
        Some(Connection {
            stream,
            identity,
            open: self.open.clone(),
        })
    }

    /// Gives up on a handshake after `timeout` instead of [`HANDSHAKE_TIMEOUT`] (so a test
    /// can watch the limit act without waiting for it).
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Starts the handshake of a just-accepted connection in a task of its own.
    fn start_handshake(&mut self, tcp: TcpStream, peer: SocketAddr) {
        // Accepted sockets do not inherit tonic's TCP_NODELAY default when we bring our own
        // listener. Without it, Nagle holds back a reply's last small frame until the peer's
        // delayed ACK (~40 ms on Linux): fence checks and Raft replies stall at the tail.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(peer = %peer, error = %e, "cannot set TCP_NODELAY");
        }
        let accept = match &self.config {
            Config::Fixed(acceptor) => acceptor.accept(tcp),
            Config::Live(tls) => TlsAcceptor::from(tls.current().server_config()).accept(tcp),
        };
        let timeout = self.handshake_timeout;
        self.handshakes.spawn(async move {
            match tokio::time::timeout(timeout, accept).await {
                Ok(Ok(stream)) => Some(stream),
                Ok(Err(e)) => {
                    tracing::debug!(peer = %peer, error = %e, "TLS handshake failed");
                    None
                }
                Err(_) => {
                    let timeout_ms = timeout.as_millis() as u64;
                    tracing::debug!(peer = %peer, timeout_ms, "TLS handshake timed out");
                    None
                }
            }
        });
    }
}

impl Stream for TlsIncoming {
    type Item = io::Result<Connection>;

    /// Yields the next established connection its identity has room for. Each round first collects finished
    /// handshakes, then accepts while under [`HANDSHAKES_MAX`]; it returns `Pending` only
    /// once both the set of handshakes and (when below the bound) the listener have
    /// registered the waker. An accept error is passed on: tonic's accept loop skips the
    /// connection and goes on.
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            match this.handshakes.poll_join_next(cx) {
                Poll::Ready(Some(Ok(Some(stream)))) => match this.admit(stream) {
                    Some(connection) => return Poll::Ready(Some(Ok(connection))),
                    None => continue,
                },
                // Failed or timed out; logged by its task.
                Poll::Ready(Some(Ok(None))) => continue,
                Poll::Ready(Some(Err(e))) => {
                    tracing::debug!(error = %e, "TLS handshake task ended abnormally");
                    continue;
                }
                // No handshake in progress, or none finished yet (the waker is registered).
                Poll::Ready(None) | Poll::Pending => {}
            }
            if this.handshakes.len() >= HANDSHAKES_MAX {
                return Poll::Pending;
            }
            match this.listener.poll_accept(cx) {
                Poll::Ready(Ok((tcp, peer))) => this.start_handshake(tcp, peer),
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e))),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
