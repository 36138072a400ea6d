//! The `/status` document: what every route does now and how its backends
//! fare over the last minute.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::stats::Class;
use crate::table::Table;

/// The span `/status` reports on.
pub const STATUS_SPAN: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub config_version: u64,
    pub window_seconds: u64,
    #[serde(default)]
    pub connections: ConnectionsStatus,
    pub routes: Vec<RouteStatus>,
    /// The fleet this process is a replica of, when `fleet:` is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<crate::rollout::controller::FleetStatus>,
    /// What an answer to an action needs said (in a fleet: that it acted
    /// on this replica only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Client connections on every listener.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConnectionsStatus {
    pub open: usize,
    /// Idle HTTP/1.1 connections that hold only their socket.
    pub parked: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RouteStatus {
    pub name: String,
    pub baseline: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<String>,
    pub backends: Vec<BackendStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<crate::rollout::controller::RolloutView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackendStatus {
    pub name: String,
    pub url: String,
    pub weight: u32,
    /// Share of traffic, percent.
    pub share: f64,
    pub requests: u64,
    /// Percent of responses that were not 5xx or transport errors; null without requests.
    pub success_rate: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub classes: std::collections::BTreeMap<String, u64>,
}

/// The status of one route (`only`), or of all: an answer about one route
/// need not summarize ten thousand.
pub fn status_of(table: &Table, only: Option<&str>) -> Status {
    let chosen: Vec<&crate::table::Route> = match only {
        Some(name) => table.route_named(name).into_iter().collect(),
        None => table.routes.iter().map(|r| &**r).collect(),
    };
    let routes = chosen
        .into_iter()
        .map(|r| {
            let total: u64 = r.backends.iter().map(|b| b.weight as u64).sum();
            RouteStatus {
                name: r.name.to_string(),
                baseline: r.backends[r.baseline].name.to_string(),
                sticky: r.sticky.as_ref().map(|s| match s {
                    crate::config::StickyKey::Header(h) => format!("header {h}"),
                    crate::config::StickyKey::Cookie(c) => format!("cookie {c}"),
                }),
                backends: r
                    .backends
                    .iter()
                    .map(|b| {
                        let snap = b.stats.snapshot(STATUS_SPAN);
                        let ms = |q| {
                            snap.quantile(q)
                                .map(|d: Duration| round3(d.as_secs_f64() * 1000.0))
                        };
                        BackendStatus {
                            name: b.name.to_string(),
                            url: b.url(),
                            weight: b.weight,
                            share: round3(b.weight as f64 * 100.0 / total.max(1) as f64),
                            requests: snap.requests(),
                            success_rate: snap.success_rate().map(|s| round3(s * 100.0)),
                            p50_ms: ms(0.5),
                            p95_ms: ms(0.95),
                            p99_ms: ms(0.99),
                            classes: Class::ALL
                                .iter()
                                .map(|c| (c.label().to_string(), snap.count(*c)))
                                .collect(),
                        }
                    })
                    .collect(),
                rollout: None,
            }
        })
        .collect();
    Status {
        version: env!("CARGO_PKG_VERSION").to_string(),
        config_version: table.version,
        window_seconds: STATUS_SPAN.as_secs(),
        connections: ConnectionsStatus::default(),
        routes,
        fleet: None,
        note: None,
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
