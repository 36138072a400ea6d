//! From a raw document to a typed [`Config`], collecting every problem.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use rustls_pki_types::pem::PemObject;
use serde::de::DeserializeOwned;

use super::raw::{self, Document};
use super::{
    duration, AdminConfig, BackendConfig, BackendTls, Config, Forwarded, HostMatch, Limits,
    ListenerConfig, Problem, Problems, Protocol, RouteConfig, StickyKey, TlsFiles, Upstream,
};

/// The most backends one route may split between.
pub const MAX_BACKENDS: usize = 16;
/// The largest weight one backend may have; keeps sums far from overflow.
pub const MAX_WEIGHT: u64 = 1_000_000;
const DEFAULT_ADMIN: &str = "127.0.0.1:9901";
const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(30);

/// Splits a parsed value into sections and routes and deserializes each on
/// its own, so that one mistyped field does not hide the others.
pub(super) fn document_from_value(value: serde_json::Value) -> Result<Document, Problems> {
    let serde_json::Value::Object(mut top) = value else {
        return Err(
            Problem::new("", "the config must be a mapping with listeners and routes").into(),
        );
    };
    let mut problems = Vec::new();
    let routes_value = top.remove("routes");
    // Everything but the routes at once: unknown top-level keys show here.
    let mut document: Document =
        section(serde_json::Value::Object(top), "", &mut problems).unwrap_or_default();
    match routes_value {
        None | Some(serde_json::Value::Null) => {}
        Some(serde_json::Value::Array(items)) => {
            for (i, item) in items.into_iter().enumerate() {
                if let Some(route) = section(item, &format!("routes[{i}]"), &mut problems) {
                    document.routes.push(route);
                }
            }
        }
        Some(_) => problems.push(Problem::new("routes", "must be a list of routes")),
    }
    if problems.is_empty() {
        Ok(document)
    } else {
        Err(Problems(problems))
    }
}

fn section<T: DeserializeOwned>(
    value: serde_json::Value,
    prefix: &str,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    match serde_path_to_error::deserialize(value) {
        Ok(v) => Some(v),
        Err(e) => {
            let inner = e.path().to_string();
            let path = match (prefix.is_empty(), inner.as_str()) {
                (_, ".") => prefix.to_string(),
                (true, p) => p.to_string(),
                (false, p) if p.starts_with('[') => format!("{prefix}{p}"),
                (false, p) => format!("{prefix}.{p}"),
            };
            problems.push(Problem::new(path, e.into_inner().to_string()));
            None
        }
    }
}

/// Checks a document and builds the typed config. `base_dir` is where
/// relative paths (token file, state dir) are resolved from.
pub fn validate(document: Document, base_dir: &Path) -> Result<Config, Problems> {
    let mut p = Vec::new();
    let listeners = listeners(&document.listeners, base_dir, &mut p);
    let admin = admin(document.admin.as_ref(), base_dir, &mut p);
    let limits = limits(document.limits.as_ref(), &mut p);
    let forwarded = match document.forwarded.as_deref() {
        None | Some("append") => Forwarded::Append,
        Some("overwrite") => Forwarded::Overwrite,
        Some(other) => {
            p.push(Problem::new(
                "forwarded",
                format!("\"{other}\" is not one of append, overwrite"),
            ));
            Forwarded::Append
        }
    };
    let state_dir = document.state_dir.as_deref().map(|d| resolve(base_dir, d));
    let access_log = document
        .access_log
        .as_ref()
        .map(|a| access_log(a, base_dir, &mut p));
    let fleet = document.fleet.as_ref().and_then(|f| fleet(f, &mut p));
    if document.routes.is_empty() {
        p.push(Problem::new("routes", "at least one route is needed"));
    }
    let mut names = HashSet::new();
    let mut routes = Vec::with_capacity(document.routes.len());
    for (i, r) in document.routes.iter().enumerate() {
        let path = format!("routes[{i}]");
        if !names.insert(r.name.as_str()) {
            p.push(Problem::new(
                format!("{path}.name"),
                format!(
                    "\"{}\" is used by an earlier route; route names must be unique",
                    r.name
                ),
            ));
        }
        if let Some(route) = route(r, &path, base_dir, None, &mut p) {
            routes.push(Arc::new(route));
        }
    }
    if !p.is_empty() {
        return Err(Problems(p));
    }
    let routes: crate::shared_vec::SharedVec<_> = routes.into();
    let fingerprints = document
        .routes
        .iter()
        .filter_map(|r| {
            Some((
                r.name.clone(),
                super::plan::fingerprint(r, fleet.is_some())?,
            ))
        })
        .collect();
    let by_name = routes
        .iter()
        .enumerate()
        .map(|(i, r)| (r.name.clone(), i))
        .collect();
    let digest = super::digest(&document).into();
    Ok(Config {
        digest,
        fleet: fleet.map(Arc::new),
        document: Arc::new(document),
        listeners,
        admin: admin.expect("admin is Some when there are no problems"),
        state_dir,
        limits,
        forwarded,
        access_log: access_log.flatten(),
        routes,
        by_name: Arc::new(by_name),
        fingerprints: Arc::new(fingerprints),
    })
}

fn fleet(f: &raw::Fleet, p: &mut Vec<Problem>) -> Option<super::FleetConfig> {
    let before = p.len();
    let url_ok = f
        .prometheus
        .parse::<http::Uri>()
        .is_ok_and(|u| u.scheme_str() == Some("http") && u.authority().is_some());
    if !url_ok {
        p.push(Problem::new(
            "fleet.prometheus",
            format!(
                "\"{}\" is not an http:// URL of a Prometheus server",
                f.prometheus
            ),
        ));
    }
    let matchers = match f.selector.as_deref().map(str::trim) {
        None | Some("") => String::new(),
        Some(s) => match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            Some(inner) if !inner.contains(['{', '}']) => {
                inner.trim().trim_end_matches(',').trim().to_string()
            }
            _ => {
                p.push(Problem::new(
                    "fleet.selector",
                    format!("\"{s}\" is not label matchers in braces, as {{job=\"sluice\", fleet=\"checkout\"}}"),
                ));
                String::new()
            }
        },
    };
    let lag = match f.lag.as_deref().map(duration::parse) {
        None => Duration::from_secs(10),
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            p.push(Problem::new("fleet.lag", e));
            Duration::ZERO
        }
    };
    if f.replicas == Some(0) {
        p.push(Problem::new("fleet.replicas", "must be at least 1"));
    }
    (p.len() == before).then(|| super::FleetConfig {
        prometheus: f.prometheus.trim_end_matches('/').to_string(),
        matchers,
        lag,
        replicas: f.replicas,
    })
}

/// Validates one route of a document again, after a change that touched
/// only it (weights): the rest of the document is as valid as it was. Its
/// backends keep the targets `current` has, TLS set up once included: a
/// weight change, or a rollback, reads no file (one moved or caught
/// mid-rotation could otherwise refuse a rollback).
pub fn revalidate_route(
    r: &raw::Route,
    index: usize,
    base_dir: &Path,
    current: &RouteConfig,
) -> Result<RouteConfig, Problems> {
    let mut p = Vec::new();
    let path = format!("routes[{index}]");
    match route(r, &path, base_dir, Some(&current.backends), &mut p) {
        Some(route) if p.is_empty() => Ok(route),
        _ => Err(Problems(p)),
    }
}

/// Where the access log goes. A file's directory must exist; the file
/// itself is opened (made if missing) at start, not by a check.
fn access_log(
    a: &raw::AccessLog,
    base_dir: &Path,
    p: &mut Vec<Problem>,
) -> Option<super::AccessLogTarget> {
    if a.path == "-" {
        return Some(super::AccessLogTarget::Stdout);
    }
    let file = resolve(base_dir, &a.path);
    let dir = file.parent().filter(|d| !d.as_os_str().is_empty());
    if a.path.is_empty() || file.is_dir() {
        p.push(Problem::new(
            "access_log.path",
            format!("\"{}\" must name a file, or - for standard output", a.path),
        ));
        return None;
    }
    if let Some(dir) = dir.filter(|d| !d.is_dir()) {
        p.push(Problem::new(
            "access_log.path",
            format!("{} is not a directory", dir.display()),
        ));
        return None;
    }
    Some(super::AccessLogTarget::File(file))
}

fn resolve(base_dir: &Path, path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base_dir.join(p)
    }
}

fn listeners(list: &[raw::Listener], base_dir: &Path, p: &mut Vec<Problem>) -> Vec<ListenerConfig> {
    if list.is_empty() {
        p.push(Problem::new("listeners", "at least one listener is needed"));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (i, l) in list.iter().enumerate() {
        let path = format!("listeners[{i}]");
        let tls = l.tls.as_ref().and_then(|t| {
            let files = TlsFiles {
                cert: resolve(base_dir, &t.cert),
                key: resolve(base_dir, &t.key),
            };
            // Load once now so that a bad file is a config problem, not a
            // failure at start.
            match crate::tls::server_config(&files.cert, &files.key) {
                Ok(_) => Some(files),
                Err(e) => {
                    p.push(Problem::new(format!("{path}.tls"), e));
                    None
                }
            }
        });
        match l.addr.parse::<SocketAddr>() {
            Ok(addr) => {
                if addr.port() != 0 && !seen.insert(addr) {
                    p.push(Problem::new(
                        format!("{path}.addr"),
                        format!("{addr} is listed twice"),
                    ));
                }
                out.push(ListenerConfig { addr, tls });
            }
            Err(_) => p.push(Problem::new(
                format!("{path}.addr"),
                format!(
                    "\"{}\" is not an IP address with a port, as in 127.0.0.1:8080",
                    l.addr
                ),
            )),
        }
    }
    out
}

fn admin(a: Option<&raw::Admin>, base_dir: &Path, p: &mut Vec<Problem>) -> Option<AdminConfig> {
    let default = raw::Admin::default();
    let a = a.unwrap_or(&default);
    let text = a.addr.as_deref().unwrap_or(DEFAULT_ADMIN);
    let addr = match text.parse::<SocketAddr>() {
        Ok(addr) => Some(addr),
        Err(_) => {
            p.push(Problem::new(
                "admin.addr",
                format!("\"{text}\" is not an IP address with a port, as in 127.0.0.1:9901"),
            ));
            None
        }
    };
    let token = match &a.token_file {
        None => None,
        Some(file) => {
            let path = resolve(base_dir, file);
            match std::fs::read_to_string(&path) {
                Ok(t) if t.trim().is_empty() => {
                    p.push(Problem::new(
                        "admin.token_file",
                        format!("{} is empty", path.display()),
                    ));
                    None
                }
                Ok(t) => Some(Arc::<str>::from(t.trim())),
                Err(e) => {
                    p.push(Problem::new(
                        "admin.token_file",
                        format!("cannot read {}: {e}", path.display()),
                    ));
                    None
                }
            }
        }
    };
    let addr = addr?;
    if !addr.ip().is_loopback() && a.token_file.is_none() {
        p.push(Problem::new(
            "admin.addr",
            format!(
                "{addr} is reachable from other hosts; set admin.token_file so that changes need a token, or listen on 127.0.0.1"
            ),
        ));
    }
    Some(AdminConfig { addr, token })
}

fn limits(l: Option<&raw::Limits>, p: &mut Vec<Problem>) -> Limits {
    let mut out = Limits::default();
    let Some(l) = l else { return out };
    let mut dur = |field: &str, value: &Option<String>, target: &mut Duration| {
        if let Some(text) = value {
            match duration::parse(text) {
                Ok(d) if d.is_zero() => p.push(Problem::new(
                    format!("limits.{field}"),
                    "must be longer than zero",
                )),
                Ok(d) => *target = d,
                Err(e) => p.push(Problem::new(format!("limits.{field}"), e)),
            }
        }
    };
    dur(
        "header_read_timeout",
        &l.header_read_timeout,
        &mut out.header_read_timeout,
    );
    dur(
        "request_timeout",
        &l.request_timeout,
        &mut out.request_timeout,
    );
    dur("idle_timeout", &l.idle_timeout, &mut out.idle_timeout);
    dur(
        "connect_timeout",
        &l.connect_timeout,
        &mut out.connect_timeout,
    );
    dur("drain_timeout", &l.drain_timeout, &mut out.drain_timeout);
    if let Some(n) = l.max_header_bytes {
        if !(8192..=16 * 1024 * 1024).contains(&n) {
            p.push(Problem::new(
                "limits.max_header_bytes",
                "must be between 8192 and 16777216",
            ));
        } else {
            out.max_header_bytes = n as usize;
        }
    }
    out.max_body_bytes = l.max_body_bytes;
    if let Some(n) = l.max_connections {
        if n == 0 || n > 10_000_000 {
            p.push(Problem::new(
                "limits.max_connections",
                "must be between 1 and 10000000",
            ));
        } else {
            out.max_connections = n as usize;
        }
    }
    if let Some(n) = l.max_concurrent_streams {
        if n == 0 || n > u32::MAX as u64 {
            p.push(Problem::new(
                "limits.max_concurrent_streams",
                "must be at least 1",
            ));
        } else {
            out.max_concurrent_streams = n as u32;
        }
    }
    out
}

/// Route and backend names go into metric labels, URLs and file names.
fn valid_route_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn valid_backend_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

fn header_name(text: &str, path: &str, p: &mut Vec<Problem>) -> Option<HeaderName> {
    match HeaderName::from_bytes(text.as_bytes()) {
        Ok(h) => Some(h),
        Err(_) => {
            p.push(Problem::new(
                path,
                format!("\"{text}\" is not a valid header name"),
            ));
            None
        }
    }
}

/// `known`: the route's backends as validated before, whose targets are
/// kept for backends of the same name at the same place.
fn route(
    r: &raw::Route,
    path: &str,
    base_dir: &Path,
    known: Option<&[BackendConfig]>,
    p: &mut Vec<Problem>,
) -> Option<RouteConfig> {
    let before = p.len();
    if !valid_route_name(&r.name) {
        p.push(Problem::new(
            format!("{path}.name"),
            format!("\"{}\" must be 1 to 63 of a-z, 0-9, _ and -", r.name),
        ));
    }
    let m = r.matches.clone().unwrap_or_default();
    let host = m
        .host
        .as_deref()
        .and_then(|h| host_match(h, &format!("{path}.match.host"), p));
    if let Some(prefix) = &m.path_prefix {
        if !prefix.starts_with('/') {
            p.push(Problem::new(
                format!("{path}.match.path_prefix"),
                format!("\"{prefix}\" must start with /"),
            ));
        }
    }
    let mut headers = Vec::new();
    for (name, value) in &m.headers {
        let hp = format!("{path}.match.headers.{name}");
        let n = header_name(name, &hp, p);
        let v = HeaderValue::from_str(value).map_err(|_| {
            p.push(Problem::new(
                &hp,
                format!("\"{value}\" is not a valid header value"),
            ))
        });
        if let (Some(n), Ok(v)) = (n, v) {
            headers.push((n, v));
        }
    }

    let backends = backends(&r.backends, path, base_dir, known, p);
    let index_of = |name: &str| r.backends.iter().position(|b| b.name == name);
    let known = || {
        r.backends
            .iter()
            .map(|b| b.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };

    let sticky = match &r.sticky {
        None => None,
        Some(raw::Sticky {
            header: Some(h),
            cookie: None,
        }) => header_name(h, &format!("{path}.sticky.header"), p).map(StickyKey::Header),
        Some(raw::Sticky {
            header: None,
            cookie: Some(c),
        }) => {
            if c.is_empty()
                || !c
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && !b"=;,\"".contains(&b))
            {
                p.push(Problem::new(
                    format!("{path}.sticky.cookie"),
                    format!("\"{c}\" is not a valid cookie name"),
                ));
                None
            } else {
                Some(StickyKey::Cookie(c.clone()))
            }
        }
        Some(_) => {
            p.push(Problem::new(
                format!("{path}.sticky"),
                "name exactly one of header or cookie",
            ));
            None
        }
    };
    let override_header = r
        .override_header
        .as_deref()
        .and_then(|h| header_name(h, &format!("{path}.override_header"), p));
    let timeout = match r.timeout.as_deref().map(duration::parse) {
        None => DEFAULT_ROUTE_TIMEOUT,
        Some(Ok(d)) if !d.is_zero() => d,
        Some(Ok(_)) => {
            p.push(Problem::new(
                format!("{path}.timeout"),
                "must be longer than zero",
            ));
            DEFAULT_ROUTE_TIMEOUT
        }
        Some(Err(e)) => {
            p.push(Problem::new(format!("{path}.timeout"), e));
            DEFAULT_ROUTE_TIMEOUT
        }
    };

    let mut baseline = 0;
    let mut rollout = None;
    if let Some(plan) = &r.rollout {
        let rp = format!("{path}.rollout");
        let b = index_of(&plan.baseline);
        let c = index_of(&plan.canary);
        for (field, name, found) in [("baseline", &plan.baseline, b), ("canary", &plan.canary, c)] {
            if found.is_none() {
                p.push(Problem::new(
                    format!("{rp}.{field}"),
                    format!("no backend named \"{name}\" (backends: {})", known()),
                ));
            }
        }
        if plan.baseline == plan.canary {
            p.push(Problem::new(
                format!("{rp}.canary"),
                "must differ from baseline",
            ));
        }
        if let (Some(b), Some(c)) = (b, c) {
            baseline = b;
            rollout = super::plan::plan(plan, b, c, &rp, p).map(Arc::new);
        }
    }

    let mut mirror = None;
    if let Some(m) = &r.mirror {
        let mp = format!("{path}.mirror");
        let percent = m.percent.unwrap_or(100.0);
        // Written so that NaN fails too.
        if !(0.0..=100.0).contains(&percent) {
            p.push(Problem::new(
                format!("{mp}.percent"),
                format!("must be from 0 to 100, not {percent}"),
            ));
        }
        match index_of(&m.backend) {
            Some(backend) => {
                mirror = Some(super::Mirror {
                    backend,
                    per_10000: (percent.clamp(0.0, 100.0) * 100.0).round() as u32,
                })
            }
            None => p.push(Problem::new(
                format!("{mp}.backend"),
                format!("no backend named \"{}\" (backends: {})", m.backend, known()),
            )),
        }
    }

    if p.len() > before {
        return None;
    }
    Some(RouteConfig {
        name: Arc::from(r.name.as_str()),
        host,
        path_prefix: m.path_prefix.filter(|prefix| prefix != "/"),
        headers,
        backends,
        sticky,
        override_header,
        timeout,
        baseline,
        rollout,
        mirror,
    })
}

fn host_match(text: &str, path: &str, p: &mut Vec<Problem>) -> Option<HostMatch> {
    let lower = text.to_ascii_lowercase();
    let (suffix, name) = match lower.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, lower.as_str()),
    };
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        && !name.starts_with('.')
        && !name.ends_with('.');
    if !valid {
        p.push(Problem::new(
            path,
            format!("\"{text}\" is not a host name (exact, or *.example.com for any subdomain)"),
        ));
        return None;
    }
    Some(if suffix {
        HostMatch::Suffix(format!(".{name}"))
    } else {
        HostMatch::Exact(name.to_string())
    })
}

fn backends(
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
fn upstream_authority(
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
fn backend_tls(
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
