//! The compiled, immutable routing table the data plane reads, one
//! `ArcSwap::load` per request.
//!
//! A table is built from a validated [`Config`] plus the [`Registry`] of
//! connection pools and live windows that outlive any one table: a backend
//! that stays in the new table keeps its warm connections and its window; a
//! backend that leaves it loses both once the last request using them ends.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::access_log::AccessLog;
use crate::config::{Config, HostMatch, RouteConfig, StickyKey};
/// What the data plane reads of the config, compiled into the table: it
/// needs nothing from [`crate::config`] itself.
pub use crate::config::{Forwarded, Limits};
use crate::shared_vec::SharedVec;
use crate::split::{self, Split};
use crate::stats::prom::Metrics;
use crate::stats::BackendStats;
use crate::upstream::{Pool, PoolKey};

/// One version of the routing table.
#[derive(Debug)]
pub struct Table {
    pub version: u64,
    pub config: Arc<Config>,
    /// Shared with the table this one replaced, all but a changed route.
    pub routes: SharedVec<Arc<Route>>,
    router: Arc<Router>,
    /// Opened at start and the same in every table after.
    pub access_log: Option<Arc<AccessLog>>,
}

#[derive(Debug)]
pub struct Route {
    pub name: Arc<str>,
    host: Option<HostMatch>,
    path_prefix: Option<String>,
    headers: Box<[(HeaderName, HeaderValue)]>,
    pub backends: Box<[Backend]>,
    pub split: Split,
    pub sticky: Option<StickyKey>,
    pub override_header: Option<HeaderName>,
    pub timeout: Duration,
    pub baseline: usize,
    pub mirror: Option<crate::config::Mirror>,
}

#[derive(Debug)]
pub struct Backend {
    pub name: Arc<str>,
    pub weight: u32,
    pub pool: Arc<Pool>,
    pub stats: Arc<BackendStats>,
}

/// The data plane's handle on the table in use: it loads, and cannot
/// store. Only the control plane's single writer swaps the table.
#[derive(Clone)]
pub struct TableReader(Arc<arc_swap::ArcSwap<Table>>);

impl TableReader {
    /// A reader of the table `swap` holds; the control plane makes it.
    pub fn new(swap: Arc<arc_swap::ArcSwap<Table>>) -> Self {
        TableReader(swap)
    }

    /// The table in use, held for as long as the caller keeps it.
    #[inline]
    pub fn load_full(&self) -> Arc<Table> {
        self.0.load_full()
    }

    /// The table in use, for a short look.
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<Table>> {
        self.0.load()
    }
}

impl Backend {
    /// The backend's base URL, as the reports and status show it.
    pub fn url(&self) -> String {
        let scheme = if self.pool.is_tls() { "https" } else { "http" };
        format!("{scheme}://{}", self.pool.origin)
    }
}

impl Route {
    /// Whether this route takes a request; `host` is lowercase without port.
    fn matches(&self, host: &str, path: &str, headers: &HeaderMap) -> bool {
        if let Some(prefix) = &self.path_prefix {
            if !path.starts_with(prefix.as_str()) {
                return false;
            }
        }
        self.headers
            .iter()
            .all(|(name, value)| headers.get(name) == Some(value))
            && match &self.host {
                None => true,
                Some(HostMatch::Exact(h)) => h == host,
                Some(HostMatch::Suffix(s)) => host.len() > s.len() && host.ends_with(s.as_str()),
            }
    }

    /// The backend index for a request: override, sticky, or weighted draw.
    pub fn pick(&self, headers: &HeaderMap) -> usize {
        if let Some(name) = &self.override_header {
            if let Some(v) = crate::headers::find(headers, name) {
                if let Some(i) = self
                    .backends
                    .iter()
                    .position(|b| b.name.as_bytes() == v.as_bytes())
                {
                    return i;
                }
            }
        }
        if let Some(key) = &self.sticky {
            let value = match key {
                StickyKey::Header(h) => crate::headers::find(headers, h).map(|v| v.as_bytes()),
                StickyKey::Cookie(c) => headers
                    .get_all(http::header::COOKIE)
                    .iter()
                    .find_map(|v| split::cookie_value(v.as_bytes(), c)),
            };
            if let Some(v) = value {
                return self.split.pick_sticky(v);
            }
        }
        self.split.pick_random()
    }

    pub fn backend(&self, name: &str) -> Option<&Backend> {
        self.backends.iter().find(|b| &*b.name == name)
    }
}

/// Finds the first route, in file order, that matches a request. Routes with
/// an exact host are indexed by it, so a table of thousands of virtual hosts
/// does not scan them all.
#[derive(Debug, Default)]
struct Router {
    by_host: HashMap<String, Vec<u32>>,
    /// Routes with a wildcard host or none: they may match any host.
    general: Vec<u32>,
}

impl Router {
    fn new(routes: &SharedVec<Arc<Route>>) -> Self {
        let mut r = Router::default();
        for (i, route) in routes.iter().enumerate() {
            match &route.host {
                Some(HostMatch::Exact(h)) => r.by_host.entry(h.clone()).or_default().push(i as u32),
                _ => r.general.push(i as u32),
            }
        }
        r
    }
}

impl Table {
    /// The route for a request, by host (lowercase, no port), path and headers.
    pub fn route(&self, host: &str, path: &str, headers: &HeaderMap) -> Option<&Route> {
        let exact: &[u32] = self.router.by_host.get(host).map_or(&[], |v| v.as_slice());
        let general = self.router.general.as_slice();
        // Merge the two ordered candidate lists so file order decides.
        let (mut i, mut j) = (0, 0);
        loop {
            let next = match (exact.get(i), general.get(j)) {
                (Some(a), Some(b)) if a < b => {
                    i += 1;
                    *a
                }
                (_, Some(b)) => {
                    j += 1;
                    *b
                }
                (Some(a), None) => {
                    i += 1;
                    *a
                }
                (None, None) => return None,
            };
            let route = &self.routes[next as usize];
            if route.matches(host, path, headers) {
                return Some(route);
            }
        }
    }

    pub fn route_named(&self, name: &str) -> Option<&Route> {
        self.config.route_index(name).map(|i| &*self.routes[i])
    }
}

/// Route, backend and address: what a live window belongs to.
type StatsKey = (Arc<str>, Arc<str>, String);

/// Pools and live windows that outlive a table version.
#[derive(Debug)]
pub struct Registry {
    pub metrics: Metrics,
    /// Handed to every table compiled.
    pub access_log: Option<Arc<AccessLog>>,
    pools: HashMap<PoolKey, Arc<Pool>>,
    /// Keyed by route, backend and address: a backend that moves to a new
    /// address (a new deploy) starts with a fresh window.
    stats: HashMap<StatsKey, Arc<BackendStats>>,
}

impl Registry {
    pub fn new(metrics: Metrics) -> Self {
        Registry {
            metrics,
            access_log: None,
            pools: HashMap::new(),
            stats: HashMap::new(),
        }
    }

    /// Builds the table for `config`, reusing pools and windows of backends
    /// that stay, and forgetting those that leave.
    // A pool key holds an `https://` backend's rustls client configuration,
    // which mutates inside (its session cache); the key hashes and compares
    // by the name and roots it was built from only, so it is stable.
    #[allow(clippy::mutable_key_type)]
    pub fn compile(&mut self, config: Arc<Config>, version: u64) -> Table {
        let mut pools = HashMap::new();
        let mut stats = HashMap::new();
        let routes: SharedVec<Arc<Route>> = config
            .routes
            .iter()
            .map(|r| Arc::new(self.compile_route(r, &config, &mut pools, &mut stats)))
            .collect();
        // Backends that left: zero their weight gauge so dashboards do not
        // show a stale share.
        let staying: std::collections::HashSet<(&Arc<str>, &Arc<str>)> =
            stats.keys().map(|(r, b, _)| (r, b)).collect();
        for (route, backend, _) in self.stats.keys() {
            if !staying.contains(&(route, backend)) {
                self.metrics.weight(route, backend).set(0.0);
            }
        }
        self.pools = pools;
        self.stats = stats;
        let router = Arc::new(Router::new(&routes));
        Table {
            version,
            config,
            routes,
            router,
            access_log: self.access_log.clone(),
        }
    }

    /// A table like `previous` in which only route `index` changed, and only
    /// in its weights: every other route, and the router, are shared.
    pub fn recompile_route(
        &mut self,
        previous: &Table,
        config: Arc<Config>,
        index: usize,
        version: u64,
    ) -> Table {
        let (mut pools, mut stats) = (HashMap::new(), HashMap::new());
        let route = self.compile_route(&config.routes[index], &config, &mut pools, &mut stats);
        self.pools.extend(pools);
        self.stats.extend(stats);
        let mut routes = previous.routes.clone();
        *routes.get_mut(index).expect("the route's index") = Arc::new(route);
        Table {
            version,
            config,
            routes,
            router: previous.router.clone(),
            access_log: self.access_log.clone(),
        }
    }

    // As in `compile`: a pool key hashes by what is stable in it.
    #[allow(clippy::mutable_key_type)]
    fn compile_route(
        &self,
        r: &RouteConfig,
        config: &Config,
        pools: &mut HashMap<PoolKey, Arc<Pool>>,
        stats: &mut HashMap<StatsKey, Arc<BackendStats>>,
    ) -> Route {
        let limits = config.limits;
        // Windows answer for the status minute and the rollout's window.
        let span = r.rollout.as_ref().map_or(Duration::from_secs(60), |p| {
            p.window.max(Duration::from_secs(60))
        });
        let backends = r
            .backends
            .iter()
            .map(|b| {
                let key = PoolKey {
                    upstream: b.target.clone(),
                    connect_timeout: limits.connect_timeout,
                    idle_timeout: limits.idle_timeout,
                };
                let pool = self
                    .pools
                    .get(&key)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Pool::new(&key)));
                pools.insert(key, pool.clone());
                let id = (
                    r.name.clone(),
                    b.name.clone(),
                    b.target.authority.to_string(),
                );
                let s = match self.stats.get(&id) {
                    Some(s) if s.window.span() >= span => s.clone(),
                    Some(s) => s.widened(span),
                    None => BackendStats::new(span),
                };
                stats.insert(id, s.clone());
                self.metrics.weight(&r.name, &b.name).set(b.weight as f64);
                Backend {
                    name: b.name.clone(),
                    weight: b.weight,
                    pool,
                    stats: s,
                }
            })
            .collect::<Box<[Backend]>>();
        let weights: Vec<u32> = r.backends.iter().map(|b| b.weight).collect();
        Route {
            name: r.name.clone(),
            host: r.host.clone(),
            path_prefix: r.path_prefix.clone(),
            headers: r.headers.clone().into_boxed_slice(),
            backends,
            split: Split::new(&r.name, &weights),
            sticky: r.sticky.clone(),
            override_header: r.override_header.clone(),
            timeout: r.timeout,
            baseline: r.baseline,
            mirror: r.mirror,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_document, validate, Syntax};
    use crate::stats::Class;
    use std::time::Duration;

    fn config(extra: &str) -> Arc<Config> {
        let yaml = format!(
            "listeners: [{{ addr: \"127.0.0.1:0\" }}]\nroutes:\n  - name: api\n    backends:\n      - {{ name: stable, url: \"http://127.0.0.1:9001\", weight: 100 }}\n      - {{ name: canary, url: \"http://127.0.0.1:9002\", weight: 0 }}\n{extra}"
        );
        let doc = parse_document(&yaml, Syntax::Yaml).unwrap();
        Arc::new(validate(doc, std::path::Path::new(".")).unwrap())
    }

    /// A rollout with a window longer than the live one needs a wider
    /// window; the Prometheus counters (lifetime counts) must not restart
    /// with it, or a gate reading them would see a reset.
    #[test]
    fn a_wider_window_keeps_the_lifetime_counts() {
        let mut registry = Registry::new(Metrics::new());
        let before = registry.compile(config(""), 1);
        let stats = before.routes[0].backends[0].stats.clone();
        stats.record(Class::Success2xx, Duration::from_millis(1));
        stats.record(Class::Server5xx, Duration::from_millis(2));
        let after = registry.compile(
            config("    rollout:\n      baseline: stable\n      canary: canary\n      window: 10m\n      stages: [{ weight: 50, bake: 1h }]\n      gates: { success_rate: { critical: 99 } }\n"),
            2,
        );
        let widened = &after.routes[0].backends[0].stats;
        assert!(widened.window.span() >= Duration::from_secs(600));
        assert!(!Arc::ptr_eq(widened, &stats), "a new, wider window");
        assert_eq!(widened.lifetime.requests(), 2);
        assert_eq!(
            widened.lifetime.prometheus().classes[Class::Server5xx as usize],
            1
        );
        // The old and the new record into the same lifetime counts.
        widened.record(Class::Success2xx, Duration::from_millis(1));
        assert_eq!(stats.lifetime.requests(), 3);
    }
}
