//! The Prometheus side: one recorder per proxy instance (not a global one),
//! so that several proxies in one process — tests, benches — keep separate
//! counts. Handles are resolved when a table is compiled, never per request.

use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

/// Latency buckets (seconds) of `sluice_request_duration_seconds`.
const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

static METADATA: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, None);

/// A proxy instance's metric registry.
#[derive(Clone)]
pub struct Metrics {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("sluice_request_duration_seconds".into()),
                DURATION_BUCKETS,
            )
            .expect("bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        let m = Metrics {
            recorder: Arc::new(recorder),
            handle,
        };
        m.describe();
        m
    }

    fn describe(&self) {
        use metrics::Unit;
        let d = |name: &'static str, unit: Option<Unit>, text: &'static str| {
            self.recorder
                .describe_counter(name.into(), unit, text.into());
        };
        d(
            "sluice_requests_total",
            None,
            "Requests by route, backend and outcome class.",
        );
        self.recorder.describe_histogram(
            "sluice_request_duration_seconds".into(),
            Some(Unit::Seconds),
            "Latency to response headers by route and backend.".into(),
        );
        self.recorder.describe_gauge(
            "sluice_backend_weight".into(),
            None,
            "Current weight of each backend.".into(),
        );
        self.recorder.describe_gauge(
            "sluice_connections".into(),
            None,
            "Client connections by state: open (all, parked included) and parked (idle HTTP/1.1 connections holding only their socket).".into(),
        );
        self.recorder.describe_gauge(
            "sluice_config_version".into(),
            None,
            "Version of the routing table in use.".into(),
        );
        d(
            "sluice_config_reloads_total",
            None,
            "Table changes by result (ok, rejected).",
        );
    }

    fn key(name: &'static str, labels: Vec<Label>) -> Key {
        Key::from_parts(name, labels)
    }

    pub fn requests(&self, route: &str, backend: &str, class: &'static str) -> Counter {
        let key = Self::key(
            "sluice_requests_total",
            vec![
                Label::new("route", route.to_string()),
                Label::new("backend", backend.to_string()),
                Label::new("class", class),
            ],
        );
        self.recorder.register_counter(&key, &METADATA)
    }

    pub fn duration(&self, route: &str, backend: &str) -> Histogram {
        let key = Self::key(
            "sluice_request_duration_seconds",
            vec![
                Label::new("route", route.to_string()),
                Label::new("backend", backend.to_string()),
            ],
        );
        self.recorder.register_histogram(&key, &METADATA)
    }

    pub fn weight(&self, route: &str, backend: &str) -> Gauge {
        let key = Self::key(
            "sluice_backend_weight",
            vec![
                Label::new("route", route.to_string()),
                Label::new("backend", backend.to_string()),
            ],
        );
        self.recorder.register_gauge(&key, &METADATA)
    }

    /// Sets the client-connection gauges (read from the listeners at each
    /// scrape, not kept up to date on the request path).
    pub fn connections(&self, open: usize, parked: usize) {
        for (state, n) in [("open", open), ("parked", parked)] {
            let key = Self::key("sluice_connections", vec![Label::new("state", state)]);
            self.recorder.register_gauge(&key, &METADATA).set(n as f64);
        }
    }

    pub fn config_version(&self) -> Gauge {
        self.recorder
            .register_gauge(&Self::key("sluice_config_version", vec![]), &METADATA)
    }

    pub fn reloads(&self, result: &'static str) -> Counter {
        self.recorder.register_counter(
            &Self::key(
                "sluice_config_reloads_total",
                vec![Label::new("result", result)],
            ),
            &METADATA,
        )
    }

    pub fn gauge(&self, name: &'static str, labels: Vec<Label>) -> Gauge {
        self.recorder
            .register_gauge(&Self::key(name, labels), &METADATA)
    }

    pub fn counter(&self, name: &'static str, labels: Vec<Label>) -> Counter {
        self.recorder
            .register_counter(&Self::key(name, labels), &METADATA)
    }

    /// The text exposition for `GET /metrics`.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Drains histogram samples into their buckets; without it they pile up
    /// between scrapes. Called from a background task.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// Runs [`Self::upkeep`] every `every` until the task is dropped.
    pub async fn upkeep_loop(self, every: Duration) {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            self.upkeep();
        }
    }
}
