//! Ending a rollout in a rollback or an abort, and what it journals: the
//! incident, the gates' changes of verdict, failed smoke checks.

use super::*;

impl Rollouts {
    /// All weight to the baseline, now, and the incident recorded.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn roll_back(
        &self,
        c: &Controller,
        st: &mut RolloutState,
        end: Ending<'_>,
        plan: &Plan,
        table: &Table,
        detected_ms: i64,
        stage_counts: Snapshot,
    ) {
        let Ending {
            phase,
            kind,
            actor,
            reason,
        } = end;
        let Some(route) = table.route_named(&c.route) else {
            return;
        };
        let decided_ms = now_ms();
        let t = Instant::now();
        let result = self.set_canary_share(c, route, plan, 0, false, "controller", Some(reason));
        let swap_us = t.elapsed().as_micros() as u64;
        let completed_ms = now_ms();
        let version = match result {
            Ok(t) => t.version,
            Err(e) => {
                tracing::error!(route = %c.route, error = %e, "rollback refused");
                self.control.current().version
            }
        };
        st.progress.phase = phase;
        st.held = None;
        let stage = st.progress.stage.min(plan.stages.len() - 1);
        let incident = Incident {
            route: c.route.clone(),
            rollout: c.run_id(),
            baseline: route.backends[plan.baseline].name.to_string(),
            canary: route.backends[plan.canary].name.to_string(),
            canary_url: route.backends[plan.canary].url(),
            reason: reason.to_string(),
            reason_kind: kind.to_string(),
            stage,
            stage_weight: plan.stages[stage].weight,
            rollout_started_ms: st.started_ms,
            stage_started_ms: st.stage_started_ms,
            first_warning_ms: st.first_warning_ms,
            detected_ms,
            decided_ms,
            completed_ms,
            swap_us,
            gates: st.gates.clone(),
            smoke_failures: smoke_failures(&st.smoke),
            canary_requests: stage_counts.requests(),
            canary_failures: stage_counts.failures(),
            table_version: version,
        };
        self.control
            .metrics
            .counter(
                "sluice_rollbacks_total",
                vec![
                    metrics::Label::new("route", c.route.clone()),
                    metrics::Label::new("reason", kind.to_string()),
                ],
            )
            .increment(1);
        self.control.journal.record(
            Some(&c.route),
            phase.label(),
            actor,
            format!("rolled back to {}: {reason}", incident.baseline),
            serde_json::json!({
                "rollout": c.run_id(),
                "reason": kind,
                "detected_ms": detected_ms, "decided_ms": decided_ms, "completed_ms": completed_ms,
                "swap_us": swap_us, "table_version": version,
                "gates": st.gates, "smoke": st.smoke,
                "canary_requests": incident.canary_requests, "canary_failures": incident.canary_failures,
            }),
        );
        st.incident = Some(incident);
    }

    pub(super) fn journal_changes(
        &self,
        c: &Controller,
        st: &RolloutState,
        gates: &[GateResult],
        smoke: &[SmokeResult],
    ) {
        for g in gates {
            let before = st
                .gates
                .iter()
                .find(|b| b.name == g.name)
                .map(|b| b.verdict);
            if before != Some(g.verdict) && !(before.is_none() && g.verdict == Verdict::Pass) {
                self.control.journal.record(
                    Some(&c.route),
                    "gate_verdict",
                    "controller",
                    format!(
                        "gate {}: {} → {:?} ({})",
                        g.name,
                        before.map_or("none".into(), |v| format!("{v:?}")),
                        g.verdict,
                        g.value.map_or("-".into(), |v| format!("{v}{}", g.unit))
                    ),
                    serde_json::to_value(g).unwrap_or_default(),
                );
            }
        }
        self.journal_smoke_failures(c, smoke);
    }

    pub(super) fn journal_smoke_failures(&self, c: &Controller, smoke: &[SmokeResult]) {
        for s in smoke.iter().filter(|s| !s.ok) {
            self.control.journal.record(
                Some(&c.route),
                "smoke_failed",
                "controller",
                format!("smoke check \"{}\" failed: {}", s.name, s.detail),
                serde_json::to_value(s).unwrap_or_default(),
            );
        }
    }
}
