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

mod backends;
mod process;
mod routes;

use backends::backends;
use process::{access_log, admin, fleet, limits, listeners};
use routes::route;

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

fn resolve(base_dir: &Path, path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base_dir.join(p)
    }
}
