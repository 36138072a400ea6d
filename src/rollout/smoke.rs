//! Smoke checks: real requests sent straight to the canary (bypassing the
//! split), to test that the release *works*, not only that it answers.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;

use super::state::SmokeResult;
use crate::config::plan::SmokeCheck;
use crate::config::Protocol;
use crate::upstream::Pool;

pub type SmokeClient = Client<HttpConnector, Full<Bytes>>;

/// Bodies longer than this are not read further for `expect_body_contains`.
const MAX_BODY: usize = 1024 * 1024;

/// Runs every check against the canary (its pool says where it is and
/// how to reach it), one after another.
pub async fn run(client: &SmokeClient, canary: &Pool, checks: &[SmokeCheck]) -> Vec<SmokeResult> {
    let mut out = Vec::with_capacity(checks.len());
    for check in checks {
        out.push(run_one(client, canary, check).await);
    }
    out
}

async fn run_one(client: &SmokeClient, canary: &Pool, check: &SmokeCheck) -> SmokeResult {
    let started = Instant::now();
    let result = tokio::time::timeout(check.expect_latency_below, async {
        if canary.is_tls() || canary.protocol == Protocol::Http2 {
            exchange_direct(canary, check).await
        } else {
            exchange(client, &canary.origin, check).await
        }
    })
    .await;
    let latency = started.elapsed();
    let (ok, detail) = match result {
        Err(_) => (
            false,
            format!(
                "no answer within {}",
                crate::config::duration::format(check.expect_latency_below)
            ),
        ),
        Ok(Err(e)) => (false, e),
        Ok(Ok((status, body))) => {
            if status != check.expect_status {
                (
                    false,
                    format!("status {status}, expected {}", check.expect_status),
                )
            } else if let Some(want) = check
                .expect_body_contains
                .as_deref()
                .filter(|w| !body.contains(*w))
            {
                (false, format!("body does not contain \"{want}\""))
            } else {
                (true, format!("status {status}"))
            }
        }
    };
    SmokeResult {
        name: check.name.clone(),
        ok,
        detail,
        latency_ms: (latency.as_secs_f64() * 1_000_000.0).round() / 1000.0,
    }
}

/// The check's request; `uri` is the whole URL for the pooled client, the
/// path alone on a connection of its own (with `host` set instead).
fn request(
    check: &SmokeCheck,
    uri: String,
    host: Option<&http::uri::Authority>,
) -> Result<http::Request<Full<Bytes>>, String> {
    let mut req = http::Request::builder()
        .method(check.method.clone())
        .uri(uri);
    // A check may name its own host; the canary's address otherwise.
    let named = check.headers.iter().any(|(k, _)| k == http::header::HOST);
    if let Some(host) = host.filter(|_| !named) {
        req = req.header(http::header::HOST, host.as_str());
    }
    for (k, v) in &check.headers {
        req = req.header(k, v);
    }
    req.header("user-agent", "sluice-smoke")
        .body(Full::new(Bytes::from(check.body.clone())))
        .map_err(|e| e.to_string())
}

async fn exchange(
    client: &SmokeClient,
    authority: &http::uri::Authority,
    check: &SmokeCheck,
) -> Result<(u16, String), String> {
    let req = request(check, format!("http://{authority}{}", check.path), None)?;
    let resp = client
        .request(req)
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    read(resp).await
}

/// An `https://` or HTTP/2 canary: a connection of its own, opened (and
/// its certificate checked) the way the canary's pool opens them, in the
/// protocol the pool speaks, so the check trusts and speaks exactly what
/// the traffic does.
async fn exchange_direct(canary: &Pool, check: &SmokeCheck) -> Result<(u16, String), String> {
    let failed = |e: &dyn std::fmt::Display| format!("request failed: {e}");
    let io = hyper_util::rt::TokioIo::new(canary.open().await.map_err(|e| failed(&e))?);
    // The connection is driven beside the request, and dropped with it (on
    // the check's timeout too): nothing outlives the check.
    // hyper runs an HTTP/2 connection's work in tasks of its own: in this
    // set they end when the check does, timed out or not.
    let tasks = Arc::new(Mutex::new(tokio::task::JoinSet::new()));
    let (send, driver): (_, Pin<Box<dyn Future<Output = ()> + Send>>) =
        if canary.protocol == Protocol::Http2 {
            let (send, conn) =
                hyper::client::conn::http2::handshake(CheckTasks(Arc::downgrade(&tasks)), io)
                    .await
                    .map_err(|e| failed(&e))?;
            let scheme = if canary.is_tls() { "https" } else { "http" };
            let uri = format!("{scheme}://{}{}", canary.origin, check.path);
            let mut req = request(check, uri, None)?;
            *req.version_mut() = http::Version::HTTP_2;
            (Sender::Http2(send, req), Box::pin(drive(conn)))
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| failed(&e))?;
            let req = request(check, check.path.to_string(), Some(&canary.origin))?;
            (Sender::Http1(send, req), Box::pin(drive(conn)))
        };
    let exchange = async {
        let resp = match send {
            Sender::Http1(mut s, req) => s.send_request(req).await,
            Sender::Http2(mut s, req) => s.send_request(req).await,
        }
        .map_err(|e| failed(&e))?;
        read(resp).await
    };
    tokio::select! {
        result = exchange => result,
        _ = driver => unreachable!("the driver never ends on its own"),
    }
}

/// Spawns into a check's own set of tasks, which aborts them when dropped.
#[derive(Clone)]
struct CheckTasks(Weak<Mutex<tokio::task::JoinSet<()>>>);

impl<F> hyper::rt::Executor<F> for CheckTasks
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        // After the check, nothing more runs for it.
        if let Some(set) = self.0.upgrade() {
            set.lock().unwrap_or_else(|e| e.into_inner()).spawn(fut);
        }
    }
}

/// A check's request on a handshaken connection.
enum Sender {
    Http1(
        hyper::client::conn::http1::SendRequest<Full<Bytes>>,
        http::Request<Full<Bytes>>,
    ),
    Http2(
        hyper::client::conn::http2::SendRequest<Full<Bytes>>,
        http::Request<Full<Bytes>>,
    ),
}

/// Runs a connection, then waits forever: the request's side decides when
/// the check is over.
async fn drive<C: Future>(conn: C) {
    let _ = conn.await;
    std::future::pending::<()>().await
}

async fn read(resp: http::Response<hyper::body::Incoming>) -> Result<(u16, String), String> {
    let status = resp.status().as_u16();
    let body = http_body_util::Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// A client for smoke checks and Prometheus queries: short connect timeout,
/// no pooling surprises.
pub fn client() -> SmokeClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(2)));
    connector.set_nodelay(true);
    Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .build(connector)
}
