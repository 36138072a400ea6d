//! Shadow traffic: a copy of a request goes to the route's mirror backend
//! beside the request itself, and the copy's answer is read and thrown
//! away. The copy never holds up the request: it runs in a task of its own,
//! its body is fed from the request's as that streams (and given up when
//! the mirror falls behind, see [`crate::upstream::request_body::MIRROR_BUFFER`]), and when
//! too many copies are already under way, no more are made.
//!
//! A copy's outcome counts for its backend like any request's, judged the
//! same way (its window, its rollout gates, its Prometheus series):
//! shadowing a canary is how its health is judged on real traffic before it
//! takes any. A copy cut off on sluice's side (its mirror fell behind, the
//! client's body broke off or came too slowly) is not counted at all.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::uri::Authority;
use http_body_util::BodyExt;
use tokio::sync::Semaphore;

use super::response::{grpc_failed, Outcome, ResponseBody};
use crate::headers;
use crate::stats::{BackendStats, Class};
use crate::table::Backend;
use crate::upstream::RequestBody;
use crate::upstream::{Failure, Pool};

/// Copies under way at most, in the whole process. A mirror backend that
/// stops answering holds each copy for the route timeout; past this many,
/// requests go unmirrored rather than pile up.
pub const MAX_IN_FLIGHT: usize = 4096;

/// A permit per copy under way.
static IN_FLIGHT: Semaphore = Semaphore::const_new(MAX_IN_FLIGHT);

/// Sends `parts` (shaped for `mirror` already) with `body` in a task of its
/// own. The answer's head must come within `timeout`, as for the request
/// itself, and its body is read to the end (so that the connection goes
/// back to the pool) within another `timeout`.
pub fn send(
    parts: http::request::Parts,
    body: RequestBody,
    forwarded: headers::ForwardedFields,
    mirror: &Backend,
    timeout: Duration,
) {
    let Ok(permit) = IN_FLIGHT.try_acquire() else {
        tracing::debug!(backend = %mirror.name, "too many mirrored requests under way; not copying this one");
        return;
    };
    let pool: Arc<Pool> = mirror.pool.clone();
    let stats: Arc<BackendStats> = mirror.stats.clone();
    tokio::spawn(async move {
        let _permit = permit;
        let started = Instant::now();
        // A copy cut off on sluice's side (it fell behind, the client's
        // body broke off) says nothing about the mirror backend, however
        // its exchange ended; nor does a timeout while the client was
        // still sending, as for the request itself.
        let cut = body.cut_off();
        let sent = body.progress();
        let response = tokio::time::timeout(timeout, pool.send(parts, body, forwarded)).await;
        let latency = started.elapsed();
        let response = match response {
            Ok(Ok(response)) => response,
            Ok(Err(e)) if cut.happened() || matches!(e.failure, Failure::Downstream(_)) => return,
            Err(_) if cut.happened() || !sent.finished() => return,
            failed => {
                if let Ok(Err(e)) = failed {
                    tracing::debug!(error = %e, "mirrored request failed");
                }
                stats.record(Class::Error, latency);
                return;
            }
        };
        // Judged as the request's own answer is: by its status, a gRPC
        // status in its head or trailers, or a body that breaks off,
        // recorded once when the body ends (or is given up).
        let (head, inner) = response.into_parts();
        let class = if grpc_failed(&head.headers) {
            Class::Server5xx
        } else {
            Class::of_status(head.status.as_u16())
        };
        let mut body = ResponseBody::upstream(inner, Outcome::new(stats, class, latency));
        let _ = tokio::time::timeout(timeout, async {
            while let Some(frame) = body.frame().await {
                if frame.is_err() {
                    break;
                }
            }
        })
        .await;
    });
}

/// The authority a copy names: `shop.test:8080` becomes
/// `shop.test-shadow:8080`, as Envoy and Istio mark the copies they mirror,
/// so that the mirror backend (its logs, its own routing) tells them apart.
/// `None` for an IPv6 literal, which has no name to mark (`http` would
/// take `[::1]-shadow` as an authority all the same).
pub fn shadowed(authority: &Authority) -> Option<Authority> {
    let bare = headers::without_userinfo(authority.as_str());
    let host = headers::authority_host(bare);
    if host.starts_with('[') {
        return None;
    }
    let port = &bare[host.len()..];
    format!("{host}-shadow{port}").parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_marks_its_host_before_the_port() {
        let cases = [
            ("shop.test", Some("shop.test-shadow")),
            ("shop.test:8080", Some("shop.test-shadow:8080")),
            ("user@shop.test:1", Some("shop.test-shadow:1")),
            ("127.0.0.1:80", Some("127.0.0.1-shadow:80")),
            ("[::1]:80", None),
        ];
        for (authority, marked) in cases {
            let a: Authority = authority.parse().unwrap();
            assert_eq!(
                shadowed(&a).as_ref().map(Authority::as_str),
                marked,
                "{authority}"
            );
        }
    }

    #[test]
    fn copies_under_way_are_bounded_and_counted_back() {
        let before = IN_FLIGHT.available_permits();
        let held: Vec<_> = std::iter::from_fn(|| IN_FLIGHT.try_acquire().ok())
            .take(MAX_IN_FLIGHT + 1)
            .collect();
        assert_eq!(held.len(), before);
        assert!(IN_FLIGHT.try_acquire().is_err());
        drop(held);
        assert_eq!(IN_FLIGHT.available_permits(), before);
    }
}
