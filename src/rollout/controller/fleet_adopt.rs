//! A fleet replica taking the fleet's state as its own (its weights, its
//! phase, its journal), and a person's actions on one replica of a fleet.

use super::fleet_tick::unavailable_held;
use super::*;
use crate::rollout::fleet::Step;

impl Rollouts {
    /// Brings this replica to the fleet's state: its weights, its phase,
    /// its journal; unless it ended the rollout itself or a person holds it.
    pub(super) fn adopt(
        &self,
        c: &Controller,
        plan: &Plan,
        table: &Table,
        tick: i64,
        joined: bool,
        steps: &[Step],
    ) {
        let Some(route) = table.route_named(&c.route) else {
            return;
        };
        let mut f = c.fleet.lock().unwrap();
        let Some(track) = f.track.as_ref() else {
            return;
        };
        let t0 = track.t0_ms;
        let progress = track.progress.clone();
        let gates = track.gates.clone();
        let held = track.held.clone();
        let (stage_started_ms, first_warning_ms) = (track.stage_started_ms, track.first_warning_ms);
        let generation = track.generation;
        let mut st = c.state.lock().unwrap();
        st.fleet_t0_ms = Some(t0);
        let fleet_active = progress.phase.active();
        let restarted = generation != f.generation;
        if restarted {
            // A new run through the config: what this replica did apart
            // from the fleet belonged to the old one.
            f.generation = generation;
            f.local_ended = false;
            f.local_ahead = None;
            f.local_paused = false;
            f.published = None;
            st.progress.phase = Phase::Pending;
        }
        if !st.progress.phase.active() && fleet_active && f.local_ahead.is_none() {
            f.local_ended = true;
        }
        if f.local_ended {
            return;
        }
        if f.local_ahead
            .is_some_and(|a| progress.stage >= a || !fleet_active)
        {
            f.local_ahead = None;
            // Promoted by hand past the last stage: back with the fleet.
            if st.progress.phase == Phase::Promoted {
                st.progress.phase = Phase::Running;
            }
        }
        st.gates = gates;
        if f.local_ahead.is_some() {
            st.held = Some("ahead of the fleet: promoted by hand on this replica".into());
            return;
        }
        if f.local_paused && fleet_active {
            st.progress.phase = Phase::Paused;
            st.held = Some(
                "paused by hand on this replica; the fleet goes on (resume to rejoin it)".into(),
            );
            return;
        }
        let before = (st.progress.phase, st.progress.stage);
        let after = (progress.phase, progress.stage);
        // A replica that joins a fleet whose rollout had already ended
        // takes its weights and says so: no incident of its own.
        let ended_before_it_came = before.0 == Phase::Pending && joined;
        if matches!(after.0, Phase::RolledBack | Phase::Aborted)
            && before.0 != after.0
            && !ended_before_it_came
        {
            let (kind, reason) = match steps.iter().rev().find_map(|s| match s {
                Step::RolledBack { kind, reason } => Some((*kind, reason.clone())),
                Step::Followed(p) => Some((
                    "followed",
                    format!(
                        "followed the fleet: another replica {} rollout {}",
                        if *p == Phase::Aborted {
                            "aborted"
                        } else {
                            "rolled back"
                        },
                        c.fingerprint
                    ),
                )),
                _ => None,
            }) {
                Some(found) => found,
                None => ("followed", "the fleet's rollout had ended".to_string()),
            };
            // A promotion by hand on this replica ended before the fleet's
            // rollback: the rollback still applies.
            st.progress.phase = Phase::Running;
            let counts = self.stage_counts(c, table, plan);
            st.started_ms = t0;
            self.roll_back(
                c,
                &mut st,
                Ending {
                    phase: after.0,
                    kind,
                    actor: "controller",
                    reason: &reason,
                },
                plan,
                table,
                tick,
                counts,
            );
            f.published = Some((after.0, after.1));
            return;
        }
        st.progress = progress;
        st.held = held;
        st.started_ms = t0;
        st.stage_started_ms = stage_started_ms;
        st.first_warning_ms = first_warning_ms;
        if let Some(e) = &f.error {
            if fleet_active {
                st.held = Some(unavailable_held(e));
            }
        }
        if f.published == Some(after) {
            return;
        }
        let share = match after.0 {
            Phase::Pending => None,
            Phase::Running | Phase::Paused => {
                Some(plan.stages[after.1.min(plan.stages.len() - 1)].weight)
            }
            Phase::Promoted => Some(100),
            Phase::RolledBack | Phase::Aborted => Some(0),
        };
        let Some(share) = share else {
            f.published = Some(after);
            return;
        };
        let why = format!("the fleet's stage {} of {}", after.1 + 1, plan.stages.len());
        let active = matches!(after.0, Phase::Running | Phase::Paused);
        match self.set_canary_share(c, route, plan, share, active, "controller", Some(&why)) {
            Ok(_) => f.published = Some(after),
            Err(e) => {
                tracing::error!(route = %c.route, error = %e, "the fleet's weights were refused");
                st.held = Some(format!("the fleet's weights were refused here: {e}"));
                return;
            }
        }
        if after.1 != before.1 || before.0 == Phase::Pending {
            c.runtime
                .lock()
                .unwrap()
                .restart_evidence(route.backends[plan.canary].stats.lifetime.snapshot());
        }
        let detail = serde_json::json!({
            "rollout": c.fingerprint, "stage": after.1 + 1, "weight": share,
            "tick": tick, "gates": st.gates,
        });
        let (kind, message) = if restarted {
            (
                "rollout_restarted",
                format!(
                    "restarted through the shared config as run {}: stage 1 of {}, canary at {share} %",
                    c.run_id(),
                    plan.stages.len()
                ),
            )
        } else if joined && before.0 == Phase::Pending && after.0 != Phase::Pending {
            (
                "fleet_joined",
                format!(
                    "joined the fleet's rollout {} at stage {} of {} ({}), canary at {share} %",
                    c.fingerprint,
                    after.1 + 1,
                    plan.stages.len(),
                    after.0.label()
                ),
            )
        } else if after.0 == Phase::Promoted {
            let cause = steps
                .iter()
                .rev()
                .find_map(|s| match s {
                    Step::Promoted(why) => Some(why.clone()),
                    _ => None,
                })
                .unwrap_or_else(|| "the fleet promoted it".into());
            (
                "promoted",
                format!(
                    "canary {} promoted: {cause}",
                    route.backends[plan.canary].name
                ),
            )
        } else if before.0 == Phase::Pending {
            (
                "rollout_started",
                format!(
                    "the fleet's rollout {} started: stage 1 of {}, canary at {share} %",
                    c.fingerprint,
                    plan.stages.len()
                ),
            )
        } else {
            (
                "stage_advanced",
                format!(
                    "stage {} of {}: canary at {share} %",
                    after.1 + 1,
                    plan.stages.len()
                ),
            )
        };
        self.control
            .journal
            .record(Some(&c.route), kind, "controller", message, detail);
    }

    /// A person's action on this replica of a fleet (pause, resume,
    /// promote); the fleet acts through the shared config instead.
    pub(super) fn act_in_fleet(
        &self,
        c: &Controller,
        plan: &Plan,
        table: &Table,
        action: Action,
    ) -> Result<(), ActionError> {
        let mut f = c.fleet.lock().unwrap();
        let mut st = c.state.lock().unwrap();
        let phase = st.progress.phase;
        match action {
            Action::Restart => Err(ActionError::NotNow(
                "a fleet's rollout restarts through the shared config: set rollout.action: restart (or a new rollout.generation) in the file every replica reads".into(),
            )),
            Action::Pause if phase == Phase::Running => {
                f.local_paused = true;
                st.progress.phase = Phase::Paused;
                st.held = Some(
                    "paused by hand on this replica; the fleet goes on (resume to rejoin it)"
                        .into(),
                );
                Ok(())
            }
            Action::Resume if phase == Phase::Paused && f.local_paused => {
                f.local_paused = false;
                f.published = None;
                c.wake.notify_one();
                Ok(())
            }
            Action::Resume if phase == Phase::Paused => Err(ActionError::NotNow(
                "the fleet is paused by the shared config (rollout.paused: true); resume it there"
                    .into(),
            )),
            Action::Promote if phase == Phase::Running || phase == Phase::Paused => {
                let route = table
                    .route_named(&c.route)
                    .ok_or_else(|| ActionError::NoRollout(c.route.clone()))?;
                let next = st.progress.stage + 1;
                let share = plan.stages.get(next).map_or(100, |s| s.weight);
                self.set_canary_share(c, route, plan, share, true, "admin", Some("promoted by hand on this replica"))
                    .map_err(ActionError::Rejected)?;
                // Ahead until the fleet catches up (past the last stage:
                // until it promotes too); a fleet rollback still applies.
                if next >= plan.stages.len() {
                    st.progress.phase = Phase::Promoted;
                } else {
                    st.progress.stage = next;
                    st.progress.phase = Phase::Running;
                }
                f.local_ahead = Some(next);
                f.local_paused = false;
                st.held = None;
                Ok(())
            }
            _ => Err(ActionError::NotNow(format!(
                "cannot {} a rollout that is {}",
                format!("{action:?}").to_lowercase(),
                phase.label()
            ))),
        }
    }
}
