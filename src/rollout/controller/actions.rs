//! The route's weights as a rollout sets them, and the actions a person
//! takes through the admin API.

use super::*;

impl Rollouts {
    /// Gives the canary `share` percent of its route and the baseline the
    /// rest, through the control plane's single writer; `active` says the
    /// rollout goes on driving the route, so that a person's weights are
    /// refused until it ends.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn set_canary_share(
        &self,
        c: &Controller,
        route: &crate::table::Route,
        plan: &Plan,
        share: u32,
        active: bool,
        actor: &str,
        why: Option<&str>,
    ) -> Result<Arc<Table>, Rejection> {
        self.control.apply(
            Change::Rollout {
                route: c.route.clone(),
                fingerprint: c.fingerprint.clone(),
                weights: stage_weights(route, plan, share),
                active,
            },
            actor,
            why,
        )
    }

    /// The weights a rollout in `st` wants on its route.
    pub(super) fn publish_phase_weights(
        &self,
        c: &Controller,
        st: &RolloutState,
    ) -> Result<(), Rejection> {
        let table = self.control.current();
        let (Some(route), Some(plan)) = (table.route_named(&c.route), plan_of(&table, &c.route))
        else {
            return Ok(());
        };
        let share = match st.progress.phase {
            Phase::Pending => return Ok(()),
            Phase::Running | Phase::Paused => {
                plan.stages[st.progress.stage.min(plan.stages.len() - 1)].weight
            }
            Phase::Promoted => 100,
            Phase::RolledBack | Phase::Aborted => 0,
        };
        let active = matches!(st.progress.phase, Phase::Running | Phase::Paused);
        self.set_canary_share(c, route, &plan, share, active, "controller", None)
            .map(|_| ())
    }

    /// A manual action, journaled with its actor.
    pub fn act(&self, route: &str, action: Action, actor: &str) -> Result<(), ActionError> {
        let c = self.controller(route)?;
        let table = self.control.current();
        let plan =
            plan_of(&table, route).ok_or_else(|| ActionError::NoRollout(route.to_string()))?;
        if c.fleet_mode
            && matches!(
                action,
                Action::Pause | Action::Resume | Action::Promote | Action::Restart
            )
        {
            self.act_in_fleet(&c, &plan, &table, action)?;
            let what = format!("{action:?}").to_lowercase();
            self.control.journal.record(
                Some(route),
                &what,
                actor,
                format!("rollout {what} by hand on this replica only (a fleet acts through the shared config)"),
                serde_json::json!({ "rollout": c.fingerprint, "scope": "replica" }),
            );
            let st = c.state.lock().unwrap().clone();
            self.persist(&st);
            self.update_metrics(&c);
            c.wake.notify_one();
            return Ok(());
        }
        let phase = c.state.lock().unwrap().progress.phase;
        let not_now = |what: &str| {
            ActionError::NotNow(format!("cannot {what} a rollout that is {}", phase.label()))
        };
        match action {
            Action::Restart => {
                c.state.lock().unwrap().incident = None;
                self.begin(&c, &plan, actor, "restarted by hand");
                c.wake.notify_one();
                return Ok(());
            }
            Action::Pause if phase == Phase::Running => {
                let mut st = c.state.lock().unwrap();
                st.progress.phase = Phase::Paused;
                st.held = Some("paused".into());
                self.persist(&st);
            }
            Action::Resume if phase == Phase::Paused => {
                let mut st = c.state.lock().unwrap();
                st.progress.phase = Phase::Running;
                st.held = None;
                self.persist(&st);
                c.runtime.lock().unwrap().last_tick = None;
                c.wake.notify_one();
            }
            Action::Promote if phase == Phase::Running || phase == Phase::Paused => {
                let mut st = c.state.lock().unwrap();
                let next = st.progress.stage + 1;
                let share = if next >= plan.stages.len() {
                    100
                } else {
                    plan.stages[next].weight
                };
                let route_t = table
                    .route_named(route)
                    .ok_or_else(|| ActionError::NoRollout(route.to_string()))?;
                self.set_canary_share(
                    &c,
                    route_t,
                    &plan,
                    share,
                    next < plan.stages.len(),
                    actor,
                    Some("promoted by hand"),
                )
                .map_err(ActionError::Rejected)?;
                if next >= plan.stages.len() {
                    st.progress.phase = Phase::Promoted;
                } else {
                    st.progress.stage = next;
                    st.progress.bake_done_ms = 0;
                    // The new stage's bake starts now, not at the last tick.
                    c.runtime.lock().unwrap().last_tick = None;
                    st.progress.phase = Phase::Running;
                    st.stage_started_ms = now_ms();
                    c.runtime
                        .lock()
                        .unwrap()
                        .restart_evidence(route_t.backends[plan.canary].stats.lifetime.snapshot());
                }
                st.held = None;
                self.persist(&st);
                c.wake.notify_one();
            }
            Action::Abort if phase.active() => {
                let mut st = c.state.lock().unwrap();
                let counts = {
                    let rt = c.runtime.lock().unwrap();
                    tr_canary_lifetime(&table, route).since(&rt.stage_start)
                };
                let reason = if c.fleet_mode {
                    format!("aborted by hand ({actor}) on this replica; the fleet follows")
                } else {
                    format!("aborted by hand ({actor})")
                };
                self.roll_back(
                    &c,
                    &mut st,
                    Ending {
                        phase: Phase::Aborted,
                        kind: "manual",
                        actor,
                        reason: &reason,
                    },
                    &plan,
                    &table,
                    now_ms(),
                    counts,
                );
                self.persist(&st);
            }
            Action::Pause => return Err(not_now("pause")),
            Action::Resume => return Err(not_now("resume")),
            Action::Promote => return Err(not_now("promote")),
            Action::Abort => return Err(not_now("abort")),
        }
        let what = format!("{action:?}").to_lowercase();
        if action != Action::Abort {
            self.control.journal.record(
                Some(route),
                &what,
                actor,
                format!("rollout {what} by hand"),
                serde_json::json!({ "rollout": c.fingerprint }),
            );
        }
        self.update_metrics(&c);
        Ok(())
    }

    /// Notes that a person set weights (of one route, or all on a restore)
    /// while no rollout was driving them, so a restart leaves them alone.
    pub fn weights_set_by_hand(&self, route: Option<&str>) {
        let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        for (name, c) in routes.iter() {
            if route.is_some_and(|r| r != name) {
                continue;
            }
            let mut st = c.state.lock().unwrap();
            if !st.progress.phase.active() {
                st.weights_by_hand = true;
                self.persist(&st);
            }
        }
    }
}
