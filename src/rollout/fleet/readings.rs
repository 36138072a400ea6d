//! What a fleet replica reads from Prometheus: a rollout's readings for a
//! run of ticks (one range query per series group, each evaluated at
//! `tick − lag`), its first tick, and the configs the replicas serve.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{Counts, Reading, PROM_BUCKETS};
use crate::config::plan::{GateKind, Plan};
use crate::config::FleetConfig;
use crate::rollout::prometheus::{self, PromClient};
use crate::rollout::state::Phase;
use crate::stats::window::PROM_EDGES_NS;

/// How far back a joining replica looks for the rollout's start.
const START_LOOKBACK: &str = "7d";

/// The most steps one range query asks for (Prometheus refuses 11 000).
const MAX_STEPS: i64 = 10_000;

/// What identifies the rollout whose readings are fetched.
pub struct Subject<'a> {
    pub route: &'a str,
    pub id: &'a str,
    pub canary: &'a str,
    pub baseline: &'a str,
}

/// Reads the fleet's readings for the ticks `from_ms..=to_ms` (on the
/// grid of `plan.interval`), each at `tick − lag`, with one range query per
/// series group (chunked to what Prometheus allows).
pub async fn readings(
    client: &PromClient,
    fleet: &FleetConfig,
    plan: &Plan,
    s: &Subject<'_>,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<Reading>, String> {
    let step_ms = plan.interval.as_millis() as i64;
    let mut out = Vec::new();
    let mut start = from_ms;
    while start <= to_ms {
        let end = (start + (MAX_STEPS - 1) * step_ms).min(to_ms);
        out.extend(readings_chunk(client, fleet, plan, s, start, end).await?);
        start = end + step_ms;
    }
    Ok(out)
}

async fn readings_chunk<'a>(
    client: &'a PromClient,
    fleet: &'a FleetConfig,
    plan: &'a Plan,
    s: &Subject<'_>,
    from_ms: i64,
    to_ms: i64,
) -> Result<Vec<Reading>, String> {
    let step = plan.interval;
    let step_ms = step.as_millis() as i64;
    let lag_ms = fleet.lag.as_millis() as i64;
    let n = ((to_ms - from_ms) / step_ms + 1) as usize;
    let mut out: Vec<Reading> = (0..n)
        .map(|i| Reading {
            tick_ms: from_ms + i as i64 * step_ms,
            ..Reading::default()
        })
        .collect();
    let index_of = |t: f64, lag_ms: i64| -> Option<usize> {
        let tick = (t * 1000.0).round() as i64 + lag_ms;
        let i = (tick - from_ms).div_euclid(step_ms);
        let on_grid = (tick - from_ms).rem_euclid(step_ms) == 0;
        (on_grid && (0..n as i64).contains(&i)).then_some(i as usize)
    };
    let range_on = |base: &'a str, q: String, lag_ms: i64| {
        let start = (from_ms - lag_ms) as f64 / 1000.0;
        let end = (to_ms - lag_ms) as f64 / 1000.0;
        async move { prometheus::query_range(client, base, &q, start, end, step).await }
    };
    let range = |q: String, lag_ms: i64| range_on(&fleet.prometheus, q, lag_ms);
    let route = format!("route=\"{}\"", s.route);
    let which = |labels: &BTreeMap<String, String>| match labels.get("backend").map(String::as_str)
    {
        Some(b) if b == s.canary => Some(0),
        Some(b) if b == s.baseline => Some(1),
        _ => None,
    };

    let classes = range(
        format!(
            "sum by (backend, class) ({})",
            fleet.select("sluice_requests_total", &route)
        ),
        lag_ms,
    );
    let buckets = range(
        format!(
            "sum by (backend, le) ({})",
            fleet.select("sluice_request_duration_seconds_bucket", &route)
        ),
        lag_ms,
    );
    let ended = range(
        format!(
            "max by (rollout, state) ({})",
            fleet.select(
                "sluice_rollout_info",
                &format!(
                    "{route},rollout=~\"{}(-r[0-9]+)?\",state=~\"rolled_back|aborted\"",
                    s.id
                )
            )
        ),
        lag_ms,
    );
    let requested = range(
        format!(
            "max by (request) ({})",
            fleet.select(
                "sluice_rollout_requested",
                &format!("{route},rollout=\"{}\"", s.id)
            )
        ),
        lag_ms,
    );
    let (classes, buckets, ended, requested) = tokio::join!(classes, buckets, ended, requested);

    // Counts by class: a backend's reading exists once any class series does.
    let mut counts: Vec<[Option<Counts>; 2]> = vec![[None; 2]; n];
    for series in classes? {
        let (Some(b), Some(class)) = (which(&series.labels), series.labels.get("class")) else {
            continue;
        };
        let Some(ci) = crate::stats::Class::ALL
            .iter()
            .position(|c| c.label() == class)
        else {
            continue;
        };
        for (t, v) in series.samples {
            if let Some(i) = index_of(t, lag_ms) {
                counts[i][b].get_or_insert_with(Counts::default).classes[ci] = v.max(0.0) as u64;
            }
        }
    }
    // Latency buckets come cumulative by `le`; they are kept per bucket.
    let mut cumulative: Vec<[[u64; PROM_BUCKETS]; 2]> = vec![[[0; PROM_BUCKETS]; 2]; n];
    for series in buckets? {
        let (Some(b), Some(le)) = (which(&series.labels), series.labels.get("le")) else {
            continue;
        };
        let Some(k) = bucket_index(le) else { continue };
        for (t, v) in series.samples {
            if let Some(i) = index_of(t, lag_ms) {
                cumulative[i][b][k] = v.max(0.0) as u64;
            }
        }
    }
    for (i, reading) in out.iter_mut().enumerate() {
        for b in 0..2 {
            if let Some(c) = counts[i][b].as_mut() {
                let cum = &cumulative[i][b];
                let mut below = 0;
                for (bucket, &upto) in c.buckets.iter_mut().zip(cum) {
                    *bucket = upto.saturating_sub(below);
                    below = below.max(upto);
                }
            }
        }
        reading.canary = counts[i][0];
        reading.baseline = counts[i][1];
    }
    for series in ended? {
        let phase = match series.labels.get("state").map(String::as_str) {
            Some("aborted") => Phase::Aborted,
            _ => Phase::RolledBack,
        };
        let run = series.labels.get("rollout").cloned().unwrap_or_default();
        for (t, v) in series.samples {
            if let (Some(i), true) = (index_of(t, lag_ms), v > 0.0) {
                out[i].ended.push((run.clone(), phase));
            }
        }
    }
    // One order whatever order Prometheus answered in; a run both rolled
    // back and aborted (on two replicas) counts as rolled back.
    for r in out.iter_mut() {
        r.ended.sort_by(|a, b| {
            a.0.cmp(&b.0)
                .then((a.1 == Phase::Aborted).cmp(&(b.1 == Phase::Aborted)))
        });
        r.ended.dedup_by(|later, first| later.0 == first.0);
    }
    for series in requested? {
        let request = series.labels.get("request").cloned().unwrap_or_default();
        for (t, v) in series.samples {
            if let (Some(i), true) = (index_of(t, lag_ms), v > 0.0) {
                match request.as_str() {
                    "pause" => out[i].paused = true,
                    "promote" => out[i].promote = true,
                    "abort" => out[i].abort = true,
                    "restart" => out[i].restart = true,
                    _ => {}
                }
            }
        }
    }
    for g in &plan.gates {
        let GateKind::Prometheus { url, query, lag } = &g.kind else {
            continue;
        };
        let gate_lag = lag.as_millis() as i64;
        let series = range_on(url, query.clone(), gate_lag).await?;
        for r in out.iter_mut() {
            r.prometheus.insert(g.name.clone(), None);
        }
        if let Some(first) = series.into_iter().next() {
            for (t, v) in first.samples {
                if let Some(i) = index_of(t, gate_lag) {
                    out[i].prometheus.insert(g.name.clone(), Some(v));
                }
            }
        }
    }
    Ok(out)
}

/// The position of an `le` label among the buckets.
pub(super) fn bucket_index(le: &str) -> Option<usize> {
    if le == "+Inf" {
        return Some(PROM_BUCKETS - 1);
    }
    let v: f64 = le.parse().ok()?;
    PROM_EDGES_NS
        .iter()
        .position(|e| ((*e as f64) - v * 1e9).abs() < 1.0)
}

/// The fleet's start tick of a rollout: the earliest any replica exported
/// within the lookback (a fleet whose every replica restarted finds it
/// too), or `None` when no replica has shown it.
pub async fn fleet_start(
    client: &PromClient,
    fleet: &FleetConfig,
    s: &Subject<'_>,
    at_ms: i64,
    lookback: bool,
) -> Result<Option<i64>, String> {
    let series = fleet.select(
        "sluice_rollout_started_timestamp_seconds",
        &format!("route=\"{}\",rollout=\"{}\"", s.route, s.id),
    );
    let q = if lookback {
        format!("min(min_over_time({series}[{START_LOOKBACK}]))")
    } else {
        format!("min({series})")
    };
    let at = (at_ms - fleet.lag.as_millis() as i64) as f64 / 1000.0;
    let v = prometheus::query(client, &fleet.prometheus, &q, at).await?;
    Ok(v.map(|secs| (secs * 1000.0).round() as i64))
}

/// The replicas Prometheus sees, by the digest of the config they serve.
pub async fn digests(
    client: &PromClient,
    fleet: &FleetConfig,
    at_ms: i64,
) -> Result<BTreeMap<String, u32>, String> {
    let q = format!(
        "count by (digest) ({})",
        fleet.select("sluice_config_info", "")
    );
    let at = (at_ms - fleet.lag.as_millis() as i64) as f64 / 1000.0;
    let step = Duration::from_secs(1);
    let series = prometheus::query_range(client, &fleet.prometheus, &q, at, at, step).await?;
    Ok(series
        .into_iter()
        .filter_map(|s| {
            let d = s.labels.get("digest")?.clone();
            let n = s.samples.last()?.1;
            Some((d, n as u32))
        })
        .collect())
}
