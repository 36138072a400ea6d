//! Inline measurement: every request's outcome goes, once, into its
//! backend's live window (for `/status` and rollout gates) and its lifetime
//! counts, from which `/metrics` renders the Prometheus request counters and
//! latency histogram at scrape time (see [`prom::render_backends`]).

pub mod failures;
pub mod prom;
pub mod window;

use std::sync::Arc;
use std::time::Duration;

pub use window::{Class, Lifetime, PromView, Snapshot, Window};

pub use crate::clock::now_sec;

/// Everything one request outcome is recorded into, for one (route, backend).
/// Shared by every table version in which that route keeps that backend, so
/// swaps reset neither the live window nor the Prometheus counters; a table
/// that needs a longer window (a rollout with a longer `window`) gets a new
/// window but keeps the lifetime counts.
pub struct BackendStats {
    pub window: Window,
    pub lifetime: Arc<Lifetime>,
    /// Failures for the log (at most a line a second).
    pub failures: Arc<failures::FailureLog>,
}

impl std::fmt::Debug for BackendStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendStats")
            .field("requests", &self.lifetime.requests())
            .finish()
    }
}

impl BackendStats {
    pub fn new(span: Duration) -> Arc<Self> {
        Arc::new(BackendStats {
            window: Window::new(span),
            lifetime: Arc::default(),
            failures: Arc::default(),
        })
    }

    /// The same backend with a window able to answer for `span`: a fresh
    /// window, the same lifetime counts.
    pub fn widened(&self, span: Duration) -> Arc<Self> {
        Arc::new(BackendStats {
            window: Window::new(span),
            lifetime: self.lifetime.clone(),
            failures: self.failures.clone(),
        })
    }

    /// Records one finished request. `latency` is to response headers.
    pub fn record(&self, class: Class, latency: Duration) {
        self.window.record(now_sec(), class, latency);
        self.lifetime.record(class, latency);
    }

    /// The last `span` of this backend's window.
    pub fn snapshot(&self, span: Duration) -> Snapshot {
        self.window.snapshot(now_sec(), span)
    }
}
