//! Connection pools to backends: one per backend identity (address,
//! protocol, timeouts), carried across table swaps so that a weight change
//! keeps warm connections, and dropped when no table references the backend.
//!
//! HTTP/1.1 backends get sluice's own pool: idle `SendRequest` handles in a
//! lock-free queue, checked out per request and returned when the response
//! body has been read to its end. hyper-util's general-purpose client boxes
//! futures, locks a keyed pool, races checkout against connect and spawns a
//! task per streaming response; none of that is needed when the pool already
//! belongs to one backend. h2c backends multiplex over hyper-util's client.
//!
//! Each worker keeps its own idle connections. A connection's task lives on
//! the worker that opened it; lent to another worker, every request would
//! wake a thread across cores twice (send, then answer), which cost a
//! quarter of the throughput with two workers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use crossbeam_queue::SegQueue;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::body::{BodyLimit, BoxError, RequestBody};
use crate::config::{Protocol, Upstream};

/// Idle connections kept per backend (nginx's `keepalive` in the benchmark
/// peers is 512 too); more are closed when returned.
const MAX_IDLE: usize = 512;

/// How many workers pools keep idle connections apart for (the most any
/// running sluice in this process asked for).
static WORKERS: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    /// The worker this thread is; threads that are no worker count as 0.
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// Makes pools created from now on keep idle connections for `n` workers.
pub fn reserve_workers(n: usize) {
    WORKERS.fetch_max(n.max(1), Relaxed);
}

/// Marks the current thread as worker `i`.
pub fn set_worker(i: usize) {
    WORKER.with(|w| w.set(i));
}

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
    connect_timeout: Duration,
    idle_timeout: Duration,
    /// One queue per worker. Each grows in small blocks as connections go
    /// idle, so a table of thousands of backends costs nothing until they
    /// carry traffic.
    idle: Box<[SegQueue<Idle>]>,
    /// Idle connections in all queues together.
    idle_len: AtomicUsize,
    h2: Option<Client<HttpConnector, RequestBody>>,
}

struct Idle {
    sender: http1::SendRequest<RequestBody>,
    since: Instant,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("origin", &self.origin)
            .field("idle", &self.idle_len.load(Relaxed))
            .finish()
    }
}

/// A checked-out HTTP/1.1 connection, busy with one response. Going back to
/// the pool only when that response's body was read to its end keeps a
/// connection from carrying two exchanges at once; dropped otherwise, it
/// closes.
pub struct Lease {
    sender: http1::SendRequest<RequestBody>,
    pool: Arc<Pool>,
    request_body: crate::body::BodyProgress,
}

impl Lease {
    /// Notes the request body whose end, too, the connection must see
    /// before it may carry another exchange.
    pub fn with_request_body(mut self, progress: crate::body::BodyProgress) -> Self {
        self.request_body = progress;
        self
    }

    pub fn release(self) {
        if !self.request_body.finished() {
            // The backend answered before the upload ended: this connection
            // is still busy sending; let it close rather than make the next
            // request wait for someone else's upload.
            return;
        }
        let pool = &self.pool;
        if pool.idle_len.fetch_add(1, Relaxed) >= MAX_IDLE {
            pool.idle_len.fetch_sub(1, Relaxed);
            return; // enough idle connections: this one closes
        }
        pool.idle().push(Idle {
            sender: self.sender,
            since: Instant::now(),
        });
    }
}

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
        let h2 = (key.upstream.protocol == Protocol::H2c).then(|| {
            let mut connector = HttpConnector::new();
            // hyper-util's connector waits for the OS (minutes) unless told.
            connector.set_connect_timeout(Some(key.connect_timeout));
            connector.set_nodelay(true);
            connector.enforce_http(true);
            Client::builder(TokioExecutor::new())
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new())
                .pool_idle_timeout(key.idle_timeout)
                .http2_only(true)
                .set_host(false)
                .build(connector)
        });
        Pool {
            origin: key.upstream.authority.clone(),
            protocol: key.upstream.protocol,
            connect_timeout: key.connect_timeout,
            idle_timeout: key.idle_timeout,
            idle: (0..WORKERS.load(Relaxed))
                .map(|_| SegQueue::new())
                .collect(),
            idle_len: AtomicUsize::new(0),
            h2,
        }
    }

    /// Sends a request to the backend; the lease, if any, must be released
    /// when the response body ends.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Option<Lease>), UpstreamError> {
        if let Some(client) = &self.h2 {
            return client
                .request(req)
                .await
                .map(|r| (r, None))
                .map_err(UpstreamError::classify);
        }
        // A pooled connection first; one the backend closed while idle is
        // skipped, and a request it could not take is retried elsewhere.
        while let Some(idle) = self.idle().pop() {
            self.idle_len.fetch_sub(1, Relaxed);
            if idle.since.elapsed() >= self.idle_timeout || idle.sender.is_closed() {
                continue;
            }
            let mut sender = idle.sender;
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, Some(self.lease(sender)))),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(UpstreamError::classify(e.into_error())),
                },
            }
        }
        let mut sender = self.connect().await?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(UpstreamError::classify)?;
        Ok((resp, Some(self.lease(sender))))
    }

    /// The current worker's idle connections.
    fn idle(&self) -> &SegQueue<Idle> {
        &self.idle[WORKER.with(Cell::get) % self.idle.len()]
    }

    fn lease(self: &Arc<Self>, sender: http1::SendRequest<RequestBody>) -> Lease {
        Lease {
            sender,
            pool: self.clone(),
            request_body: Default::default(),
        }
    }

    async fn connect(&self) -> Result<http1::SendRequest<RequestBody>, UpstreamError> {
        let connect = async {
            let addr = self.resolve().await?;
            let stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            Ok::<_, std::io::Error>(stream)
        };
        let stream = match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(UpstreamError::new(Failure::Broken, e)),
            Err(_) => {
                return Err(UpstreamError::new(
                    Failure::Timeout,
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timeout"),
                ))
            }
        };
        let (sender, conn) = http1::Builder::new()
            .writev(false)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(UpstreamError::classify)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::trace!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
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
        // An HTTP/1.1 handshake exchanges no bytes: a listener that only
        // accepts is backend enough.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let mut sockets = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                sockets.push(s);
            }
        });
        reserve_workers(2);
        let pool = Arc::new(Pool::new(&PoolKey {
            upstream: Upstream {
                authority: addr.to_string().parse().unwrap(),
                protocol: Protocol::Http1,
            },
            connect_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(60),
        }));
        for worker in [0, 1, 1] {
            set_worker(worker);
            let sender = pool.connect().await.unwrap();
            pool.lease(sender).release();
        }
        let queued = |w: usize| pool.idle[w % pool.idle.len()].len();
        assert_eq!((queued(0), queued(1)), (1, 2));
        set_worker(0);
        assert!(pool.idle().pop().is_some());
        assert!(
            pool.idle().pop().is_none(),
            "worker 0 never takes worker 1's"
        );
        assert_eq!(queued(1), 2);
        set_worker(0);
        held.abort();
    }
}
