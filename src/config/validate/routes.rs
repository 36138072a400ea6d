//! A route: its name, match, split, timeout, mirror and rollout.

use super::*;

/// `known`: the route's backends as validated before, whose targets are
/// kept for backends of the same name at the same place.
pub(super) fn route(
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
            rollout = crate::config::plan::plan(plan, b, c, &rp, p).map(Arc::new);
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
                mirror = Some(crate::config::Mirror {
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

pub(super) fn host_match(text: &str, path: &str, p: &mut Vec<Problem>) -> Option<HostMatch> {
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

pub(super) fn header_name(text: &str, path: &str, p: &mut Vec<Problem>) -> Option<HeaderName> {
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

/// Route and backend names go into metric labels, URLs and file names.
pub(super) fn valid_route_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}
