//! The HTTP/1.1 client side's codec, with no I/O: reading a response
//! head, telling its framing, writing a request head.

use super::*;

/// Whether `token`, lowercased, is `name` (lowercase letters and `-`, as
/// long as `token`). Setting bit 5 of every byte lowercases a letter and
/// keeps `-`; the only other byte it turns into a letter or `-` is the
/// other case of that letter or a carriage return, which no token holds.
pub(super) fn lowercased_is(token: &[u8], name: &[u8]) -> bool {
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
pub(super) type Head = (StatusCode, bool, HeaderMap, Framers);

/// Which of the fields that decide a response's framing and the
/// connection's reuse were present, noted while the head is parsed: most
/// responses have a length and neither of the others, and a map lookup of
/// a field that is absent costs as much as one that is found, several
/// times a response.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Framers {
    pub(super) transfer_encoding: bool,
    pub(super) content_length: bool,
    pub(super) connection: bool,
}

impl Framers {
    pub(super) fn note(&mut self, name: &HeaderName) {
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
pub(super) fn field_name(raw: &[u8]) -> Result<HeaderName, header::InvalidHeaderName> {
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
pub(super) fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, BoxError> {
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
pub(super) fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// How a response body is delimited (RFC 9112 6.3).
#[derive(Debug)]
pub(super) enum Framing {
    /// This many bytes left.
    Length(u64),
    Chunked(Decoder),
    /// Until the backend closes the connection.
    Close,
}

impl Framing {
    pub(super) fn of(
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

    pub(super) fn ends_at_close(&self) -> bool {
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
pub(super) fn encode_head(
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
