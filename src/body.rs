//! Body wrappers on the request path: the request body on its way upstream
//! (enforcing the size and time limits while it streams) and the response
//! body on its way downstream (recording the outcome once, when it ends).
//! Neither buffers: frames pass through as they come.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tokio::time::Sleep;

use crate::proxy::conn::{BodyOpen, InFlight};
use crate::stats::{BackendStats, Class};
use crate::upstream::UpstreamBody;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A limit the client's request body broke; the client gets 413 or 408.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyLimit {
    #[error("request body is larger than limits.max_body_bytes")]
    TooLarge,
    #[error("request was not received within limits.request_timeout")]
    Timeout,
    /// The client's body broke off (reset, truncated chunking): the client's
    /// fault, never the backend's.
    #[error("the request body ended early")]
    Incomplete,
}

pin_project! {
    /// The client's request body, streamed to the backend under limits.
    pub struct RequestBody {
        #[pin]
        inner: Incoming,
        received: u64,
        max: Option<u64>,
        deadline: Instant,
        // Armed only if the body ever has to wait, so bodiless requests
        // allocate no timer.
        sleep: Option<Pin<Box<Sleep>>>,
        // Set once the whole body has been read; `None` when there was no body.
        done: Option<Arc<AtomicBool>>,
        // The connection's count of unread bodies, settled at the end.
        open: Option<BodyOpen>,
    }
}

impl RequestBody {
    pub fn new(
        inner: Incoming,
        max: Option<u64>,
        deadline: Instant,
        open: Option<BodyOpen>,
    ) -> Self {
        let done = (!inner.is_end_stream()).then(|| Arc::new(AtomicBool::new(false)));
        RequestBody {
            inner,
            received: 0,
            max,
            deadline,
            sleep: None,
            done,
            open,
        }
    }

    /// Tells whether the whole body has been sent on (always true for a
    /// request without one).
    pub fn progress(&self) -> BodyProgress {
        BodyProgress(self.done.clone())
    }
}

/// Whether a request body has been read to its end.
#[derive(Debug, Clone, Default)]
pub struct BodyProgress(Option<Arc<AtomicBool>>);

impl BodyProgress {
    pub fn finished(&self) -> bool {
        self.0.as_ref().is_none_or(|d| d.load(Ordering::Acquire))
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    *this.received += data.len() as u64;
                    if this.max.is_some_and(|max| *this.received > max) {
                        return Poll::Ready(Some(Err(BodyLimit::TooLarge.into())));
                    }
                }
                // A client reading by length stops at the last frame
                // without asking for the end.
                if this.inner.is_end_stream() {
                    ended(this.done, this.open);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                tracing::debug!(error = %e, "request body broke off");
                Poll::Ready(Some(Err(BodyLimit::Incomplete.into())))
            }
            Poll::Ready(None) => {
                ended(this.done, this.open);
                Poll::Ready(None)
            }
            Poll::Pending => {
                let deadline = tokio::time::Instant::from_std(*this.deadline);
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                ready!(sleep.as_mut().poll(cx));
                Poll::Ready(Some(Err(BodyLimit::Timeout.into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn ended(done: &Option<Arc<AtomicBool>>, open: &mut Option<BodyOpen>) {
    if let Some(d) = done {
        d.store(true, Ordering::Release);
    }
    if let Some(mut o) = open.take() {
        o.finish();
    }
}

/// Records one request's outcome exactly once: when its response body ends,
/// fails, or is dropped (a client that hangs up early still counts, with the
/// status it was given).
pub struct Outcome {
    stats: Arc<BackendStats>,
    class: Class,
    latency: Duration,
    recorded: bool,
}

impl Outcome {
    pub fn new(stats: Arc<BackendStats>, class: Class, latency: Duration) -> Self {
        Outcome {
            stats,
            class,
            latency,
            recorded: false,
        }
    }

    fn finish(&mut self) {
        if !self.recorded {
            self.recorded = true;
            self.stats.record(self.class, self.latency);
        }
    }
}

impl Drop for Outcome {
    fn drop(&mut self) {
        self.finish();
    }
}

pin_project! {
    /// What the client receives: the backend's body as it streams, or a
    /// small body sluice made itself (errors, admin answers).
    #[project = ResponseBodyProj]
    pub enum ResponseBody {
        Upstream {
            #[pin] inner: UpstreamBody,
            outcome: Outcome,
            in_flight: Option<InFlight>,
        },
        Local { data: Option<Bytes>, in_flight: Option<InFlight> },
    }
}

impl ResponseBody {
    /// The backend's body.
    pub fn upstream(inner: UpstreamBody, outcome: Outcome) -> Self {
        ResponseBody::Upstream {
            inner,
            outcome,
            in_flight: None,
        }
    }

    /// Keeps the request counted in flight on its connection until this
    /// body has been sent or dropped.
    pub fn with_in_flight(mut self, guard: InFlight) -> Self {
        match &mut self {
            ResponseBody::Upstream { in_flight, .. } | ResponseBody::Local { in_flight, .. } => {
                *in_flight = Some(guard)
            }
        }
        self
    }

    pub fn local(data: impl Into<Bytes>) -> Self {
        let data: Bytes = data.into();
        ResponseBody::Local {
            data: (!data.is_empty()).then_some(data),
            in_flight: None,
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            ResponseBodyProj::Local { data, .. } => {
                Poll::Ready(data.take().map(|d| Ok(Frame::data(d))))
            }
            ResponseBodyProj::Upstream {
                mut inner, outcome, ..
            } => match ready!(inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let Some(trailers) = frame.trailers_ref() {
                        if grpc_failed(trailers) {
                            outcome.class = Class::Server5xx;
                        }
                    }
                    // With a known length the server stops polling after the
                    // last byte, so the end is noticed here, not at `None`.
                    if inner.is_end_stream() {
                        outcome.finish();
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Some(Err(e)) => {
                    outcome.class = Class::Error;
                    outcome.finish();
                    Poll::Ready(Some(Err(e)))
                }
                None => {
                    outcome.finish();
                    Poll::Ready(None)
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Upstream { inner, .. } => inner.is_end_stream(),
            ResponseBody::Local { data, .. } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Upstream { inner, .. } => inner.size_hint(),
            ResponseBody::Local { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

/// gRPC reports failure in `grpc-status`, in trailers or in a trailers-only
/// response's headers; anything but `0` counts as a 5xx.
pub fn grpc_failed(headers: &http::HeaderMap) -> bool {
    static GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
    crate::proxy::headers::find(headers, &GRPC_STATUS).is_some_and(|v| v.as_bytes() != b"0")
}
