//! Header hygiene between the two hops: what must not cross a proxy, and
//! what a proxy adds.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that describe one connection, never the message (RFC 9110 7.6.1).
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop headers, including any that `Connection` names.
/// `TE: trailers` survives, as gRPC needs it end to end; `Upgrade` goes, as
/// sluice does not tunnel upgraded connections.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of these: one pass over the names, without
    // hashing, settles it, where a lookup of each hashes the name seven
    // times a message.
    if !headers
        .keys()
        .any(|k| HOP_BY_HOP.contains(k) || k == header::UPGRADE || k == header::TE)
    {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in named {
            if name != header::TE {
                headers.remove(name);
            }
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
    if let Some(te) = headers.get(header::TE) {
        if !te.as_bytes().eq_ignore_ascii_case(b"trailers") {
            headers.remove(header::TE);
        }
    }
}

/// The first value of a field with a name outside the standard set, found
/// by comparing names rather than by a map lookup: looking up such a name
/// hashes it, which costs more than walking the handful of fields a message
/// carries (names of other lengths are told apart by their length).
pub fn find<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
}

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// The fields sluice adds on the way upstream: what `x-forwarded-for` and
/// `x-forwarded-proto` become, and the `host` of an HTTP/2 request. Computed
/// without touching the request's header map: an HTTP/1.1 backend gets them
/// written straight into the request head (inserts would grow a map hyper
/// sized for the client's fields, a copy of the map every request); an
/// HTTP/2 backend gets them inserted.
#[derive(Debug, Clone)]
pub struct ForwardedFields {
    /// The whole `x-forwarded-for` chain, replacing the client's fields.
    pub xff: HeaderValue,
    /// `x-forwarded-proto` when sluice sets it; `None` keeps the client's.
    pub xfp: Option<HeaderValue>,
    /// The authority of the request target (HTTP/2's `:authority`, an
    /// absolute-form HTTP/1.1 target), which becomes an HTTP/1.1 backend's
    /// `host` field in place of the client's (RFC 9112, 3.2.2); an HTTP/2
    /// backend gets an authority in its request target instead.
    pub host: Option<http::uri::Authority>,
}

impl ForwardedFields {
    /// Adds the peer to the client's `x-forwarded-for` chain and sets
    /// `x-forwarded-proto` unless the client did; `overwrite` discards what
    /// the client claimed (an edge facing the internet).
    pub fn new(
        headers: &HeaderMap,
        peer: &HeaderValue,
        proto: &HeaderValue,
        overwrite: bool,
    ) -> Self {
        if overwrite {
            return ForwardedFields {
                xff: peer.clone(),
                xfp: Some(proto.clone()),
                host: None,
            };
        }
        // One pass comparing names, not two lookups: finding a custom name
        // in the map hashes it, which cost more than walking the handful of
        // fields a request carries.
        let (mut first, mut more, mut has_proto) = (None, false, false);
        for (name, value) in headers {
            if *name == X_FORWARDED_FOR {
                more |= first.is_some();
                first.get_or_insert(value);
            } else if *name == X_FORWARDED_PROTO {
                has_proto = true;
            }
        }
        let xff = match (first, more) {
            (None, _) => peer.clone(),
            (Some(first), false) => join(&[first.as_bytes()], peer),
            (Some(_), true) => {
                let parts: Vec<&[u8]> = headers
                    .get_all(&X_FORWARDED_FOR)
                    .iter()
                    .map(HeaderValue::as_bytes)
                    .collect();
                join(&parts, peer)
            }
        };
        let xfp = (!has_proto).then(|| proto.clone());
        ForwardedFields {
            xff,
            xfp,
            host: None,
        }
    }

    /// Whether the client's own field named `name` gives way to these.
    pub fn replaces(&self, name: &HeaderName) -> bool {
        name == X_FORWARDED_FOR
            || (self.xfp.is_some() && name == X_FORWARDED_PROTO)
            || (self.host.is_some() && name == header::HOST)
    }

    /// The `host` field for an HTTP/1.1 backend, when the target named one:
    /// host and port, without any user information.
    pub fn host_field(&self) -> Option<&str> {
        Some(without_userinfo(self.host.as_ref()?.as_str()))
    }

    /// Puts the fields into a header map.
    pub fn insert_into(self, headers: &mut HeaderMap) {
        headers.insert(X_FORWARDED_FOR.clone(), self.xff);
        if let Some(xfp) = self.xfp {
            headers.insert(X_FORWARDED_PROTO.clone(), xfp);
        }
    }
}

/// An authority without its user information (`user@`), if any.
///
/// A byte loop rather than `rsplit_once('@')`: the string search behind that
/// costs more than the twenty-odd bytes of an authority, on every request.
pub fn without_userinfo(authority: &str) -> &str {
    match authority.bytes().rposition(|b| b == b'@') {
        // Splitting after an ASCII byte keeps the `str` whole.
        Some(at) => &authority[at + 1..],
        None => authority,
    }
}

/// The host of a request target's authority, as `Authority::host` gives it
/// (user information and port cut off, an IPv6 literal kept in its
/// brackets), by byte loops, for the reason given at [`without_userinfo`].
pub fn authority_host(authority: &str) -> &str {
    let host_port = without_userinfo(authority);
    let bytes = host_port.as_bytes();
    let end = if bytes.first() == Some(&b'[') {
        bytes
            .iter()
            .position(|&b| b == b']')
            .map_or(bytes.len(), |i| i + 1)
    } else {
        bytes.iter().position(|&b| b == b':').unwrap_or(bytes.len())
    };
    &host_port[..end]
}

/// The host of a `Host` field, without its port (an IPv6 literal keeps its
/// brackets). Text after the last `:` that is not all digits is no port and
/// stays, as it always has for `Host` fields. A walk back over the port's
/// digits, for the reason given at [`without_userinfo`].
pub fn without_port(host_port: &str) -> &str {
    let bytes = host_port.as_bytes();
    let digits = bytes
        .iter()
        .rev()
        .take_while(|b| b.is_ascii_digit())
        .count();
    match bytes.len().checked_sub(digits + 1) {
        // "[::1]" ends in ']', so its colons are never taken for a port's.
        Some(colon) if bytes[colon] == b':' => &host_port[..colon],
        _ => host_port,
    }
}

fn join(parts: &[&[u8]], peer: &HeaderValue) -> HeaderValue {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + 2).sum::<usize>() + peer.len());
    for p in parts {
        out.extend_from_slice(p);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(peer.as_bytes());
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| peer.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_hosts_as_http_gives_them() {
        for (authority, host) in [
            ("a.test", "a.test"),
            ("a.test:8080", "a.test"),
            ("user:pw@a.test:8080", "a.test"),
            ("u@v@a.test", "a.test"),
            ("[::1]:80", "[::1]"),
            ("[::1]", "[::1]"),
            ("u@[fe80::1]:443", "[fe80::1]"),
            ("127.0.0.1:18480", "127.0.0.1"),
            ("a.test:", "a.test"),
            ("", ""),
        ] {
            assert_eq!(authority_host(authority), host, "{authority}");
        }
        // Authorities `http` accepts, ports it does not check included
        // (each must parse): the same answer as its own.
        for a in [
            "a.test:8080",
            "user:pw@a.test",
            "[::1]:80",
            "u@[::1]",
            "1.2.3.4",
            "a.test:http",
            "[::1]:8a",
            "[::1]x",
        ] {
            let parsed = a.parse::<http::uri::Authority>().expect(a);
            assert_eq!(authority_host(parsed.as_str()), parsed.host(), "{a}");
        }
        assert_eq!(without_userinfo("user:pw@a.test:80"), "a.test:80");
        assert_eq!(without_userinfo("a.test:80"), "a.test:80");
    }

    #[test]
    fn host_fields_lose_only_a_numeric_port() {
        for (field, host) in [
            ("a.test", "a.test"),
            ("a.test:8080", "a.test"),
            ("[::1]:80", "[::1]"),
            ("[::1]", "[::1]"),
            ("127.0.0.1", "127.0.0.1"),
            ("a.test:", "a.test"),
            ("a.test:http", "a.test:http"),
            ("", ""),
        ] {
            assert_eq!(without_port(field), host, "{field}");
        }
    }

    #[test]
    fn strips_hop_by_hop_and_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["te", "x-keep"]);
    }

    #[test]
    fn forwarded_append_and_overwrite() {
        let peer = HeaderValue::from_static("10.0.0.9");
        let proto = HeaderValue::from_static("http");
        let mut h = HeaderMap::new();
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("2.2.2.2"));
        h.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        let mut appended = h.clone();
        let fields = ForwardedFields::new(&appended, &peer, &proto, false);
        assert!(
            !fields.replaces(&X_FORWARDED_PROTO),
            "the client's proto stays"
        );
        fields.insert_into(&mut appended);
        assert_eq!(appended[&X_FORWARDED_FOR], "1.1.1.1, 2.2.2.2, 10.0.0.9");
        assert_eq!(appended[&X_FORWARDED_PROTO], "https");
        let fields = ForwardedFields::new(&h, &peer, &proto, true);
        assert!(fields.replaces(&X_FORWARDED_PROTO));
        fields.insert_into(&mut h);
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.9");
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
    }

    #[test]
    fn forwarded_chain_in_order_among_other_fields() {
        let peer = HeaderValue::from_static("10.0.0.9");
        let proto = HeaderValue::from_static("http");
        let mut h = HeaderMap::new();
        h.append(header::HOST, HeaderValue::from_static("a.test"));
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        h.append("x-other", HeaderValue::from_static("x"));
        h.append(
            &X_FORWARDED_FOR,
            HeaderValue::from_static("2.2.2.2, 3.3.3.3"),
        );
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("4.4.4.4"));
        let fields = ForwardedFields::new(&h, &peer, &proto, false);
        assert_eq!(fields.xff, "1.1.1.1, 2.2.2.2, 3.3.3.3, 4.4.4.4, 10.0.0.9");
        assert_eq!(fields.xfp.as_ref().unwrap(), "http", "none sent: set");
        let mut one = HeaderMap::new();
        one.append(&X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        let fields = ForwardedFields::new(&one, &peer, &proto, false);
        assert_eq!(fields.xff, "1.1.1.1, 10.0.0.9");
        let fields = ForwardedFields::new(&HeaderMap::new(), &peer, &proto, false);
        assert_eq!(fields.xff, "10.0.0.9");
    }
}
