//! A plan's gates: each line checked, Prometheus gates' URLs and lags.

use super::*;

pub(super) fn gates(g: Option<&raw::Gates>, c: &mut Ctx) -> Vec<Gate> {
    let Some(g) = g else { return Vec::new() };
    let mut out = Vec::new();
    let mut push =
        |c: &mut Ctx, name: &str, kind: GateKind, warning: Option<Line>, critical: Option<Line>| {
            if warning.is_none() && critical.is_none() {
                c.problem(
                    &format!("gates.{name}"),
                    "give a warning line, a critical line, or both",
                );
                return;
            }
            out.push(Gate {
                name: name.to_string(),
                kind,
                warning,
                critical,
            });
        };
    if let Some(l) = &g.success_rate {
        let check = |c: &mut Ctx, which: &str, v: Option<f64>| {
            v.map(|v| {
                if !(0.0..=100.0).contains(&v) {
                    c.problem(
                        &format!("gates.success_rate.{which}"),
                        format!("{v} is not a percentage"),
                    );
                }
                Line::Below(v)
            })
        };
        let (w, cr) = (
            check(c, "warning", l.warning),
            check(c, "critical", l.critical),
        );
        if let (Some(w), Some(cr)) = (w, cr) {
            if cr.value() > w.value() {
                c.problem(
                    "gates.success_rate",
                    "the critical line must not be stricter than the warning line",
                );
            }
        }
        push(c, "success_rate", GateKind::SuccessRate, w, cr);
    }
    for (name, q, lines) in [
        ("latency_p50", 0.5, &g.latency_p50),
        ("latency_p95", 0.95, &g.latency_p95),
        ("latency_p99", 0.99, &g.latency_p99),
    ] {
        if let Some(l) = lines {
            let mut line = |which: &str, v: &Option<String>| {
                v.as_deref().map(|t| {
                    Line::Above(
                        c.duration(
                            &format!("gates.{name}.{which}"),
                            Some(t),
                            Duration::from_secs(1),
                        )
                        .as_secs_f64()
                            * 1000.0,
                    )
                })
            };
            let (w, cr) = (line("warning", &l.warning), line("critical", &l.critical));
            push(c, name, GateKind::Latency { quantile: q }, w, cr);
        }
    }
    for (name, kind, lines) in [
        (
            "latency_p50_vs_baseline",
            GateKind::LatencyVsBaseline { quantile: 0.5 },
            &g.latency_p50_vs_baseline,
        ),
        (
            "latency_p95_vs_baseline",
            GateKind::LatencyVsBaseline { quantile: 0.95 },
            &g.latency_p95_vs_baseline,
        ),
        (
            "latency_p99_vs_baseline",
            GateKind::LatencyVsBaseline { quantile: 0.99 },
            &g.latency_p99_vs_baseline,
        ),
        (
            "error_rate_vs_baseline",
            GateKind::ErrorRateVsBaseline,
            &g.error_rate_vs_baseline,
        ),
    ] {
        if let Some(l) = lines {
            let mut ratio = |which: &str, v: Option<f64>| {
                v.map(|v| {
                    if v < 1.0 {
                        c.problem(
                            &format!("gates.{name}.{which}"),
                            format!("{v} is below 1: the baseline itself would fail it"),
                        );
                    }
                    Line::Above(v)
                })
            };
            let (w, cr) = (ratio("warning", l.warning), ratio("critical", l.critical));
            push(c, name, kind, w, cr);
        }
    }
    for (i, pg) in g.prometheus.iter().enumerate() {
        let base = format!("gates.prometheus[{i}]");
        let url_ok = pg
            .url
            .parse::<http::Uri>()
            .is_ok_and(|u| u.scheme_str() == Some("http") && u.authority().is_some());
        if !url_ok {
            c.problem(
                &format!("{base}.url"),
                format!(
                    "\"{}\" is not an http:// URL of a Prometheus server",
                    pg.url
                ),
            );
        }
        if pg.query.trim().is_empty() {
            c.problem(&format!("{base}.query"), "is empty");
        }
        let mut bound = |which: &str, b: &Option<raw::Bound>| match b {
            None => None,
            Some(raw::Bound {
                below: Some(v),
                above: None,
            }) => Some(Line::Below(*v)),
            Some(raw::Bound {
                below: None,
                above: Some(v),
            }) => Some(Line::Above(*v)),
            Some(_) => {
                c.problem(
                    &format!("{base}.{which}"),
                    "give exactly one of below or above",
                );
                None
            }
        };
        let (w, cr) = (
            bound("warning", &pg.warning),
            bound("critical", &pg.critical),
        );
        // A zero lag is allowed: a server that scrapes often has fresh data.
        let lag = match pg.lag.as_deref().map(duration::parse) {
            None => Duration::from_secs(30),
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                c.problem(&format!("{base}.lag"), e);
                Duration::from_secs(30)
            }
        };
        let kind = GateKind::Prometheus {
            url: pg.url.trim_end_matches('/').to_string(),
            query: pg.query.clone(),
            lag,
        };
        if pg.warning.is_none() && pg.critical.is_none() {
            c.problem(&base, "give a warning bound, a critical bound, or both");
        } else if w.is_some() || cr.is_some() {
            out.push(Gate {
                name: pg.name.clone(),
                kind,
                warning: w,
                critical: cr,
            });
        }
    }
    out
}
