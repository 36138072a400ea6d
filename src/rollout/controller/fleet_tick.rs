//! A controller as one replica of a fleet: full ticks on the wall-clock
//! grid step the fleet's [`Track`] through Prometheus' readings; between
//! them the replica's own fast check (criticals on its own traffic, with
//! its share of α) and, at each tick, its smoke checks may end the rollout
//! at once, which the fleet then follows.

use std::collections::BTreeMap;

use super::*;
use crate::config::FleetConfig;
use crate::rollout::fleet::{self, grid_ceil, Step, Subject, Track};

/// Replicas assumed for the split of α until Prometheus has counted them:
/// more than most fleets, so a local rollback never spends too much.
const UNKNOWN_REPLICAS: u32 = 100;

/// Why a rollout holds while the fleet's numbers cannot be read.
pub(super) fn unavailable_held(error: &str) -> String {
    format!("fleet evidence unavailable: {error}; no advance (this replica's own checks still roll back)")
}

/// Ends a task when its owner ends (a stopped controller's task is
/// dropped, not awaited).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a fleet replica's controller keeps besides its [`RolloutState`].
#[derive(Default)]
pub(super) struct FleetRuntime {
    pub track: Option<Track>,
    /// Paused by hand on this replica: the fleet goes on without it.
    pub local_paused: bool,
    /// Promoted by hand on this replica to this stage, ahead of the fleet.
    pub local_ahead: Option<usize>,
    /// This replica ended the rollout (its own check, a smoke check, an
    /// abort by hand); the fleet follows, this replica stays ended.
    pub local_ended: bool,
    /// The (phase, stage) whose weights are on the route.
    pub published: Option<(Phase, usize)>,
    /// Why the last tick read nothing from Prometheus.
    pub error: Option<String>,
    /// The run (restarts through the config) this replica last adopted.
    pub generation: u32,
}

/// The fleet as this replica last saw it in Prometheus.
#[derive(Debug, Clone, Default)]
pub(super) struct FleetSeen {
    at_ms: i64,
    pub replicas: Option<u32>,
    pub digests: BTreeMap<String, u32>,
    pub error: Option<String>,
}

impl Rollouts {
    pub(super) async fn drive_fleet(self: Arc<Self>, c: Arc<Controller>) {
        // The replica's own check runs beside the fleet's ticks, so a slow
        // Prometheus (a tick waits up to 5 s a query) never blinds it.
        let local = AbortOnDrop(tokio::spawn(self.clone().check_locally(c.clone())));
        let mut due: Option<i64> = None;
        let mut judged_by: Option<Arc<FleetConfig>> = None;
        loop {
            let table = self.control.current();
            let (Some(plan), Some(fleet)) = (plan_of(&table, &c.route), table.config.fleet.clone())
            else {
                break;
            };
            drop(table);
            // Another lag or selector reads other numbers: follow the
            // rollout again from its first tick, as every replica will.
            if judged_by.as_ref().is_some_and(|f| *f != fleet) {
                c.fleet.lock().unwrap().track = None;
            }
            judged_by = Some(fleet.clone());
            let interval_ms = (plan.interval.as_millis() as i64).max(1);
            let now = now_ms();
            let next = *due.get_or_insert_with(|| grid_ceil(now, interval_ms));
            if now >= next {
                self.fleet_tick(&c, &plan, &fleet, next).await;
                // A tick fallen far behind (a slow Prometheus) resumes at
                // the latest grid instant; the readings of the ticks in
                // between are caught up on.
                let latest = now_ms().div_euclid(interval_ms) * interval_ms;
                due = Some((next + interval_ms).max(latest));
                continue;
            }
            let wait = (next - now_ms()).max(1);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(wait as u64)) => {}
                _ = c.wake.notified() => {}
            }
        }
        drop(local);
    }

    async fn check_locally(self: Arc<Self>, c: Arc<Controller>) {
        loop {
            let table = self.control.current();
            let (Some(plan), Some(fleet)) = (plan_of(&table, &c.route), table.config.fleet.clone())
            else {
                return;
            };
            drop(table);
            self.local_check(&c, &plan, &fleet).await;
            tokio::time::sleep(FAST_CHECK).await;
        }
    }

    /// The replica's own criticals on its own traffic, spending
    /// `α / (2 · replicas)`: the fleet's pooled gates spend the other half.
    async fn local_check(&self, c: &Arc<Controller>, plan: &Plan, fleet: &FleetConfig) {
        let replicas = fleet
            .replicas
            .or(self.seen().replicas)
            .unwrap_or(UNKNOWN_REPLICAS)
            .max(1);
        let mut local = plan.clone();
        local
            .gates
            .retain(|g| !matches!(g.kind, GateKind::Prometheus { .. }));
        if local.gates.is_empty() || c.fleet.lock().unwrap().local_ended {
            return;
        }
        local.confidence = 1.0 - (1.0 - plan.confidence) / (2.0 * replicas as f64);
        self.tick(c, &local, false).await;
    }

    fn seen(&self) -> FleetSeen {
        self.fleet_seen.lock().unwrap().clone()
    }

    /// Counts the replicas and the configs they serve, once per tick.
    async fn see_fleet(&self, fleet: &FleetConfig, tick: i64) {
        {
            let mut seen = self.fleet_seen.lock().unwrap();
            if seen.at_ms >= tick {
                return;
            }
            seen.at_ms = tick;
        }
        let result = fleet::digests(&self.client, fleet, tick).await;
        let mut seen = self.fleet_seen.lock().unwrap();
        match result {
            Ok(digests) => {
                let n: u32 = digests.values().sum();
                if digests.len() > 1 && seen.digests.len() <= 1 {
                    tracing::warn!(digests = ?digests, "the fleet's replicas serve different configs");
                }
                seen.replicas = (n > 0).then_some(n);
                seen.digests = digests;
                seen.error = None;
            }
            Err(e) => seen.error = Some(e),
        }
    }

    async fn fleet_tick(&self, c: &Arc<Controller>, plan: &Plan, fleet: &FleetConfig, tick: i64) {
        let table = self.control.current();
        let Some(route) = table.route_named(&c.route) else {
            return;
        };
        let (canary, baseline) = (&route.backends[plan.canary], &route.backends[plan.baseline]);
        let subject = Subject {
            route: &c.route,
            id: &c.fingerprint,
            canary: &canary.name,
            baseline: &baseline.name,
        };
        let interval_ms = plan.interval.as_millis() as i64;
        self.see_fleet(fleet, tick).await;

        // The first tick: the config's, else the earliest any replica
        // shows (or this replica's file kept), else this one.
        let known = c.fleet.lock().unwrap().track.as_ref().map(|t| t.t0_ms);
        let saved = c.state.lock().unwrap().fleet_t0_ms;
        let t0 = match plan.started_at {
            Some(at) => grid_ceil(at.as_millisecond(), interval_ms),
            None => {
                match fleet::fleet_start(&self.client, fleet, &subject, tick, known.is_none()).await
                {
                    Ok(seen) => [seen.map(|t| grid_ceil(t, interval_ms)), saved, known]
                        .into_iter()
                        .flatten()
                        .min()
                        .unwrap_or(tick),
                    Err(e) => match known.or(saved) {
                        Some(t) => {
                            c.fleet.lock().unwrap().error = Some(e);
                            t
                        }
                        // Starting a clock of its own would part this
                        // replica from the fleet: wait for Prometheus.
                        None => {
                            self.unavailable(c, e);
                            return;
                        }
                    },
                }
            }
        };
        let joined = known != Some(t0);
        if joined {
            tracing::info!(route = %c.route, rollout = %c.fingerprint, t0, tick, "fleet: following the rollout from its first tick");
            c.fleet.lock().unwrap().track = Some(Track::new(&c.fingerprint, t0));
        }
        let from = c
            .fleet
            .lock()
            .unwrap()
            .track
            .as_ref()
            .map_or(t0, |t| t.next_ms);
        let mut steps = Vec::new();
        let mut replayed = 0;
        if from <= tick {
            match fleet::readings(&self.client, fleet, plan, &subject, from, tick).await {
                Err(e) => self.unavailable(c, e),
                Ok(list) => {
                    let mut f = c.fleet.lock().unwrap();
                    if f.error.take().is_some() {
                        tracing::info!(route = %c.route, "the fleet's numbers are readable again");
                    }
                    let track = f.track.as_mut().expect("set above");
                    replayed = list.len();
                    for r in &list {
                        let step = track.step(plan, fleet.lag, r);
                        if step != Step::Nothing {
                            steps.push(step);
                        }
                    }
                    *c.run.lock().unwrap() = track.id();
                }
            }
        }
        let running = matches!(
            c.state.lock().unwrap().progress.phase,
            Phase::Running | Phase::Paused
        );
        if running && !plan.smoke.is_empty() {
            self.fleet_smoke(c, plan, &table, tick).await;
        }
        self.adopt(c, plan, &table, tick, joined && replayed > 1, &steps);
        let st = c.state.lock().unwrap().clone();
        self.persist(&st);
        self.update_metrics(c);
    }

    fn unavailable(&self, c: &Controller, e: String) {
        let mut f = c.fleet.lock().unwrap();
        // Once per outage, not once per tick.
        if f.error.is_none() {
            tracing::warn!(route = %c.route, error = %e, "cannot read the fleet's numbers; the fleet's gates are inconclusive until Prometheus answers");
        }
        f.error = Some(e.clone());
        let mut st = c.state.lock().unwrap();
        if st.progress.phase.active() && !f.local_ended {
            st.held = Some(unavailable_held(&e));
        }
    }

    /// Smoke checks from this replica; a failure ends the rollout here at
    /// once, and the fleet follows.
    async fn fleet_smoke(&self, c: &Arc<Controller>, plan: &Plan, table: &Table, tick: i64) {
        let Some(route) = table.route_named(&c.route) else {
            return;
        };
        let results = smoke::run(&route.backends[plan.canary].pool, &plan.smoke).await;
        let failed = smoke_failures(&results);
        let mut st = c.state.lock().unwrap();
        self.journal_smoke_failures(c, &results);
        st.smoke = results;
        if let (Some(first), true) = (failed.first(), st.progress.phase.active()) {
            let counts = self.stage_counts(c, table, plan);
            self.roll_back(
                c,
                &mut st,
                Ending {
                    phase: Phase::RolledBack,
                    kind: "smoke",
                    actor: "controller",
                    reason: &format!("smoke check {first} on this replica"),
                },
                plan,
                table,
                tick,
                counts,
            );
        }
    }

    pub(super) fn stage_counts(&self, c: &Controller, table: &Table, plan: &Plan) -> Snapshot {
        let Some(route) = table.route_named(&c.route) else {
            return Snapshot::default();
        };
        let rt = c.runtime.lock().unwrap();
        route.backends[plan.canary]
            .stats
            .lifetime
            .snapshot()
            .since(&rt.stage_start)
    }

    /// The fleet part of `/status`.
    pub fn fleet_status(&self, table: &Table) -> Option<FleetStatus> {
        let fleet = table.config.fleet.as_ref()?;
        let seen = self.seen();
        let digest = table.config.digest.to_string();
        let agreed = seen.digests.len() == 1 && seen.digests.contains_key(&digest);
        Some(FleetStatus {
            prometheus: fleet.prometheus.clone(),
            selector: format!("{{{}}}", fleet.matchers),
            lag_seconds: fleet.lag.as_secs_f64(),
            replicas: fleet.replicas.or(seen.replicas),
            replicas_from: if fleet.replicas.is_some() {
                "config"
            } else {
                "prometheus"
            }
            .into(),
            digest,
            digests: seen.digests,
            agreed,
            error: seen.error,
        })
    }

    pub(super) fn fleet_view(&self, c: &Controller) -> Option<FleetRolloutView> {
        if !c.fleet_mode {
            return None;
        }
        let f = c.fleet.lock().unwrap();
        let started = f.track.as_ref().and_then(|t| {
            jiff::Timestamp::from_millisecond(t.t0_ms)
                .ok()
                .map(|t| format!("{t:.3}"))
        });
        let local = if f.local_ended {
            Some("ended on this replica; the fleet follows".to_string())
        } else if f.local_paused {
            Some("paused by hand on this replica".into())
        } else {
            f.local_ahead
                .map(|s| format!("promoted by hand on this replica to stage {}", s + 1))
        };
        Some(FleetRolloutView {
            started,
            evidence: f
                .error
                .clone()
                .map_or("ok".into(), |e| format!("unavailable: {e}")),
            local,
        })
    }
}

/// The fleet part of `/status`: whether the replicas serve one config.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct FleetStatus {
    pub prometheus: String,
    pub selector: String,
    pub lag_seconds: f64,
    pub replicas: Option<u32>,
    /// `config` (fleet.replicas) or `prometheus` (counted there).
    pub replicas_from: String,
    /// This replica's config digest.
    pub digest: String,
    /// Replicas by the digest of the config they serve, as Prometheus saw them.
    pub digests: BTreeMap<String, u32>,
    /// Prometheus sees replicas, and every one serves this replica's config.
    pub agreed: bool,
    pub error: Option<String>,
}

/// A fleet rollout's part of its `/status` entry.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct FleetRolloutView {
    /// The fleet's first tick of this rollout.
    pub started: Option<String>,
    /// `ok`, or why the fleet's numbers could not be read.
    pub evidence: String,
    /// What this replica does apart from the fleet, if anything.
    pub local: Option<String>,
}
