//! The connection's transport: tells its state when bytes move, and
//! first yields what a previous HTTP connection on the socket read ahead.

use super::*;
use std::io;

/// A transport that tells its [`ConnState`] when bytes move, and first
/// yields any bytes read ahead by a previous HTTP connection on the socket.
pub struct MeteredIo<T> {
    inner: T,
    state: Arc<ConnState>,
    first_read: bool,
    ahead: Bytes,
}

impl<T> MeteredIo<T> {
    pub fn new(inner: T, state: Arc<ConnState>) -> Self {
        MeteredIo {
            inner,
            state,
            first_read: true,
            ahead: Bytes::new(),
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// Bytes to hand out before reading the socket again.
    pub fn rewind(&mut self, ahead: Bytes) {
        self.ahead = ahead;
    }

    /// Whether rewound bytes are still unread.
    pub fn has_ahead(&self) -> bool {
        !self.ahead.is_empty()
    }
}

/// The request line of the HTTP/2 preface: enough to tell a connection
/// that will multiplex from the first read.
const H2_PREFACE_LINE: &[u8] = crate::proxy::H2_PREFACE.split_at(14).0;

impl<T: AsyncRead + Unpin> AsyncRead for MeteredIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.ahead.is_empty() {
            let n = self.ahead.len().min(buf.remaining());
            buf.put_slice(&self.ahead[..n]);
            self.ahead.advance(n);
            // The start of the next head: activity now, and the header-read
            // clock runs (else a fresh HTTP connection could be parked again
            // before it has read them).
            self.state.on_read();
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            if std::mem::take(&mut self.first_read)
                && buf.filled()[before..].starts_with(H2_PREFACE_LINE)
            {
                self.state.set_multiplexed();
            } else {
                self.state.on_read();
            }
        }
        poll
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for MeteredIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.state.on_write();
        }
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.state.on_write();
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
