//! A route's backends: names, weights, URLs, protocol and TLS (its files
//! read and its rustls configuration built here, once).

use super::*;

pub(super) fn backends(
    list: &[raw::Backend],
    route_path: &str,
    base_dir: &Path,
    known: Option<&[BackendConfig]>,
    p: &mut Vec<Problem>,
) -> Vec<BackendConfig> {
    if list.is_empty() || list.len() > MAX_BACKENDS {
        p.push(Problem::new(
            format!("{route_path}.backends"),
            format!(
                "a route needs 1 to {MAX_BACKENDS} backends, not {}",
                list.len()
            ),
        ));
    }
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut out = Vec::with_capacity(list.len());
    let mut total = 0u64;
    for (i, b) in list.iter().enumerate() {
        let path = format!("{route_path}.backends[{i}]");
        if !valid_backend_name(&b.name) {
            p.push(Problem::new(
                format!("{path}.name"),
                format!(
                    "\"{}\" must be 1 to 63 of a-z, A-Z, 0-9, _, - and .",
                    b.name
                ),
            ));
        }
        if let Some(first) = names.insert(b.name.as_str(), i) {
            p.push(Problem::new(
                format!("{path}.name"),
                format!(
                    "\"{}\" is also backends[{first}]; names must be unique within a route",
                    b.name
                ),
            ));
        }
        if b.weight > MAX_WEIGHT {
            p.push(Problem::new(
                format!("{path}.weight"),
                format!("must be at most {MAX_WEIGHT}"),
            ));
        }
        total += b.weight.min(MAX_WEIGHT);
        if let Some(k) = known.and_then(|k| k.get(i)).filter(|k| *k.name == *b.name) {
            out.push(BackendConfig {
                name: k.name.clone(),
                target: k.target.clone(),
                weight: b.weight.min(MAX_WEIGHT) as u32,
            });
            continue;
        }
        let protocol = match b.protocol.as_deref() {
            None | Some("http1") => Some(Protocol::Http1),
            Some("h2" | "h2c") => Some(Protocol::Http2),
            Some(other) => {
                p.push(Problem::new(
                    format!("{path}.protocol"),
                    format!("\"{other}\" is not one of http1, h2, h2c"),
                ));
                None
            }
        };
        let Some((authority, https)) = upstream_authority(&b.url, &format!("{path}.url"), p) else {
            continue;
        };
        if https && b.protocol.as_deref() == Some("h2c") {
            p.push(Problem::new(
                format!("{path}.protocol"),
                "h2c is cleartext HTTP/2; for HTTP/2 over TLS to an https:// backend, say h2",
            ));
            continue;
        }
        let tls = match (https, &b.tls) {
            (false, None) => None,
            (false, Some(_)) => {
                p.push(Problem::new(
                    format!("{path}.tls"),
                    "applies to https:// backends only",
                ));
                continue;
            }
            (true, t) => match backend_tls(t.as_ref(), &authority, protocol, &path, base_dir, p) {
                Some(t) => Some(t),
                None => continue,
            },
        };
        if let Some(protocol) = protocol {
            out.push(BackendConfig {
                name: Arc::from(b.name.as_str()),
                target: Upstream {
                    authority,
                    protocol,
                    tls,
                },
                weight: b.weight.min(MAX_WEIGHT) as u32,
            });
        }
    }
    if !list.is_empty() && total == 0 {
        p.push(Problem::new(
            format!("{route_path}.backends"),
            "the weights add up to zero; at least one backend needs a weight above zero",
        ));
    }
    out
}

/// The backend's `host:port` (the scheme's default port made explicit, so
/// pools key on `host:port` alike) and whether it is an `https://` one.
pub(super) fn upstream_authority(
    url: &str,
    path: &str,
    p: &mut Vec<Problem>,
) -> Option<(http::uri::Authority, bool)> {
    let uri: http::Uri = match url.parse() {
        Ok(u) => u,
        Err(e) => {
            p.push(Problem::new(path, format!("\"{url}\" is not a URL: {e}")));
            return None;
        }
    };
    let (https, default_port) = match uri.scheme_str() {
        Some("http") => (false, 80),
        Some("https") => (true, 443),
        _ => {
            p.push(Problem::new(
                path,
                format!("\"{url}\" must start with http:// or https://"),
            ));
            return None;
        }
    };
    if uri.path_and_query().is_some_and(|pq| pq.as_str() != "/") {
        p.push(Problem::new(
            path,
            format!("\"{url}\" must not have a path; routes forward the request's own path"),
        ));
        return None;
    }
    let authority = uri.authority()?.clone();
    if authority.as_str().contains('@') {
        p.push(Problem::new(
            path,
            format!("\"{url}\" must not carry credentials"),
        ));
        return None;
    }
    if authority.port_u16().is_none() {
        let explicit = format!("{}:{default_port}", authority.host())
            .parse()
            .ok()?;
        return Some((explicit, https));
    }
    Some((authority, https))
}

/// The TLS of an `https://` backend: its trust roots read from `tls.ca`
/// (else the built-in public ones) and the name its certificate must carry
/// (`tls.server_name`, else the URL's host).
pub(super) fn backend_tls(
    t: Option<&raw::BackendTls>,
    authority: &http::uri::Authority,
    protocol: Option<Protocol>,
    path: &str,
    base_dir: &Path,
    p: &mut Vec<Problem>,
) -> Option<BackendTls> {
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let name = t.and_then(|t| t.server_name.as_deref()).unwrap_or(host);
    let server_name = match rustls_pki_types::ServerName::try_from(name) {
        Ok(n) => Some(n.to_owned()),
        Err(_) => {
            p.push(Problem::new(
                format!("{path}.tls.server_name"),
                format!("\"{name}\" is not a DNS name or an IP address"),
            ));
            None
        }
    };
    // Each file is read, whatever the others hold: every problem is listed.
    let ca = match t.and_then(|t| t.ca.as_deref()) {
        None => Some(Vec::new()),
        Some(file) => crate::tls::read_certificates(&resolve(base_dir, file))
            .map_err(|e| p.push(Problem::new(format!("{path}.tls.ca"), e)))
            .ok(),
    };
    // `None` when there is a problem; `Some(None)` when there is nothing to present.
    let identity = match t.map(|t| (t.cert.as_deref(), t.key.as_deref())) {
        None | Some((None, None)) => Some(None),
        Some((Some(cert), Some(key))) => {
            let chain = crate::tls::read_certificates(&resolve(base_dir, cert))
                .map_err(|e| p.push(Problem::new(format!("{path}.tls.cert"), e)));
            let key_file = resolve(base_dir, key);
            let key = rustls_pki_types::PrivateKeyDer::from_pem_file(&key_file).map_err(|e| {
                p.push(Problem::new(
                    format!("{path}.tls.key"),
                    format!("cannot read private key {}: {e}", key_file.display()),
                ))
            });
            chain.ok().zip(key.ok()).map(Some)
        }
        Some(_) => {
            p.push(Problem::new(
                format!("{path}.tls"),
                "cert and key go together: a client certificate needs its key",
            ));
            None
        }
    };
    let (server_name, ca, identity) = (server_name?, ca?, identity?);
    let chain: Arc<[_]> = identity
        .as_ref()
        .map_or_else(|| Arc::from([]), |(c, _)| c.as_slice().into());
    let alpn: &[u8] = match protocol {
        Some(Protocol::Http2) => b"h2",
        _ => b"http/1.1",
    };
    let client = crate::tls::client_config(&ca, identity, alpn)
        .map_err(|(field, e)| p.push(Problem::new(format!("{path}.tls.{field}"), e)))
        .ok()?;
    Some(BackendTls {
        server_name,
        ca: ca.into(),
        identity: chain,
        client,
    })
}

pub(super) fn valid_backend_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}
