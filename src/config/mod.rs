//! Configuration: the document users write, and its validation into typed
//! structs that the rest of sluice can trust without checking again.
//!
//! Validation collects every problem before returning, each named by its path
//! in the document (`routes[1].backends[0].url: ...`), so one `sluice check`
//! shows everything that is wrong, not just the first thing.

pub mod duration;
pub mod plan;
pub mod raw;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};

pub use crate::target::{AccessLogTarget, BackendTls, Protocol, Upstream};
pub use validate::{revalidate_route, validate};

/// One thing wrong with a config, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl Problem {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in one config, in document order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl From<Problem> for Problems {
    fn from(p: Problem) -> Self {
        Problems(vec![p])
    }
}

/// Which syntax a config text is in. YAML is a superset of JSON, but JSON
/// parsed as JSON gives better error positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    Yaml,
    Json,
}

/// Parses a config text into the raw document, reporting every structural
/// problem (unknown fields, wrong types) section by section and route by route.
pub fn parse_document(text: &str, syntax: Syntax) -> Result<raw::Document, Problems> {
    let value: serde_json::Value = match syntax {
        Syntax::Json => serde_json::from_str(text)
            .map_err(|e| Problem::new("", format!("invalid JSON: {e}")))?,
        Syntax::Yaml => serde_saphyr::from_str_with_options(text, yaml_options()).map_err(|e| {
            let text = e
                .to_string()
                .replace(", set DuplicateKeyPolicy in Options if acceptable", "");
            Problem::new("", format!("invalid YAML: {text}"))
        })?,
    };
    validate::document_from_value(value)
}

/// YAML 1.2 readings: `y`, `no`, `on` stay strings (a cookie named `y`, a
/// country code `NO`), and duplicate keys are an error, not a silent overwrite.
fn yaml_options() -> serde_saphyr::Options {
    let mut o = serde_saphyr::Options::default();
    o.strict_booleans = true;
    o.leading_zero_numbers_as_strings = true;
    o.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::Error;
    // The parser's default budget (250 000 nodes) refuses a table of about
    // 8 000 routes; allow large tables while keeping alias and depth limits.
    let budget = o.budget.get_or_insert_with(Default::default);
    budget.max_nodes = 20_000_000;
    budget.max_events = 80_000_000;
    o
}

/// Reads, parses and validates a config file. Relative paths in it resolve
/// against the file's directory.
pub fn load(path: &Path) -> Result<Config, Problems> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Problem::new(
            "",
            format!("cannot read config file {}: {e}", path.display()),
        )
    })?;
    let syntax = if path.extension().is_some_and(|e| e == "json") {
        Syntax::Json
    } else {
        Syntax::Yaml
    };
    let document = parse_document(&text, syntax)?;
    validate(document, &base_dir_of(path))
}

/// The directory relative paths in a config file are resolved against.
pub fn base_dir_of(config_path: &Path) -> PathBuf {
    match config_path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A validated configuration. Built only by [`validate`], so every value in it
/// has been checked: names are unique, weights sum above zero, references
/// point at existing backends, durations and addresses parse.
#[derive(Debug, Clone)]
pub struct Config {
    /// The document this was validated from (relative paths as written).
    pub document: Arc<raw::Document>,
    pub listeners: Vec<ListenerConfig>,
    pub admin: AdminConfig,
    pub state_dir: Option<PathBuf>,
    pub limits: Limits,
    pub forwarded: Forwarded,
    /// Where each request's access log line goes, if anywhere; opened at
    /// start and fixed while running, as listeners are.
    pub access_log: Option<AccessLogTarget>,
    /// Shared, so that a change to one route leaves the others' compiled
    /// forms alone.
    pub routes: crate::shared_vec::SharedVec<Arc<RouteConfig>>,
    /// Position of each route by name (in `routes` and in the document's
    /// routes alike): a change to one route of ten thousand finds it at once.
    pub by_name: Arc<std::collections::HashMap<Arc<str>, usize>>,
    /// The routes with a rollout plan, each with its canary's fingerprint (a
    /// new one starts the rollout over). Known here, so that rollout
    /// controllers need not look through ten thousand routes after every
    /// change; a change of weights cannot change it, and shares it.
    pub fingerprints: Arc<std::collections::BTreeMap<String, String>>,
    /// The fleet this process is a replica of, if any.
    pub fleet: Option<Arc<FleetConfig>>,
    /// What identifies the document across replicas: equal on every replica
    /// that serves the same config (see [`digest`]).
    pub digest: Arc<str>,
}

/// A validated `fleet:` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetConfig {
    /// Base URL, without a trailing slash.
    pub prometheus: String,
    /// The label matchers inside the braces (`job="sluice",fleet="a"`),
    /// possibly empty.
    pub matchers: String,
    pub lag: Duration,
    /// Configured replica count; counted in Prometheus when `None`.
    pub replicas: Option<u32>,
}

impl FleetConfig {
    /// A series selector of this fleet with more matchers.
    pub fn select(&self, metric: &str, more: &str) -> String {
        let sep = if self.matchers.is_empty() || more.is_empty() {
            ""
        } else {
            ","
        };
        format!("{metric}{{{}{sep}{more}}}", self.matchers)
    }
}

/// The digest of a document as the fleet compares it: everything but the
/// sections bound to one process (listeners, admin, state_dir, access_log)
/// and the weights of routes a rollout drives (the controller moves them,
/// replicas a tick apart differ there). Two replicas that loaded the same
/// file have the same digest.
pub fn digest(document: &raw::Document) -> String {
    let mut d = document.clone();
    d.listeners.clear();
    d.admin = None;
    d.state_dir = None;
    d.access_log = None;
    for i in 0..d.routes.len() {
        if d.routes[i].rollout.is_some() {
            let r = Arc::make_mut(d.routes.get_mut(i).expect("in range"));
            for b in &mut r.backends {
                b.weight = 0;
            }
        }
    }
    let bytes = serde_json::to_vec(&d).expect("a document serializes");
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&bytes))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    pub addr: SocketAddr,
    /// Certificate chain and key (PEM), resolved against the config's directory.
    pub tls: Option<TlsFiles>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    pub addr: SocketAddr,
    /// The bearer token every mutation must carry, read from `token_file`.
    pub token: Option<Arc<str>>,
}

/// Resource limits; the defaults are the contract's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_body_bytes: Option<u64>,
    pub max_connections: usize,
    pub max_concurrent_streams: u32,
    pub header_read_timeout: Duration,
    pub request_timeout: Duration,
    pub idle_timeout: Duration,
    pub connect_timeout: Duration,
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 65_536,
            max_body_bytes: None,
            max_connections: 10_000,
            max_concurrent_streams: 100,
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(2),
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// What to do with an `x-forwarded-for` the client sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Forwarded {
    /// Keep the client's chain and add the peer (a sidecar behind a trusted edge).
    #[default]
    Append,
    /// Replace it with the peer address (an edge facing untrusted clients).
    Overwrite,
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: Arc<str>,
    pub host: Option<HostMatch>,
    pub path_prefix: Option<String>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub backends: Vec<BackendConfig>,
    pub sticky: Option<StickyKey>,
    pub override_header: Option<HeaderName>,
    pub timeout: Duration,
    /// Index of the backend `rollback` sends all weight to.
    pub baseline: usize,
    /// The route's rollout plan, if it has one.
    pub rollout: Option<Arc<plan::Plan>>,
    /// Shadow traffic, if the route has it.
    pub mirror: Option<Mirror>,
}

/// Shadow traffic: a share of the route's requests is also sent to one of
/// its backends, and what that backend answers is thrown away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mirror {
    /// Index of the backend that gets the copies.
    pub backend: usize,
    /// The share of requests copied, in hundredths of a percent (0..=10 000).
    pub per_10000: u32,
}

impl Mirror {
    /// Whether this request is to be copied: a fresh draw per request, so
    /// the share holds on average whatever the sticky key.
    pub fn draw(&self) -> bool {
        self.per_10000 >= 10_000 || fastrand::u32(..10_000) < self.per_10000
    }
}

/// Host matching: exact (`api.example.com`) or any subdomain (`*.example.com`,
/// which, as in Envoy and NGINX, does not match `example.com` itself).
/// Stored lowercase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    Exact(String),
    /// The suffix including its leading dot: `.example.com`.
    Suffix(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StickyKey {
    Header(HeaderName),
    Cookie(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    pub name: Arc<str>,
    pub target: Upstream,
    pub weight: u32,
}

impl Config {
    /// Route by name.
    pub fn route(&self, name: &str) -> Option<&RouteConfig> {
        self.route_index(name).map(|i| &*self.routes[i])
    }

    /// Where the named route sits in `routes` (and in the document).
    pub fn route_index(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }
}

#[cfg(test)]
mod tests;
