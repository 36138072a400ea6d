//! The thin async shell around the decision function: one task per route
//! with a rollout plan. Each tick it reads the live windows, runs the smoke
//! checks and Prometheus queries, judges, decides, and publishes any new
//! weights through the control plane's single writer.
//!
//! This file holds the types; the phases live beside it: `reconcile`
//! (controllers in line with the table), `tick` (a rollout alone: its
//! loop, evidence and decision), `fleet_tick` and `fleet_adopt` (a
//! replica of a fleet: the grid's ticks, its own checks, taking the
//! fleet's state), `actions` (weights and a person's actions),
//! `incident` (rollbacks and what they journal), `view` (status,
//! report, metrics, the state file).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::decide::{decide, Decision, Judgement};
use super::gates::{self, Evidence, GateResult, Verdict};
use super::state::{smoke_failures, Incident, Phase, Progress, RolloutState, SmokeResult};
use super::{prometheus, report, smoke};

mod actions;
mod fleet_adopt;
mod fleet_tick;
mod incident;
mod reconcile;
mod tick;
mod view;
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

    fn controller(&self, route: &str) -> Result<Arc<Controller>, ActionError> {
        self.routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(route)
            .cloned()
            .ok_or_else(|| ActionError::NoRollout(route.to_string()))
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
