//! Bringing the controllers in line with the table: new plans start (or
//! resume from `state_dir`), changed rollouts start over, removed plans stop.

use super::*;

impl Rollouts {
    /// Brings the controllers in line with the table: new plans start (or
    /// resume from `state_dir`), changed canaries start over, removed plans stop.
    pub fn reconcile(self: &Arc<Self>) {
        let table = self.control.current();
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        let wanted = &table.config.fingerprints;
        let fleet_mode = table.config.fleet.is_some();
        routes.retain(|name, c| {
            let keep = wanted.get(name) == Some(&c.fingerprint) && c.fleet_mode == fleet_mode;
            if !keep {
                c.stop();
                let why = if c.fleet_mode != fleet_mode && wanted.get(name) == Some(&c.fingerprint)
                {
                    "the fleet section changed; the rollout is judged anew"
                } else if wanted.contains_key(name) {
                    "a new rollout (canary, plan or generation changed); it starts from stage 1"
                } else {
                    "the rollout plan was removed from the config"
                };
                self.control.journal.record(
                    Some(name),
                    "rollout_stopped",
                    "controller",
                    why,
                    serde_json::json!({ "rollout": c.fingerprint }),
                );
            }
            keep
        });
        for (name, fp) in wanted.iter() {
            if routes.contains_key(name) {
                continue;
            }
            let c = self.start_controller(&table, name, fp.clone());
            routes.insert(name.clone(), c);
        }
    }

    pub(super) fn state_path(&self, route: &str) -> Option<PathBuf> {
        self.state_dir
            .as_ref()
            .map(|d| d.join("rollouts").join(format!("{route}.json")))
    }

    pub(super) fn start_controller(
        self: &Arc<Self>,
        table: &Table,
        route: &str,
        fingerprint: String,
    ) -> Arc<Controller> {
        let saved: Option<RolloutState> = self
            .state_path(route)
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice(&b).ok())
            .filter(|s: &RolloutState| s.fingerprint == fingerprint);
        let fleet_mode = table.config.fleet.is_some();
        // A fleet's replica takes its progress from the fleet, not from its
        // own file; the file still says when the rollout began, and whether
        // this replica ended it.
        let (saved, fleet_saved) = if fleet_mode {
            (None, saved)
        } else {
            (saved, None)
        };
        let resumed = saved.is_some();
        let now = now_ms();
        let state = saved.unwrap_or_else(|| RolloutState {
            route: route.to_string(),
            fingerprint: fingerprint.clone(),
            progress: Progress {
                phase: Phase::Pending,
                ..Progress::start()
            },
            started_ms: now,
            stage_started_ms: now,
            held: None,
            gates: Vec::new(),
            smoke: Vec::new(),
            incident: None,
            first_warning_ms: None,
            weights_by_hand: false,
            fleet_t0_ms: None,
            restart_seen: plan_of(table, route)
                .is_some_and(|p| p.action == Some(ConfigAction::Restart)),
        });
        let mut fleet_runtime = fleet_tick::FleetRuntime::default();
        let mut state = state;
        if let Some(f) = fleet_saved {
            state.fleet_t0_ms = f.fleet_t0_ms;
            if matches!(f.progress.phase, Phase::RolledBack | Phase::Aborted) {
                // This replica ended the rollout: it stays ended, and its
                // metrics keep telling the fleet.
                state = f;
                fleet_runtime.local_ended = true;
            }
        }
        let c = Arc::new(Controller {
            route: route.to_string(),
            run: Mutex::new(fingerprint.clone()),
            fingerprint,
            fleet_mode,
            state: Mutex::new(state),
            runtime: Mutex::new(Runtime::default()),
            fleet: Mutex::new(fleet_runtime),
            wake: Notify::new(),
            task: Mutex::new(None),
        });
        c.runtime
            .lock()
            .unwrap()
            .restart_evidence(tr_canary_lifetime(table, route));
        if c.fleet.lock().unwrap().local_ended {
            // This replica ended the rollout before it restarted: its
            // canary stays at 0, whatever the file's weights say.
            let st = c.state.lock().unwrap().clone();
            if let Err(e) = self.publish_phase_weights(&c, &st) {
                tracing::error!(route, error = %e, "cannot restore the rollout's weights");
            }
        }
        if resumed {
            let st = c.state.lock().unwrap().clone();
            self.control.journal.record(
                Some(route),
                "rollout_resumed",
                "controller",
                format!(
                    "resumed {} at stage {} after a restart (bake so far {} ms; evidence restarts)",
                    st.progress.phase.label(),
                    st.progress.stage + 1,
                    st.progress.bake_done_ms
                ),
                serde_json::json!({ "rollout": st.fingerprint }),
            );
            // Put the route back where the rollout had it, unless a person
            // has set its weights since it finished.
            if st.weights_by_hand {
                // leave the configured weights
            } else if let Err(e) = self.publish_phase_weights(&c, &st) {
                tracing::error!(route, error = %e, "cannot restore the rollout's weights");
            }
        }
        self.update_metrics(&c);
        let me = self.clone();
        let ctl = c.clone();
        *c.task.lock().unwrap() = Some(tokio::spawn(async move { me.drive(ctl).await }));
        c
    }
}
