//! What the rollouts show: `/status`, the incident report, the metrics
//! and the state file.

use super::*;

impl Rollouts {
    pub(super) fn persist(&self, st: &RolloutState) {
        let Some(path) = self.state_path(&st.route) else {
            return;
        };
        let bytes = serde_json::to_vec_pretty(st).expect("rollout state serializes");
        if let Err(e) = crate::state::write_atomic(&path, &bytes) {
            tracing::error!(error = %e, path = %path.display(), "cannot persist rollout state");
        }
    }

    pub(super) fn update_metrics(&self, c: &Controller) {
        let st = c.state.lock().unwrap();
        let m = &self.control.metrics;
        let route = metrics::Label::new("route", c.route.clone());
        let stage = if matches!(st.progress.phase, Phase::Running | Phase::Paused) {
            st.progress.stage as f64 + 1.0
        } else {
            0.0
        };
        m.gauge("sluice_rollout_stage", vec![route.clone()])
            .set(stage);
        for p in Phase::ALL {
            m.gauge(
                "sluice_rollout_state",
                vec![route.clone(), metrics::Label::new("state", p.label())],
            )
            .set(if p == st.progress.phase { 1.0 } else { 0.0 });
        }
    }

    /// The incident report of the route's latest rollback.
    pub fn report(&self, route: &str) -> Result<Option<String>, ActionError> {
        let c = self.controller(route)?;
        let st = c.state.lock().unwrap();
        Ok(st.incident.as_ref().map(report::render))
    }

    /// The rollout part of `/status`.
    pub fn view(&self, route: &str) -> Option<RolloutView> {
        let c = self.controller(route).ok()?;
        let table = self.control.current();
        let plan = plan_of(&table, route)?;
        let fleet = self.fleet_view(&c);
        let st = c.state.lock().unwrap();
        let stage = st.progress.stage.min(plan.stages.len() - 1);
        let bake = plan.stages[stage].bake;
        Some(RolloutView {
            id: c.run_id(),
            fleet,
            state: st.progress.phase.label().to_string(),
            stage: stage + 1,
            stages: plan.stages.len(),
            canary_weight: plan.stages[stage].weight,
            bake_seconds: bake.as_secs_f64(),
            baked_seconds: st.progress.bake_done_ms as f64 / 1000.0,
            bake_left_seconds: (bake.as_millis() as f64 - st.progress.bake_done_ms as f64).max(0.0)
                / 1000.0,
            held: st.held.clone(),
            started: jiff::Timestamp::from_millisecond(st.started_ms)
                .map(|t| format!("{t:.3}"))
                .unwrap_or_default(),
            gates: st.gates.clone(),
            smoke: st.smoke.clone(),
            last_rollback: st.incident.as_ref().map(|i| i.reason.clone()),
        })
    }

    /// Appends the rollouts' info series to a `/metrics` exposition:
    /// `sluice_rollout_info` (what each replica's rollout is, by id, for the
    /// fleet to follow), `sluice_rollout_started_timestamp_seconds` (its
    /// first tick, for a joining replica) and `sluice_rollout_requested`
    /// (what this replica's config asks of it, for the fleet to apply at
    /// one tick).
    pub fn render_metrics(&self, out: &mut String, table: &Table) {
        use std::fmt::Write as _;
        let routes: Vec<Arc<Controller>> = {
            let r = self.routes.lock().unwrap_or_else(|e| e.into_inner());
            let mut v: Vec<_> = r.values().cloned().collect();
            v.sort_by(|a, b| a.route.cmp(&b.route));
            v
        };
        let mut info = String::new();
        let mut started = String::new();
        let mut requested = String::new();
        for c in &routes {
            let st = c.state.lock().unwrap().clone();
            let stage = if matches!(st.progress.phase, Phase::Running | Phase::Paused) {
                st.progress.stage + 1
            } else {
                0
            };
            let labels = format!("route=\"{}\",rollout=\"{}\"", c.route, c.fingerprint);
            let _ = writeln!(
                info,
                "sluice_rollout_info{{route=\"{}\",rollout=\"{}\",stage=\"{stage}\",state=\"{}\"}} 1",
                c.route,
                c.run_id(),
                st.progress.phase.label()
            );
            // Only a fleet's first tick: it is what joining replicas look
            // for, and it lies on the grid.
            let t0 = if c.fleet_mode {
                c.fleet.lock().unwrap().track.as_ref().map(|t| t.t0_ms)
            } else {
                None
            };
            if let Some(t0) = t0 {
                let _ = writeln!(
                    started,
                    "sluice_rollout_started_timestamp_seconds{{{labels}}} {}",
                    t0 as f64 / 1000.0
                );
            }
            if let Some(plan) = plan_of(table, &c.route) {
                let asks = [
                    ("pause", plan.paused),
                    ("promote", plan.action == Some(ConfigAction::Promote)),
                    ("abort", plan.action == Some(ConfigAction::Abort)),
                    ("restart", plan.action == Some(ConfigAction::Restart)),
                ];
                for (request, _) in asks.iter().filter(|(_, on)| *on) {
                    let _ = writeln!(
                        requested,
                        "sluice_rollout_requested{{{labels},request=\"{request}\"}} 1"
                    );
                }
            }
        }
        for (name, kind, help, body) in [
            ("sluice_rollout_info", "gauge", "The rollout of each route: its id, stage (1-based, 0 when not running) and state; always 1.", info),
            ("sluice_rollout_started_timestamp_seconds", "gauge", "When each fleet rollout began (its first tick on the grid), seconds since the epoch; labelled with the rollout's id before any restart.", started),
            ("sluice_rollout_requested", "gauge", "What this replica's config asks of a rollout (pause, promote, abort, restart); always 1.", requested),
        ] {
            let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{body}");
        }
    }
}
