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

/// How long one query may take, connection included.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// GETs an API path of a Prometheus server and returns its `data`.
async fn api(
    client: &PromClient,
    base: &str,
    path_and_query: &str,
) -> Result<serde_json::Value, String> {
    let uri = format!("{base}{path_and_query}");
    let req = http::Request::get(&uri)
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let fetch = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| format!("cannot reach {base}: {e}"))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("{base} broke off its answer: {e}"))?
            .to_bytes();
        Ok::<_, String>((status, body))
    };
    let (status, body) = tokio::time::timeout(QUERY_TIMEOUT, fetch)
        .await
        .map_err(|_| format!("{base} did not answer within {}s", QUERY_TIMEOUT.as_secs()))??;
    let mut v: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| format!("{base} answered {status} with something that is not JSON: {e}"))?;
    if v["status"] != "success" {
        return Err(format!(
            "query failed: {}",
            v["error"].as_str().unwrap_or("unknown error")
        ));
    }
    Ok(v["data"].take())
}

/// One series of a range query: its labels and its samples (seconds, value).
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub labels: std::collections::BTreeMap<String, String>,
    pub samples: Vec<(f64, f64)>,
}

/// Runs a range query from `start` to `end` (seconds) at `step`: one
/// evaluation per step, each exactly what an instant query at that time
/// returns, so a replica that reads the past gets what the others read then.
pub async fn query_range(
    client: &PromClient,
    base: &str,
    promql: &str,
    start: f64,
    end: f64,
    step: Duration,
) -> Result<Vec<Series>, String> {
    let data = api(
        client,
        base,
        &format!(
            "/api/v1/query_range?query={}&start={start:.3}&end={end:.3}&step={:.3}",
            encode(promql),
            step.as_secs_f64()
        ),
    )
    .await?;
    let Some(result) = data["result"].as_array() else {
        return Err("a range query answered without a result list".into());
    };
    Ok(result
        .iter()
        .map(|s| Series {
            labels: s["metric"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect()
                })
                .unwrap_or_default(),
            samples: s["values"]
                .as_array()
                .map(|vs| {
                    vs.iter()
                        .filter_map(|p| {
                            let t = p.get(0)?.as_f64()?;
                            let v = p.get(1)?.as_str()?.parse::<f64>().ok()?;
                            v.is_finite().then_some((t, v))
                        })
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect())
}

/// Runs an instant query; `Ok(None)` when it returns no sample (or NaN).
pub async fn query(
    client: &PromClient,
    base: &str,
    promql: &str,
    time: f64,
) -> Result<Option<f64>, String> {
    let data = api(
        client,
        base,
        &format!("/api/v1/query?query={}&time={time:.3}", encode(promql)),
    )
    .await?;
    let data = &data;
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
