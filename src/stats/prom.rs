//! The Prometheus side: one recorder per proxy instance (not a global one),
//! so that several proxies in one process — tests, benches — keep separate
//! counts. Handles are resolved when a table is compiled, never per request.
//!
//! The two per-request families, `sluice_requests_total` and
//! `sluice_request_duration_seconds`, are not recorded here at all: they are
//! rendered at scrape time from the lifetime counts each request already
//! goes into ([`render_backends`]). Recording them a second time cost two
//! more atomics and a histogram sample pushed onto a queue per request, and
//! a drain of every queued sample every few seconds.

use std::fmt::Write as _;
use std::sync::Arc;

use metrics::{Counter, Gauge, Key, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use super::window::{Class, PROM_EDGES_NS};
use super::BackendStats;

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
        let recorder = PrometheusBuilder::new().build_recorder();
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
        d(
            "sluice_rollbacks_total",
            None,
            "Rollouts ended in a rollback, by route and reason (critical, smoke, escalate, sustained, manual for an abort, followed for a fleet replica following another).",
        );
        self.recorder.describe_gauge(
            "sluice_rollout_stage".into(),
            None,
            "The stage each route's rollout is at, from 1; 0 when it is not running or paused."
                .into(),
        );
        self.recorder.describe_gauge(
            "sluice_rollout_state".into(),
            None,
            "The state of each route's rollout: 1 for the state it is in, 0 for the others.".into(),
        );
    }

    fn key(name: &'static str, labels: Vec<Label>) -> Key {
        Key::from_parts(name, labels)
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
}

/// Appends `sluice_requests_total` and `sluice_request_duration_seconds` for
/// every (route, backend) of the table in use, in the Prometheus text
/// format. A backend that leaves the table leaves the exposition; one that
/// stays keeps counting, since table versions share its counts.
pub fn render_backends<'a>(
    out: &mut String,
    backends: impl Iterator<Item = (&'a str, &'a str, &'a BackendStats)>,
) {
    let views: Vec<_> = backends
        .map(|(route, backend, stats)| {
            let labels = format!(
                "route=\"{}\",backend=\"{}\"",
                escape(route),
                escape(backend)
            );
            (labels, stats.lifetime.prometheus())
        })
        .collect();
    out.push_str(
        "# HELP sluice_requests_total Requests by route, backend and outcome class.\n\
         # TYPE sluice_requests_total counter\n",
    );
    for (labels, view) in &views {
        for class in Class::ALL {
            let n = view.classes[class as usize];
            let _ = writeln!(
                out,
                "sluice_requests_total{{{labels},class=\"{}\"}} {n}",
                class.label()
            );
        }
    }
    out.push_str(
        "\n# HELP sluice_request_duration_seconds Latency to response headers by route and backend.\n\
         # TYPE sluice_request_duration_seconds histogram\n",
    );
    for (labels, view) in &views {
        let name = "sluice_request_duration_seconds";
        for (edge, n) in PROM_EDGES_NS.iter().zip(&view.cumulative) {
            let le = *edge as f64 / 1e9;
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {n}");
        }
        let count = view.cumulative[PROM_EDGES_NS.len()];
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", view.sum_seconds);
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// Appends `sluice_config_info{digest}`: equal on every replica that serves
/// the same config.
pub fn render_config_info(out: &mut String, digest: &str) {
    let _ = write!(
        out,
        "# HELP sluice_config_info The digest of the config this process serves; always 1.\n\
         # TYPE sluice_config_info gauge\n\
         sluice_config_info{{digest=\"{}\"}} 1\n",
        escape(digest)
    );
}

/// A label value as the text format wants it: backslash, double quote and
/// line feed escaped.
fn escape(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return value.into();
    }
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn line<'a>(out: &'a str, prefix: &str) -> &'a str {
        out.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line {prefix} in\n{out}"))
    }

    #[test]
    fn renders_counts_and_a_cumulative_histogram_with_exact_edges() {
        let stats = BackendStats::new(Duration::from_secs(60));
        // On an edge counts into it (le is "less or equal"); a nanosecond
        // more goes to the next.
        stats.record(Class::Success2xx, Duration::from_micros(500));
        stats.record(Class::Success2xx, Duration::from_nanos(500_001));
        stats.record(Class::Server5xx, Duration::from_millis(20));
        stats.record(Class::Error, Duration::from_secs(3));
        stats.record(Class::Client4xx, Duration::from_secs(90));
        let mut out = String::new();
        render_backends(&mut out, [("api", "canary", &*stats)].into_iter());
        let series = |rest: &str| format!("sluice_request_duration_seconds{rest}");
        let r = |c: &str| {
            format!("sluice_requests_total{{route=\"api\",backend=\"canary\",class=\"{c}\"}} ")
        };
        assert_eq!(line(&out, &r("2xx")), format!("{}2", r("2xx")));
        assert_eq!(line(&out, &r("5xx")), format!("{}1", r("5xx")));
        assert_eq!(line(&out, &r("error")), format!("{}1", r("error")));
        assert_eq!(line(&out, &r("3xx")), format!("{}0", r("3xx")));
        let bucket = |le: &str| {
            let prefix = series(&format!(
                "_bucket{{route=\"api\",backend=\"canary\",le=\"{le}\"}} "
            ));
            line(&out, &prefix)[prefix.len()..].to_string()
        };
        assert_eq!(bucket("0.0005"), "1");
        assert_eq!(bucket("0.001"), "2");
        assert_eq!(bucket("0.025"), "3");
        assert_eq!(
            bucket("60"),
            "3",
            "errors have no latency; 90 s is above every edge"
        );
        assert_eq!(bucket("+Inf"), "4");
        assert!(line(&out, &series("_count{")).ends_with(" 4"));
        let sum: f64 = line(&out, &series("_sum{"))
            .rsplit_once(' ')
            .unwrap()
            .1
            .parse()
            .unwrap();
        assert!((sum - 90.021).abs() < 1e-9, "{sum}");
        // One HELP and TYPE per family, whatever the number of series.
        assert_eq!(out.matches("# TYPE ").count(), 2);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("plain"), "plain");
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
