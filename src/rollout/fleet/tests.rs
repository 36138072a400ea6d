//! The fleet's state machine: same readings, same decisions; a late
//! replica that replays lands where the others are.

use std::time::Duration;

use super::readings::bucket_index;
use super::*;

const SEC: i64 = 1_000;
const T0: i64 = 1_795_000_000_000;

fn plan(extra: &str) -> Plan {
    let yaml = format!(
        "listeners: [{{ addr: \"127.0.0.1:0\" }}]\nroutes:\n  - name: api\n    backends: [{{ name: stable, url: \"http://127.0.0.1:1\" }}, {{ name: canary, url: \"http://127.0.0.1:2\" }}]\n    rollout:\n      baseline: stable\n      canary: canary\n      interval: 1s\n      window: 10s\n      min_requests: 20\n      stages: [{{ weight: 10, bake: 3s }}, {{ weight: 50, bake: 3s }}, {{ weight: 100, bake: 3s }}]\n      gates: {{ success_rate: {{ critical: 95 }} }}\n{extra}"
    );
    let doc = crate::config::parse_document(&yaml, crate::config::Syntax::Yaml).unwrap();
    let cfg = crate::config::validate(doc, std::path::Path::new(".")).unwrap();
    (*cfg.routes[0].rollout.clone().unwrap()).clone()
}

/// Cumulative fleet counts after `n` canary requests of which `bad` failed.
fn counts(n: u64, bad: u64) -> Counts {
    let mut c = Counts::default();
    c.classes[0] = n - bad;
    c.classes[3] = bad;
    c.buckets[2] = n - bad + bad;
    c
}

/// Readings of a fleet whose canary gets `per_tick` requests a tick,
/// `bad_every`-th of them failing (0: none).
fn readings(ticks: usize, per_tick: u64, fail_share: f64) -> Vec<Reading> {
    (0..ticks)
        .map(|i| {
            let n = per_tick * i as u64;
            let bad = (n as f64 * fail_share) as u64;
            Reading {
                tick_ms: T0 + i as i64 * SEC,
                canary: Some(counts(n, bad)),
                baseline: Some(counts(n * 4, 0)),
                ..Reading::default()
            }
        })
        .collect()
}

const LAG: Duration = Duration::from_secs(2);

fn run(track: &mut Track, plan: &Plan, rs: &[Reading]) -> Vec<(i64, Step)> {
    rs.iter()
        .map(|r| (r.tick_ms, track.step(plan, LAG, r)))
        .filter(|(_, s)| *s != Step::Nothing)
        .collect()
}

#[test]
fn a_healthy_canary_is_promoted_stage_by_stage_after_the_lag() {
    let p = plan("");
    let mut t = Track::new("r1", T0);
    let steps = run(&mut t, &p, &readings(30, 50, 0.0));
    let kinds: Vec<&Step> = steps.iter().map(|(_, s)| s).collect();
    assert_eq!(
        kinds,
        [
            &Step::Started,
            &Step::Advanced(1),
            &Step::Advanced(2),
            &Step::Promoted("all 3 stages passed".into())
        ],
        "{steps:?}"
    );
    // Each stage waits the lag (2 ticks) for its traffic to show, then
    // bakes 3 s from the tick after: started at 0, advanced at 5, then 10,
    // promoted at 15.
    let at: Vec<i64> = steps.iter().map(|(t, _)| (t - T0) / SEC).collect();
    assert_eq!(at, [0, 5, 10, 15]);
    assert_eq!(t.progress.phase, Phase::Promoted);
}

#[test]
fn a_failing_canary_is_rolled_back_by_the_pooled_evidence() {
    let p = plan("");
    let mut t = Track::new("r1", T0);
    let steps = run(&mut t, &p, &readings(20, 50, 0.2));
    assert!(
        matches!(
            steps.last(),
            Some((
                _,
                Step::RolledBack {
                    kind: "critical",
                    ..
                }
            ))
        ),
        "{steps:?}"
    );
    assert_eq!(t.progress.phase, Phase::RolledBack);
}

#[test]
fn replicas_that_read_the_same_numbers_agree_and_a_late_one_catches_up() {
    let p = plan("");
    let rs = readings(30, 40, 0.0);
    let mut a = Track::new("r1", T0);
    let mut b = Track::new("r1", T0);
    for (i, r) in rs.iter().enumerate() {
        assert_eq!(a.step(&p, LAG, r), b.step(&p, LAG, r));
        assert_eq!(a.progress, b.progress, "tick {i}");
        if i == 12 {
            // A replica that joins now replays every reading since t0.
            let mut late = Track::new("r1", T0);
            run(&mut late, &p, &rs[..=i]);
            assert_eq!(late.progress, a.progress);
            assert_eq!(late.next_ms, a.next_ms);
        }
    }
}

#[test]
fn a_replica_that_restarts_loses_one_tick_not_the_evidence() {
    let p = plan("");
    let mut rs = readings(20, 50, 0.2);
    // At tick 8 one replica restarted: the fleet's sums fall by its share.
    for r in rs.iter_mut().skip(8) {
        let c = r.canary.as_mut().unwrap();
        c.classes[0] = c.classes[0].saturating_sub(150);
        c.classes[3] = c.classes[3].saturating_sub(40);
    }
    let mut t = Track::new("r1", T0);
    let steps = run(&mut t, &p, &rs);
    assert!(
        steps
            .iter()
            .any(|(_, s)| matches!(s, Step::RolledBack { .. })),
        "{steps:?}"
    );
}

#[test]
fn the_shared_config_pauses_promotes_and_aborts_at_one_tick() {
    let p = plan("");
    let mut rs = readings(40, 50, 0.0);
    for r in rs.iter_mut().take(20).skip(3) {
        r.paused = true;
    }
    let mut t = Track::new("r1", T0);
    run(&mut t, &p, &rs[..20]);
    assert_eq!((t.progress.phase, t.progress.stage), (Phase::Paused, 0));
    run(&mut t, &p, &rs[20..26]);
    assert_eq!(t.progress.phase, Phase::Running);
    assert_eq!(t.progress.stage, 1, "resumed and baked on");

    let mut aborted = Track::new("r1", T0);
    let mut rs2 = readings(10, 50, 0.0);
    rs2[4].abort = true;
    let steps = run(&mut aborted, &p, &rs2);
    assert!(matches!(
        steps[1],
        (_, Step::RolledBack { kind: "manual", .. })
    ));
    assert_eq!(aborted.progress.phase, Phase::Aborted);

    let mut promoted = Track::new("r1", T0);
    let mut rs3 = readings(10, 50, 0.0);
    rs3[4].promote = true;
    run(&mut promoted, &p, &rs3);
    assert_eq!(promoted.progress.phase, Phase::Promoted);
}

#[test]
fn a_rollback_elsewhere_is_followed_and_nothing_else_latches() {
    let p = plan("");
    let mut rs = readings(10, 50, 0.0);
    rs[6].ended = vec![("r1".into(), Phase::RolledBack)];
    let mut t = Track::new("r1", T0);
    let steps = run(&mut t, &p, &rs);
    assert_eq!(steps.last().unwrap().1, Step::Followed(Phase::RolledBack));
    // A restart through the config is a new run, which the old run's
    // ending (still in the readings) does not touch.
    let mut again = Track::new("r1", T0);
    let mut rs = readings(40, 50, 0.0);
    for r in rs.iter_mut().skip(6) {
        r.ended = vec![("r1".into(), Phase::RolledBack)];
    }
    for r in rs.iter_mut().skip(10) {
        r.restart = true; // left in the file: one restart, not one a tick
    }
    let steps = run(&mut again, &p, &rs);
    let restarts = steps.iter().filter(|(_, s)| *s == Step::Restarted).count();
    assert_eq!(restarts, 1, "{steps:?}");
    assert_eq!(again.id(), "r1-r1");
    assert_eq!(again.progress.phase, Phase::Promoted);
    // A new rollout (a new id) starts clean: its readings carry no ending.
    let mut fresh = Track::new("r1", T0 + 10 * SEC);
    let later: Vec<Reading> = readings(30, 50, 0.0)
        .into_iter()
        .map(|mut r| {
            r.tick_ms += 10 * SEC;
            r
        })
        .collect();
    run(&mut fresh, &p, &later);
    assert_eq!(fresh.progress.phase, Phase::Promoted);
}

#[test]
fn without_numbers_nothing_advances() {
    let p = plan("");
    let mut rs = readings(30, 50, 0.0);
    for r in rs.iter_mut() {
        r.canary = None;
    }
    let mut t = Track::new("r1", T0);
    run(&mut t, &p, &rs);
    assert_eq!((t.progress.phase, t.progress.stage), (Phase::Running, 0));
    assert!(t.held.as_deref().unwrap().contains("no fleet numbers"));
}

#[test]
fn le_labels_find_their_buckets() {
    assert_eq!(bucket_index("0.0005"), Some(0));
    assert_eq!(bucket_index("0.25"), Some(8));
    assert_eq!(bucket_index("60"), Some(15));
    assert_eq!(bucket_index("+Inf"), Some(16));
    assert_eq!(bucket_index("0.3"), None);
    assert_eq!(grid_ceil(T0 + 1, 10 * SEC), T0 + 10 * SEC);
    assert_eq!(grid_ceil(T0, 10 * SEC), T0);
}
