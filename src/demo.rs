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

/// The demo's config: one route, 90 % stable and 10 % canary, sticky on
/// `x-user-id`, with `x-sluice-backend` to pick a backend by hand.
pub fn document(
    listen: SocketAddr,
    admin: SocketAddr,
    stable: SocketAddr,
    canary: SocketAddr,
) -> raw::Document {
    raw::Document {
        listeners: vec![raw::Listener {
            addr: listen.to_string(),
            tls: None,
        }],
        admin: Some(raw::Admin {
            addr: Some(admin.to_string()),
            token_file: None,
        }),
        routes: vec![raw::Route {
            name: "demo".into(),
            matches: None,
            backends: vec![
                raw::Backend {
                    name: "stable".into(),
                    url: format!("http://{stable}"),
                    weight: 90,
                    protocol: None,
                },
                raw::Backend {
                    name: "canary".into(),
                    url: format!("http://{canary}"),
                    weight: 10,
                    protocol: None,
                },
            ],
            sticky: Some(raw::Sticky {
                header: Some("x-user-id".into()),
                cookie: None,
            }),
            override_header: Some("x-sluice-backend".into()),
            timeout: Some("10s".into()),
            mirror: None,
            rollout: None,
        }],
        ..Default::default()
    }
}
