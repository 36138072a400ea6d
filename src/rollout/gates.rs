//! Judging a canary by its plan's gates.
//!
//! Warnings compare the point estimate over the last `window` with the
//! warning line. Criticals need confidence: the share of bad requests
//! (failures, or responses slower than a line) must exceed what the
//! critical line allows by the anytime-valid test in [`super::sequential`],
//! over the evidence since the stage started or since any later checkpoint.

use serde::{Deserialize, Serialize};

use super::sequential;
use crate::config::plan::{Gate, GateKind, Line, Plan};
use crate::stats::{Class, Snapshot};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    Warning,
    Critical,
    /// Too little data to say anything: no advance, no rollback.
    Inconclusive,
}

/// One gate's reading at one tick, as `/status`, the journal and the
/// incident report show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateResult {
    pub name: String,
    /// The point estimate over the window, in `unit`.
    pub value: Option<f64>,
    pub unit: String,
    pub warning: Option<LineView>,
    pub critical: Option<LineView>,
    pub verdict: Verdict,
    /// What the verdict rests on, in words.
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LineView {
    /// `below` or `above`: the side where the value is bad.
    pub bad: String,
    pub value: f64,
}

impl From<Line> for LineView {
    fn from(l: Line) -> Self {
        match l {
            Line::Below(v) => LineView {
                bad: "below".into(),
                value: v,
            },
            Line::Above(v) => LineView {
                bad: "above".into(),
                value: v,
            },
        }
    }
}

/// What the gates are judged on at one tick.
pub struct Evidence<'a> {
    /// The last `window` of the canary and of the baseline.
    pub canary: &'a Snapshot,
    pub baseline: &'a Snapshot,
    /// The canary's evidence since each open test started: (test number, counts).
    pub tests: &'a [(u32, Snapshot)],
    /// Prometheus gate values by gate name; `None` when the query returned nothing.
    pub prometheus: &'a dyn Fn(&str) -> Option<f64>,
}

fn responses(s: &Snapshot) -> u64 {
    s.requests() - s.count(Class::Error)
}

/// Judges every gate of `plan`.
pub fn judge(plan: &Plan, ev: &Evidence) -> Vec<GateResult> {
    plan.gates.iter().map(|g| judge_one(plan, g, ev)).collect()
}

fn judge_one(plan: &Plan, gate: &Gate, ev: &Evidence) -> GateResult {
    let mut r = GateResult {
        name: gate.name.clone(),
        value: None,
        unit: String::new(),
        warning: gate.warning.map(Into::into),
        critical: gate.critical.map(Into::into),
        verdict: Verdict::Inconclusive,
        detail: String::new(),
    };
    let enough = ev.canary.requests() >= plan.min_requests;
    let confident = |bad_of: &dyn Fn(&Snapshot) -> (u64, u64), p0: f64| {
        ev.tests.iter().any(|(k, s)| {
            let (bad, n) = bad_of(s);
            sequential::exceeds(bad, n, p0, plan.confidence, *k)
        })
    };
    let point = |value: f64, r: &mut GateResult, critical: bool| {
        r.value = Some(round(value));
        r.verdict = if critical {
            Verdict::Critical
        } else if gate.warning.is_some_and(|w| w.crossed_by(value)) {
            Verdict::Warning
        } else {
            Verdict::Pass
        };
    };
    let too_few = |r: &mut GateResult| {
        r.detail = format!(
            "{} canary requests in the window, {} needed",
            ev.canary.requests(),
            plan.min_requests
        );
    };
    match &gate.kind {
        GateKind::SuccessRate => {
            r.unit = "%".into();
            if let Some(rate) = ev.canary.success_rate() {
                r.value = Some(round(rate * 100.0));
            }
            if !enough {
                too_few(&mut r);
                return r;
            }
            let rate = ev.canary.success_rate().unwrap_or(1.0) * 100.0;
            let critical = gate.critical.is_some_and(|c| {
                let p0 = 1.0 - c.value() / 100.0;
                confident(&|s: &Snapshot| (s.failures(), s.requests()), p0)
            });
            point(rate, &mut r, critical);
            r.detail = format!(
                "{} of {} canary requests failed in the window",
                ev.canary.failures(),
                ev.canary.requests()
            );
        }
        GateKind::Latency { quantile } => {
            r.unit = "ms".into();
            let q = ev
                .canary
                .quantile(*quantile)
                .map(|d| d.as_secs_f64() * 1000.0);
            r.value = q.map(round);
            let (true, Some(q)) = (enough, q) else {
                too_few(&mut r);
                return r;
            };
            let critical = gate.critical.is_some_and(|c| {
                let limit = std::time::Duration::from_secs_f64(c.value() / 1000.0);
                confident(
                    &|s: &Snapshot| (s.slower_than(limit), responses(s)),
                    1.0 - quantile,
                )
            });
            point(q, &mut r, critical);
            r.detail = format!(
                "p{} over {} canary responses",
                (quantile * 100.0).round(),
                responses(ev.canary)
            );
        }
        GateKind::LatencyVsBaseline { quantile } => {
            r.unit = "x".into();
            let c = ev.canary.quantile(*quantile);
            let b = ev.baseline.quantile(*quantile);
            let (Some(c), Some(b)) = (c, b) else {
                too_few(&mut r);
                return r;
            };
            let b_ms = (b.as_secs_f64() * 1000.0).max(0.001);
            let ratio = c.as_secs_f64() * 1000.0 / b_ms;
            r.value = Some(round(ratio));
            if !enough || ev.baseline.requests() < plan.min_requests {
                too_few(&mut r);
                r.detail
                    .push_str(&format!(" (baseline: {})", ev.baseline.requests()));
                return r;
            }
            let critical = gate.critical.is_some_and(|line| {
                let limit = std::time::Duration::from_secs_f64(b_ms * line.value() / 1000.0);
                confident(
                    &|s: &Snapshot| (s.slower_than(limit), responses(s)),
                    1.0 - quantile,
                )
            });
            point(ratio, &mut r, critical);
            r.detail = format!(
                "canary p{q} {:.3} ms against baseline {:.3} ms",
                c.as_secs_f64() * 1000.0,
                b_ms,
                q = (quantile * 100.0).round()
            );
        }
        GateKind::ErrorRateVsBaseline => {
            r.unit = "x".into();
            let (cf, cn) = (ev.canary.failures(), ev.canary.requests());
            let (bf, bn) = (ev.baseline.failures(), ev.baseline.requests());
            if cn == 0 || bn == 0 {
                too_few(&mut r);
                return r;
            }
            // One failure's worth at least, so a clean baseline gives a
            // finite ratio; 0 vs 0 is 0 and passes.
            let base_rate = (bf as f64 / bn as f64).max(1.0 / bn as f64);
            let ratio = (cf as f64 / cn as f64) / base_rate;
            r.value = Some(round(ratio));
            if !enough || bn < plan.min_requests {
                too_few(&mut r);
                return r;
            }
            let critical = gate.critical.is_some_and(|line| {
                // Judge against the baseline's rate with one extra failure,
                // so noise in a small baseline does not trip it.
                let p0 = (line.value() * (bf as f64 + 1.0) / bn as f64).min(1.0);
                confident(&|s: &Snapshot| (s.failures(), s.requests()), p0)
            });
            point(ratio, &mut r, critical);
            r.detail = format!("canary {cf}/{cn} failed, baseline {bf}/{bn}");
        }
        GateKind::Prometheus { query, .. } => {
            r.unit = String::new();
            match (ev.prometheus)(&gate.name) {
                None => r.detail = format!("no value for {query}"),
                Some(v) => {
                    let critical = gate.critical.is_some_and(|c| c.crossed_by(v));
                    point(v, &mut r, critical);
                    r.detail = format!("{query} = {v}");
                }
            }
        }
    }
    r
}

fn round(v: f64) -> f64 {
    if v.is_finite() {
        (v * 1000.0).round() / 1000.0
    } else {
        v
    }
}
