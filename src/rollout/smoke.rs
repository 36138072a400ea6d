//! Smoke checks: real requests sent straight to the canary (bypassing the
//! split), to test that the release *works*, not only that it answers.

use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use super::state::SmokeResult;
use crate::config::plan::SmokeCheck;
use crate::config::Protocol;
use crate::upstream::Pool;

/// Bodies longer than this are not read further for `expect_body_contains`.
const MAX_BODY: usize = 1024 * 1024;

/// Runs every check against the canary (its pool says where it is and
/// how to reach it), one after another.
pub async fn run(canary: &Pool, checks: &[SmokeCheck]) -> Vec<SmokeResult> {
    let mut out = Vec::with_capacity(checks.len());
    for check in checks {
        out.push(run_one(canary, check).await);
    }
    out
}

async fn run_one(canary: &Pool, check: &SmokeCheck) -> SmokeResult {
    let started = Instant::now();
    let result = tokio::time::timeout(check.expect_latency_below, exchange(canary, check)).await;
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

/// The check's request: `uri` in absolute form over HTTP/2, the path
/// alone with a `host` over HTTP/1.1.
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

/// One check on a connection of its own, opened (its certificate checked,
/// when TLS) the way the canary's pool opens them and in the protocol the
/// pool speaks, so the check trusts and speaks exactly what the traffic
/// does; the connection ends with the check.
async fn exchange(canary: &Pool, check: &SmokeCheck) -> Result<(u16, String), String> {
    let failed = |e: &dyn std::fmt::Display| format!("request failed: {e}");
    let io = TokioIo::new(canary.open().await.map_err(|e| failed(&e))?);
    if canary.protocol == Protocol::Http2 {
        // hyper runs an HTTP/2 connection's work in tasks of its own: in
        // this set they end when the check does, timed out or not.
        let tasks = Arc::new(Mutex::new(tokio::task::JoinSet::new()));
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(CheckTasks(Arc::downgrade(&tasks)), io)
                .await
                .map_err(|e| failed(&e))?;
        let scheme = if canary.is_tls() { "https" } else { "http" };
        let mut req = request(
            check,
            format!("{scheme}://{}{}", canary.origin, check.path),
            None,
        )?;
        *req.version_mut() = http::Version::HTTP_2;
        beside(conn, async {
            read(send.send_request(req).await.map_err(|e| failed(&e))?).await
        })
        .await
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| failed(&e))?;
        let req = request(check, check.path.to_string(), Some(&canary.origin))?;
        beside(conn, async {
            read(send.send_request(req).await.map_err(|e| failed(&e))?).await
        })
        .await
    }
}

/// `exchange`'s outcome, with `conn` (the connection it goes over) driven
/// beside it and dropped with it.
async fn beside<T>(conn: impl Future, exchange: impl Future<Output = T>) -> T {
    tokio::select! {
        out = exchange => out,
        _ = async { conn.await; std::future::pending::<()>().await } => unreachable!("never ends"),
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

async fn read(resp: http::Response<hyper::body::Incoming>) -> Result<(u16, String), String> {
    let status = resp.status().as_u16();
    let body = http_body_util::Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
