//! Smoke checks: real requests sent straight to the canary (bypassing the
//! split), to test that the release *works*, not only that it answers.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;

use super::state::SmokeResult;
use crate::config::plan::SmokeCheck;

pub type SmokeClient = Client<HttpConnector, Full<Bytes>>;

/// Bodies longer than this are not read further for `expect_body_contains`.
const MAX_BODY: usize = 1024 * 1024;

/// Runs every check against the canary at `authority`, one after another.
pub async fn run(
    client: &SmokeClient,
    authority: &http::uri::Authority,
    checks: &[SmokeCheck],
) -> Vec<SmokeResult> {
    let mut out = Vec::with_capacity(checks.len());
    for check in checks {
        out.push(run_one(client, authority, check).await);
    }
    out
}

async fn run_one(
    client: &SmokeClient,
    authority: &http::uri::Authority,
    check: &SmokeCheck,
) -> SmokeResult {
    let started = Instant::now();
    let result = tokio::time::timeout(
        check.expect_latency_below,
        exchange(client, authority, check),
    )
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

async fn exchange(
    client: &SmokeClient,
    authority: &http::uri::Authority,
    check: &SmokeCheck,
) -> Result<(u16, String), String> {
    let uri = format!("http://{authority}{}", check.path);
    let mut req = http::Request::builder()
        .method(check.method.clone())
        .uri(uri);
    for (k, v) in &check.headers {
        req = req.header(k, v);
    }
    let req = req
        .header("user-agent", "sluice-smoke")
        .body(Full::new(Bytes::from(check.body.clone())))
        .map_err(|e| e.to_string())?;
    let resp = client
        .request(req)
        .await
        .map_err(|e| format!("request failed: {e}"))?;
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
