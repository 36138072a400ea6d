//! The response body on its way to the client: frames pass through as
//! they come, and the outcome is recorded once, when it ends.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::conn::InFlight;
use crate::stats::{BackendStats, Class};
use crate::upstream::{BoxError, UpstreamBody};

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
    crate::headers::find(headers, &GRPC_STATUS).is_some_and(|v| v.as_bytes() != b"0")
}
