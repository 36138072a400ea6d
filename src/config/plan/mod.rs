//! Rollout plans: the typed form of a route's `rollout:` section.

use std::time::Duration;

use super::raw;
use super::{duration, Problem};

mod checks;
mod gates;
use checks::{deploy_window, smoke};
use gates::gates;

/// A validated rollout plan. Stage weights strictly increase and end at
/// most at 100; every gate has at least one line; windows open.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub baseline: usize,
    pub canary: usize,
    pub stages: Vec<StagePlan>,
    pub interval: Duration,
    pub window: Duration,
    pub min_requests: u64,
    pub confidence: f64,
    pub gates: Vec<Gate>,
    pub smoke: Vec<SmokeCheck>,
    pub on_warning: OnWarning,
    pub escalate: Option<(u64, Duration)>,
    pub sustained: Option<Duration>,
    pub windows: Vec<DeployWindow>,
    pub started_at: Option<jiff::Timestamp>,
    /// `paused: true`: hold on every replica while set.
    pub paused: bool,
    /// `action:` promote or abort, applied once by every replica at the
    /// same tick (restart is part of the rollout's id instead).
    pub action: Option<ConfigAction>,
}

/// A rollout action written in the shared config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigAction {
    Promote,
    Abort,
    Restart,
}

impl ConfigAction {
    pub fn label(self) -> &'static str {
        match self {
            ConfigAction::Promote => "promote",
            ConfigAction::Abort => "abort",
            ConfigAction::Restart => "restart",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StagePlan {
    /// The canary's share, percent.
    pub weight: u32,
    pub bake: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnWarning {
    Pause,
    Ignore,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Gate {
    /// As written in the config: `success_rate`, `latency_p95`, or a Prometheus gate's name.
    pub name: String,
    pub kind: GateKind,
    pub warning: Option<Line>,
    pub critical: Option<Line>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum GateKind {
    /// Percent of canary responses that are not 5xx or errors.
    SuccessRate,
    /// Canary latency quantile, in milliseconds.
    Latency { quantile: f64 },
    /// Canary latency quantile over the baseline's, as a ratio.
    LatencyVsBaseline { quantile: f64 },
    /// Canary error rate over the baseline's, as a ratio.
    ErrorRateVsBaseline,
    /// A number from a Prometheus server, read at aligned timestamps.
    Prometheus {
        url: String,
        query: String,
        lag: Duration,
    },
}

/// Where a gate's value turns bad.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Line {
    /// Bad when the value is below this.
    Below(f64),
    /// Bad when the value is above this.
    Above(f64),
}

impl Line {
    pub fn crossed_by(self, value: f64) -> bool {
        match self {
            Line::Below(l) => value < l,
            Line::Above(l) => value > l,
        }
    }

    pub fn value(self) -> f64 {
        match self {
            Line::Below(v) | Line::Above(v) => v,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SmokeCheck {
    pub name: String,
    pub method: http::Method,
    pub path: http::uri::PathAndQuery,
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    pub body: String,
    pub expect_status: u16,
    pub expect_body_contains: Option<String>,
    pub expect_latency_below: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeployWindow {
    /// Days as `jiff::civil::Weekday::to_monday_one_offset` (1 = Monday).
    pub days: Vec<i8>,
    /// Minutes after midnight; `from > to` spans midnight.
    pub from: u16,
    pub to: u16,
    pub tz: jiff::tz::TimeZone,
}

impl DeployWindow {
    pub fn contains(&self, at: jiff::Timestamp) -> bool {
        let local = at.to_zoned(self.tz.clone());
        let minute = local.hour() as u16 * 60 + local.minute() as u16;
        let day = local.weekday().to_monday_one_offset();
        if self.from < self.to {
            self.days.contains(&day) && (self.from..self.to).contains(&minute)
        } else {
            // Spans midnight: the evening belongs to the listed day, the
            // early morning to the day after it.
            let yesterday = if day == 1 { 7 } else { day - 1 };
            (self.days.contains(&day) && minute >= self.from)
                || (self.days.contains(&yesterday) && minute < self.to)
        }
    }
}

impl Plan {
    /// Whether advancing is allowed at `at` (always, without windows).
    pub fn window_open(&self, at: jiff::Timestamp) -> bool {
        self.windows.is_empty() || self.windows.iter().any(|w| w.contains(at))
    }
}

/// The preset schedules of the staged-deployment practice.
pub fn preset(risk: &str) -> Option<Vec<StagePlan>> {
    let s = |weight, secs| StagePlan {
        weight,
        bake: Duration::from_secs(secs),
    };
    const M: u64 = 60;
    const H: u64 = 3600;
    Some(match risk {
        "low" => vec![s(10, 15 * M), s(50, 15 * M), s(100, 15 * M)],
        "medium" => vec![s(10, 2 * H), s(50, 4 * H), s(100, 24 * H)],
        "high" => vec![
            s(1, 8 * H),
            s(10, 4 * H),
            s(25, 4 * H),
            s(50, 4 * H),
            s(75, 4 * H),
            s(100, 4 * H),
        ],
        _ => return None,
    })
}

struct Ctx<'a> {
    path: String,
    p: &'a mut Vec<Problem>,
}

impl Ctx<'_> {
    fn problem(&mut self, field: &str, message: impl Into<String>) {
        let path = if field.is_empty() {
            self.path.clone()
        } else {
            format!("{}.{field}", self.path)
        };
        self.p.push(Problem::new(path, message));
    }

    fn duration(&mut self, field: &str, text: Option<&str>, default: Duration) -> Duration {
        match text.map(duration::parse) {
            None => default,
            Some(Ok(d)) if !d.is_zero() => d,
            Some(Ok(_)) => {
                self.problem(field, "must be longer than zero");
                default
            }
            Some(Err(e)) => {
                self.problem(field, e);
                default
            }
        }
    }
}

/// Validates a rollout section; `baseline` and `canary` are the backend
/// indices the caller resolved (and reported, if unknown).
pub fn plan(
    r: &raw::Rollout,
    baseline: usize,
    canary: usize,
    path: &str,
    p: &mut Vec<Problem>,
) -> Option<Plan> {
    let before = p.len();
    let mut c = Ctx {
        path: path.to_string(),
        p,
    };

    let stages = match (&r.stages, r.risk.as_deref()) {
        (Some(list), _) => {
            if list.is_empty() {
                c.problem("stages", "list at least one stage");
            }
            let mut out = Vec::new();
            let mut last = 0;
            for (i, s) in list.iter().enumerate() {
                let bake = c.duration(
                    &format!("stages[{i}].bake"),
                    Some(&s.bake),
                    Duration::from_secs(1),
                );
                if s.weight == 0 || s.weight > 100 {
                    c.problem(
                        &format!("stages[{i}].weight"),
                        format!("{} is not a percentage from 1 to 100", s.weight),
                    );
                } else if s.weight <= last {
                    c.problem(
                        &format!("stages[{i}].weight"),
                        format!(
                            "{} does not increase on the stage before ({last}); stages must widen",
                            s.weight
                        ),
                    );
                }
                last = last.max(s.weight);
                out.push(StagePlan {
                    weight: s.weight.min(100) as u32,
                    bake,
                });
            }
            out
        }
        (None, risk) => {
            let risk = risk.unwrap_or("medium");
            preset(risk).unwrap_or_else(|| {
                c.problem(
                    "risk",
                    format!("\"{risk}\" is not one of low, medium, high"),
                );
                Vec::new()
            })
        }
    };
    if r.stages.is_some() && r.risk.is_some() {
        c.problem("risk", "give either risk (a preset) or stages, not both");
    }

    let interval = c.duration("interval", r.interval.as_deref(), Duration::from_secs(30));
    let window = c.duration("window", r.window.as_deref(), Duration::from_secs(300));
    if window > Duration::from_secs(3600) {
        c.problem(
            "window",
            "must be at most 1h (the live windows keep one-second slots)",
        );
    }
    let confidence = r.confidence.unwrap_or(0.999);
    if !(0.5..1.0).contains(&confidence) {
        c.problem(
            "confidence",
            format!("{confidence} must be at least 0.5 and below 1"),
        );
    }
    let min_requests = r.min_requests.unwrap_or(100);

    let gates = gates(r.gates.as_ref(), &mut c);
    let smoke = smoke(&r.smoke, &mut c);
    if gates.is_empty() && smoke.is_empty() {
        c.problem(
            "gates",
            "a rollout needs at least one gate or smoke check to judge the canary by",
        );
    }
    let on_warning = match r.on_warning.as_deref() {
        None | Some("pause") => OnWarning::Pause,
        Some("ignore") => OnWarning::Ignore,
        Some(other) => {
            c.problem(
                "on_warning",
                format!("\"{other}\" is not one of pause, ignore"),
            );
            OnWarning::Pause
        }
    };
    let escalate = r.escalate.as_ref().map(|e| {
        if e.warnings == 0 {
            c.problem("escalate.warnings", "must be at least 1");
        }
        (
            e.warnings,
            c.duration(
                "escalate.within",
                Some(&e.within),
                Duration::from_secs(1800),
            ),
        )
    });
    let sustained = r
        .sustained
        .as_deref()
        .map(|s| c.duration("sustained", Some(s), Duration::from_secs(600)));
    let windows = r
        .windows
        .iter()
        .enumerate()
        .filter_map(|(i, w)| deploy_window(w, &format!("windows[{i}]"), &mut c))
        .collect();
    let started_at = r
        .started_at
        .as_deref()
        .and_then(|t| match t.parse::<jiff::Timestamp>() {
            Ok(ts) => Some(ts),
            Err(e) => {
                c.problem(
                    "started_at",
                    format!("\"{t}\" is not an RFC 3339 time such as 2026-11-24T10:00:00Z: {e}"),
                );
                None
            }
        });
    let action = match r.action.as_deref() {
        None => None,
        Some("promote") => Some(ConfigAction::Promote),
        Some("abort") => Some(ConfigAction::Abort),
        Some("restart") => Some(ConfigAction::Restart),
        Some(other) => {
            c.problem(
                "action",
                format!("\"{other}\" is not one of promote, abort, restart"),
            );
            None
        }
    };
    if p.len() > before {
        return None;
    }
    Some(Plan {
        paused: r.paused.unwrap_or(false),
        action,
        baseline,
        canary,
        stages,
        interval,
        window,
        min_requests,
        confidence,
        gates,
        smoke,
        on_warning,
        escalate,
        sustained,
        windows,
        started_at,
    })
}

/// The rollout's id: what identifies one rollout. Alone, it is the route,
/// the baseline and canary with their addresses and `generation`: a reload
/// that changes none of them keeps the rollout where it is, and a new
/// canary address or generation is a new rollout from stage 1. In a fleet
/// (`fleet` true) the plan is part of it too, with `paused` and `action`
/// left out: replicas that judge by different plans would not agree, so a
/// new plan is a new rollout there.
pub fn fingerprint(route: &raw::Route, fleet: bool) -> Option<String> {
    let r = route.rollout.as_ref()?;
    let url_of = |name: &str| {
        route
            .backends
            .iter()
            .find(|b| b.name == name)
            .map(|b| &b.url)
    };
    let canary = url_of(&r.canary)?;
    let baseline = url_of(&r.baseline).map_or("", |u| u.as_str());
    let plan = if fleet {
        let mut plan = r.clone();
        plan.paused = None;
        plan.action = None;
        serde_json::to_string(&plan).expect("a rollout section serializes")
    } else {
        r.generation.unwrap_or(0).to_string()
    };
    let text = format!(
        "{}\n{}={baseline}\n{}={canary}\n{plan}",
        route.name, r.baseline, r.canary
    );
    Some(format!(
        "{:012x}",
        xxhash_rust::xxh3::xxh3_64(text.as_bytes()) >> 16
    ))
}
