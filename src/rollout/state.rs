//! What a rollout remembers: its phase, stage, bake progress, warnings and
//! last incident. Persisted atomically in `state_dir/rollouts/<route>.json`
//! on every tick, so a restart resumes where it stopped.

use serde::{Deserialize, Serialize};

use super::gates::GateResult;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Pending,
    Running,
    Paused,
    Promoted,
    RolledBack,
    Aborted,
}

impl Phase {
    pub const ALL: [Phase; 6] = [
        Phase::Pending,
        Phase::Running,
        Phase::Paused,
        Phase::Promoted,
        Phase::RolledBack,
        Phase::Aborted,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Running => "running",
            Phase::Paused => "paused",
            Phase::Promoted => "promoted",
            Phase::RolledBack => "rolled_back",
            Phase::Aborted => "aborted",
        }
    }

    /// A rollout that still decides the route's weights.
    pub fn active(self) -> bool {
        matches!(self, Phase::Pending | Phase::Running | Phase::Paused)
    }
}

/// The part of a rollout's state the decision function reads and writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub phase: Phase,
    /// 0-based index into the plan's stages.
    pub stage: usize,
    /// Bake time judged healthy in this stage, milliseconds.
    pub bake_done_ms: u64,
    /// Onsets of warnings (unix ms), for `escalate`.
    #[serde(default)]
    pub warning_onsets: Vec<i64>,
    /// Since when a warning has held without a break (unix ms), for `sustained`.
    #[serde(default)]
    pub warning_since: Option<i64>,
}

impl Progress {
    pub fn start() -> Self {
        Progress {
            phase: Phase::Running,
            stage: 0,
            bake_done_ms: 0,
            warning_onsets: Vec::new(),
            warning_since: None,
        }
    }
}

/// A rollback and what led to it: the material of the incident report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    pub route: String,
    /// The rollout's id.
    #[serde(default)]
    pub rollout: String,
    pub baseline: String,
    pub canary: String,
    pub canary_url: String,
    /// `critical gate success_rate`, `smoke check "upload works"`, `manual abort`, ...
    pub reason: String,
    /// The label of `sluice_rollbacks_total{reason}`.
    pub reason_kind: String,
    pub stage: usize,
    pub stage_weight: u32,
    pub rollout_started_ms: i64,
    pub stage_started_ms: i64,
    pub first_warning_ms: Option<i64>,
    pub detected_ms: i64,
    pub decided_ms: i64,
    pub completed_ms: i64,
    /// From the decision to the table swap, microseconds.
    pub swap_us: u64,
    pub gates: Vec<GateResult>,
    pub smoke_failures: Vec<String>,
    /// Canary requests and failures from the stage start to the rollback.
    pub canary_requests: u64,
    pub canary_failures: u64,
    pub table_version: u64,
}

/// Everything persisted about one route's rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutState {
    pub route: String,
    /// Baseline, canary and canary URL: a new value is a new deploy and a new rollout.
    pub fingerprint: String,
    pub progress: Progress,
    pub started_ms: i64,
    pub stage_started_ms: i64,
    /// Why the rollout is not advancing, if it is not.
    #[serde(default)]
    pub held: Option<String>,
    #[serde(default)]
    pub gates: Vec<GateResult>,
    #[serde(default)]
    pub smoke: Vec<SmokeResult>,
    #[serde(default)]
    pub incident: Option<Incident>,
    /// Unix ms of the first warning in the current stage, for the report.
    #[serde(default)]
    pub first_warning_ms: Option<i64>,
    /// A person changed the route's weights after the rollout finished: a
    /// restart must not put the rollout's weights back.
    #[serde(default)]
    pub weights_by_hand: bool,
    /// In a fleet: the rollout's first tick (unix ms), so a restarted
    /// replica knows it even before Prometheus answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet_t0_ms: Option<i64>,
    /// The config asked for a restart (`action: restart`) when last read:
    /// a restart is the request's appearance, not its presence.
    #[serde(default)]
    pub restart_seen: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SmokeResult {
    pub name: String,
    pub ok: bool,
    pub detail: String,
    pub latency_ms: f64,
}

/// The failed checks of a round, as decisions and reports name them:
/// `"name": detail`.
pub fn smoke_failures(results: &[SmokeResult]) -> Vec<String> {
    results
        .iter()
        .filter(|s| !s.ok)
        .map(|s| format!("\"{}\": {}", s.name, s.detail))
        .collect()
}
