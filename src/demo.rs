//! `sluice demo`: two built-in backends (stable and canary) on loopback and
//! a 90/10 route in front of them, so sluice can be tried with no files.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::config::raw;

/// Starts a demo backend that answers every request with its name, and fails
/// `error_rate` (0..=1) of them with 500. Runs until the runtime stops.
pub async fn start_backend(name: &'static str, error_rate: f64) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let error_rate = Arc::new(error_rate.clamp(0.0, 1.0));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let error_rate = error_rate.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
                    let fail = fastrand::f64() < *error_rate;
                    async move {
                        let (status, body) = if fail {
                            (
                                StatusCode::INTERNAL_SERVER_ERROR,
                                format!("{name}: failed\n"),
                            )
                        } else {
                            (StatusCode::OK, format!("hello from {name}\n"))
                        };
                        let mut r = Response::new(Full::new(Bytes::from(body)));
                        *r.status_mut() = status;
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// The demo's config: one route, stable and canary, sticky on `x-user-id`,
/// `x-sluice-backend` to pick a backend by hand, and a rollout that walks
/// the canary through 10 % → 50 % → 100 % with 30-second bakes.
pub fn document(
    listen: SocketAddr,
    admin: SocketAddr,
    stable: SocketAddr,
    canary: SocketAddr,
) -> raw::Document {
    let yaml = format!(
        r#"
listeners: [{{ addr: "{listen}" }}]
admin: {{ addr: "{admin}" }}
routes:
  - name: demo
    backends:
      - {{ name: stable, url: "http://{stable}", weight: 100 }}
      - {{ name: canary, url: "http://{canary}", weight: 0 }}
    sticky: {{ header: x-user-id }}
    override_header: x-sluice-backend
    timeout: 10s
    rollout:
      baseline: stable
      canary: canary
      stages:
        - {{ weight: 10, bake: 30s }}
        - {{ weight: 50, bake: 30s }}
        - {{ weight: 100, bake: 30s }}
      interval: 2s
      window: 30s
      min_requests: 20
      gates:
        success_rate: {{ warning: 99, critical: 95 }}
        latency_p99: {{ warning: 200ms, critical: 500ms }}
      smoke:
        - {{ name: answers, path: /, expect_status: 200 }}
"#
    );
    crate::config::parse_document(&yaml, crate::config::Syntax::Yaml)
        .expect("the demo config parses")
}

/// Sends `per_second` requests a second to the demo proxy, as users with
/// random ids, so the rollout has traffic to judge. Runs until the runtime stops.
pub fn traffic(proxy: SocketAddr, per_second: u32) {
    if per_second == 0 {
        return;
    }
    tokio::spawn(async move {
        let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
            hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
        let mut tick =
            tokio::time::interval(std::time::Duration::from_secs_f64(1.0 / per_second as f64));
        loop {
            tick.tick().await;
            let req = Request::get(format!("http://{proxy}/"))
                .header("x-user-id", format!("user-{}", fastrand::u32(..100_000)))
                .body(Full::new(Bytes::new()))
                .expect("a valid request");
            let c = client.clone();
            tokio::spawn(async move {
                if let Ok(r) = c.request(req).await {
                    let _ = http_body_util::BodyExt::collect(r.into_body()).await;
                }
            });
        }
    });
}
