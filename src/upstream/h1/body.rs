//! A backend's response body, read from its socket whenever the client's
//! connection asks for more; the connection goes back to the pool at its
//! last byte.

use super::*;

/// A response body read straight off the backend's connection.
pub struct Body {
    /// `None` once the body has ended (the connection went back to the
    /// pool or closed).
    pub(super) conn: Option<Box<Conn>>,
    pub(super) framing: Framing,
    /// The connection may carry another exchange once this one ends.
    pub(super) reuse: bool,
    /// The rest of a request body the backend answered before it ended
    /// (boxed: rare, and large beside the rest).
    pub(super) upload: Option<Box<Upload>>,
    pub(super) pool: Arc<Pool>,
}

impl Body {
    pub(super) fn is_done(&self) -> bool {
        match &self.framing {
            Framing::Length(n) => *n == 0,
            Framing::Chunked(d) => d.is_done(),
            Framing::Close => false,
        }
    }

    /// Gives the connection back once the exchange is complete: the body
    /// read to its end, the request body written to its end, and nothing
    /// extra sent (bytes beyond the response would be read as the next
    /// client's answer).
    pub(super) fn release_if_done(&mut self) {
        if !self.is_done() {
            return;
        }
        if let Some(conn) = self.conn.take() {
            if self.reuse && conn.buf.is_empty() && self.upload.as_ref().is_none_or(|u| u.done) {
                self.pool.put_back(conn);
            }
        }
        self.upload = None;
    }

    /// The next piece of body already read, if any.
    pub(super) fn next_buffered(&mut self) -> Result<Option<Bytes>, BoxError> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(None);
        };
        let buf = &mut conn.buf;
        Ok(match &mut self.framing {
            Framing::Length(left) if *left > 0 && !buf.is_empty() => {
                let n = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                *left -= n as u64;
                Some(buf.split_to(n).freeze())
            }
            Framing::Chunked(d) => d.decode(buf)?,
            Framing::Close if !buf.is_empty() => Some(buf.split().freeze()),
            _ => None,
        })
    }

    pub(super) fn fail(
        &mut self,
        e: impl Into<BoxError>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.conn = None;
        self.upload = None;
        Poll::Ready(Some(Err(e.into())))
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(None);
        };
        if let Some(u) = this.upload.as_mut().filter(|u| !u.done) {
            if let Poll::Ready(Err(e)) = u.poll_send(&mut conn.io, cx) {
                // The client's upload broke off: the backend has answered,
                // so the answer still goes out, on a connection that closes.
                tracing::debug!(error = %e, "request body broke off after the answer began");
                this.reuse = false;
                this.upload = None;
            }
        }
        loop {
            match this.next_buffered() {
                Ok(Some(data)) => {
                    // The last bytes hand the connection back before they
                    // go out: the server stops asking once the length is
                    // reached.
                    this.release_if_done();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(None) if this.is_done() => {
                    this.release_if_done();
                    return Poll::Ready(None);
                }
                Ok(None) => {}
                Err(e) => return this.fail(e),
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if this.framing.ends_at_close() => {
                    this.conn = None;
                    this.upload = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    return this.fail(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the backend closed the connection in the middle of a body",
                    ))
                }
                Ok(_) => {}
                Err(e) => return this.fail(e),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none() || self.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.conn, &self.framing) {
            (None, _) => SizeHint::with_exact(0),
            (_, Framing::Length(n)) => SizeHint::with_exact(*n),
            _ => SizeHint::default(),
        }
    }
}
