//! The decision function: a pure function of (plan, progress, judgement,
//! now) to what the controller does next. Everything that matters for a
//! rollback or an advance is decided here, so the tests drive it directly.

use std::time::Duration;

use super::gates::{GateResult, Verdict};
use super::state::{Phase, Progress};
use crate::config::plan::{OnWarning, Plan};

/// What one tick saw.
#[derive(Debug, Clone, Default)]
pub struct Judgement {
    pub gates: Vec<GateResult>,
    /// Names (and details) of smoke checks that failed at this tick.
    pub smoke_failures: Vec<String>,
}

/// What to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Nothing to decide (pending, finished).
    Idle,
    /// Stay in the stage; the bake does not progress.
    Hold(String),
    /// Stay in the stage; the bake progressed and is not done.
    Bake,
    /// Move to the next stage (its index).
    Advance(usize),
    Promote,
    Rollback {
        kind: RollbackKind,
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RollbackKind {
    Critical,
    Smoke,
    Escalate,
    Sustained,
}

impl RollbackKind {
    /// The `reason` label of `sluice_rollbacks_total`.
    pub fn label(self) -> &'static str {
        match self {
            RollbackKind::Critical => "critical",
            RollbackKind::Smoke => "smoke",
            RollbackKind::Escalate => "escalate",
            RollbackKind::Sustained => "sustained",
        }
    }
}

/// Decides, and returns the progress after the decision. `elapsed` is the
/// time since the last tick (what the bake gains if all is well); `now_ms`
/// is wall-clock unix milliseconds (windows, warnings).
pub fn decide(
    plan: &Plan,
    progress: &Progress,
    j: &Judgement,
    now_ms: i64,
    elapsed: Duration,
) -> (Decision, Progress) {
    let mut next = progress.clone();
    if !matches!(progress.phase, Phase::Running | Phase::Paused) {
        return (Decision::Idle, next);
    }
    let rollback = |kind, reason: String, mut next: Progress| {
        next.phase = Phase::RolledBack;
        (Decision::Rollback { kind, reason }, next)
    };
    // Rollback first, in any phase and any window: it is never delayed.
    if let Some(failure) = j.smoke_failures.first() {
        return rollback(RollbackKind::Smoke, format!("smoke check {failure}"), next);
    }
    if let Some(g) = j.gates.iter().find(|g| g.verdict == Verdict::Critical) {
        let reason = format!("critical gate {}: {}", g.name, describe(g));
        return rollback(RollbackKind::Critical, reason, next);
    }

    let warning = j.gates.iter().find(|g| g.verdict == Verdict::Warning);
    match warning {
        Some(g) => {
            if progress.warning_since.is_none() {
                next.warning_onsets.push(now_ms);
                next.warning_since = Some(now_ms);
            }
            if let Some((n, within)) = plan.escalate {
                let since = now_ms - within.as_millis() as i64;
                next.warning_onsets.retain(|t| *t > since);
                if next.warning_onsets.len() as u64 >= n {
                    let reason = format!(
                        "{} warnings within {} (last: {} {})",
                        next.warning_onsets.len(),
                        crate::config::duration::format(within),
                        g.name,
                        describe(g)
                    );
                    return rollback(RollbackKind::Escalate, reason, next);
                }
            }
            if let (Some(limit), Some(since)) = (plan.sustained, next.warning_since) {
                if now_ms - since >= limit.as_millis() as i64 {
                    let reason = format!(
                        "warning held for {}: {} {}",
                        crate::config::duration::format(limit),
                        g.name,
                        describe(g)
                    );
                    return rollback(RollbackKind::Sustained, reason, next);
                }
            }
        }
        None => next.warning_since = None,
    }

    if progress.phase == Phase::Paused {
        return (Decision::Hold("paused".into()), next);
    }
    if let (Some(g), OnWarning::Pause) = (warning, plan.on_warning) {
        return (
            Decision::Hold(format!("warning on {}: {}", g.name, describe(g))),
            next,
        );
    }
    if let Some(g) = j.gates.iter().find(|g| g.verdict == Verdict::Inconclusive) {
        return (
            Decision::Hold(format!("inconclusive: {}: {}", g.name, g.detail)),
            next,
        );
    }

    let stage = plan.stages[progress.stage.min(plan.stages.len() - 1)];
    next.bake_done_ms = progress
        .bake_done_ms
        .saturating_add(elapsed.as_millis() as u64);
    if next.bake_done_ms < stage.bake.as_millis() as u64 {
        return (Decision::Bake, next);
    }
    let now = jiff::Timestamp::from_millisecond(now_ms).unwrap_or_else(|_| jiff::Timestamp::now());
    if !plan.window_open(now) {
        next.bake_done_ms = stage.bake.as_millis() as u64;
        return (
            Decision::Hold("baked; waiting for a deployment window".into()),
            next,
        );
    }
    next.bake_done_ms = 0;
    next.warning_onsets.clear();
    next.warning_since = None;
    if progress.stage + 1 >= plan.stages.len() {
        next.phase = Phase::Promoted;
        (Decision::Promote, next)
    } else {
        next.stage = progress.stage + 1;
        (Decision::Advance(next.stage), next)
    }
}

fn describe(g: &GateResult) -> String {
    let value = g
        .value
        .map_or("-".to_string(), |v| format!("{v}{}", g.unit));
    let line = match g.verdict {
        Verdict::Critical => &g.critical,
        _ => &g.warning,
    };
    match line {
        Some(l) => format!("{value} (line: {} {}{})", l.bad, l.value, g.unit),
        None => value,
    }
}

#[cfg(test)]
mod tests;
