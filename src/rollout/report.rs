//! The incident report: a markdown postmortem draft for a route's latest
//! rollback, written from what the controller recorded when it happened.

use std::fmt::Write;

use super::state::Incident;

fn time(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map_or_else(|_| ms.to_string(), |t| format!("{t:.3}"))
}

fn span(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1_000 {
        format!("{ms} ms")
    } else if ms < 120_000 {
        format!("{:.3} s", ms as f64 / 1000.0)
    } else if ms < 7_200_000 {
        format!("{:.1} min", ms as f64 / 60_000.0)
    } else {
        format!("{:.1} h", ms as f64 / 3_600_000.0)
    }
}

/// Renders the report.
pub fn render(i: &Incident) -> String {
    let mut o = String::new();
    let day = time(i.decided_ms).get(..10).unwrap_or("").to_string();
    let _ = writeln!(
        o,
        "# Incident: canary `{}` of route `{}` rolled back",
        i.canary, i.route
    );
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "*Draft written by sluice. Fill in the root cause and the action items.*"
    );
    let _ = writeln!(o);
    let _ = writeln!(o, "## Summary");
    let _ = writeln!(o);
    let _ = writeln!(o, "| | |");
    let _ = writeln!(o, "|---|---|");
    let _ = writeln!(o, "| date | {day} |");
    let _ = writeln!(o, "| route | `{}` |", i.route);
    if !i.rollout.is_empty() {
        let _ = writeln!(o, "| rollout | `{}` |", i.rollout);
    }
    let _ = writeln!(o, "| canary | `{}` ({}) |", i.canary, i.canary_url);
    let _ = writeln!(o, "| baseline | `{}` |", i.baseline);
    let _ = writeln!(
        o,
        "| stage at rollback | {} (canary weight {} %) |",
        i.stage + 1,
        i.stage_weight
    );
    let _ = writeln!(o, "| cause | {} |", i.reason);
    let _ = writeln!(
        o,
        "| rollout start to rollback | {} |",
        span(i.completed_ms - i.rollout_started_ms)
    );
    let _ = writeln!(
        o,
        "| rollback level | level 1: all weight to `{}` in one atomic table swap (version {}); no restart, no redeploy |",
        i.baseline, i.table_version
    );
    let _ = writeln!(
        o,
        "| recovery time | {} from detection to the swap (the swap itself: {} µs) |",
        span(i.completed_ms - i.detected_ms),
        i.swap_us
    );
    let _ = writeln!(
        o,
        "| users affected | {} canary requests in this stage, {} of them failed ({}) |",
        i.canary_requests,
        i.canary_failures,
        if i.canary_requests > 0 {
            format!(
                "{:.2} %",
                i.canary_failures as f64 * 100.0 / i.canary_requests as f64
            )
        } else {
            "-".into()
        }
    );
    let _ = writeln!(o);
    let _ = writeln!(o, "## Timeline (UTC)");
    let _ = writeln!(o);
    let _ = writeln!(o, "| time | event |");
    let _ = writeln!(o, "|---|---|");
    let mut rows = vec![(i.rollout_started_ms, "rollout started".to_string())];
    if i.stage_started_ms != i.rollout_started_ms {
        rows.push((
            i.stage_started_ms,
            format!(
                "stage {} started (canary weight {} %)",
                i.stage + 1,
                i.stage_weight
            ),
        ));
    }
    if let Some(w) = i.first_warning_ms {
        rows.push((w, "first warning".into()));
    }
    rows.push((i.detected_ms, format!("critical detected: {}", i.reason)));
    rows.push((i.decided_ms, "rollback decided".into()));
    rows.push((
        i.completed_ms,
        format!(
            "rollback completed: table version {} serving",
            i.table_version
        ),
    ));
    rows.sort_by_key(|r| r.0);
    for (t, what) in rows {
        let _ = writeln!(o, "| {} | {what} |", time(t));
    }
    let _ = writeln!(o);
    let _ = writeln!(o, "## Gates at detection");
    let _ = writeln!(o);
    if i.gates.is_empty() {
        let _ = writeln!(o, "No metric gates.");
    } else {
        let _ = writeln!(o, "| gate | value | warning | critical | verdict | basis |");
        let _ = writeln!(o, "|---|---|---|---|---|---|");
        for g in &i.gates {
            let line = |l: &Option<super::gates::LineView>| {
                l.as_ref().map_or("-".to_string(), |l| {
                    format!("{} {}{}", l.bad, l.value, g.unit)
                })
            };
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {:?} | {} |",
                g.name,
                g.value.map_or("-".into(), |v| format!("{v}{}", g.unit)),
                line(&g.warning),
                line(&g.critical),
                g.verdict,
                g.detail
            );
        }
    }
    if !i.smoke_failures.is_empty() {
        let _ = writeln!(o);
        let _ = writeln!(o, "## Failed smoke checks");
        let _ = writeln!(o);
        for s in &i.smoke_failures {
            let _ = writeln!(o, "- {s}");
        }
    }
    let _ = writeln!(o);
    let _ = writeln!(o, "## Root cause");
    let _ = writeln!(o);
    let _ = writeln!(o, "_To be written._");
    let _ = writeln!(o);
    let _ = writeln!(o, "## Action items");
    let _ = writeln!(o);
    let _ = writeln!(o, "- [ ] _To be written._");
    o
}
