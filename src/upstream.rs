//! Connection pools to backends: one per backend identity (address, protocol,
//! connect timeout), carried across table swaps so that a weight change keeps
//! warm connections, and dropped when no table references the backend.

use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::RequestBody;
use crate::config::{Protocol, Upstream};

/// What identifies a pool: two backends with the same key share connections.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub upstream: Upstream,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
}

/// A keep-alive pool to one backend.
pub struct Pool {
    client: Client<HttpConnector, RequestBody>,
    /// `http://host:port`, prepended to each request's path.
    pub origin: http::uri::Authority,
    pub protocol: Protocol,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("origin", &self.origin)
            .finish()
    }
}

impl Pool {
    pub fn new(key: &PoolKey) -> Self {
        let mut connector = HttpConnector::new();
        // hyper-util's connector waits for the OS (minutes) unless told.
        connector.set_connect_timeout(Some(key.connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(key.idle_timeout)
            .http2_only(key.upstream.protocol == Protocol::H2c)
            .retry_canceled_requests(true)
            .set_host(false);
        Pool {
            client: builder.build(connector),
            origin: key.upstream.authority.clone(),
            protocol: key.upstream.protocol,
        }
    }

    pub fn send(
        &self,
        req: http::Request<RequestBody>,
    ) -> hyper_util::client::legacy::ResponseFuture {
        self.client.request(req)
    }
}

/// Why a backend gave no usable response; decides 502 versus 504.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Could not connect in time, or the response headers did not come in time.
    Timeout,
    /// Refused, reset, or spoke something that is not HTTP.
    Broken,
    /// The client's request body broke the limits (size or time): not the backend's fault.
    Downstream(crate::body::BodyLimit),
}

/// Classifies a client error by walking its source chain.
pub fn classify(err: &hyper_util::client::legacy::Error) -> Failure {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(limit) = e.downcast_ref::<crate::body::BodyLimit>() {
            return Failure::Downstream(*limit);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return Failure::Timeout;
            }
        }
        source = e.source();
    }
    Failure::Broken
}
