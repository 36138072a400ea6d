//! A fleet of replicas judging one canary, simulated with sluice's own
//! code: the fleet's state machine ([`sluice::rollout::fleet::Track`]) fed
//! the readings Prometheus would give at `tick − lag`, and each replica's
//! own fast check (every 100 ms, on its own traffic, with `α / (2·N)`).
//!
//! `cargo run --release --example fleet_sim -- [runs]` prints, for a fleet
//! of 10 replicas with uneven load:
//! - how often a healthy canary is rolled back somewhere (at the critical
//!   line itself, the worst case for the guarantee, and at a fifth of it),
//!   beside independent replicas that each spend the whole α;
//! - the fleet-wide canary requests until a 10 %-failing canary is rolled
//!   back, beside one replica that sees all the traffic;
//! - the time from the first replica's rollback to the last.
//!
//! The rollout is `deploy/kubernetes/edge.yaml`'s shape: scrape every
//! 10 s, `fleet.lag: 20s`, a 30 s interval, a 5 m window, 100 requests
//! needed, success rate critical below 99.5 % at confidence 0.999; stages
//! 10 → 50 → 100 % baked 10 m each (shorter than the manifest's, the
//! guarantee does not depend on it); 100 requests a second in all.

use std::time::Duration;

use sluice::config::plan::Plan;
use sluice::rollout::fleet::{Counts, Reading, Step, Track};
use sluice::rollout::sequential;

const REPLICAS: usize = 10;
const RATE: f64 = 100.0; // requests a second, fleet-wide
const STEP_MS: i64 = 100; // the replicas' own checks
const SCRAPE_MS: i64 = 10_000;
const LAG: Duration = Duration::from_secs(20);
const T0: i64 = 1_800_000_000_000;

fn plan() -> Plan {
    let yaml = "listeners: [{ addr: \"127.0.0.1:0\" }]\nroutes:\n  - name: api\n    backends: [{ name: stable, url: \"http://127.0.0.1:1\" }, { name: canary, url: \"http://127.0.0.1:2\" }]\n    rollout:\n      baseline: stable\n      canary: canary\n      interval: 30s\n      window: 5m\n      min_requests: 100\n      confidence: 0.999\n      stages: [{ weight: 10, bake: 10m }, { weight: 50, bake: 10m }, { weight: 100, bake: 10m }]\n      gates: { success_rate: { critical: 99.5 } }\n";
    let doc = sluice::config::parse_document(yaml, sluice::config::Syntax::Yaml).unwrap();
    let cfg = sluice::config::validate(doc, std::path::Path::new(".")).unwrap();
    (*cfg.routes[0].rollout.clone().unwrap()).clone()
}

/// Each replica's share of the load: 1/(i+1), normalized (the first gets
/// 34 %, the last 3 %).
fn shares() -> Vec<f64> {
    let w: Vec<f64> = (0..REPLICAS).map(|i| 1.0 / (i as f64 + 1.0)).collect();
    let sum: f64 = w.iter().sum();
    w.iter().map(|x| x / sum).collect()
}

fn poisson(rng: &mut fastrand::Rng, mean: f64) -> u64 {
    // Knuth's method; the means here are small (a replica's 100 ms).
    let l = (-mean).exp();
    let (mut k, mut p) = (0, 1.0);
    loop {
        p *= rng.f64();
        if p <= l {
            return k;
        }
        k += 1;
    }
}

/// One replica's own check, as the controller's fast path runs it: a test
/// from the stage start and a new one every window, criticals only once
/// the window holds `min_requests`.
struct Local {
    confidence: f64,
    /// Per-second (requests, failures) of the last window.
    ring: std::collections::VecDeque<(u64, u64)>,
    second: (u64, u64),
    total: (u64, u64),
    tests: Vec<(u32, (u64, u64), i64)>,
    /// The window held `min_requests` at the last look.
    enough: bool,
}

impl Local {
    fn new(confidence: f64, now: i64) -> Local {
        Local {
            confidence,
            ring: Default::default(),
            second: (0, 0),
            total: (0, 0),
            tests: vec![(1, (0, 0), now)],
            enough: false,
        }
    }

    fn restart(&mut self, now: i64) {
        self.tests = vec![(1, self.total, now)];
        self.enough = false;
    }

    /// Records a 100 ms step; whether the critical line is crossed.
    fn check(&mut self, plan: &Plan, now: i64, n: u64, bad: u64, p0: f64) -> bool {
        self.second.0 += n;
        self.second.1 += bad;
        self.total.0 += n;
        self.total.1 += bad;
        if now % 1000 == 0 {
            self.ring.push_back(self.second);
            self.second = (0, 0);
            while self.ring.len() as u128 > plan.window.as_secs() as u128 {
                self.ring.pop_front();
            }
        }
        let &(k, _, at) = self.tests.last().unwrap();
        if (now - at) as u128 >= plan.window.as_millis() {
            self.tests.push((k + 1, self.total, now));
            if self.tests.len() > 8 {
                self.tests.remove(1);
            }
        }
        let in_window: u64 = self.ring.iter().map(|s| s.0).sum::<u64>() + self.second.0;
        let enough = in_window >= plan.min_requests;
        // Evidence grows only with a failure: once the window has enough, a
        // step without one cannot cross the line (this skips arithmetic,
        // not a look).
        let unchanged = bad == 0 && self.enough;
        self.enough = enough;
        if unchanged {
            return false;
        }
        enough
            && self.tests.iter().any(|(k, (n0, b0), _)| {
                sequential::exceeds(
                    self.total.1 - b0,
                    self.total.0 - n0,
                    p0,
                    self.confidence,
                    *k,
                )
            })
    }
}

struct Outcome {
    /// When the first replica (or the fleet) rolled back, and how.
    first: Option<(i64, bool)>,
    /// Canary requests, fleet-wide, up to the first rollback.
    requests: u64,
    /// From the first rollback to the last replica's.
    spread_ms: i64,
}

/// One rollout of a canary failing `rate` of requests. `fleet`: the
/// replicas split α and pool their evidence; otherwise each judges alone
/// with the whole α.
fn rollout(
    rng: &mut fastrand::Rng,
    plan: &Plan,
    rate: f64,
    fleet: bool,
    shares: &[f64],
) -> Outcome {
    let interval = plan.interval.as_millis() as i64;
    let p0 = 0.005;
    let alpha = 1.0 - plan.confidence;
    let local_conf = if fleet {
        1.0 - alpha / (2.0 * shares.len() as f64)
    } else {
        plan.confidence
    };
    let end = T0
        + plan
            .stages
            .iter()
            .map(|s| s.bake.as_millis() as i64)
            .sum::<i64>()
            * 2;
    let mut locals: Vec<Local> = shares.iter().map(|_| Local::new(local_conf, T0)).collect();
    let mut track = Track::new("sim", T0);
    let mut fleet_total = (0u64, 0u64);
    let mut scraped: Vec<(i64, (u64, u64))> = vec![(T0, (0, 0))];
    let mut stage_weight = plan.stages[0].weight as f64 / 100.0;
    let mut requests = 0;
    let mut now = T0;
    let reading = |scraped: &[(i64, (u64, u64))], tick: i64| {
        let at = tick - LAG.as_millis() as i64;
        let (_, (n, bad)) = *scraped
            .iter()
            .rev()
            .find(|(t, _)| *t <= at)
            .unwrap_or(&scraped[0]);
        let mut c = Counts::default();
        c.classes[0] = n - bad;
        c.classes[3] = bad;
        c.buckets[2] = n - bad;
        c
    };
    while now < end {
        now += STEP_MS;
        for (i, share) in shares.iter().enumerate() {
            let n = poisson(rng, RATE * share * stage_weight * STEP_MS as f64 / 1000.0);
            let bad = (0..n).filter(|_| rng.f64() < rate).count() as u64;
            requests += n;
            fleet_total.0 += n;
            fleet_total.1 += bad;
            if locals[i].check(plan, now, n, bad, p0) {
                // Local rollback: the others follow at the first tick whose
                // reading (tick − lag) shows the next scrape after it.
                let shown = (now / SCRAPE_MS + 1) * SCRAPE_MS;
                let follow =
                    sluice::rollout::fleet::grid_ceil(shown + LAG.as_millis() as i64, interval);
                let spread = if fleet { follow - now } else { 0 };
                return Outcome {
                    first: Some((now, true)),
                    requests,
                    spread_ms: spread,
                };
            }
        }
        if now % SCRAPE_MS == 0 {
            scraped.push((now, fleet_total));
        }
        if fleet && now % interval == 0 {
            let r = Reading {
                tick_ms: now,
                canary: Some(reading(&scraped, now)),
                baseline: Some(Counts::default()),
                ..Reading::default()
            };
            match track.step(plan, LAG, &r) {
                Step::RolledBack { .. } => {
                    return Outcome {
                        first: Some((now, false)),
                        requests,
                        spread_ms: 0,
                    }
                }
                Step::Advanced(s) => {
                    stage_weight = plan.stages[s].weight as f64 / 100.0;
                    for l in &mut locals {
                        l.restart(now);
                    }
                }
                Step::Promoted(_) => break,
                _ => {}
            }
        } else if !fleet && now % interval == 0 {
            // Alone, each replica advances on its own bake; for the false
            // rollback figure only the stage's weight matters.
            let bake = plan.stages[0].bake.as_millis() as i64;
            let stage = (((now - T0) / bake) as usize).min(plan.stages.len() - 1);
            let w = plan.stages[stage].weight as f64 / 100.0;
            if w != stage_weight {
                stage_weight = w;
                for l in &mut locals {
                    l.restart(now);
                }
            }
        }
    }
    Outcome {
        first: None,
        requests,
        spread_ms: 0,
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(400);
    let plan = plan();
    let ten = shares();
    let one = vec![1.0];
    let mut rng = fastrand::Rng::with_seed(7);
    println!(
        "{runs} rollouts each; {REPLICAS} replicas with shares {:.0?} %",
        ten.iter().map(|s| s * 100.0).collect::<Vec<_>>()
    );
    println!();
    println!("| healthy canary | fleet (pooled, α split) | independent replicas (α each) |");
    println!("|---|---|---|");
    for (what, rate) in [
        ("at the critical line (0.5 % failing)", 0.005),
        ("at a fifth of it (0.1 %)", 0.001),
    ] {
        let rolled = |fleet: bool, rng: &mut fastrand::Rng| {
            (0..runs)
                .filter(|_| rollout(rng, &plan, rate, fleet, &ten).first.is_some())
                .count()
        };
        let a = rolled(true, &mut rng);
        let b = rolled(false, &mut rng);
        println!(
            "| {what} | {:.2} % ({a} of {runs}) | {:.2} % ({b} of {runs}) |",
            a as f64 * 100.0 / runs as f64,
            b as f64 * 100.0 / runs as f64
        );
    }
    println!();
    let mut fleet_req = Vec::new();
    let mut single_req = Vec::new();
    let mut spreads = Vec::new();
    let mut local_first = 0;
    for _ in 0..runs {
        let o = rollout(&mut rng, &plan, 0.10, true, &ten);
        if let Some((_, local)) = o.first {
            fleet_req.push(o.requests as f64);
            spreads.push(o.spread_ms as f64 / 1000.0);
            local_first += local as usize;
        }
        let s = rollout(&mut rng, &plan, 0.10, false, &one);
        if s.first.is_some() {
            single_req.push(s.requests as f64);
        }
    }
    let max_spread = spreads.iter().cloned().fold(0.0, f64::max);
    println!("| a canary failing 10 % | fleet of {REPLICAS} | one replica with all the traffic |");
    println!("|---|---|---|");
    println!(
        "| median canary requests to the first rollback | {:.0} ({} of {runs} caught) | {:.0} ({} of {runs} caught) |",
        median(&mut fleet_req),
        fleet_req.len(),
        median(&mut single_req),
        single_req.len()
    );
    println!(
        "| first rollback by | a replica's own check in {local_first} runs, the pooled gates in {} | - |",
        fleet_req.len() - local_first
    );
    println!(
        "| first to last replica's rollback | median {:.1} s, at most {max_spread:.1} s | - |",
        median(&mut spreads)
    );
}
