//! A rollout alone: its loop, and each tick's evidence, judgement and
//! decision (the decision itself is [`super::super::decide`]).

use super::*;

impl Rollouts {
    pub(super) async fn drive(self: Arc<Self>, c: Arc<Controller>) {
        if c.fleet_mode {
            return self.drive_fleet(c).await;
        }
        let mut next_full = Instant::now();
        loop {
            let Some(plan) = plan_of(&self.control.current(), &c.route) else {
                return;
            };
            let full = Instant::now() >= next_full;
            if full {
                next_full = Instant::now() + plan.interval;
            }
            self.tick(&c, &plan, full).await;
            // Between full ticks, criticals on traffic are checked every
            // FAST_CHECK: the sequential test stays valid however often it
            // looks, so a broken canary is caught in a fraction of a second
            // even with a 30 s interval.
            let wait = next_full
                .saturating_duration_since(Instant::now())
                .min(FAST_CHECK);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = c.wake.notified() => next_full = Instant::now(),
            }
        }
    }

    /// A full tick runs everything; a fast one only looks for a critical
    /// verdict on traffic (no smoke checks, no Prometheus queries, no bake).
    pub(super) async fn tick(&self, c: &Arc<Controller>, plan: &Plan, full: bool) {
        if full {
            self.restart_if_asked(c, plan);
        }
        let phase = c.state.lock().unwrap().progress.phase;
        if !full && phase != Phase::Running && phase != Phase::Paused {
            return;
        }
        if phase == Phase::Pending {
            if plan.started_at.is_some_and(|t| jiff::Timestamp::now() < t) {
                return;
            }
            self.begin(c, plan, "controller", "rollout started");
        }
        if !c.state.lock().unwrap().progress.phase.active() {
            c.runtime.lock().unwrap().last_tick = None;
            return;
        }
        let table = self.control.current();
        let Some(route) = table.route_named(&c.route) else {
            return;
        };
        let (canary, baseline) = (&route.backends[plan.canary], &route.backends[plan.baseline]);
        // What the judgement will be about; if an action changes it while
        // we measure, the judgement is dropped.
        let judged_stage = {
            let st = c.state.lock().unwrap();
            (st.progress.stage, st.progress.phase)
        };
        {
            let id = Arc::as_ptr(&canary.stats) as usize;
            let mut rt = c.runtime.lock().unwrap();
            if rt.stats_id != id {
                rt.restart_evidence(canary.stats.lifetime.snapshot());
                rt.stats_id = id;
            }
        }

        let smoke = if plan.smoke.is_empty() || !full {
            Vec::new()
        } else {
            smoke::run(&canary.pool, &plan.smoke).await
        };
        let prom = if full {
            let values = self.prometheus_values(plan).await;
            c.runtime.lock().unwrap().prometheus = values.clone();
            values
        } else {
            c.runtime.lock().unwrap().prometheus.clone()
        };

        let now = now_ms();
        let cw = canary.stats.snapshot(plan.window);
        let bw = baseline.stats.snapshot(plan.window);
        let life = canary.stats.lifetime.snapshot();
        let (tests, elapsed, stage_counts) = {
            let mut rt = c.runtime.lock().unwrap();
            let newest = rt.tests.last().map(|t| (t.0, t.2));
            match newest {
                None => rt.restart_evidence(life.clone()),
                Some((k, at)) if at.elapsed() >= plan.window => {
                    rt.tests.push((k + 1, life.clone(), Instant::now()));
                    if rt.tests.len() > 8 {
                        rt.tests.remove(1); // keep the stage-start test and the newest
                    }
                }
                _ => {}
            }
            let tests: Vec<(u32, Snapshot)> = rt
                .tests
                .iter()
                .map(|(k, s, _)| (*k, life.since(s)))
                .collect();
            let now_i = Instant::now();
            let elapsed = rt.last_tick.map_or(Duration::ZERO, |t| now_i - t);
            if full {
                rt.last_tick = Some(now_i);
            }
            (tests, elapsed, life.since(&rt.stage_start))
        };
        let lookup = |name: &str| prom.get(name).copied().flatten();
        let ev = Evidence {
            canary: &cw,
            baseline: &bw,
            tests: &tests,
            prometheus: &lookup,
        };
        let judged = gates::judge(plan, &ev);
        let smoke_failures = smoke_failures(&smoke);
        if !full && !judged.iter().any(|g| g.verdict == Verdict::Critical) {
            return;
        }
        let judgement = Judgement {
            gates: judged.clone(),
            smoke_failures: smoke_failures.clone(),
        };

        let mut st = c.state.lock().unwrap();
        if !st.progress.phase.active() || (st.progress.stage, st.progress.phase) != judged_stage {
            return; // an action got there first
        }
        self.journal_changes(c, &st, &judged, &smoke);
        let (decision, next) = decide(plan, &st.progress, &judgement, now, elapsed);
        if judged.iter().any(|g| g.verdict == Verdict::Warning) && st.first_warning_ms.is_none() {
            st.first_warning_ms = Some(now);
        }
        st.gates = judged;
        st.smoke = smoke;
        st.progress = next;
        match decision {
            Decision::Idle => {}
            Decision::Hold(reason) => st.held = Some(reason),
            Decision::Bake => st.held = None,
            Decision::Advance(stage) => {
                st.held = None;
                st.stage_started_ms = now;
                st.first_warning_ms = None;
                let share = plan.stages[stage].weight;
                let why = format!("stage {} of {}", stage + 1, plan.stages.len());
                match self.set_canary_share(c, route, plan, share, true, "controller", Some(&why)) {
                    Ok(_) => {
                        c.runtime
                            .lock()
                            .unwrap()
                            .restart_evidence(canary.stats.lifetime.snapshot());
                        self.control.journal.record(
                            Some(&c.route),
                            "stage_advanced",
                            "controller",
                            format!("stage {} of {}: canary at {} %", stage + 1, plan.stages.len(), share),
                            serde_json::json!({ "rollout": c.fingerprint, "stage": stage + 1, "weight": share, "gates": st.gates }),
                        );
                        c.wake.notify_one(); // smoke checks at the stage start
                    }
                    Err(e) => self.refused(c, &mut st, e),
                }
            }
            Decision::Promote => {
                st.held = None;
                match self.set_canary_share(
                    c,
                    route,
                    plan,
                    100,
                    false,
                    "controller",
                    Some("promoted"),
                ) {
                    Ok(_) => {
                        self.control.journal.record(
                            Some(&c.route),
                            "promoted",
                            "controller",
                            format!(
                                "canary {} promoted after {} stages",
                                canary.name,
                                plan.stages.len()
                            ),
                            serde_json::json!({ "rollout": c.fingerprint, "gates": st.gates }),
                        );
                    }
                    Err(e) => self.refused(c, &mut st, e),
                }
            }
            Decision::Rollback { kind, reason } => {
                let detected = now;
                self.roll_back(
                    c,
                    &mut st,
                    Ending {
                        phase: Phase::RolledBack,
                        kind: kind.label(),
                        actor: "controller",
                        reason: &reason,
                    },
                    plan,
                    &table,
                    detected,
                    stage_counts,
                );
            }
        }
        self.persist(&st);
        drop(st);
        self.update_metrics(c);
    }

    pub(super) async fn prometheus_values(&self, plan: &Plan) -> HashMap<String, Option<f64>> {
        let mut out = HashMap::new();
        for g in &plan.gates {
            if let GateKind::Prometheus { url, query, lag } = &g.kind {
                let at = prometheus::aligned_time(now_ms(), plan.interval, *lag);
                let v = match prometheus::query(&self.client, url, query, at).await {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::warn!(gate = %g.name, error = %e, "prometheus gate query failed");
                        None
                    }
                };
                out.insert(g.name.clone(), v);
            }
        }
        out
    }

    /// `action: restart` in the config restarts the rollout once, when it
    /// appears (the state file remembers it was seen, across restarts).
    pub(super) fn restart_if_asked(&self, c: &Arc<Controller>, plan: &Plan) {
        let asked = plan.action == Some(ConfigAction::Restart);
        let edge = {
            let mut st = c.state.lock().unwrap();
            let edge = asked && !st.restart_seen && st.progress.phase != Phase::Pending;
            if st.restart_seen != asked {
                st.restart_seen = asked;
                self.persist(&st);
            }
            edge
        };
        if edge {
            c.state.lock().unwrap().incident = None;
            self.begin(
                c,
                plan,
                "file",
                "restarted through the config (rollout.action: restart)",
            );
        }
    }

    /// Pending → running at stage 1.
    pub(super) fn begin(&self, c: &Controller, plan: &Plan, actor: &str, why: &str) {
        let mut st = c.state.lock().unwrap();
        let now = now_ms();
        st.progress = Progress::start();
        st.started_ms = now;
        st.stage_started_ms = now;
        st.first_warning_ms = None;
        st.held = None;
        st.weights_by_hand = false;
        let table = self.control.current();
        if let Err(e) = self.publish_phase_weights(c, &st) {
            self.refused(c, &mut st, e);
        }
        c.runtime
            .lock()
            .unwrap()
            .restart_evidence(tr_canary_lifetime(&table, &c.route));
        c.runtime.lock().unwrap().last_tick = None;
        self.control.journal.record(
            Some(&c.route),
            "rollout_started",
            actor,
            format!("{why}: stage 1 of {}, canary at {} %", plan.stages.len(), plan.stages[0].weight),
            serde_json::json!({ "rollout": c.fingerprint, "stages": plan.stages.iter().map(|s| serde_json::json!({"weight": s.weight, "bake_ms": s.bake.as_millis() as u64})).collect::<Vec<_>>() }),
        );
        self.persist(&st);
        drop(st);
        self.update_metrics(c);
    }

    pub(super) fn refused(&self, c: &Controller, st: &mut RolloutState, e: Rejection) {
        tracing::error!(route = %c.route, error = %e, "the controller's change was refused; pausing the rollout");
        st.progress.phase = Phase::Paused;
        st.held = Some(format!("paused: the new weights were refused: {e}"));
    }
}
