//! The data plane's listeners: accept, apply connection limits, serve
//! HTTP/1.1 and h2c on each connection, and drain on shutdown.

pub mod conn;
pub mod http1;
pub mod mirror;
pub mod response;
pub mod service;
pub mod streams;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::table::TableReader;
use conn::{ConnState, Expired, MeteredIo};
use service::ProxyService;

/// Every listener's account of client connections: permits bound how many
/// are open (`limits.max_connections`); parked ones are counted apart.
#[derive(Debug)]
pub struct Connections {
    permits: Arc<Semaphore>,
    max: usize,
    parked: AtomicUsize,
}

impl Connections {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Connections {
            permits: Arc::new(Semaphore::new(max)),
            max,
            parked: AtomicUsize::new(0),
        })
    }

    /// Client connections open now, parked ones included.
    pub fn open(&self) -> usize {
        self.max - self.permits.available_permits()
    }

    /// Idle HTTP/1.1 connections holding only their socket.
    pub fn parked(&self) -> usize {
        self.parked.load(Relaxed)
    }

    async fn admit(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().acquire_owned().await.ok()
    }

    /// Resolves once every connection has closed.
    pub async fn closed(&self) {
        let _ = self.permits.acquire_many(self.max as u32).await;
    }

    /// Counts a connection as parked while the guard lives.
    pub(crate) fn park(self: &Arc<Self>) -> Parked {
        self.parked.fetch_add(1, Relaxed);
        Parked(self.clone())
    }
}

/// One parked connection, counted until dropped.
pub(crate) struct Parked(Arc<Connections>);

impl Drop for Parked {
    fn drop(&mut self) {
        self.0.parked.fetch_sub(1, Relaxed);
    }
}

/// Serves one bound listener until `shutdown` turns true, then stops
/// accepting and asks every connection to finish (HTTP/1.1: close after the
/// response in flight; HTTP/2: GOAWAY). Returns at once; `connections`
/// tracks what is still open.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    table: TableReader,
    connections: Arc<Connections>,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let local = listener.local_addr().ok();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, listener = ?local, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Backpressure: at max_connections this worker holds the connection
        // it just accepted, and accepts no other, until one closes; the
        // kernel's backlog holds the rest. (Waiting before accept instead
        // would strand connections the kernel queued on another worker's
        // socket.)
        let permit = tokio::select! {
            p = connections.admit() => match p {
                Some(p) => p,
                None => return,
            },
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let _ = stream.set_nodelay(true);
        let table = table.clone();
        let shutdown = shutdown.clone();
        let acceptor = acceptor.clone();
        let connections = connections.clone();
        tokio::spawn(async move {
            // A connection that has sent nothing yet costs only this small
            // task: the HTTP machinery (and its buffers) is allocated once
            // the client speaks. One that never speaks is closed after the
            // header read timeout.
            let wait = table.load().config.limits.header_read_timeout;
            let mut stop = shutdown.clone();
            // Peeking, not waiting for readiness: tokio may report a fresh
            // socket readable before any byte has arrived.
            let mut opening = [0u8; H2_PREFACE.len()];
            let seen = tokio::select! {
                r = tokio::time::timeout(wait, stream.peek(&mut opening)) => match r {
                    Ok(Ok(n)) if n > 0 => Some(n),
                    _ => None,
                },
                _ = stop.wait_for(|s| *s) => None,
            };
            if let Some(n) = seen {
                if acceptor.is_none() && !H2_PREFACE.starts_with(&opening[..n]) {
                    let limits = table.load().config.limits;
                    let state = ConnState::new();
                    let service = ProxyService::new(table, state.clone(), peer.ip(), false);
                    let conn = http1::Conn {
                        peer,
                        service,
                        state,
                        limits,
                        connections,
                    };
                    http1::serve(stream, conn, shutdown).await;
                } else {
                    let http2 = acceptor.is_none() && n == H2_PREFACE.len();
                    Box::pin(connection(stream, peer, http2, acceptor, table, shutdown)).await;
                }
            }
            drop(permit);
        });
    }
}

/// How an HTTP/2 client with prior knowledge opens a connection. Anything
/// else on a plain listener is HTTP/1.x.
pub(crate) const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// `http2`: a plain connection opened with the whole HTTP/2 preface.
async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    http2: bool,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    table: TableReader,
    shutdown: watch::Receiver<bool>,
) {
    let state = ConnState::new();
    let io = MeteredIo::new(stream, state.clone());
    match acceptor {
        None => serve_connection(io, state, peer, false, http2, table, shutdown).await,
        Some(acceptor) => {
            let timeout = table.load().config.limits.header_read_timeout;
            match tokio::time::timeout(timeout, acceptor.accept(io)).await {
                Ok(Ok(tls)) => {
                    // The handshake's bytes were no request head.
                    let http2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                    if http2 {
                        state.set_multiplexed();
                    } else {
                        state.reset_head();
                    }
                    serve_connection(tls, state, peer, true, http2, table, shutdown).await
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        }
    }
}

/// Serves one connection with hyper: HTTP/2 when the client has shown it
/// speaks it (its preface on a plain listener, or `h2` by ALPN), else
/// hyper's version sniffing, which wraps every read of the connection.
async fn serve_connection<I>(
    io: I,
    state: Arc<ConnState>,
    peer: SocketAddr,
    tls: bool,
    http2: bool,
    table: TableReader,
    shutdown: watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let limits = table.load().config.limits;
    let service = ProxyService::new(table, state.clone(), peer.ip(), tls);
    let service =
        hyper::service::service_fn(move |req| hyper::service::Service::call(&service, req));
    let io = TokioIo::new(io);
    let served = Served {
        state: &state,
        limits: &limits,
        peer,
        shutdown,
        streams: streams::Streams::default(),
    };
    if http2 {
        let mut builder = hyper::server::conn::http2::Builder::new(served.streams.spawner());
        builder
            .max_concurrent_streams(limits.max_concurrent_streams)
            .max_header_list_size(limits.max_header_bytes as u32);
        let conn = builder.serve_connection(io, service);
        served.drive(conn, |c| c.graceful_shutdown()).await;
        return;
    }
    let mut builder = auto::Builder::new(served.streams.spawner());
    builder
        .http1()
        // The read buffer bounds the request head: a head that does not fit
        // gets 431. (hyper's floor for it is 8 KiB; validation enforces it.)
        .max_buf_size(limits.max_header_bytes)
        // Small responses go out in one copy-and-write rather than a
        // vectored write of head and body (measured faster on loopback).
        .writev(false)
        .keep_alive(true);
    builder
        .http2()
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(limits.max_header_bytes as u32);
    let conn = builder.serve_connection(io, service);
    served.drive(conn, |c| c.graceful_shutdown()).await;
}

/// What a connection served by hyper is watched with.
struct Served<'a> {
    state: &'a Arc<ConnState>,
    limits: &'a crate::table::Limits,
    peer: SocketAddr,
    shutdown: watch::Receiver<bool>,
    /// The connection's HTTP/2 streams, run by its task.
    streams: streams::Streams,
}

impl Served<'_> {
    /// Runs hyper's connection `conn` and its HTTP/2 streams to the end,
    /// closing it gracefully (`graceful`) at shutdown or when the
    /// watchdog says so.
    async fn drive<C, E>(mut self, conn: C, graceful: impl Fn(Pin<&mut C>))
    where
        C: std::future::Future<Output = Result<(), E>>,
        E: std::fmt::Display,
    {
        let (limits, peer, streams) = (self.limits, self.peer, &mut self.streams);
        // Boxed so that it can be dropped before the streams are finished.
        let mut conn = Box::pin(conn);
        // Once a graceful close has begun, the client gets a bounded time to
        // finish (an HTTP/2 peer that never answers GOAWAY, a head that never
        // completes); draining on shutdown is bounded by drain_timeout as well.
        let mut closing: Option<Pin<Box<tokio::time::Sleep>>> = None;
        let grace = limits.header_read_timeout.max(Duration::from_secs(1));
        let timeouts = conn::Timeouts {
            header_read: limits.header_read_timeout,
            idle: limits.idle_timeout,
            park: None,
            probe_client: false,
        };
        loop {
            tokio::select! {
                result = std::future::poll_fn(|cx| streams.poll_with(conn.as_mut(), cx)) => {
                    if let Err(e) = result {
                        tracing::trace!(%peer, error = %e, "connection ended with an error");
                    }
                    break;
                }
                _ = self.shutdown.wait_for(|s| *s), if closing.is_none() => {
                    closing = Some(Box::pin(tokio::time::sleep(limits.drain_timeout)));
                    graceful(conn.as_mut());
                }
                why = conn::Watchdog::new(self.state, timeouts), if closing.is_none() => {
                    match why {
                        Expired::HeaderRead => {
                            tracing::debug!(%peer, "client did not send its request headers in time");
                            return;
                        }
                        // Not asked for: hyper's HTTP/2 and TLS connections
                        // watch the socket themselves.
                        Expired::Probe => {}
                        Expired::Idle | Expired::Park | Expired::Drain => {
                            closing = Some(Box::pin(tokio::time::sleep(grace)));
                            graceful(conn.as_mut());
                        }
                    }
                }
                _ = async { closing.as_mut().expect("guarded").await }, if closing.is_some() => {
                    tracing::debug!(%peer, "connection did not close in time after a graceful close");
                    return;
                }
            }
        }
        // Streams still in flight when the connection failed under them:
        // with the connection gone, hyper cancels them at their next poll
        // (each looks for a reset while its response is pending), and one
        // writing a body finds its stream closed. Bounded all the same.
        drop(conn);
        let _ = tokio::time::timeout(limits.drain_timeout, streams.finish()).await;
    }
}

/// One worker's accepting sockets, as [`bind`] made them.
pub type Sockets = Vec<(std::net::TcpListener, Option<Arc<rustls::ServerConfig>>)>;

/// Serves each socket on the current runtime (a worker's).
pub fn spawn_listeners(
    sockets: Sockets,
    table: &TableReader,
    connections: &Arc<Connections>,
    shutdown: &watch::Receiver<bool>,
) -> std::io::Result<Vec<tokio::task::JoinHandle<()>>> {
    sockets
        .into_iter()
        .map(|(l, tls)| {
            let l = TcpListener::from_std(l)?;
            Ok(tokio::spawn(serve(
                l,
                tls,
                table.clone(),
                connections.clone(),
                shutdown.clone(),
            )))
        })
        .collect()
}

/// Binds a listener the way a proxy wants it: address reuse, so a restart
/// does not wait for TIME_WAIT, port reuse, so each worker thread can accept
/// on its own socket for the same address (the kernel spreads connections
/// across them), and a deep backlog.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let domain = if addr.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}
