//! A request body on its way to the backend, written as it comes,
//! chunked or by length.

use super::*;

/// The request body on its way to the backend, written as it arrives.
pub struct Upload {
    pub(super) body: RequestBody,
    pub(super) chunked: bool,
    /// Bytes of the current frame (and its chunk framing) not yet written.
    pub(super) out: [Bytes; 3],
    /// Read at least once: from then on, the request cannot be sent again.
    pub(super) started: bool,
    /// The client's body has ended; what is left in `out` is the last of it.
    pub(super) eof: bool,
    /// Every byte, and the last chunk, has been written.
    pub(super) done: bool,
}

impl Upload {
    pub fn new(body: RequestBody, chunked: bool) -> Self {
        Upload {
            body,
            chunked,
            out: Default::default(),
            started: false,
            eof: false,
            done: false,
        }
    }

    /// Writes what the client has sent so far; ready when all of it is out.
    pub(super) fn poll_send(
        &mut self,
        io: &mut Stream,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), BoxError>> {
        loop {
            for part in &mut self.out {
                while !part.is_empty() {
                    let n = ready!(Pin::new(&mut *io).poll_write(cx, part)).and_then(nonzero)?;
                    part.advance(n);
                }
            }
            // Out of the TLS layer too before waiting for more of the body.
            ready!(Pin::new(&mut *io).poll_flush(cx))?;
            // Done only once the last chunk is out too: a final write that
            // waits must be retried, not forgotten.
            if self.eof {
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            self.started = true;
            match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    // Trailers do not cross to an HTTP/1.1 backend.
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    if data.is_empty() {
                        continue;
                    }
                    if self.chunked {
                        self.out = [
                            Bytes::from(format!("{:x}\r\n", data.len())),
                            data,
                            Bytes::from_static(b"\r\n"),
                        ];
                    } else {
                        self.out[1] = data;
                    }
                }
                Some(Err(e)) => return Poll::Ready(Err(e)),
                None => {
                    self.eof = true;
                    if self.chunked {
                        self.out[0] = Bytes::from_static(b"0\r\n\r\n");
                    }
                }
            }
        }
    }
}
