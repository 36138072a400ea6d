//! The client's request body on its way to a backend, enforcing the size
//! and time limits while it streams. It does not buffer: frames pass
//! through as they come. A request copied to a mirror backend hands each
//! frame to the copy as well, which holds it until the mirror reads it, up
//! to [`MIRROR_BUFFER`]. The response side is `proxy::response`.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tokio::time::Sleep;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What counts the unread request bodies of a connection (the proxy's
/// connection state): a body that ends tells it.
pub trait OpenBodies: Send + Sync {
    fn body_finished(&self);
}

/// An HTTP/1.1 request body still being read, counted by its connection
/// until [`BodyOpen::finish`] or drop.
pub struct BodyOpen(Option<Arc<dyn OpenBodies>>);

impl std::fmt::Debug for BodyOpen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "BodyOpen"
        } else {
            "BodyOpen(finished)"
        })
    }
}

impl BodyOpen {
    /// Counted by `counter`, which was told the body started.
    pub fn new(counter: Arc<dyn OpenBodies>) -> Self {
        BodyOpen(Some(counter))
    }

    /// The body has been read to its end.
    pub fn finish(&mut self) {
        if let Some(c) = self.0.take() {
            c.body_finished();
        }
    }
}

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

/// How many bytes of a request body a mirrored copy may hold unread. A
/// mirror backend slower than that loses its copy (the request is cut off
/// there), never slowing the request it copies.
pub const MIRROR_BUFFER: usize = 256 * 1024;

/// How many bytes all mirrored copies in the process may hold unread
/// together; past it, the copy that would go over loses its body.
pub const MIRROR_BUDGET: usize = 64 << 20;

/// Bytes held by copies, all together: the sum of their `buffered`.
static MIRRORED_BYTES: AtomicUsize = AtomicUsize::new(0);

pin_project! {
    #[project = SourceProj]
    enum Source {
        /// The client's body.
        Client { #[pin] body: Incoming },
        /// A mirrored copy of a client's body, frame by frame.
        Copy { rx: tokio::sync::mpsc::UnboundedReceiver<Bytes>, state: Arc<TeeState>, ended: bool },
    }
}

/// What a request body and its mirrored copy share.
#[derive(Default)]
struct TeeState {
    /// Handed to the copy and not yet read by it.
    buffered: AtomicUsize,
    /// The client's body arrived whole; without this, a copy whose sender is
    /// gone was cut off.
    complete: AtomicBool,
    /// The request body gave its copy up (the copy fell behind, or the
    /// client's body broke off, was too large or too slow).
    cut: AtomicBool,
}

impl Drop for TeeState {
    /// Whatever the copy never read no longer counts against the budget.
    fn drop(&mut self) {
        MIRRORED_BYTES.fetch_sub(*self.buffered.get_mut(), Ordering::AcqRel);
    }
}

/// The sending side of a mirrored copy, kept by the request body it copies.
struct Tee {
    tx: tokio::sync::mpsc::UnboundedSender<Bytes>,
    state: Arc<TeeState>,
}

impl Drop for Tee {
    fn drop(&mut self) {
        if !self.state.complete.load(Ordering::Acquire) {
            self.state.cut.store(true, Ordering::Release);
        }
    }
}

impl Tee {
    /// Hands a frame's data to the copy; false when the copy is to be given
    /// up (its reader is gone or too far behind).
    fn send(&self, data: &Bytes) -> bool {
        let n = data.len();
        let held = self.state.buffered.fetch_add(n, Ordering::AcqRel) + n;
        let all = MIRRORED_BYTES.fetch_add(n, Ordering::AcqRel) + n;
        held <= MIRROR_BUFFER && all <= MIRROR_BUDGET && self.tx.send(data.clone()).is_ok()
    }

    fn complete(self) {
        self.state.complete.store(true, Ordering::Release);
    }
}

pin_project! {
    /// The client's request body, streamed to the backend under limits.
    pub struct RequestBody {
        #[pin]
        inner: Source,
        // Where a mirrored copy of this body goes, if it has one; boxed, as
        // few requests have one.
        tee: Option<Box<Tee>>,
        received: u64,
        // `u64::MAX` when unlimited: an `Option` would take eight bytes
        // more of every request's future.
        max: u64,
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
            inner: Source::Client { body: inner },
            tee: None,
            received: 0,
            max: max.unwrap_or(u64::MAX),
            deadline,
            sleep: None,
            done,
            open,
        }
    }

    /// A copy of this body for a mirror backend: it gets every frame this
    /// body passes on, from now on, until it falls [`MIRROR_BUFFER`] bytes
    /// behind. A copy of a body that broke off, or that it fell behind,
    /// fails rather than ends, so the mirror backend never takes a cut-off
    /// body for a whole one.
    pub fn mirrored(&mut self) -> RequestBody {
        let state = Arc::new(TeeState::default());
        let ended = self.is_end_stream();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        if ended {
            state.complete.store(true, Ordering::Release);
        } else {
            self.tee = Some(Box::new(Tee {
                tx,
                state: state.clone(),
            }));
        }
        RequestBody {
            inner: Source::Copy { rx, state, ended },
            tee: None,
            received: 0,
            max: u64::MAX,
            deadline: self.deadline,
            sleep: None,
            done: (!ended).then(|| Arc::new(AtomicBool::new(false))),
            open: None,
        }
    }

    /// For a mirrored copy: tells whether it was cut off on sluice's side
    /// (see [`RequestBody::mirrored`]), which says nothing of the mirror
    /// backend. Always false for a client's own body.
    pub fn cut_off(&self) -> CopyCut {
        CopyCut(match &self.inner {
            Source::Copy { state, .. } => Some(state.clone()),
            Source::Client { .. } => None,
        })
    }

    /// Tells whether the whole body has been sent on (always true for a
    /// request without one).
    pub fn progress(&self) -> BodyProgress {
        BodyProgress(self.done.clone())
    }
}

/// Whether a mirrored copy was cut off; see [`RequestBody::cut_off`].
pub struct CopyCut(Option<Arc<TeeState>>);

impl CopyCut {
    pub fn happened(&self) -> bool {
        self.0
            .as_ref()
            .is_some_and(|t| t.cut.load(Ordering::Acquire))
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
        let polled = match this.inner.as_mut().project() {
            SourceProj::Client { body } => body.poll_frame(cx),
            SourceProj::Copy {
                rx,
                state,
                ended: end,
            } => {
                let polled = poll_copy(rx, state, end, cx);
                if *end {
                    ended(this.done, this.open, this.tee);
                }
                return polled;
            }
        };
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    *this.received += data.len() as u64;
                    if *this.received > *this.max {
                        *this.tee = None;
                        return Poll::Ready(Some(Err(BodyLimit::TooLarge.into())));
                    }
                    if this.tee.as_ref().is_some_and(|t| !t.send(data)) {
                        tracing::debug!("mirror fell behind; its copy of the request is cut off");
                        *this.tee = None;
                    }
                }
                // A client reading by length stops at the last frame
                // without asking for the end.
                if this.inner.is_end_stream() {
                    ended(this.done, this.open, this.tee);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                tracing::debug!(error = %e, "request body broke off");
                *this.tee = None;
                Poll::Ready(Some(Err(BodyLimit::Incomplete.into())))
            }
            Poll::Ready(None) => {
                ended(this.done, this.open, this.tee);
                Poll::Ready(None)
            }
            Poll::Pending => {
                let deadline = tokio::time::Instant::from_std(*this.deadline);
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                ready!(sleep.as_mut().poll(cx));
                *this.tee = None;
                Poll::Ready(Some(Err(BodyLimit::Timeout.into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Source::Client { body } => body.size_hint(),
            Source::Copy { .. } => SizeHint::default(),
        }
    }
}

impl Source {
    fn is_end_stream(&self) -> bool {
        match self {
            Source::Client { body } => body.is_end_stream(),
            Source::Copy { ended, .. } => *ended,
        }
    }
}

/// The next frame of a mirrored copy. No deadline of its own: the request
/// it copies has one, and when that request gives up, so does the copy.
fn poll_copy(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Bytes>,
    state: &TeeState,
    ended: &mut bool,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    if *ended {
        return Poll::Ready(None);
    }
    match ready!(rx.poll_recv(cx)) {
        Some(data) => {
            state.buffered.fetch_sub(data.len(), Ordering::AcqRel);
            MIRRORED_BYTES.fetch_sub(data.len(), Ordering::AcqRel);
            Poll::Ready(Some(Ok(Frame::data(data))))
        }
        None if state.complete.load(Ordering::Acquire) => {
            *ended = true;
            Poll::Ready(None)
        }
        None => Poll::Ready(Some(Err(BodyLimit::Incomplete.into()))),
    }
}

fn ended(done: &Option<Arc<AtomicBool>>, open: &mut Option<BodyOpen>, tee: &mut Option<Box<Tee>>) {
    if let Some(t) = tee.take() {
        t.complete();
    }
    if let Some(d) = done {
        d.store(true, Ordering::Release);
    }
    if let Some(mut o) = open.take() {
        o.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_a_copy_never_read_leave_the_budget_with_it() {
        let before = MIRRORED_BYTES.load(Ordering::Acquire);
        let state = Arc::new(TeeState::default());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let tee = Tee {
            tx,
            state: state.clone(),
        };
        assert!(tee.send(&Bytes::from_static(b"0123456789")));
        assert!(tee.send(&Bytes::from_static(b"abc")));
        assert_eq!(MIRRORED_BYTES.load(Ordering::Acquire), before + 13);
        // The copy reads one frame, then both sides go.
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut ended = false;
        let first = poll_copy(&mut rx, &state, &mut ended, &mut cx);
        assert!(matches!(first, Poll::Ready(Some(Ok(_)))));
        assert_eq!(MIRRORED_BYTES.load(Ordering::Acquire), before + 3);
        // A copy too far behind is refused, and still counted until it goes.
        let big = Bytes::from(vec![0u8; MIRROR_BUFFER]);
        assert!(!tee.send(&big));
        drop((tee, rx, state));
        assert_eq!(MIRRORED_BYTES.load(Ordering::Acquire), before);
    }

    #[test]
    fn a_copy_given_up_is_marked_cut_and_a_finished_one_is_not() {
        for finish in [false, true] {
            let state = Arc::new(TeeState::default());
            let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
            let tee = Tee {
                tx,
                state: state.clone(),
            };
            if finish {
                tee.complete();
            } else {
                drop(tee);
            }
            let cut = CopyCut(Some(state));
            assert_eq!(cut.happened(), !finish);
        }
    }

    #[test]
    fn a_copy_whose_sender_left_without_finishing_fails() {
        let state = Arc::new(TeeState::default());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
        drop(tx);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut ended = false;
        let cut = poll_copy(&mut rx, &state, &mut ended, &mut cx);
        assert!(matches!(cut, Poll::Ready(Some(Err(_)))));
        state.complete.store(true, Ordering::Release);
        let whole = poll_copy(&mut rx, &state, &mut ended, &mut cx);
        assert!(matches!(whole, Poll::Ready(None)) && ended);
    }
}
