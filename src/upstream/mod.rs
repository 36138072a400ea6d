//! Connection pools to backends: one per backend identity (address,
//! protocol, timeouts), carried across table swaps so that a weight change
//! keeps warm connections, and dropped when no table references the backend.
//!
//! HTTP/1.1 backends get sluice's own pool and client side ([`h1`]): idle
//! connections in a lock-free queue, checked out per request, driven by the
//! request's own task, and returned when the response body has been read
//! to its end. hyper-util's general-purpose client boxes futures, locks a
//! keyed pool, races checkout against connect and spawns a task per
//! streaming response; none of that is needed when the pool already belongs
//! to one backend. `https://` backends get the same client side over TLS
//! ([`tls`]), pooled the same way. HTTP/2 backends, plain or TLS, get one
//! multiplexed connection per worker ([`h2`]).
//!
//! Each worker keeps its own idle connections: a socket is registered with
//! the reactor of the worker that opened it, and used from another worker
//! every read would wake a thread across cores, which cost a quarter of the
//! throughput with two workers.

mod chunked;
pub mod h1;
mod h2;
pub mod request_body;
pub mod tls;

pub use request_body::{BodyLimit, BodyOpen, BoxError, OpenBodies, RequestBody};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_queue::SegQueue;
use http::{Request, Response};
use http_body::Body as _;
use http_body_util::Either;
use hyper::body::Incoming;

use crate::headers::ForwardedFields;
use crate::target::{BackendTls, Protocol, Upstream};
use tls::Stream;

/// Idle connections kept per backend, shared out evenly among the workers
/// (nginx's `keepalive` in the benchmark peers is 512 too); more are closed
/// when returned.
const MAX_IDLE: usize = 512;

/// What identifies a pool: two backends with the same key share connections.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub upstream: Upstream,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
}

/// A keep-alive pool to one backend.
pub struct Pool {
    /// `host:port`, as it goes into request URIs.
    pub origin: http::uri::Authority,
    pub protocol: Protocol,
    /// For an `https://` backend: its TLS, as validation built it.
    tls: Option<BackendTls>,
    connect_timeout: Duration,
    /// How long a connection may stay idle, on the coarse clock.
    idle_timeout_ms: u64,
    /// The idle connections each worker's queue keeps: `MAX_IDLE` shared
    /// out, worked out once rather than per returned connection.
    idle_per_worker: usize,
    /// One queue per worker. Each grows in small blocks as connections go
    /// idle, so a table of thousands of backends costs nothing until they
    /// carry traffic.
    idle: Box<[SegQueue<Idle>]>,
    h2: Option<h2::Conns>,
}

struct Idle {
    conn: Box<h1::Conn>,
    /// When it went idle, on the coarse clock (a system call per request
    /// saved; the idle timeout is seconds long).
    since_ms: u64,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("origin", &self.origin)
            .field("idle", &self.idle.iter().map(SegQueue::len).sum::<usize>())
            .finish()
    }
}

/// A backend's response body, from either kind of pool: sluice's own
/// HTTP/1.1 body or hyper's HTTP/2 one.
pub type UpstreamBody = Either<h1::Body, Incoming>;

/// Why a backend gave no usable response; decides 502 versus 504.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Could not connect in time.
    Timeout,
    /// Refused, reset, or spoke something that is not HTTP.
    Broken,
    /// The client's request body broke the limits (size or time): not the backend's fault.
    Downstream(BodyLimit),
}

#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct UpstreamError {
    pub failure: Failure,
    source: BoxError,
}

impl UpstreamError {
    fn new(failure: Failure, source: impl Into<BoxError>) -> Self {
        UpstreamError {
            failure,
            source: source.into(),
        }
    }

    /// Classifies an error by walking its source chain.
    fn classify(err: impl Into<BoxError>) -> Self {
        let err: BoxError = err.into();
        let mut failure = Failure::Broken;
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&*err);
        while let Some(e) = source {
            if let Some(limit) = e.downcast_ref::<BodyLimit>() {
                failure = Failure::Downstream(*limit);
                break;
            }
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                if io.kind() == std::io::ErrorKind::TimedOut {
                    failure = Failure::Timeout;
                    break;
                }
            }
            source = e.source();
        }
        UpstreamError {
            failure,
            source: err,
        }
    }
}

impl Pool {
    pub fn new(key: &PoolKey) -> Self {
        let h2 =
            (key.upstream.protocol == Protocol::Http2).then(|| h2::Conns::new(key.idle_timeout));
        let workers = crate::worker::count();
        Pool {
            origin: key.upstream.authority.clone(),
            protocol: key.upstream.protocol,
            tls: key.upstream.tls.clone(),
            connect_timeout: key.connect_timeout,
            idle_timeout_ms: key.idle_timeout.as_millis() as u64,
            idle_per_worker: MAX_IDLE.div_ceil(workers),
            idle: (0..workers).map(|_| SegQueue::new()).collect(),
            h2,
        }
    }

    /// Sends a request to the backend. An HTTP/1.1 connection goes back to
    /// the pool when the response body has been read to its end.
    ///
    /// Takes the request in parts: a `Request` argument, taken apart here,
    /// would keep a slot of its own in this future beside the parts, and
    /// the future is moved whole (a `memcpy` of all of it) on its way to
    /// being polled.
    pub async fn send(
        self: &Arc<Self>,
        parts: http::request::Parts,
        body: RequestBody,
        forwarded: ForwardedFields,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        if let Some(conns) = &self.h2 {
            let mut req = Request::from_parts(parts, body);
            forwarded.insert_into(req.headers_mut());
            // Boxed: opening an HTTP/2 connection is a large future, and
            // unboxed it would enlarge every request's future, HTTP/1.1
            // ones included, and with it what the allocator does per
            // request (benches/RESULTS.md has the count).
            return Box::pin(conns.send(req, self))
                .await
                .map(|r| r.map(Either::Right));
        }
        let has_body = !body.is_end_stream();
        let chunked = h1::chunked(&parts.headers, has_body);
        let mut upload = has_body.then(|| h1::Upload::new(body, chunked));
        loop {
            let (conn, pooled) = match self.checkout() {
                Some(conn) => (conn, true),
                None => (self.connect().await?, false),
            };
            match conn.exchange(&parts, &forwarded, &mut upload, self).await {
                Ok(response) => return Ok(response.map(Either::Left)),
                // A pooled connection the backend closed as it was taken:
                // nothing was answered or consumed, so an idempotent
                // request goes again (nginx's proxy_next_upstream does the
                // same), on the next idle connection or a new one.
                Err(f) if pooled && f.replayable && parts.method.is_idempotent() => {
                    tracing::trace!(error = %f.error, "pooled connection closed; sending again")
                }
                Err(f) => return Err(UpstreamError::classify(f.error)),
            }
        }
    }

    /// The current worker's idle connections.
    fn idle(&self) -> &SegQueue<Idle> {
        &self.idle[crate::worker::index(self.idle.len())]
    }

    /// An idle connection that is still fresh and open, if any.
    fn checkout(&self) -> Option<Box<h1::Conn>> {
        while let Some(idle) = self.idle().pop() {
            let idle_ms = crate::clock::coarse_ms().saturating_sub(idle.since_ms);
            let mut conn = idle.conn;
            if idle_ms < self.idle_timeout_ms && conn.is_usable() {
                return Some(conn);
            }
        }
        None
    }

    /// Keeps a connection whose exchange has completed for the next one.
    fn put_back(&self, conn: Box<h1::Conn>) {
        // Counted per worker: a count shared by the workers would bounce
        // its cache line between cores on every request.
        let idle = self.idle();
        if idle.len() >= self.idle_per_worker {
            return; // enough idle connections: this one closes
        }
        idle.push(Idle {
            conn,
            since_ms: crate::clock::coarse_ms(),
        });
    }

    async fn connect(&self) -> Result<Box<h1::Conn>, UpstreamError> {
        Ok(h1::Conn::new(self.open().await?))
    }

    /// Whether this backend is spoken to over TLS (an `https://` one).
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// A new connection to the backend, TLS set up when it is an
    /// `https://` one, outside the pool (smoke checks use it).
    pub async fn open(&self) -> Result<Stream, UpstreamError> {
        let (_, stream) = self.connect_stream().await?;
        let Some(tls) = &self.tls else {
            return Ok(Stream::Left(stream));
        };
        let connector = tokio_rustls::TlsConnector::from(tls.client.clone());
        // The handshake gets a connect timeout of its own: a backend that
        // accepts and then says nothing is as unreachable as one that
        // does not accept.
        match tokio::time::timeout(
            self.connect_timeout,
            connector.connect(tls.server_name.clone(), stream),
        )
        .await
        {
            // A backend that does not take HTTP/2 by ALPN would get its
            // preface as garbage: refused here, with the reason.
            Ok(Ok(tls))
                if self.protocol == Protocol::Http2
                    && tls.get_ref().1.alpn_protocol() != Some(b"h2") =>
            {
                Err(UpstreamError::new(
                    Failure::Broken,
                    std::io::Error::other("the backend did not agree to HTTP/2 by ALPN"),
                ))
            }
            Ok(Ok(tls)) => Ok(Stream::Right(Box::new(tls))),
            Ok(Err(e)) => Err(UpstreamError::new(
                Failure::Broken,
                std::io::Error::new(e.kind(), format!("TLS handshake with the backend: {e}")),
            )),
            Err(_) => Err(UpstreamError::new(
                Failure::Timeout,
                std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timeout"),
            )),
        }
    }

    /// A new TCP connection to the backend, within the connect timeout.
    async fn connect_stream(&self) -> Result<(SocketAddr, tokio::net::TcpStream), UpstreamError> {
        let connect = async {
            let addr = self.resolve().await?;
            let stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            Ok::<_, std::io::Error>((addr, stream))
        };
        match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(connected)) => Ok(connected),
            Ok(Err(e)) => Err(UpstreamError::new(Failure::Broken, e)),
            Err(_) => Err(UpstreamError::new(
                Failure::Timeout,
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timeout"),
            )),
        }
    }

    async fn resolve(&self) -> std::io::Result<SocketAddr> {
        let host = self
            .origin
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = self.origin.port_u16().unwrap_or(80);
        if let Ok(ip) = host.parse::<std::net::IpAddr>() {
            return Ok(SocketAddr::new(ip, port));
        }
        tokio::net::lookup_host((host, port))
            .await?
            .next()
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("{host} has no address"),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_connections_stay_with_the_worker_that_released_them() {
        // Connections that carry no exchange: a listener that only accepts
        // is backend enough.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let mut sockets = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                sockets.push(s);
            }
        });
        crate::worker::reserve(2);
        let pool = Arc::new(Pool::new(&PoolKey {
            upstream: Upstream {
                tls: None,
                authority: addr.to_string().parse().unwrap(),
                protocol: Protocol::Http1,
            },
            connect_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(60),
        }));
        for worker in [0, 1, 1] {
            crate::worker::set_current(worker);
            let conn = pool.connect().await.unwrap();
            pool.put_back(conn);
        }
        let queued = |w: usize| pool.idle[w % pool.idle.len()].len();
        assert_eq!((queued(0), queued(1)), (1, 2));
        crate::worker::set_current(0);
        assert!(pool.idle().pop().is_some());
        assert!(
            pool.idle().pop().is_none(),
            "worker 0 never takes worker 1's"
        );
        assert_eq!(queued(1), 2);
        crate::worker::set_current(0);
        held.abort();
    }
}
