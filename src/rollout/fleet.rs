//! A fleet's rollout: N replicas, one decision at the same tick.
//!
//! Every replica of a fleet records its own traffic and is scraped by one
//! Prometheus. Ticks lie on the wall-clock grid (`k × interval`); at each
//! tick a replica reads the fleet's sums at `tick − lag` ([`Reading`]) and
//! steps a [`Track`], a state machine whose every transition depends on the
//! plan, the rollout's start tick and the readings alone. So replicas that
//! read the same numbers hold the same stage and phase at the same tick, and
//! a replica that joins late replays the readings since the start (one range
//! query per series) and lands where the others are. No replica talks to
//! another; Prometheus and the shared config are the only shared parts.
//!
//! What is not on the grid: each replica's own fast check (every 100 ms, on
//! its own traffic, spending `α / (2·replicas)`) and its smoke checks may
//! roll it back at once; it then exports `rolled_back` in
//! `sluice_rollout_info`, and every replica follows at the first tick whose
//! reading shows it. The pooled gates spend the other half of α.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use super::decide::{decide, Decision, Judgement};
use super::gates::{self, Evidence, GateResult, Verdict};
use super::state::{Phase, Progress};
use crate::config::plan::Plan;
use crate::stats::window::PROM_EDGES_NS;
use crate::stats::Snapshot;

/// Buckets of `sluice_request_duration_seconds`, `+Inf` included.
pub const PROM_BUCKETS: usize = PROM_EDGES_NS.len() + 1;

mod readings;
pub use readings::{digests, fleet_start, readings, Subject};

/// One backend's counts summed over the fleet: by class (in
/// [`crate::stats::Class::ALL`] order) and by latency bucket (not
/// cumulative).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counts {
    pub classes: [u64; 5],
    pub buckets: [u64; PROM_BUCKETS],
}

impl Counts {
    /// What happened between `earlier` and these counts.
    fn since(&self, earlier: &Counts) -> Snapshot {
        Snapshot::from_prometheus(
            std::array::from_fn(|i| self.classes[i].saturating_sub(earlier.classes[i])),
            &std::array::from_fn(|i| self.buckets[i].saturating_sub(earlier.buckets[i])),
        )
    }

    /// Adds the increase from `before` to `now`, field by field. A sum that
    /// fell (a replica restarted, or left) adds nothing for that field:
    /// evidence is lost for one tick rather than made up.
    fn add_increase(&mut self, before: &Counts, now: &Counts) {
        for i in 0..5 {
            self.classes[i] += now.classes[i].saturating_sub(before.classes[i]);
        }
        for i in 0..PROM_BUCKETS {
            self.buckets[i] += now.buckets[i].saturating_sub(before.buckets[i]);
        }
    }
}

/// What the fleet showed for one rollout at one tick, read at `tick − lag`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reading {
    /// The tick, unix milliseconds on the grid.
    pub tick_ms: i64,
    /// The fleet's cumulative counts of the canary and of the baseline;
    /// `None` when Prometheus had no series for it.
    pub canary: Option<Counts>,
    pub baseline: Option<Counts>,
    /// Replicas that ended a run of this rollout (rolled back or aborted
    /// it), by run id ([`Track::id`]).
    pub ended: Vec<(String, Phase)>,
    /// What replicas' configs ask for (`paused`, `action`).
    pub paused: bool,
    pub restart: bool,
    pub promote: bool,
    pub abort: bool,
    /// Prometheus gates' values by gate name.
    pub prometheus: BTreeMap<String, Option<f64>>,
}

/// What one step did that the controller must act on.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Nothing,
    /// The start tick came: stage 1.
    Started,
    Advanced(usize),
    Promoted(String),
    RolledBack {
        kind: &'static str,
        reason: String,
    },
    /// Another replica ended the rollout (rolled back or aborted it).
    Followed(Phase),
    /// The shared config asked for a restart: stage 1 again, as a new run.
    Restarted,
}

/// The fleet's rollout as every replica computes it.
#[derive(Debug, Clone)]
pub struct Track {
    /// The rollout's id, as the config makes it.
    base_id: String,
    /// Restarts through the config so far: each is a new run of the
    /// rollout with an id of its own, untouched by an earlier run's ending.
    pub generation: u32,
    /// Whether the last reading had a restart asked: a restart is its
    /// rising edge, so a line left in the file restarts once.
    restart_seen: bool,
    /// The rollout's first tick (unix ms, on the grid).
    pub t0_ms: i64,
    /// The next tick to step.
    pub next_ms: i64,
    pub progress: Progress,
    pub stage_started_ms: i64,
    pub first_warning_ms: Option<i64>,
    pub held: Option<String>,
    pub gates: Vec<GateResult>,
    /// The last reading's cumulative counts (canary, baseline).
    last: [Option<Counts>; 2],
    /// Increases summed since t0: immune to counter resets.
    sums: [Counts; 2],
    /// Sums at each tick of the last `window`, oldest first.
    ring: VecDeque<(i64, [Counts; 2])>,
    /// Open sequential tests: (number, canary sums at their start, tick).
    tests: Vec<(u32, Counts, i64)>,
    /// From this tick on, readings show the current stage's traffic.
    evidence_from_ms: i64,
    /// The tick the current stage's evidence started at; its bake counts
    /// from the tick after.
    evidence_started_ms: Option<i64>,
}

/// `t` rounded up to the grid of `interval_ms`.
pub fn grid_ceil(t_ms: i64, interval_ms: i64) -> i64 {
    let i = interval_ms.max(1);
    (t_ms + i - 1).div_euclid(i) * i
}

fn lag_ticks_ms(lag: Duration, interval_ms: i64) -> i64 {
    grid_ceil(lag.as_millis() as i64, interval_ms)
}

impl Track {
    pub fn new(base_id: &str, t0_ms: i64) -> Track {
        Track {
            base_id: base_id.to_string(),
            generation: 0,
            restart_seen: false,
            t0_ms,
            next_ms: t0_ms,
            progress: Progress {
                phase: Phase::Pending,
                ..Progress::start()
            },
            stage_started_ms: t0_ms,
            first_warning_ms: None,
            held: None,
            gates: Vec::new(),
            last: [None; 2],
            sums: [Counts::default(); 2],
            ring: VecDeque::new(),
            tests: Vec::new(),
            evidence_from_ms: t0_ms,
            evidence_started_ms: None,
        }
    }

    /// The id of the rollout's current run: the rollout's id, and after
    /// restarts through the config `-r` and their count.
    pub fn id(&self) -> String {
        run_id(&self.base_id, self.generation)
    }

    fn stage_began(&mut self, tick: i64, lag: Duration, interval_ms: i64) {
        self.stage_started_ms = tick;
        self.first_warning_ms = None;
        self.evidence_from_ms = tick + lag_ticks_ms(lag, interval_ms);
        self.evidence_started_ms = None;
    }

    /// Steps one tick. `lag` is the fleet's; the plan's `confidence` is
    /// spent half here, half by the replicas' own checks.
    pub fn step(&mut self, plan: &Plan, lag: Duration, r: &Reading) -> Step {
        let interval_ms = plan.interval.as_millis() as i64;
        let tick = r.tick_ms;
        self.next_ms = tick + interval_ms;
        for (i, now) in [r.canary, r.baseline].into_iter().enumerate() {
            if let Some(now) = now {
                if let Some(before) = self.last[i] {
                    self.sums[i].add_increase(&before, &now);
                }
                self.last[i] = Some(now);
            }
        }
        let window_ms = plan.window.as_millis() as i64;
        self.ring.push_back((tick, self.sums));
        while self
            .ring
            .front()
            .is_some_and(|(t, _)| *t < tick - window_ms)
        {
            self.ring.pop_front();
        }

        let restart = r.restart && !self.restart_seen;
        self.restart_seen = r.restart;
        if self.progress.phase == Phase::Pending {
            if tick < self.t0_ms {
                return Step::Nothing;
            }
            self.progress = Progress::start();
            self.stage_began(tick, lag, interval_ms);
            self.held = None;
            return Step::Started;
        }
        if restart {
            self.generation += 1;
            self.progress = Progress::start();
            self.stage_began(tick, lag, interval_ms);
            self.tests.clear();
            self.gates.clear();
            self.held = None;
            return Step::Restarted;
        }
        if !self.progress.phase.active() {
            return Step::Nothing;
        }
        let id = self.id();
        if let Some((_, phase)) = r.ended.iter().find(|(run, _)| *run == id) {
            self.progress.phase = *phase;
            self.held = None;
            return Step::Followed(*phase);
        }
        if r.abort {
            self.progress.phase = Phase::Aborted;
            self.held = None;
            return Step::RolledBack {
                kind: "manual",
                reason: "aborted through the shared config (rollout.action: abort)".into(),
            };
        }
        if r.promote {
            self.progress.phase = Phase::Promoted;
            self.held = None;
            return Step::Promoted(
                "promoted through the shared config (rollout.action: promote)".into(),
            );
        }
        if r.paused {
            self.progress.phase = Phase::Paused;
        } else if self.progress.phase == Phase::Paused {
            self.progress.phase = Phase::Running;
        }
        if self.evidence_started_ms.is_none() && tick >= self.evidence_from_ms {
            self.evidence_started_ms = Some(tick);
            self.tests = vec![(1, self.sums[0], tick)];
        }
        let baking = self.evidence_started_ms.is_some_and(|t| tick > t);
        if r.canary.is_none() {
            self.held = Some("no fleet numbers for the canary in Prometheus yet".into());
            return Step::Nothing;
        }
        if let Some(&(k, _, at)) = self.tests.last() {
            if tick - at >= window_ms {
                self.tests.push((k + 1, self.sums[0], tick));
                if self.tests.len() > 8 {
                    self.tests.remove(1); // keep the stage-start test and the newest
                }
            }
        }
        let base = self
            .ring
            .front()
            .map_or([Counts::default(); 2], |(_, s)| *s);
        let cw = self.sums[0].since(&base[0]);
        let bw = self.sums[1].since(&base[1]);
        let tests: Vec<(u32, Snapshot)> = self
            .tests
            .iter()
            .map(|(k, s, _)| (*k, self.sums[0].since(s)))
            .collect();
        let lookup = |name: &str| r.prometheus.get(name).copied().flatten();
        let mut pooled = plan.clone();
        pooled.confidence = 1.0 - (1.0 - plan.confidence) / 2.0;
        let judged = gates::judge(
            &pooled,
            &Evidence {
                canary: &cw,
                baseline: &bw,
                tests: &tests,
                prometheus: &lookup,
            },
        );
        let judgement = Judgement {
            gates: judged.clone(),
            smoke_failures: Vec::new(),
        };
        let (mut decision, mut next) =
            decide(&pooled, &self.progress, &judgement, tick, plan.interval);
        if !baking
            && matches!(
                decision,
                Decision::Bake | Decision::Advance(_) | Decision::Promote
            )
        {
            next = self.progress.clone();
            decision = Decision::Hold(format!(
                "waiting {} for the stage's traffic to show in Prometheus (fleet.lag)",
                crate::config::duration::format(lag)
            ));
        }
        if judged.iter().any(|g| g.verdict == Verdict::Warning) && self.first_warning_ms.is_none() {
            self.first_warning_ms = Some(tick);
        }
        self.gates = judged;
        self.progress = next;
        match decision {
            Decision::Idle => Step::Nothing,
            Decision::Hold(reason) => {
                self.held = Some(reason);
                Step::Nothing
            }
            Decision::Bake => {
                self.held = None;
                Step::Nothing
            }
            Decision::Advance(stage) => {
                self.held = None;
                self.stage_began(tick, lag, interval_ms);
                Step::Advanced(stage)
            }
            Decision::Promote => {
                self.held = None;
                Step::Promoted(format!("all {} stages passed", plan.stages.len()))
            }
            Decision::Rollback { kind, reason } => {
                self.held = None;
                Step::RolledBack {
                    kind: kind.label(),
                    reason,
                }
            }
        }
    }
}

/// The id of run `generation` of rollout `base`.
pub fn run_id(base: &str, generation: u32) -> String {
    if generation == 0 {
        base.to_string()
    } else {
        format!("{base}-r{generation}")
    }
}

#[cfg(test)]
mod tests;
