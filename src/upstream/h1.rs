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
use crate::body::{BoxError, RequestBody};
use crate::headers::ForwardedFields;

/// Room the read buffer makes before each read.
const READ_SIZE: usize = 8 * 1024;
/// A response head larger than this is refused (hyper's default is ~400 KiB;
/// nginx's `proxy_buffer_size` is 4 or 8 KiB).
const MAX_HEAD: usize = 64 * 1024;
/// Header fields per response head.
const MAX_HEADERS: usize = 128;

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

/// Whether `token`, lowercased, is `name` (lowercase letters and `-`, as
/// long as `token`). Setting bit 5 of every byte lowercases a letter and
/// keeps `-`; the only other byte it turns into a letter or `-` is the
/// other case of that letter or a carriage return, which no token holds.
fn lowercased_is(token: &[u8], name: &[u8]) -> bool {
    const LOWER: u64 = 0x2020_2020_2020_2020;
    let n = token.len();
    debug_assert_eq!(n, name.len());
    if n < 8 {
        let (mut a, mut b) = ([0u8; 8], [0u8; 8]);
        a[..n].copy_from_slice(token);
        b[..n].copy_from_slice(name);
        return u64::from_ne_bytes(a) | LOWER == u64::from_ne_bytes(b) | LOWER;
    }
    let word = |s: &[u8], i: usize| u64::from_ne_bytes(s[i..i + 8].try_into().expect("8 bytes"));
    let mut i = 0;
    while i + 8 < n {
        if word(token, i) | LOWER != word(name, i) {
            return false;
        }
        i += 8;
    }
    // The last eight, overlapping the word before when `n` is no multiple.
    word(token, n - 8) | LOWER == word(name, n - 8)
}

/// A final response head: status, whether it spoke HTTP/1.0, fields, and
/// which of the fields that decide framing and reuse it has.
type Head = (StatusCode, bool, HeaderMap, Framers);

/// Which of the fields that decide a response's framing and the
/// connection's reuse were present, noted while the head is parsed: most
/// responses have a length and neither of the others, and a map lookup of
/// a field that is absent costs as much as one that is found, several
/// times a response.
#[derive(Debug, Clone, Copy, Default)]
struct Framers {
    transfer_encoding: bool,
    content_length: bool,
    connection: bool,
}

impl Framers {
    fn note(&mut self, name: &HeaderName) {
        self.transfer_encoding |= name == header::TRANSFER_ENCODING;
        self.content_length |= name == header::CONTENT_LENGTH;
        self.connection |= name == header::CONNECTION;
    }
}

/// A response field's name, from a token httparse has checked. The names
/// most responses carry are told by their length and one comparison eight
/// bytes at a time; any other goes to `HeaderName::from_bytes`, which
/// lowercases the name into a scratch buffer and matches it against every
/// standard name, for each of the several fields of every response.
fn field_name(raw: &[u8]) -> Result<HeaderName, header::InvalidHeaderName> {
    let is = |name: &str| lowercased_is(raw, name.as_bytes());
    Ok(match raw.len() {
        3 if is("age") => header::AGE,
        4 if is("date") => header::DATE,
        4 if is("etag") => header::ETAG,
        4 if is("vary") => header::VARY,
        6 if is("server") => header::SERVER,
        7 if is("expires") => header::EXPIRES,
        8 if is("location") => header::LOCATION,
        10 if is("connection") => header::CONNECTION,
        10 if is("set-cookie") => header::SET_COOKIE,
        12 if is("content-type") => header::CONTENT_TYPE,
        13 if is("cache-control") => header::CACHE_CONTROL,
        13 if is("last-modified") => header::LAST_MODIFIED,
        13 if is("accept-ranges") => header::ACCEPT_RANGES,
        14 if is("content-length") => header::CONTENT_LENGTH,
        16 if is("content-encoding") => header::CONTENT_ENCODING,
        17 if is("transfer-encoding") => header::TRANSFER_ENCODING,
        _ => return HeaderName::from_bytes(raw),
    })
}

/// Parses one response head off the front of `buf`, skipping interim
/// (1xx) answers. `None`: incomplete.
fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, BoxError> {
    loop {
        let mut fields = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut parsed,
            buf,
            &mut fields,
        )? {
            httparse::Status::Complete(len) => len,
            httparse::Status::Partial => return Ok(None),
        };
        let code = parsed.code.expect("a complete head has a status");
        if code == 101 {
            return Err("the backend switched protocols; sluice does not tunnel upgrades".into());
        }
        if (100..200).contains(&code) {
            buf.advance(len);
            continue;
        }
        let status = StatusCode::from_u16(code)?;
        let version_10 = parsed.version == Some(0);
        // One copy of the head; every value is a shared slice of it.
        let head = Bytes::copy_from_slice(&buf[..len]);
        let base = buf.as_ptr() as usize;
        let mut headers = HeaderMap::with_capacity(parsed.headers.len());
        let mut framers = Framers::default();
        for field in parsed.headers.iter() {
            let start = field.value.as_ptr() as usize - base;
            let value =
                HeaderValue::from_maybe_shared(head.slice(start..start + field.value.len()))?;
            let name = field_name(field.name.as_bytes())?;
            framers.note(&name);
            headers.append(name, value);
        }
        buf.advance(len);
        return Ok(Some((status, version_10, headers, framers)));
    }
}

/// Whether a comma-separated header lists `token` (case-insensitively).
fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// How a response body is delimited (RFC 9112 6.3).
#[derive(Debug)]
enum Framing {
    /// This many bytes left.
    Length(u64),
    Chunked(Decoder),
    /// Until the backend closes the connection.
    Close,
}

impl Framing {
    fn of(
        method: &Method,
        status: StatusCode,
        version_10: bool,
        headers: &HeaderMap,
        framers: Framers,
    ) -> Result<Framing, &'static str> {
        if method == Method::HEAD
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return Ok(Framing::Length(0));
        }
        if framers.transfer_encoding {
            if version_10 {
                return Err("the backend sent transfer-encoding in an HTTP/1.0 response");
            }
            // Only `chunked` alone: the field does not cross the proxy, so
            // a body in any other coding would reach the client unlabelled.
            let mut codings = headers
                .get_all(header::TRANSFER_ENCODING)
                .iter()
                .flat_map(|v| v.as_bytes().split(|&b| b == b','))
                .map(<[u8]>::trim_ascii)
                .filter(|t| !t.is_empty());
            return match (codings.next(), codings.next()) {
                (Some(t), None) if t.eq_ignore_ascii_case(b"chunked") => {
                    Ok(Framing::Chunked(Decoder::default()))
                }
                _ => Err("the backend sent a transfer coding other than chunked"),
            };
        }
        if !framers.content_length {
            return Ok(Framing::Close);
        }
        let mut length = None;
        for value in headers.get_all(header::CONTENT_LENGTH) {
            for part in value.as_bytes().split(|&b| b == b',') {
                let n = std::str::from_utf8(part.trim_ascii())
                    .ok()
                    .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or("the backend sent an invalid content-length")?;
                if length.is_some_and(|l| l != n) {
                    return Err("the backend sent conflicting content-lengths");
                }
                length = Some(n);
            }
        }
        Ok(length.map_or(Framing::Close, Framing::Length))
    }

    fn ends_at_close(&self) -> bool {
        matches!(self, Framing::Close)
    }
}

/// Whether a request body goes chunked: a declared length is kept
/// (hyper's server has already held the client to it), anything else
/// streams chunked.
pub fn chunked(headers: &HeaderMap, has_body: bool) -> bool {
    has_body && !headers.contains_key(header::CONTENT_LENGTH)
}

/// Encodes the request line and fields, the forwarding fields written in
/// place of the client's.
fn encode_head(
    head: &mut Vec<u8>,
    parts: &http::request::Parts,
    forwarded: &ForwardedFields,
    chunked: bool,
) {
    let path = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    head.extend_from_slice(parts.method.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(path.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    let mut field = |name: &[u8], value: &[u8]| {
        head.extend_from_slice(name);
        head.extend_from_slice(b": ");
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n");
    };
    if let Some(host) = forwarded.host_field() {
        field(b"host", host.as_bytes());
    }
    for (name, value) in &parts.headers {
        if !forwarded.replaces(name) {
            field(name.as_str().as_bytes(), value.as_bytes());
        }
    }
    field(b"x-forwarded-for", forwarded.xff.as_bytes());
    if let Some(xfp) = &forwarded.xfp {
        field(b"x-forwarded-proto", xfp.as_bytes());
    }
    if chunked {
        field(b"transfer-encoding", b"chunked");
    }
    head.extend_from_slice(b"\r\n");
}

/// The request body on its way to the backend, written as it arrives.
pub struct Upload {
    body: RequestBody,
    chunked: bool,
    /// Bytes of the current frame (and its chunk framing) not yet written.
    out: [Bytes; 3],
    /// Read at least once: from then on, the request cannot be sent again.
    started: bool,
    /// The client's body has ended; what is left in `out` is the last of it.
    eof: bool,
    /// Every byte, and the last chunk, has been written.
    done: bool,
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
    fn poll_send(&mut self, io: &mut Stream, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
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

/// A response body read straight off the backend's connection.
pub struct Body {
    /// `None` once the body has ended (the connection went back to the
    /// pool or closed).
    conn: Option<Box<Conn>>,
    framing: Framing,
    /// The connection may carry another exchange once this one ends.
    reuse: bool,
    /// The rest of a request body the backend answered before it ended
    /// (boxed: rare, and large beside the rest).
    upload: Option<Box<Upload>>,
    pool: Arc<Pool>,
}

impl Body {
    fn is_done(&self) -> bool {
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
    fn release_if_done(&mut self) {
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
    fn next_buffered(&mut self) -> Result<Option<Bytes>, BoxError> {
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

    fn fail(&mut self, e: impl Into<BoxError>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
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
