//! sluice's HTTP/1.1 client side: one exchange at a time on a connection
//! the request's own task drives. hyper's client connection lives in a task
//! of its own and passes the request, the response head and every body
//! chunk across channels: two task wake-ups per request and the largest
//! share of the proxy's own work (benches/RESULTS.md). Here the request's
//! task writes the request and reads the response head; the response body
//! reads the socket itself whenever the downstream connection asks for
//! more, and hands the connection back to the pool when it has ended.
//!
//! Only the client side is hand-written: it parses what sluice's own
//! backends send (with httparse, which hyper uses too), never what clients
//! send; requests from clients still go through hyper's server.
//!
//! The connection and its exchange are here; beside it the codec
//! (`codec`: heads and framing, no I/O, unit-tested), the upload
//! (`upload`: a request body written as it comes) and the response body
//! (`body`: read from the socket as the client asks).

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body::{Body as _, Frame, SizeHint};
use tokio::io::AsyncWrite;

use super::chunked::Decoder;
use super::tls::Stream;
use super::Pool;
use super::{BoxError, RequestBody};
use crate::headers::ForwardedFields;

mod body;
mod codec;
mod upload;

pub use body::Body;
pub use codec::chunked;
use codec::*;
pub use upload::Upload;

/// Room the read buffer makes before each read.
const READ_SIZE: usize = 8 * 1024;
/// A response head larger than this is refused (hyper's default is ~400 KiB;
/// nginx's `proxy_buffer_size` is 4 or 8 KiB).
pub(super) const MAX_HEAD: usize = 64 * 1024;
/// Header fields per response head.
pub(super) const MAX_HEADERS: usize = 128;

/// An open HTTP/1.1 connection to a backend, between exchanges. Always
/// boxed (made boxed by [`Conn::new`]): it moves from the pool to an
/// exchange, into the response body and back every request, and the idle
/// queue grows in blocks of 31 entries, zeroed when made; a pointer is
/// cheaper to move and to queue than the connection inline.
pub struct Conn {
    io: Stream,
    /// Bytes read and not yet consumed; empty between exchanges.
    buf: BytesMut,
    /// Where each request head is encoded, kept from one exchange to the
    /// next.
    head: Vec<u8>,
}

/// Why an exchange failed, and whether the request may go to another
/// connection.
pub struct Failed {
    pub error: BoxError,
    /// The connection broke before a byte of the answer came, and the
    /// request's body (if any) was never read: sending it again elsewhere
    /// is safe for an idempotent request.
    pub replayable: bool,
}

impl Conn {
    pub fn new(io: Stream) -> Box<Self> {
        Box::new(Conn {
            io,
            buf: BytesMut::new(),
            head: Vec::new(),
        })
    }

    /// Whether a connection that sat idle is still usable: see
    /// [`super::tls::is_usable`].
    pub fn is_usable(&mut self) -> bool {
        super::tls::is_usable(&mut self.io)
    }

    /// Sends the request and reads the response head; the response body
    /// reads the rest and returns the connection to `pool` when it ends.
    pub async fn exchange(
        mut self: Box<Self>,
        request: &http::request::Parts,
        forwarded: &ForwardedFields,
        upload: &mut Option<Upload>,
        pool: &Arc<Pool>,
    ) -> Result<Response<Body>, Failed> {
        let mut head = std::mem::take(&mut self.head);
        head.clear();
        encode_head(
            &mut head,
            request,
            forwarded,
            upload.as_ref().is_some_and(|u| u.chunked),
        );
        let mut written = 0;
        let mut answered = false;
        let parsed =
            poll_fn(|cx| self.poll_exchange(cx, &head, &mut written, upload, &mut answered)).await;
        self.head = head;
        let method = &request.method;
        let (status, version_10, mut headers, framers) = match parsed {
            Ok(h) => h,
            Err(error) => {
                return Err(Failed {
                    error,
                    replayable: !answered && upload.as_ref().is_none_or(|u| !u.started),
                })
            }
        };
        let framing =
            Framing::of(method, status, version_10, &headers, framers).map_err(|e| Failed {
                error: e.into(),
                replayable: false,
            })?;
        // A length beside a transfer coding is a smuggling attempt or a
        // broken backend: the coding wins, the length must not reach the
        // client (RFC 9112 6.3), and the connection is not trusted again.
        let conflicting = framers.transfer_encoding
            && framers.content_length
            && headers.remove(header::CONTENT_LENGTH).is_some();
        let closes = framers.connection && has_token(&headers, header::CONNECTION, "close");
        let reuse = !version_10 && !conflicting && !framing.ends_at_close() && !closes;
        let mut response = Response::new(Body {
            conn: Some(self),
            framing,
            reuse,
            upload: upload.take().filter(|u| !u.done).map(Box::new),
            pool: pool.clone(),
        });
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        response.body_mut().release_if_done();
        Ok(response)
    }

    /// Writes the head, drives the upload, and reads until a final
    /// (non-1xx) response head has come.
    fn poll_exchange(
        &mut self,
        cx: &mut Context<'_>,
        head: &[u8],
        written: &mut usize,
        upload: &mut Option<Upload>,
        answered: &mut bool,
    ) -> Poll<Result<Head, BoxError>> {
        while *written < head.len() {
            *written += ready!(Pin::new(&mut self.io).poll_write(cx, &head[*written..]))
                .and_then(nonzero)?;
        }
        // Over TLS the last of the head (and of the body so far) may still
        // be in the TLS layer. Pushed out without waiting: a backend that
        // answers early and stops reading an upload must still be heard,
        // as on a plain connection (a flush that waits is retried at the
        // next wake-up, which it asked for).
        if let Poll::Ready(Err(e)) = Pin::new(&mut self.io).poll_flush(cx) {
            return Poll::Ready(Err(e.into()));
        }
        if let Some(u) = upload.as_mut().filter(|u| !u.done) {
            if let Poll::Ready(Err(e)) = u.poll_send(&mut self.io, cx) {
                return Poll::Ready(Err(e));
            }
        }
        loop {
            if !self.buf.is_empty() {
                *answered = true;
                if let Some(parsed) = parse_head(&mut self.buf)? {
                    return Poll::Ready(Ok(parsed));
                }
                if self.buf.len() > MAX_HEAD {
                    return Poll::Ready(Err("the backend's response head is too large".into()));
                }
            }
            if ready!(self.poll_fill(cx))? == 0 {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the backend closed the connection before answering",
                )
                .into()));
            }
        }
    }

    /// Reads what has arrived onto the end of `buf`; 0 at the backend's
    /// close. Room is made only when little is left, so a buffer whose
    /// bytes have all been handed on is reused in place.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_SIZE / 4 {
            self.buf.reserve(READ_SIZE);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }
}

/// A socket that takes no bytes is closed for writing.
fn nonzero(n: usize) -> io::Result<usize> {
    match n {
        0 => Err(io::ErrorKind::WriteZero.into()),
        n => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_read_the_fast_way_is_the_name_http_reads() {
        let names = [
            "age",
            "date",
            "etag",
            "vary",
            "server",
            "expires",
            "location",
            "connection",
            "set-cookie",
            "content-type",
            "cache-control",
            "last-modified",
            "accept-ranges",
            "content-length",
            "content-encoding",
            "transfer-encoding",
            // Same lengths, other names; and names off the fast path.
            "agf",
            "data",
            "very",
            "x-server",
            "content-typf",
            "content_length",
            "transfer-encodinh",
            "x-request-id",
            "grpc-status",
            "Keep-Alive",
        ];
        for name in names {
            for form in [
                name.to_owned(),
                name.to_ascii_uppercase(),
                capitalised(name),
            ] {
                let fast = field_name(form.as_bytes()).ok();
                assert_eq!(fast, HeaderName::from_bytes(form.as_bytes()).ok(), "{form}");
                assert!(fast.is_some(), "{form}");
            }
        }
        for bad in ["", "date ", "content length", "con\ttent-type"] {
            assert!(field_name(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }

    fn capitalised(name: &str) -> String {
        name.split('-')
            .map(|w| w[..1].to_ascii_uppercase() + &w[1..])
            .collect::<Vec<_>>()
            .join("-")
    }

    #[test]
    fn a_head_notes_the_fields_that_decide_framing_and_reuse() {
        let parse = |head: &str| {
            let mut buf = BytesMut::from(head);
            let (_, _, headers, framers) = parse_head(&mut buf).unwrap().unwrap();
            (headers, framers)
        };
        let (_, f) = parse("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ndate: x\r\n\r\n");
        assert!(!f.transfer_encoding && !f.content_length && !f.connection);
        let (headers, f) = parse(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nCONTENT-LENGTH: 3\r\nConnection: close\r\n\r\n",
        );
        assert!(f.transfer_encoding && f.content_length && f.connection);
        assert_eq!(headers.len(), 3);
        let (_, f) = parse("HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n");
        assert!(!f.transfer_encoding && f.content_length && !f.connection);
    }
}
