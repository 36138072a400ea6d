//! Inline measurement: every request's outcome goes, once, into its
//! backend's live window (for `/status` and rollout gates) and into the
//! Prometheus recorder (for scraping).

pub mod prom;
pub mod window;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Histogram};

pub use window::{Class, Lifetime, Snapshot, Window};

pub use crate::clock::now_sec;

/// Everything one request outcome is recorded into, for one (route, backend).
/// Shared by every table version in which that route keeps that backend, so
/// swaps do not reset the live window.
pub struct BackendStats {
    pub window: Window,
    pub lifetime: Lifetime,
    requests: [Counter; 5],
    duration: Histogram,
    /// Requests sent to this backend, whatever became of them (tests and
    /// `/status` read it; cheaper than summing the window).
    pub total: AtomicU64,
}

impl std::fmt::Debug for BackendStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendStats")
            .field("total", &self.total.load(Relaxed))
            .finish()
    }
}

impl BackendStats {
    pub fn new(metrics: &prom::Metrics, route: &str, backend: &str, span: Duration) -> Arc<Self> {
        Arc::new(BackendStats {
            window: Window::new(span),
            lifetime: Lifetime::default(),
            requests: Class::ALL.map(|c| metrics.requests(route, backend, c.label())),
            duration: metrics.duration(route, backend),
            total: AtomicU64::new(0),
        })
    }

    /// Records one finished request. `latency` is to response headers.
    pub fn record(&self, class: Class, latency: Duration) {
        self.total.fetch_add(1, Relaxed);
        self.window.record(now_sec(), class, latency);
        self.lifetime.record(class, latency);
        self.requests[class as usize].increment(1);
        if class != Class::Error {
            self.duration.record(latency.as_secs_f64());
        }
    }

    /// The last `span` of this backend's window.
    pub fn snapshot(&self, span: Duration) -> Snapshot {
        self.window.snapshot(now_sec(), span)
    }
}
