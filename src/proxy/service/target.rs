//! Where a request goes upstream: the host it names, and the target and
//! authority the backend is sent.

use super::*;

/// The request's host, without port, for route matching: the authority of
/// the request target when it has one (HTTP/2's `:authority`, or an
/// absolute-form HTTP/1.1 target, whose `Host` field a proxy must ignore:
/// RFC 9112, 3.2.2), else the `Host` field. `None` when there is neither,
/// or more than one `Host` field (RFC 9112, 3.2): the client gets 400.
pub(super) fn request_host(req: &Request<Incoming>) -> Option<&str> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let field = match (hosts.next(), hosts.next()) {
        (_, Some(_)) => return None,
        (field, None) => field,
    };
    // IPv6 literals stay whole: "[::1]:80" → "[::1]".
    let host = match req.uri().authority() {
        Some(a) => headers::authority_host(a.as_str()),
        None => headers::without_port(field?.to_str().ok()?),
    };
    (!host.is_empty()).then_some(host)
}

/// The `:authority` an HTTP/2 backend gets: the one the client's request
/// target named (HTTP/2's `:authority`, an absolute-form target), else its
/// `Host` field, as Envoy passes it on. The `Host` field goes in either
/// case, since HTTP/2 carries the host in `:authority` and a backend may
/// refuse a request whose two differ (RFC 9113, 8.3.1); user information,
/// which RFC 9113 forbids there, goes too. `None` when the client named no
/// authority that parses: the backend's address is sent instead.
pub(super) fn h2_authority(
    target: Option<Authority>,
    headers: &mut HeaderMap,
) -> Option<Authority> {
    let host = headers.remove(header::HOST);
    let authority = match target {
        Some(a) => a,
        None => Authority::try_from(host?.as_bytes()).ok()?,
    };
    if authority.as_str().bytes().any(|b| b == b'@') {
        return Authority::try_from(headers::without_userinfo(authority.as_str())).ok();
    }
    Some(authority)
}

/// The request target and version a backend gets. HTTP/1.1 backends get
/// the origin form (`/path?query`), as from any proxy, and the authority of
/// a target that had one (HTTP/2's `:authority`, an absolute-form HTTP/1.1
/// target) as their `host` field, in place of any the client sent; HTTP/2
/// needs the scheme and authority as well: the authority the client asked
/// for (see [`h2_authority`]). A `shadow` copy (see [`mirror`]) has its
/// host marked. `None` when the target cannot be forwarded.
#[inline(always)]
pub(super) fn upstream_target(
    authority: Option<Authority>,
    pq: PathAndQuery,
    headers: &mut HeaderMap,
    forwarded: &mut ForwardedFields,
    backend: &crate::table::Backend,
    shadow: bool,
) -> Option<(Uri, Version)> {
    if backend.pool.protocol == Protocol::Http2 {
        let mut authority = h2_authority(authority, headers);
        if shadow {
            authority = authority.map(|a| mirror::shadowed(&a).unwrap_or(a));
        }
        let uri = Uri::builder()
            .scheme(if backend.pool.is_tls() {
                "https"
            } else {
                "http"
            })
            .authority(authority.unwrap_or_else(|| backend.pool.origin.clone()))
            .path_and_query(pq)
            .build()
            .ok()?;
        return Some((uri, Version::HTTP_2));
    }
    forwarded.host = authority;
    if shadow {
        let named = forwarded.host.clone().or_else(|| {
            let field = headers.get(header::HOST)?;
            Authority::try_from(field.as_bytes()).ok()
        });
        if let Some(marked) = named.as_ref().and_then(mirror::shadowed) {
            forwarded.host = Some(marked);
        }
    }
    let mut origin_form = http::uri::Parts::default();
    origin_form.path_and_query = Some(pq);
    Some((Uri::from_parts(origin_form).ok()?, Version::HTTP_11))
}
