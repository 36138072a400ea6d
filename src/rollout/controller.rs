//! The thin async shell around the decision function: one task per route
//! with a rollout plan. Each tick it reads the live windows, runs the smoke
//! checks and Prometheus queries, judges, decides, and publishes any new
//! weights through the control plane's single writer.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::decide::{decide, Decision, Judgement};
use super::gates::{self, Evidence, GateResult, Verdict};
use super::state::{Incident, Phase, Progress, RolloutState, SmokeResult};
use super::{prometheus, report, smoke};

mod fleet_tick;
use crate::config::plan::{ConfigAction, GateKind, Plan};
use crate::control::{Change, ControlPlane, Rejection};
use crate::stats::Snapshot;
use crate::table::Table;

/// The rollouts of every route, and the way in for manual actions.
pub struct Rollouts {
    control: Arc<ControlPlane>,
    state_dir: Option<PathBuf>,
    routes: Mutex<HashMap<String, Arc<Controller>>>,
    client: prometheus::PromClient,
    fleet_seen: Mutex<fleet_tick::FleetSeen>,
}

pub use fleet_tick::{FleetRolloutView, FleetStatus};

/// A manual action on a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Promote,
    Pause,
    Resume,
    Abort,
    Restart,
}

impl Action {
    pub fn parse(s: &str) -> Option<Action> {
        Some(match s {
            "promote" => Action::Promote,
            "pause" => Action::Pause,
            "resume" => Action::Resume,
            "abort" => Action::Abort,
            "restart" => Action::Restart,
            _ => return None,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("route {0} has no rollout")]
    NoRollout(String),
    #[error("{0}")]
    NotNow(String),
    #[error("{0}")]
    Rejected(Rejection),
}

struct Controller {
    route: String,
    /// The rollout's id (see [`crate::config::plan::fingerprint`]).
    fingerprint: String,
    /// Whether this controller runs as one replica of a fleet.
    fleet_mode: bool,
    /// The id of the rollout's current run: the fingerprint, with `-rN`
    /// after N restarts through a fleet's config. Locked alone, never
    /// while taking another of the controller's locks.
    run: Mutex<String>,
    state: Mutex<RolloutState>,
    runtime: Mutex<Runtime>,
    fleet: Mutex<fleet_tick::FleetRuntime>,
    wake: Notify,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// What a controller keeps only in memory: the open sequential tests
/// (process-local counters), and the tick clock.
#[derive(Default)]
struct Runtime {
    /// (test number, canary lifetime counts at its start, when it started).
    tests: Vec<(u32, Snapshot, Instant)>,
    last_tick: Option<Instant>,
    /// The Prometheus values of the last full tick, for fast checks.
    prometheus: HashMap<String, Option<f64>>,
    /// Canary counts at the stage start, for the incident report.
    stage_start: Snapshot,
    /// Which stats object the snapshots came from: a new one (a wider
    /// window, a new address) starts the evidence over.
    stats_id: usize,
}

impl Runtime {
    fn restart_evidence(&mut self, now: Snapshot) {
        self.tests = vec![(1, now.clone(), Instant::now())];
        self.stage_start = now;
    }
}

/// How a rollout ends in a rollback or an abort.
struct Ending<'a> {
    phase: Phase,
    /// The `reason` label of `sluice_rollbacks_total`.
    kind: &'a str,
    /// Who ended it, for the journal.
    actor: &'a str,
    reason: &'a str,
}

/// How often criticals on traffic are checked between full ticks.
const FAST_CHECK: Duration = Duration::from_millis(100);

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// The weights of a stage: the canary its share, the baseline the rest,
/// every other backend 0.
fn stage_weights(
    table_route: &crate::table::Route,
    plan: &Plan,
    canary_share: u32,
) -> BTreeMap<String, u64> {
    table_route
        .backends
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let w = if i == plan.canary {
                canary_share as u64
            } else if i == plan.baseline {
                100 - canary_share as u64
            } else {
                0
            };
            (b.name.to_string(), w)
        })
        .collect()
}

impl Rollouts {
    pub fn new(control: Arc<ControlPlane>, state_dir: Option<PathBuf>) -> Arc<Self> {
        Arc::new(Rollouts {
            control,
            state_dir,
            routes: Mutex::new(HashMap::new()),
            client: prometheus::client(),
            fleet_seen: Mutex::default(),
        })
    }

    /// Starts controllers for the current table and follows every swap.
    pub async fn run(self: Arc<Self>) {
        let mut changes = self.control.subscribe();
        loop {
            self.reconcile();
            if changes.changed().await.is_err() {
                return;
            }
        }
    }

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

    fn state_path(&self, route: &str) -> Option<PathBuf> {
        self.state_dir
            .as_ref()
            .map(|d| d.join("rollouts").join(format!("{route}.json")))
    }

    fn start_controller(
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

    /// Gives the canary `share` percent of its route and the baseline the
    /// rest, through the control plane's single writer.
    fn set_canary_share(
        &self,
        c: &Controller,
        route: &crate::table::Route,
        plan: &Plan,
        share: u32,
        actor: &str,
        why: Option<&str>,
    ) -> Result<Arc<Table>, Rejection> {
        self.control.apply(
            Change::Rollout {
                route: c.route.clone(),
                fingerprint: c.fingerprint.clone(),
                weights: stage_weights(route, plan, share),
            },
            actor,
            why,
        )
    }

    /// The weights a rollout in `st` wants on its route.
    fn publish_phase_weights(&self, c: &Controller, st: &RolloutState) -> Result<(), Rejection> {
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
        self.set_canary_share(c, route, &plan, share, "controller", None)
            .map(|_| ())
    }

    async fn drive(self: Arc<Self>, c: Arc<Controller>) {
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
    async fn tick(&self, c: &Arc<Controller>, plan: &Plan, full: bool) {
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
        let smoke_failures: Vec<String> = smoke
            .iter()
            .filter(|s| !s.ok)
            .map(|s| format!("\"{}\": {}", s.name, s.detail))
            .collect();
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
                match self.set_canary_share(c, route, plan, share, "controller", Some(&why)) {
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
                match self.set_canary_share(c, route, plan, 100, "controller", Some("promoted")) {
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

    fn refused(&self, c: &Controller, st: &mut RolloutState, e: Rejection) {
        tracing::error!(route = %c.route, error = %e, "the controller's change was refused; pausing the rollout");
        st.progress.phase = Phase::Paused;
        st.held = Some(format!("paused: the new weights were refused: {e}"));
    }

    /// All weight to the baseline, now, and the incident recorded.
    #[allow(clippy::too_many_arguments)]
    fn roll_back(
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
        let result = self.set_canary_share(c, route, plan, 0, "controller", Some(reason));
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
            smoke_failures: st
                .smoke
                .iter()
                .filter(|s| !s.ok)
                .map(|s| format!("\"{}\": {}", s.name, s.detail))
                .collect(),
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

    fn journal_changes(
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

    fn journal_smoke_failures(&self, c: &Controller, smoke: &[SmokeResult]) {
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

    async fn prometheus_values(&self, plan: &Plan) -> HashMap<String, Option<f64>> {
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
    fn restart_if_asked(&self, c: &Arc<Controller>, plan: &Plan) {
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
    fn begin(&self, c: &Controller, plan: &Plan, actor: &str, why: &str) {
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

    fn persist(&self, st: &RolloutState) {
        let Some(path) = self.state_path(&st.route) else {
            return;
        };
        let bytes = serde_json::to_vec_pretty(st).expect("rollout state serializes");
        if let Err(e) = crate::state::write_atomic(&path, &bytes) {
            tracing::error!(error = %e, path = %path.display(), "cannot persist rollout state");
        }
    }

    fn update_metrics(&self, c: &Controller) {
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

    fn controller(&self, route: &str) -> Result<Arc<Controller>, ActionError> {
        self.routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(route)
            .cloned()
            .ok_or_else(|| ActionError::NoRollout(route.to_string()))
    }

    /// Whether the route's weights belong to a running rollout.
    pub fn owns_weights(&self, route: &str) -> bool {
        self.controller(route)
            .is_ok_and(|c| c.state.lock().unwrap().progress.phase.active())
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
                self.set_canary_share(&c, route_t, &plan, share, actor, Some("promoted by hand"))
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

    /// Stops every controller's task.
    pub fn stop(&self) {
        for c in self
            .routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            c.stop();
        }
    }
}

impl Controller {
    fn run_id(&self) -> String {
        self.run.lock().unwrap().clone()
    }

    fn stop(&self) {
        if let Some(t) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            t.abort();
        }
    }
}

fn plan_of(table: &Table, route: &str) -> Option<Arc<Plan>> {
    table.config.route(route)?.rollout.clone()
}

fn tr_canary_lifetime(table: &Table, route: &str) -> Snapshot {
    let (Some(r), Some(plan)) = (table.route_named(route), plan_of(table, route)) else {
        return Snapshot::default();
    };
    r.backends[plan.canary].stats.lifetime.snapshot()
}

/// A rollout as `/status` shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct RolloutView {
    /// The rollout's id: route, baseline, canary address, plan, generation.
    #[serde(default)]
    pub id: String,
    /// In a fleet: the fleet's start and what this replica does apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetRolloutView>,
    pub state: String,
    pub stage: usize,
    pub stages: usize,
    pub canary_weight: u32,
    pub bake_seconds: f64,
    pub baked_seconds: f64,
    pub bake_left_seconds: f64,
    pub held: Option<String>,
    pub started: String,
    pub gates: Vec<GateResult>,
    pub smoke: Vec<SmokeResult>,
    pub last_rollback: Option<String>,
}
