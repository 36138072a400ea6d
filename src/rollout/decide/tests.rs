//! Every row of the decision matrix.

use std::time::Duration;

use super::*;
use crate::rollout::gates::{GateResult, LineView, Verdict};

fn plan(extra: &str) -> Plan {
    let yaml = format!(
        "listeners: [{{ addr: \"127.0.0.1:0\" }}]\nroutes:\n  - name: api\n    backends: [{{ name: stable, url: \"http://127.0.0.1:1\" }}, {{ name: canary, url: \"http://127.0.0.1:2\" }}]\n    rollout:\n      baseline: stable\n      canary: canary\n      stages: [{{ weight: 10, bake: 1s }}, {{ weight: 100, bake: 1s }}]\n      gates: {{ success_rate: {{ warning: 99, critical: 95 }} }}\n{extra}"
    );
    let doc = crate::config::parse_document(&yaml, crate::config::Syntax::Yaml).unwrap();
    let cfg = crate::config::validate(doc, std::path::Path::new(".")).unwrap();
    (*cfg.routes[0].rollout.clone().unwrap()).clone()
}

fn gate(verdict: Verdict) -> GateResult {
    GateResult {
        name: "success_rate".into(),
        value: Some(97.0),
        unit: "%".into(),
        warning: Some(LineView {
            bad: "below".into(),
            value: 99.0,
        }),
        critical: Some(LineView {
            bad: "below".into(),
            value: 95.0,
        }),
        verdict,
        detail: String::new(),
    }
}

fn judged(verdict: Verdict) -> Judgement {
    Judgement {
        gates: vec![gate(verdict)],
        smoke_failures: vec![],
    }
}

const T0: i64 = 1_795_000_000_000; // a Tuesday, 2026-11-17... any instant works without windows
const SEC: Duration = Duration::from_secs(1);

#[test]
fn pass_bakes_then_advances_then_promotes() {
    let p = plan("");
    let start = Progress::start();
    let (d, s) = decide(
        &p,
        &start,
        &judged(Verdict::Pass),
        T0,
        Duration::from_millis(400),
    );
    assert_eq!((d, s.bake_done_ms), (Decision::Bake, 400));
    let (d, s) = decide(
        &p,
        &s,
        &judged(Verdict::Pass),
        T0,
        Duration::from_millis(700),
    );
    assert_eq!((d, s.stage, s.bake_done_ms), (Decision::Advance(1), 1, 0));
    let (d, s) = decide(&p, &s, &judged(Verdict::Pass), T0, SEC);
    assert_eq!((d, s.phase), (Decision::Promote, Phase::Promoted));
    let (d, _) = decide(&p, &s, &judged(Verdict::Critical), T0, SEC);
    assert_eq!(d, Decision::Idle, "a finished rollout decides nothing");
}

#[test]
fn critical_rolls_back_at_once_even_when_paused() {
    let p = plan("");
    for phase in [Phase::Running, Phase::Paused] {
        let s = Progress {
            phase,
            ..Progress::start()
        };
        let (d, next) = decide(&p, &s, &judged(Verdict::Critical), T0, SEC);
        assert!(
            matches!(
                d,
                Decision::Rollback {
                    kind: RollbackKind::Critical,
                    ..
                }
            ),
            "{d:?}"
        );
        assert_eq!(next.phase, Phase::RolledBack);
    }
}

#[test]
fn a_failed_smoke_check_rolls_back_even_when_metrics_pass() {
    let p = plan("");
    let j = Judgement {
        gates: vec![gate(Verdict::Pass)],
        smoke_failures: vec!["\"upload\": status 500".into()],
    };
    let (d, _) = decide(&p, &Progress::start(), &j, T0, SEC);
    assert!(
        matches!(
            d,
            Decision::Rollback {
                kind: RollbackKind::Smoke,
                ..
            }
        ),
        "{d:?}"
    );
}

#[test]
fn a_warning_holds_the_stage_with_pause_and_not_with_ignore() {
    let (d, s) = decide(
        &plan(""),
        &Progress::start(),
        &judged(Verdict::Warning),
        T0,
        SEC,
    );
    assert!(matches!(d, Decision::Hold(_)), "{d:?}");
    assert_eq!(s.bake_done_ms, 0);
    let (d, s) = decide(
        &plan("      on_warning: ignore\n"),
        &Progress::start(),
        &judged(Verdict::Warning),
        T0,
        Duration::from_millis(500),
    );
    assert_eq!((d, s.bake_done_ms), (Decision::Bake, 500));
}

#[test]
fn inconclusive_neither_advances_nor_rolls_back() {
    let p = plan("");
    let mut s = Progress::start();
    for _ in 0..100 {
        let (d, next) = decide(&p, &s, &judged(Verdict::Inconclusive), T0, SEC);
        assert!(
            matches!(d, Decision::Hold(ref r) if r.starts_with("inconclusive")),
            "{d:?}"
        );
        s = next;
    }
    assert_eq!((s.phase, s.stage, s.bake_done_ms), (Phase::Running, 0, 0));
}

#[test]
fn escalate_counts_warning_onsets_within_the_period() {
    let p = plan("      escalate: { warnings: 3, within: 1m }\n");
    let mut s = Progress::start();
    let mut t = T0;
    let mut last = Decision::Idle;
    // warning, pass, warning, pass, warning: three onsets within a minute.
    for v in [
        Verdict::Warning,
        Verdict::Pass,
        Verdict::Warning,
        Verdict::Pass,
        Verdict::Warning,
    ] {
        let (d, next) = decide(&p, &s, &judged(v), t, Duration::ZERO);
        s = next;
        last = d;
        t += 5_000;
    }
    assert!(
        matches!(
            last,
            Decision::Rollback {
                kind: RollbackKind::Escalate,
                ..
            }
        ),
        "{last:?}"
    );
    // Spread over more than the period, they do not add up.
    let mut s = Progress::start();
    let mut t = T0;
    for v in [
        Verdict::Warning,
        Verdict::Pass,
        Verdict::Warning,
        Verdict::Pass,
        Verdict::Warning,
    ] {
        let (d, next) = decide(&p, &s, &judged(v), t, Duration::ZERO);
        assert!(!matches!(d, Decision::Rollback { .. }), "{d:?}");
        s = next;
        t += 40_000;
    }
}

#[test]
fn sustained_warning_rolls_back() {
    let p = plan("      sustained: 10s\n");
    let mut s = Progress::start();
    let mut decisions = Vec::new();
    for i in 0..4 {
        let (d, next) = decide(&p, &s, &judged(Verdict::Warning), T0 + i * 4_000, SEC);
        s = next;
        decisions.push(d);
    }
    assert!(matches!(decisions[2], Decision::Hold(_)));
    assert!(
        matches!(
            decisions[3],
            Decision::Rollback {
                kind: RollbackKind::Sustained,
                ..
            }
        ),
        "{decisions:?}"
    );
}

#[test]
fn a_closed_window_holds_the_advance_but_not_a_rollback() {
    // 2026-11-23 is a Monday; the window is Tuesday only.
    let monday_noon = "2026-11-23T12:00:00Z"
        .parse::<jiff::Timestamp>()
        .unwrap()
        .as_millisecond();
    let tuesday_noon = monday_noon + 86_400_000;
    let p = plan("      windows: [{ days: [tue], from: \"10:00\", to: \"14:00\", tz: UTC }]\n");
    let (d, s) = decide(
        &p,
        &Progress::start(),
        &judged(Verdict::Pass),
        monday_noon,
        SEC * 2,
    );
    assert!(
        matches!(d, Decision::Hold(ref r) if r.contains("window")),
        "{d:?}"
    );
    assert_eq!(s.stage, 0);
    let (d, _) = decide(&p, &s, &judged(Verdict::Critical), monday_noon, SEC);
    assert!(matches!(d, Decision::Rollback { .. }));
    let (d, s) = decide(&p, &s, &judged(Verdict::Pass), tuesday_noon, SEC);
    assert_eq!((d, s.stage), (Decision::Advance(1), 1));
}

#[test]
fn manual_pause_holds() {
    let p = plan("");
    let s = Progress {
        phase: Phase::Paused,
        ..Progress::start()
    };
    let (d, next) = decide(&p, &s, &judged(Verdict::Pass), T0, SEC * 5);
    assert_eq!(d, Decision::Hold("paused".into()));
    assert_eq!(next.bake_done_ms, 0);
}

#[test]
fn windows_span_midnight() {
    let p = plan("      windows: [{ days: [fri], from: \"22:00\", to: \"02:00\" }]\n");
    let at = |s: &str| p.window_open(s.parse().unwrap());
    assert!(at("2026-11-27T23:00:00Z"), "Friday night");
    assert!(
        at("2026-11-28T01:00:00Z"),
        "early Saturday belongs to Friday's window"
    );
    assert!(!at("2026-11-28T03:00:00Z"));
    assert!(
        !at("2026-11-27T01:00:00Z"),
        "early Friday belongs to Thursday"
    );
}
