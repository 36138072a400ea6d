//! HTTP/2 backends (h2c with prior knowledge, or h2 agreed by ALPN over
//! TLS): each worker keeps one HTTP/2 connection per backend and
//! multiplexes all its requests to that backend over it.
//!
//! hyper-util's general-purpose client keys its pool by the request's
//! scheme and authority and connects to that authority, so the request had
//! to name the backend's address as its `:authority` and the client's own
//! host was lost. Here the connection belongs to the backend, and the
//! request carries the authority the client asked for, as Envoy passes it
//! on. Streams beyond what the backend allows at once wait in hyper for
//! one to end, as they did on hyper-util's one connection per backend.
//!
//! Requests take the connection with one atomic load (no lock); only
//! opening a connection takes a per-worker lock, so that a burst of requests
//! on a worker with none opens one, not one each.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::RequestBody;
use super::{Failure, Pool, UpstreamError};

/// A backend's HTTP/2 connections, one per worker.
pub struct Conns {
    builder: http2::Builder<TokioExecutor>,
    /// A connection unused for this long is replaced rather than trusted: the
    /// backend may be closing it as the request goes out.
    idle_timeout_ms: u64,
    per_worker: Box<[Slot]>,
}

#[derive(Default)]
struct Slot {
    live: ArcSwapOption<Live>,
    /// Held while a connection is opened; holds when the last attempt
    /// failed, and how.
    opening: tokio::sync::Mutex<Option<(tokio::time::Instant, Failure)>>,
}

struct Live {
    send: SendRequest<RequestBody>,
    /// On the coarse clock.
    last_used_ms: AtomicU64,
}

impl Conns {
    pub fn new(idle_timeout: Duration) -> Self {
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder.timer(TokioTimer::new());
        Conns {
            builder,
            idle_timeout_ms: idle_timeout.as_millis() as u64,
            per_worker: (0..crate::worker::count())
                .map(|_| Slot::default())
                .collect(),
        }
    }

    /// Sends `req` (its URI in absolute form, with the authority to send as
    /// `:authority`) over the current worker's connection, opening one if
    /// there is none. A request that never reached a connection that had
    /// closed in the meantime goes again, once, on a new one.
    pub async fn send(
        &self,
        mut req: Request<RequestBody>,
        pool: &Pool,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let slot = &self.per_worker[crate::worker::index(self.per_worker.len())];
        let mut fresh = false;
        loop {
            let live = match self.usable(slot) {
                Some(live) => live,
                None => {
                    fresh = true;
                    self.open(slot, pool).await?
                }
            };
            let mut send = live.send.clone();
            match send.try_send_request(req).await {
                Ok(response) => return Ok(response),
                Err(mut e) => match e.take_message() {
                    Some(unsent) if !fresh => {
                        tracing::trace!(error = %e.error(), "HTTP/2 backend connection closed; sending again");
                        // Only this connection: another request may have
                        // opened a new one meanwhile.
                        slot.live.compare_and_swap(&Some(live), None);
                        req = unsent;
                    }
                    _ => return Err(UpstreamError::classify(e.into_error())),
                },
            }
        }
    }

    /// The worker's connection, if it is open and was used recently.
    fn usable(&self, slot: &Slot) -> Option<Arc<Live>> {
        let live = slot.live.load_full()?;
        let now = crate::clock::coarse_ms();
        if live.send.is_closed()
            || now.saturating_sub(live.last_used_ms.load(Relaxed)) >= self.idle_timeout_ms
        {
            return None;
        }
        live.last_used_ms.store(now, Relaxed);
        Some(live)
    }

    /// Opens the worker's connection. Requests that waited while another
    /// tried and failed get that failure at once rather than each trying in
    /// turn, which against a backend that does not answer would take a
    /// connect timeout apiece.
    async fn open(&self, slot: &Slot, pool: &Pool) -> Result<Arc<Live>, UpstreamError> {
        let asked = tokio::time::Instant::now();
        let mut opening = slot.opening.lock().await;
        // Another request may have opened one while this one waited.
        if let Some(live) = self.usable(slot) {
            return Ok(live);
        }
        if let Some((when, failure)) = *opening {
            if when >= asked {
                return Err(UpstreamError::new(
                    failure,
                    std::io::Error::other("the connection being opened for this request failed"),
                ));
            }
        }
        let connected = async {
            let stream = pool.open().await?;
            let (send, conn) = self
                .builder
                .handshake(TokioIo::new(stream))
                .await
                .map_err(|e| UpstreamError::new(Failure::Broken, e))?;
            Ok::<_, UpstreamError>((send, conn))
        };
        let (send, conn) = match connected.await {
            Ok(c) => c,
            Err(e) => {
                *opening = Some((tokio::time::Instant::now(), e.failure));
                return Err(e);
            }
        };
        *opening = None;
        // Driven on this worker, where its requests come from.
        let origin = pool.origin.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(backend = %origin, error = %e, "HTTP/2 backend connection ended");
            }
        });
        let live = Arc::new(Live {
            send,
            last_used_ms: AtomicU64::new(crate::clock::coarse_ms()),
        });
        slot.live.store(Some(live.clone()));
        Ok(live)
    }
}
