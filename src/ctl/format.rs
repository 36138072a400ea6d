//! What `sluice ctl` prints: a status, a rollout, bars and durations in
//! human units.

use super::*;

/// `[#####.....]` for a fraction.
pub(super) fn bar(fraction: f64, width: usize) -> String {
    let filled = ((fraction.clamp(0.0, 1.0) * width as f64).round() as usize).min(width);
    format!("[{}{}]", "#".repeat(filled), ".".repeat(width - filled))
}

pub(super) fn seconds(s: f64) -> String {
    crate::config::duration::format(Duration::from_millis((s * 1000.0) as u64))
}

pub(super) fn format_rollout(out: &mut String, r: &crate::rollout::controller::RolloutView) {
    out.push_str(&format!(
        "  rollout {} · stage {}/{} {} canary {} %\n",
        r.state,
        r.stage,
        r.stages,
        bar(r.stage as f64 / r.stages as f64, r.stages.max(1) * 4),
        r.canary_weight
    ));
    if r.state == "running" || r.state == "paused" {
        out.push_str(&format!(
            "  bake {} {} of {} ({} left)\n",
            bar(r.baked_seconds / r.bake_seconds.max(0.001), 20),
            seconds(r.baked_seconds),
            seconds(r.bake_seconds),
            seconds(r.bake_left_seconds)
        ));
    }
    if let Some(h) = &r.held {
        out.push_str(&format!("  held: {h}\n"));
    }
    if let Some(f) = &r.fleet {
        out.push_str(&format!(
            "  fleet: rollout {} since {}, evidence {}{}\n",
            r.id,
            f.started.as_deref().unwrap_or("-"),
            f.evidence,
            f.local.as_ref().map_or(String::new(), |l| format!("; {l}"))
        ));
    }
    if let Some(rb) = &r.last_rollback {
        out.push_str(&format!("  last rollback: {rb}\n"));
    }
    for g in &r.gates {
        let line = |l: &Option<crate::rollout::gates::LineView>| {
            l.as_ref().map_or("-".to_string(), |l| {
                format!("{} {}{}", l.bad, l.value, g.unit)
            })
        };
        out.push_str(&format!(
            "  gate {:<26} {:>10}  warning {:<14} critical {:<14} {:?}\n",
            g.name,
            g.value.map_or("-".into(), |v| format!("{v}{}", g.unit)),
            line(&g.warning),
            line(&g.critical),
            g.verdict
        ));
    }
    for sm in &r.smoke {
        out.push_str(&format!(
            "  smoke {:<25} {} ({})\n",
            sm.name,
            if sm.ok { "ok" } else { "FAILED" },
            sm.detail
        ));
    }
}

pub(super) fn opt(v: Option<f64>, unit: &str) -> String {
    v.map_or_else(|| "-".to_string(), |x| format!("{x}{unit}"))
}

/// The status as a table a person reads.
pub fn format_status(s: &Status) -> String {
    let mut out = format!(
        "sluice {} · table version {} · last {}s\n",
        s.version, s.config_version, s.window_seconds
    );
    if let Some(f) = &s.fleet {
        let seen: Vec<String> = f.digests.iter().map(|(d, n)| format!("{d} ×{n}")).collect();
        out.push_str(&format!(
            "fleet {} · {} replicas · config {} ({})\n",
            f.selector,
            f.replicas.map_or("?".into(), |n| n.to_string()),
            f.digest,
            if f.agreed {
                "every replica serves it".to_string()
            } else {
                format!("replicas serve: {}", seen.join(", "))
            }
        ));
        if let Some(e) = &f.error {
            out.push_str(&format!("fleet: Prometheus: {e}\n"));
        }
    }
    for r in &s.routes {
        out.push_str(&format!(
            "\nroute {} (baseline {}{})\n",
            r.name,
            r.baseline,
            r.sticky
                .as_ref()
                .map(|k| format!(", sticky on {k}"))
                .unwrap_or_default()
        ));
        out.push_str(&format!(
            "  {:<16} {:>6} {:>7} {:>8} {:>9} {:>9} {:>9} {:>9}\n",
            "BACKEND", "WEIGHT", "SHARE", "REQS", "SUCCESS", "P50", "P95", "P99"
        ));
        for b in &r.backends {
            out.push_str(&format!(
                "  {:<16} {:>6} {:>6.1}% {:>8} {:>9} {:>9} {:>9} {:>9}\n",
                b.name,
                b.weight,
                b.share,
                b.requests,
                opt(b.success_rate, "%"),
                opt(b.p50_ms, "ms"),
                opt(b.p95_ms, "ms"),
                opt(b.p99_ms, "ms")
            ));
        }
        if let Some(rollout) = &r.rollout {
            format_rollout(&mut out, rollout);
        }
    }
    out
}
