//! The sections bound to one process: listeners, admin, limits, the
//! access log and the fleet.

use super::*;

pub(super) fn listeners(
    list: &[raw::Listener],
    base_dir: &Path,
    p: &mut Vec<Problem>,
) -> Vec<ListenerConfig> {
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

pub(super) fn admin(
    a: Option<&raw::Admin>,
    base_dir: &Path,
    p: &mut Vec<Problem>,
) -> Option<AdminConfig> {
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

pub(super) fn limits(l: Option<&raw::Limits>, p: &mut Vec<Problem>) -> Limits {
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

/// Where the access log goes. A file's directory must exist; the file
/// itself is opened (made if missing) at start, not by a check.
pub(super) fn access_log(
    a: &raw::AccessLog,
    base_dir: &Path,
    p: &mut Vec<Problem>,
) -> Option<crate::config::AccessLogTarget> {
    if a.path == "-" {
        return Some(crate::config::AccessLogTarget::Stdout);
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
    Some(crate::config::AccessLogTarget::File(file))
}

pub(super) fn fleet(f: &raw::Fleet, p: &mut Vec<Problem>) -> Option<crate::config::FleetConfig> {
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
    (p.len() == before).then(|| crate::config::FleetConfig {
        prometheus: f.prometheus.trim_end_matches('/').to_string(),
        matchers,
        lag,
        replicas: f.replicas,
    })
}
