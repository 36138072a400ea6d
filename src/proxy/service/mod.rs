//! The request service: one table snapshot, route, split, forward, record.

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};

use http::header::{self, HeaderValue};
use http::uri::Authority;
use http::uri::PathAndQuery;
use http::HeaderMap;
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::{Body as _, Incoming};
use tokio::time::Sleep;

use super::conn::ConnState;
use super::mirror;
use super::response::{grpc_failed, Outcome, ResponseBody};
use crate::access_log::{AccessLog, Entry, Host};
use crate::headers::{self, ForwardedFields};
use crate::stats::{failures, Class};
use crate::table::Forwarded;
use crate::table::{Backend, Route};
use crate::table::{Table, TableReader};
use crate::target::Protocol;
use crate::upstream::request_body::BodyProgress;
use crate::upstream::BodyOpen;
use crate::upstream::Failure;
use crate::upstream::{BodyLimit, RequestBody, UpstreamBody, UpstreamError};

mod target;
use target::{request_host, upstream_target};

/// Serves one downstream connection's requests. Cloned into every request's
/// future, so it is one reference count of the connection's own: the
/// table's `ArcSwap`, shared by every connection on every worker, is not
/// counted up and down per request.
#[derive(Clone)]
pub struct ProxyService(Arc<Shared>);

struct Shared {
    table: TableReader,
    conn: Arc<ConnState>,
    /// The peer's address, ready to go into `x-forwarded-for`.
    peer: HeaderValue,
    proto: HeaderValue,
    access_log: Option<Arc<AccessLog>>,
}

impl ProxyService {
    pub fn new(table: TableReader, conn: Arc<ConnState>, peer: IpAddr, tls: bool) -> Self {
        // Fixed from start, so the connection takes it once.
        let access_log = table.load().access_log.clone();
        ProxyService(Arc::new(Shared {
            table,
            conn,
            peer: HeaderValue::from_str(&peer.to_string())
                .expect("an IP address is a valid header value"),
            proto: HeaderValue::from_static(if tls { "https" } else { "http" }),
            access_log,
        }))
    }
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for ProxyService {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = BoxFuture;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let this = self.clone();
        let http2 = req.version() == Version::HTTP_2;
        let in_flight = this.0.conn.request_started(http2);
        let open = (!http2 && !req.body().is_end_stream()).then(|| this.0.conn.body_started());
        let Some(log) = this.0.access_log.clone() else {
            // No access log: a future of its own, no larger than one that
            // never heard of it.
            return Box::pin(async move {
                let response = this.forward(req, open, None).await;
                // In flight until the body has been sent (or the request is
                // abandoned and this future dropped).
                Ok(response.map(|body| body.with_in_flight(in_flight)))
            });
        };
        let host = match req.uri().authority() {
            Some(a) => Some(Host::Authority(a.clone())),
            None => req.headers().get(header::HOST).cloned().map(Host::Field),
        };
        // Boxed: the queue takes the box as it is, and the future keeps a
        // pointer instead of the entry.
        let mut entry = Box::new(Entry {
            time: SystemTime::now(),
            client: this.0.peer.clone(),
            method: req.method().clone(),
            host,
            target: req.uri().path_and_query().cloned(),
            version: req.version(),
            status: 0,
            route: None,
            backend: None,
            latency: Duration::ZERO,
        });
        let started = Instant::now();
        Box::pin(async move {
            let response = this.forward(req, open, Some(&mut entry)).await;
            entry.status = response.status().as_u16();
            entry.latency = started.elapsed();
            log.record(entry);
            Ok(response.map(|body| body.with_in_flight(in_flight)))
        })
    }
}

/// Records a request the backend failed as its error, and logs it at
/// warn, at most once a second per backend of a route (see [`failures`]);
/// `cause` is worked out only for a line that is written.
fn backend_failed(
    route: &crate::table::Route,
    backend: &crate::table::Backend,
    latency: std::time::Duration,
    status: StatusCode,
    cause: impl FnOnce() -> String,
) {
    backend.stats.record(Class::Error, latency);
    if let Some(unlogged) = backend.stats.failures.admit(crate::clock::coarse_ms()) {
        tracing::warn!(
            route = %route.name,
            backend = %backend.name,
            origin = %backend.pool.origin,
            status = status.as_u16(),
            unlogged,
            "backend failed: {}",
            cause()
        );
    }
}

/// A response sluice writes itself.
pub fn local_response(status: StatusCode, message: &str) -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::local(format!("sluice: {message}\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Sends a copy of the request, taken before the request is shaped for its
/// own backend, to the route's mirror backend (see [`mirror`]).
fn copy_to_mirror(
    parts: &http::request::Parts,
    authority: Option<&Authority>,
    pq: &PathAndQuery,
    forwarded: &ForwardedFields,
    body: &mut RequestBody,
    to: &crate::table::Backend,
    timeout: std::time::Duration,
) {
    let mut headers = parts.headers.clone();
    let mut forwarded = forwarded.clone();
    let Some((uri, version)) = upstream_target(
        authority.cloned(),
        pq.clone(),
        &mut headers,
        &mut forwarded,
        to,
        true,
    ) else {
        return;
    };
    let mut copy = Request::new(());
    *copy.method_mut() = parts.method.clone();
    *copy.uri_mut() = uri;
    *copy.version_mut() = version;
    *copy.headers_mut() = headers;
    mirror::send(copy.into_parts().0, body.mirrored(), forwarded, to, timeout);
}

/// The route timeout ran out before the backend answered.
struct Elapsed;

pin_project_lite::pin_project! {
    /// `fut`'s output, or [`Elapsed`] at `deadline`: `tokio::time::timeout`
    /// with a timer the caller keeps for reuse, which may be due earlier
    /// than `deadline` (see [`ConnState::timer`]): then it is moved on and
    /// waited for again. A future of its own rather than an `async fn`,
    /// whose argument would be moved once more into the pinned local it
    /// polls: the backend exchange's future is large, and each move is a
    /// `memcpy` of all of it.
    struct Within<'t, F> {
        timer: &'t mut Pin<Box<Sleep>>,
        deadline: tokio::time::Instant,
        #[pin]
        fut: F,
    }
}

impl<F: Future> Future for Within<'_, F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        use tokio::task::coop;
        let this = self.project();
        let had_budget = coop::has_budget_remaining();
        if let Poll::Ready(out) = this.fut.poll(cx) {
            return Poll::Ready(Ok(out));
        }
        // As in `tokio::time::timeout`: when `fut` spent the task's budget
        // (an upload writing as fast as the backend takes it), the timer is
        // still looked at, or the timeout would wait for the upload to end.
        let unconstrained = had_budget && !coop::has_budget_remaining();
        loop {
            let fired = if unconstrained {
                Pin::new(&mut coop::unconstrained(this.timer.as_mut())).poll(cx)
            } else {
                this.timer.as_mut().poll(cx)
            };
            std::task::ready!(fired);
            if tokio::time::Instant::now() >= *this.deadline {
                return Poll::Ready(Err(Elapsed));
            }
            this.timer.as_mut().reset(*this.deadline);
        }
    }
}

impl ProxyService {
    /// One request, in its phases: [`admit`] it (a host, a route, a body
    /// within the limit) and pick a backend; [`ProxyService::shape`] what
    /// goes upstream (headers, forwarded fields, the body under its
    /// limits, a mirrored copy, the target); send it within the route's
    /// timeout; [`classify`] the answer into the client's response and the
    /// backend's outcome.
    async fn forward(
        &self,
        req: Request<Incoming>,
        open: Option<BodyOpen>,
        logged: Option<&mut Entry>,
    ) -> Response<ResponseBody> {
        let started = Instant::now();
        let table = self.0.table.load_full();
        let (route, picked) = match admit(&table, &req) {
            Ok(admitted) => admitted,
            Err(Refusal(status, why)) => return local_response(status, why),
        };
        let backend = &route.backends[picked];
        if let Some(entry) = logged {
            entry.route = Some(route.name.clone());
            entry.backend = Some(backend.name.clone());
        }
        let (parts, body, forwarded, progress) =
            match self.shape(&table, route, picked, req, open, started) {
                Ok(shaped) => shaped,
                Err(Refusal(status, why)) => return local_response(status, why),
            };

        let deadline = tokio::time::Instant::from_std(started + route.timeout);
        let mut timer = self.0.conn.timer(deadline);
        let result = Within {
            timer: &mut timer,
            deadline,
            fut: backend.pool.send(parts, body, forwarded),
        }
        .await;
        self.0.conn.keep_timer(timer);
        classify(route, backend, result, &progress, started.elapsed())
    }

    /// The request as it goes upstream: hop-by-hop fields stripped, the
    /// forwarded fields worked out, the body under its size and time
    /// limits (and copied to the mirror, if the route has one and the draw
    /// says so), the target rewritten for the backend.
    // Inlined, as are `admit` and `classify`: what they return moves into
    // the request's future without a copy (benches/RESULTS.md).
    #[allow(clippy::type_complexity)]
    #[inline(always)]
    fn shape(
        &self,
        table: &Table,
        route: &Route,
        picked: usize,
        req: Request<Incoming>,
        open: Option<BodyOpen>,
        started: Instant,
    ) -> Result<
        (
            http::request::Parts,
            RequestBody,
            ForwardedFields,
            BodyProgress,
        ),
        Refusal,
    > {
        let limits = &table.config.limits;
        let backend = &route.backends[picked];
        let (mut parts, body) = req.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        let mut forwarded = ForwardedFields::new(
            &parts.headers,
            &self.0.peer,
            &self.0.proto,
            table.config.forwarded == Forwarded::Overwrite,
        );
        let target = std::mem::take(&mut parts.uri).into_parts();
        let pq = target
            .path_and_query
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut body = RequestBody::new(
            body,
            limits.max_body_bytes,
            started + limits.request_timeout,
            open,
        );
        let progress = body.progress();
        if let Some(m) = route.mirror.filter(|m| m.backend != picked && m.draw()) {
            // Sent from a plain function: whatever it holds must not take
            // room in the request's future, which every request allocates.
            copy_to_mirror(
                &parts,
                target.authority.as_ref(),
                &pq,
                &forwarded,
                &mut body,
                &route.backends[m.backend],
                route.timeout,
            );
        }
        let Some((uri, version)) = upstream_target(
            target.authority,
            pq,
            &mut parts.headers,
            &mut forwarded,
            backend,
            false,
        ) else {
            return Err(Refusal(
                StatusCode::BAD_REQUEST,
                "the request target cannot be forwarded",
            ));
        };
        parts.uri = uri;
        parts.version = version;
        Ok((parts, body, forwarded, progress))
    }
}

/// A request refused before it went anywhere: the client's status, and
/// why in words.
struct Refusal(StatusCode, &'static str);

/// A request sluice takes: it names one host, a route matches it, and the
/// body it declares is within the limit; with the backend the split picks.
/// Otherwise why not.
#[inline(always)]
fn admit<'t>(table: &'t Table, req: &Request<Incoming>) -> Result<(&'t Route, usize), Refusal> {
    let Some(host) = request_host(req) else {
        return Err(Refusal(
            StatusCode::BAD_REQUEST,
            "the request needs exactly one Host header",
        ));
    };
    let lowered;
    let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
        lowered = host.to_ascii_lowercase();
        lowered.as_str()
    } else {
        host
    };
    let Some(route) = table.route(host, req.uri().path(), req.headers()) else {
        return Err(Refusal(
            StatusCode::NOT_FOUND,
            "no route matches this request",
        ));
    };
    if let Some(max) = table.config.limits.max_body_bytes {
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max) {
            return Err(Refusal(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body is larger than limits.max_body_bytes",
            ));
        }
    }
    Ok((route, route.pick(req.headers())))
}

/// The client's response to what the backend did: its answer, with the
/// outcome to record when the body ends (a gRPC failure counts as a 5xx),
/// or the status that says what went wrong, the backend's failures
/// recorded and logged, the client's own (a body too large, too slow,
/// broken off) not held against it.
#[inline(always)]
fn classify(
    route: &Route,
    backend: &Backend,
    result: Result<Result<Response<UpstreamBody>, UpstreamError>, Elapsed>,
    progress: &BodyProgress,
    latency: Duration,
) -> Response<ResponseBody> {
    match result {
        Ok(Ok(response)) => {
            let (mut parts, body) = response.into_parts();
            headers::strip_hop_by_hop(&mut parts.headers);
            let class = if grpc_failed(&parts.headers) {
                Class::Server5xx
            } else {
                Class::of_status(parts.status.as_u16())
            };
            let outcome = Outcome::new(backend.stats.clone(), class, latency);
            Response::from_parts(parts, ResponseBody::upstream(body, outcome))
        }
        Ok(Err(e)) => match e.failure {
            Failure::Downstream(BodyLimit::TooLarge) => local_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body is larger than limits.max_body_bytes",
            ),
            Failure::Downstream(BodyLimit::Incomplete) => {
                local_response(StatusCode::BAD_REQUEST, "the request body ended early")
            }
            Failure::Downstream(BodyLimit::Timeout) => local_response(
                StatusCode::REQUEST_TIMEOUT,
                "request was not received within limits.request_timeout",
            ),
            Failure::Timeout => {
                tracing::debug!(route = %route.name, backend = %backend.name, error = %e, "upstream connect timeout");
                backend_failed(route, backend, latency, StatusCode::GATEWAY_TIMEOUT, || {
                    format!("timed out: {}", failures::chain(&e))
                });
                local_response(
                    StatusCode::GATEWAY_TIMEOUT,
                    "the backend did not accept a connection in time",
                )
            }
            Failure::Broken => {
                tracing::debug!(route = %route.name, backend = %backend.name, error = ?e, "upstream failed");
                backend_failed(route, backend, latency, StatusCode::BAD_GATEWAY, || {
                    failures::chain(&e)
                });
                local_response(StatusCode::BAD_GATEWAY, "the backend failed to answer")
            }
        },
        Err(_) if !progress.finished() => {
            // Still uploading when the route timeout fired: the client
            // was slow, not the backend.
            local_response(
                StatusCode::REQUEST_TIMEOUT,
                "the request body did not arrive within the route's timeout",
            )
        }
        Err(_) => {
            backend_failed(route, backend, latency, StatusCode::GATEWAY_TIMEOUT, || {
                format!("no answer within the route's timeout ({:?})", route.timeout)
            });
            local_response(
                StatusCode::GATEWAY_TIMEOUT,
                "the backend did not answer within the route's timeout",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::target::h2_authority;
    use super::*;

    fn with_host(host: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(host) = host {
            h.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        }
        h
    }

    #[test]
    fn an_h2c_backend_gets_the_authority_the_client_asked_for() {
        let cases: [(Option<&str>, Option<&str>, Option<&str>); 6] = [
            // (request target's authority, Host field, :authority sent)
            (Some("shop.test"), Some("other.test"), Some("shop.test")),
            (Some("user@shop.test:8443"), None, Some("shop.test:8443")),
            (None, Some("api.test:8443"), Some("api.test:8443")),
            (None, Some("[::1]:9"), Some("[::1]:9")),
            (None, Some("not an authority"), None),
            (None, None, None),
        ];
        for (target, host, sent) in cases {
            let mut headers = with_host(host);
            let target = target.map(|a| a.parse::<Authority>().unwrap());
            let got = h2_authority(target, &mut headers);
            assert_eq!(got.as_ref().map(Authority::as_str), sent, "{host:?}");
            assert!(headers.get(header::HOST).is_none(), "the Host field goes");
        }
    }
}
