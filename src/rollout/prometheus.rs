//! Prometheus gates: an instant query at an aligned timestamp, so every
//! replica of a fleet reads the same number and reaches the same decision.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;

/// The client Prometheus is queried with.
pub type PromClient = Client<HttpConnector, Full<Bytes>>;

/// A short connect timeout; idle connections kept for the next query.
pub fn client() -> PromClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(2)));
    connector.set_nodelay(true);
    Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .build(connector)
}

/// `floor(now / interval) * interval - lag`, in seconds since the epoch.
pub fn aligned_time(now_ms: i64, interval: Duration, lag: Duration) -> f64 {
    let step = interval.as_millis().max(1) as i64;
    let aligned = now_ms.div_euclid(step) * step - lag.as_millis() as i64;
    aligned as f64 / 1000.0
}

/// Runs an instant query; `Ok(None)` when it returns no sample (or NaN).
pub async fn query(
    client: &PromClient,
    base: &str,
    promql: &str,
    time: f64,
) -> Result<Option<f64>, String> {
    let uri = format!(
        "{base}/api/v1/query?query={}&time={time:.3}",
        encode(promql)
    );
    let req = http::Request::get(&uri)
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(5), client.request(req))
        .await
        .map_err(|_| format!("{base} did not answer within 5s"))?
        .map_err(|e| format!("cannot reach {base}: {e}"))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| format!("{base} answered {status} with something that is not JSON: {e}"))?;
    if v["status"] != "success" {
        return Err(format!(
            "query failed: {}",
            v["error"].as_str().unwrap_or("unknown error")
        ));
    }
    let data = &v["data"];
    let sample = match data["resultType"].as_str() {
        Some("vector") => data["result"].get(0).map(|s| &s["value"]),
        Some("scalar") => Some(&data["result"]),
        other => {
            return Err(format!(
                "query returned a {other:?}, not a vector or scalar"
            ))
        }
    };
    let value = sample
        .and_then(|s| s.get(1))
        .and_then(|v| v.as_str())
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|v| v.is_finite());
    Ok(value)
}

/// Percent-encodes a query parameter value.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_replica_reads_the_same_instant() {
        let i = Duration::from_secs(30);
        let lag = Duration::from_secs(15);
        let a = aligned_time(1_795_000_010_123, i, lag);
        let b = aligned_time(1_795_000_019_999, i, lag);
        assert_eq!(a, b);
        assert_eq!(a, 1_794_999_975.0);
    }

    #[test]
    fn encodes_promql() {
        assert_eq!(
            encode("sum(rate(x{a=\"b\"}[1m]))"),
            "sum%28rate%28x%7Ba%3D%22b%22%7D%5B1m%5D%29%29"
        );
    }
}
