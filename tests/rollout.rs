//! Real rollouts with millisecond bakes against real backends.

mod support;

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use support::*;

const FAST: &str = "interval: 20ms\nwindow: 2s\nmin_requests: 20\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_canary_is_promoted_through_every_stage() {
    let stable = Backend::start("stable").await;
    let canary = Backend::start("canary").await;
    let plan = format!("{FAST}stages: [{{ weight: 10, bake: 300ms }}, {{ weight: 50, bake: 300ms }}, {{ weight: 100, bake: 300ms }}]\ngates:\n  success_rate: {{ warning: 99, critical: 95 }}\n  latency_p99: {{ critical: 2s }}\n");
    let p = start_proxy(&rollout_yaml(&stable, &canary, &plan, "")).await;
    let load = Load::start(
        format!("http://{}/", p.proxy_addr()),
        4,
        Duration::from_secs(30),
    );
    let r = wait_state(&p, "api", "promoted", Duration::from_secs(20)).await;
    let (ok, failed) = load.stop().await;
    assert_eq!(failed, 0);
    assert!(ok > 100);
    assert_eq!(r["stage"], 3);
    let status = admin_json(&p, "/status").await;
    let weights: Vec<u64> = status["routes"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["weight"].as_u64().unwrap())
        .collect();
    assert_eq!(weights, vec![0, 100]);
    let events = admin_json(&p, "/events?route=api").await;
    let kinds: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    for k in ["rollout_started", "stage_advanced", "promoted"] {
        assert!(kinds.contains(&k), "{kinds:?}");
    }
    assert_eq!(kinds.iter().filter(|k| **k == "stage_advanced").count(), 2);
    let m = admin_text(&p, "/metrics").await;
    assert_eq!(
        metric(
            &m,
            "sluice_rollout_state",
            &[("route", "api"), ("state", "promoted")]
        ),
        1.0
    );
    assert_eq!(metric(&m, "sluice_rollout_stage", &[("route", "api")]), 0.0);
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_is_rolled_back_and_everything_agrees() {
    let stable = Backend::start("stable").await;
    let canary = Backend::start("canary").await;
    canary.state.fail_every.store(10, Relaxed); // 10 % of requests fail
    let plan = format!("{FAST}stages: [{{ weight: 10, bake: 1h }}, {{ weight: 100, bake: 1h }}]\ngates:\n  success_rate: {{ warning: 99.5, critical: 98 }}\n");
    let p = start_proxy(&rollout_yaml(&stable, &canary, &plan, "")).await;
    let load = Load::start(
        format!("http://{}/", p.proxy_addr()),
        8,
        Duration::from_secs(60),
    );
    let r = wait_state(&p, "api", "rolled_back", Duration::from_secs(40)).await;
    let at_rollback = canary.state.seen();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, failed) = load.stop().await;
    assert!(
        at_rollback < 1_000,
        "took {at_rollback} canary requests to catch a 10 % failure rate"
    );
    assert_eq!(
        canary.state.seen(),
        at_rollback,
        "no request reached the canary after the rollback"
    );
    assert!(
        failed as f64 <= at_rollback as f64 * 0.2 + 5.0,
        "{failed} client failures"
    );
    assert!(
        r["last_rollback"]
            .as_str()
            .unwrap()
            .contains("critical gate success_rate"),
        "{r:#}"
    );

    let m = admin_text(&p, "/metrics").await;
    assert_eq!(
        metric(
            &m,
            "sluice_rollbacks_total",
            &[("route", "api"), ("reason", "critical")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "sluice_rollout_state",
            &[("route", "api"), ("state", "rolled_back")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "sluice_backend_weight",
            &[("route", "api"), ("backend", "canary")]
        ),
        0.0
    );
    let events = admin_json(&p, "/events?route=api").await;
    let rb = events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "rolled_back")
        .expect("journaled");
    promtool_checks(&m);
    assert_eq!(rb["detail"]["reason"], "critical");
    assert!(rb["detail"]["canary_requests"].as_u64().unwrap() <= at_rollback);

    let (s, report) = get(
        &client(),
        &format!("http://{}/routes/api/report", p.admin_addr),
        &[],
    )
    .await;
    assert_eq!(s, 200);
    for want in [
        "# Incident",
        "## Timeline",
        "rollout started",
        "critical detected",
        "rollback decided",
        "rollback completed",
        "success_rate",
        "level 1",
        "users affected",
        "## Root cause",
        "## Action items",
    ] {
        assert!(report.contains(want), "report lacks {want:?}:\n{report}");
    }
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_smoke_check_rolls_back_even_when_traffic_looks_fine() {
    let stable = Backend::start("stable").await;
    let canary = Backend::start("canary").await;
    let plan = format!("{FAST}stages: [{{ weight: 10, bake: 1h }}]\nsmoke:\n  - {{ name: checkout works, method: POST, path: /checkout, body: \"{{}}\", expect_status: 200, expect_body_contains: order-id }}\n");
    let p = start_proxy(&rollout_yaml(&stable, &canary, &plan, "")).await;
    let r = wait_state(&p, "api", "rolled_back", Duration::from_secs(10)).await;
    assert!(
        r["last_rollback"]
            .as_str()
            .unwrap()
            .contains("smoke check \"checkout works\""),
        "{r:#}"
    );
    assert!(
        canary.state.seen() >= 1,
        "the smoke check reached the canary directly"
    );
    let m = admin_text(&p, "/metrics").await;
    assert_eq!(
        metric(&m, "sluice_rollbacks_total", &[("reason", "smoke")]),
        1.0
    );
    assert_eq!(
        metric(&m, "sluice_requests_total", &[("backend", "canary")]),
        0.0,
        "smoke traffic is not user traffic"
    );
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_checks_speak_http2_to_an_h2c_canary() {
    let stable = Backend::start("stable").await;
    let canary = Backend::start_h2c("canary").await;
    // An h2c-only canary answers only HTTP/2: a body mismatch, not a failed
    // request, shows the check spoke it.
    let plan = format!("{FAST}stages: [{{ weight: 10, bake: 1h }}]\nsmoke:\n  - {{ name: checkout works, path: /checkout, expect_status: 200, expect_body_contains: order-id }}\n");
    let yaml = rollout_yaml(&stable, &canary, &plan, "").replace(
        &format!("url: \"{}\", weight: 0 }}", canary.url()),
        &format!("url: \"{}\", weight: 0, protocol: h2c }}", canary.url()),
    );
    assert!(yaml.contains("protocol: h2c"), "{yaml}");
    let p = start_proxy(&yaml).await;
    let r = wait_state(&p, "api", "rolled_back", Duration::from_secs(10)).await;
    let why = r["last_rollback"].as_str().unwrap();
    assert!(why.contains("body does not contain"), "{r:#}");
    let target = canary.state.last_target.lock().unwrap().clone().unwrap();
    assert_eq!(target, format!("http://{}/checkout", canary.addr));
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_three_times_slower_than_the_baseline_is_rolled_back() {
    let stable = Backend::start("stable").await;
    let canary = Backend::start("canary").await;
    stable.state.delay_ms.store(4, Relaxed);
    canary.state.delay_ms.store(12, Relaxed);
    let plan = format!("{FAST}stages: [{{ weight: 30, bake: 1h }}]\ngates:\n  latency_p95_vs_baseline: {{ warning: 1.2, critical: 1.5 }}\n");
    let p = start_proxy(&rollout_yaml(&stable, &canary, &plan, "")).await;
    let load = Load::start(
        format!("http://{}/", p.proxy_addr()),
        8,
        Duration::from_secs(60),
    );
    let r = wait_state(&p, "api", "rolled_back", Duration::from_secs(40)).await;
    load.stop().await;
    assert!(
        r["last_rollback"]
            .as_str()
            .unwrap()
            .contains("latency_p95_vs_baseline"),
        "{r:#}"
    );
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_few_requests_neither_promote_nor_roll_back() {
    let stable = Backend::start("stable").await;
    let canary = Backend::start("canary").await;
    canary.state.status.store(500, Relaxed); // it would fail, if there were data
    let plan = "interval: 20ms\nwindow: 2s\nmin_requests: 1000\nstages: [{ weight: 50, bake: 100ms }]\ngates:\n  success_rate: { critical: 95 }\n";
    let p = start_proxy(&rollout_yaml(&stable, &canary, plan, "")).await;
    let c = client();
    for i in 0..40 {
        get(
            &c,
            &format!("http://{}/", p.proxy_addr()),
            &[("x-user-id", &format!("u{i}"))],
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let r = rollout_status(&p, "api").await;
    assert_eq!(r["state"], "running", "{r:#}");
    assert_eq!(r["stage"], 1);
    assert!(
        r["held"].as_str().unwrap().starts_with("inconclusive"),
        "{r:#}"
    );
    assert_eq!(r["gates"][0]["verdict"], "inconclusive");
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_window_holds_the_advance_but_not_a_rollback() {
    let stable = Backend::start("stable").await;
    let canary = Backend::start("canary").await;
    let today = jiff::Zoned::now()
        .with_time_zone(jiff::tz::TimeZone::UTC)
        .weekday()
        .to_monday_one_offset();
    let other = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"][(today % 7) as usize]; // tomorrow
    let plan = format!("{FAST}stages: [{{ weight: 20, bake: 100ms }}, {{ weight: 100, bake: 100ms }}]\ngates:\n  success_rate: {{ critical: 95 }}\nwindows: [{{ days: [{other}], from: \"00:00\", to: \"23:59\", tz: UTC }}]\n");
    let p = start_proxy(&rollout_yaml(&stable, &canary, &plan, "")).await;
    let load = Load::start(
        format!("http://{}/", p.proxy_addr()),
        4,
        Duration::from_secs(60),
    );
    let r = wait_rollout(
        &p,
        "api",
        Duration::from_secs(10),
        "a hold for the window",
        |r| r["held"].as_str().is_some_and(|h| h.contains("window")),
    )
    .await;
    assert_eq!(r["stage"], 1);
    canary.state.status.store(503, Relaxed);
    let r = wait_state(&p, "api", "rolled_back", Duration::from_secs(20)).await;
    load.stop().await;
    assert_eq!(r["stage"], 1);
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_actions_and_weights_belong_to_the_rollout() {
    let stable = Backend::start("stable").await;
    let canary = Backend::start("canary").await;
    let plan = format!("{FAST}stages: [{{ weight: 10, bake: 1h }}, {{ weight: 60, bake: 1h }}]\ngates:\n  success_rate: {{ critical: 90 }}\n");
    let p = start_proxy(&rollout_yaml(&stable, &canary, &plan, "")).await;
    wait_state(&p, "api", "running", Duration::from_secs(5)).await;
    let c = client();
    let admin = format!("http://{}", p.admin_addr);
    let post = |path: &str| {
        let (c, url) = (c.clone(), format!("{admin}{path}"));
        async move { send(&c, "POST", &url, &[], "").await }
    };
    let (s, _, body) = send(
        &c,
        "PUT",
        &format!("{admin}/routes/api/weights"),
        &[],
        r#"{"canary": 50}"#,
    )
    .await;
    assert_eq!(s, 409, "{body}");
    assert!(
        body.contains("abort it first"),
        "says how to proceed: {body}"
    );
    // A restore of the version before the rollout began keeps the
    // rollout's weights: the canary's share is the stage's, not the old 0.
    let (s, _, body) = send(&c, "POST", &format!("{admin}/history/1/restore"), &[], "").await;
    assert_eq!(s, 200, "{body}");
    let st = admin_json(&p, "/status").await;
    assert_eq!(
        st["routes"][0]["backends"][1]["weight"], 10,
        "the rollout keeps its weights: {st:#}"
    );
    assert_eq!(rollout_of(&st, "api")["stage"], 1);
    assert_eq!(
        post("/routes/api/rollout/resume").await.0,
        409,
        "not paused"
    );
    assert_eq!(post("/routes/api/rollout/pause").await.0, 200);
    assert_eq!(rollout_status(&p, "api").await["state"], "paused");
    assert_eq!(post("/routes/api/rollout/resume").await.0, 200);
    assert_eq!(post("/routes/api/rollout/promote").await.0, 200);
    let r = rollout_status(&p, "api").await;
    assert_eq!(
        (r["stage"].as_u64(), r["canary_weight"].as_u64()),
        (Some(2), Some(60))
    );
    assert_eq!(post("/routes/api/rollout/abort").await.0, 200);
    let r = rollout_status(&p, "api").await;
    assert_eq!(r["state"], "aborted");
    let m = get(&c, &format!("{admin}/metrics"), &[]).await.1;
    assert_eq!(
        metric(&m, "sluice_rollbacks_total", &[("reason", "manual")]),
        1.0
    );
    assert_eq!(
        metric(&m, "sluice_backend_weight", &[("backend", "canary")]),
        0.0
    );
    assert_eq!(post("/routes/api/rollout/restart").await.0, 200);
    let r = wait_state(&p, "api", "running", Duration::from_secs(5)).await;
    assert_eq!(r["stage"], 1);
    assert_eq!(post("/routes/api/rollout/launch").await.0, 404);
    assert_eq!(post("/routes/nope/rollout/pause").await.0, 404);
    // A plain rollback of a route under a rollout aborts it.
    assert_eq!(post("/routes/api/rollback").await.0, 200);
    assert_eq!(rollout_status(&p, "api").await["state"], "aborted");
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_the_rollout_where_it_was() {
    let stable = Backend::start("stable").await;
    let canary = Backend::start("canary").await;
    let dir = tempfile::tempdir().unwrap();
    let plan = format!("{FAST}stages: [{{ weight: 10, bake: 200ms }}, {{ weight: 40, bake: 1h }}]\ngates:\n  success_rate: {{ critical: 90 }}\n");
    let yaml = rollout_yaml(&stable, &canary, &plan, "state_dir: state\n");
    let p = start_proxy_in(&yaml, dir.path()).await;
    let load = Load::start(
        format!("http://{}/", p.proxy_addr()),
        4,
        Duration::from_secs(30),
    );
    wait_rollout(&p, "api", Duration::from_secs(15), "stage 2", |r| {
        r["stage"] == 2
    })
    .await;
    load.stop().await;
    p.shutdown().await;

    let p = start_proxy_in(&yaml, dir.path()).await;
    let r = rollout_status(&p, "api").await;
    assert_eq!(
        (r["state"].as_str(), r["stage"].as_u64()),
        (Some("running"), Some(2)),
        "{r:#}"
    );
    let status = admin_json(&p, "/status").await;
    let canary_weight = status["routes"][0]["backends"][1]["weight"].as_u64();
    assert_eq!(
        canary_weight,
        Some(40),
        "the stage's weights are back after the restart"
    );
    let events = admin_json(&p, "/events?route=api").await;
    let kinds: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"rollout_started")
            && kinds.contains(&"stage_advanced")
            && kinds.contains(&"rollout_resumed"),
        "{kinds:?}"
    );
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_keep_the_rollout_and_a_new_canary_starts_over() {
    let stable = Backend::start("stable").await;
    let canary = Backend::start("canary").await;
    let canary2 = Backend::start("canary2").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sluice.yaml");
    let plan = format!("{FAST}stages: [{{ weight: 10, bake: 1h }}, {{ weight: 40, bake: 1h }}]\ngates:\n  success_rate: {{ critical: 90 }}\n");
    std::fs::write(&file, rollout_yaml(&stable, &canary, &plan, "")).unwrap();
    let p = start_proxy_file(&file).await;
    wait_state(&p, "api", "running", Duration::from_secs(5)).await;
    let (s, _, _) = send(
        &client(),
        "POST",
        &format!("http://{}/routes/api/rollout/promote", p.admin_addr),
        &[],
        "",
    )
    .await;
    assert_eq!(s, 200);
    // The same plan with a tweak elsewhere: the rollout stays at stage 2, weights included.
    std::fs::write(
        &file,
        rollout_yaml(&stable, &canary, &plan, "") + "    timeout: 9s\n",
    )
    .unwrap();
    eventually(Duration::from_secs(5), "reload", || {
        p.control.current().config.routes[0].timeout == Duration::from_secs(9)
    })
    .await;
    let status = admin_json(&p, "/status").await;
    assert_eq!(
        status["routes"][0]["backends"][1]["weight"], 40,
        "{status:#}"
    );
    assert_eq!(status["routes"][0]["rollout"]["stage"], 2);
    // A new canary address: a new deploy, a new rollout from stage 1.
    std::fs::write(&file, rollout_yaml(&stable, &canary2, &plan, "")).unwrap();
    wait_status(&p, Duration::from_secs(5), "a new rollout", |s| {
        s["routes"][0]["rollout"]["stage"] == 1 && s["routes"][0]["backends"][1]["weight"] == 10
    })
    .await;
    let events = admin_json(&p, "/events?route=api").await;
    assert!(events
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["kind"] == "rollout_stopped"));
    p.shutdown().await;
}

/// Every family of a real exposition, after a rollout and its rollback,
/// passes `promtool check metrics` (HELP text, types, names).
fn promtool_checks(exposition: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; scripts/test.sh installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{exposition}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
