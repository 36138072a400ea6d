//! The `sluice` binary as users run it: check, run with signals, ctl, demo.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// A child process that is killed if the test fails before stopping it.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} failed");
}

/// Starts `sluice run` and reads its addresses from the startup log line.
fn run_binary(config: &Path, extra: &[&str]) -> (Proc, String, String) {
    let (proc, proxy, admin, _) = run_binary_logged(config, extra);
    (proc, proxy, admin)
}

/// As [`run_binary`], and keeps the JSON log lines written after start.
fn run_binary_logged(
    config: &Path,
    extra: &[&str],
) -> (
    Proc,
    String,
    String,
    std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
) {
    let mut child = Command::new(BIN)
        .args(["--log-format", "json", "run", "--config"])
        .arg(config)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let child = Proc(child);
    let mut lines = BufReader::new(stderr).lines();
    let (proxy, admin) = wait_serving(&mut lines);
    // Keep draining stderr so the child never blocks on a full pipe.
    let kept = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = kept.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line) {
                keep.lock().unwrap().push(v);
            }
        }
    });
    (child, proxy, admin, kept)
}

fn ctl(admin: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(["ctl", "--admin", admin])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_accepts_every_example_config() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let out = Command::new(BIN)
                .args(["check", "--config"])
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(stdout.contains(": ok"));
            if path.ends_with("edge.yaml") {
                assert!(stdout.contains("access log: standard output"), "{stdout}");
                assert!(
                    stdout.contains("mirror: 10 % of requests copied to rewrite"),
                    "{stdout}"
                );
                assert!(
                    stdout.contains("canary: TLS to 10.0.3.7:8443, its certificate checked for billing.internal.example.com against the built-in public roots"),
                    "{stdout}"
                );
            }
            if path.ends_with("fleet.yaml") {
                assert!(
                    stdout.contains("fleet: rollouts judged on the pooled numbers of {job=\"sluice\", fleet=\"checkout\"} in http://127.0.0.1:9090, read 20s behind each tick"),
                    "{stdout}"
                );
            }
            assert!(stdout.contains("digest: "), "{stdout}");
            checked += 1;
        }
    }
    assert!(checked >= 2);
}

#[test]
fn check_lists_every_problem_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "listeners: [{ addr: nope }]\nroutes:\n  - name: api\n    backends:\n      - { name: stable, url: \"http://127.0.0.1:1\", weight: 0 }\n      - { name: stable, url: \"http://127.0.0.1:2\", weight: 0 }\n    rollout: { baseline: stable, canary: canry }\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "listeners[0].addr",
        "routes[0].backends[1].name",
        "routes[0].backends: the weights add up to zero",
        "routes[0].rollout.canary: no backend named \"canry\" (backends: stable, stable)",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    let out = Command::new(BIN)
        .args(["check", "--config", "/nonexistent/sluice.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let out = Command::new(BIN).args(["check"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "usage errors exit 2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_reloads_on_sighup_and_drains_on_sigterm() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    b.state
        .delay_ms
        .store(800, std::sync::atomic::Ordering::Relaxed);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sluice.yaml");
    std::fs::write(&file, route_yaml("", &[("a", a.url(), 1)])).unwrap();
    let (mut proc, proxy, admin) = run_binary(&file, &["--watch-interval", "0s"]);
    let c = client();
    assert_eq!(who(&get(&c, &format!("http://{proxy}/"), &[]).await.1), "a");

    std::fs::write(&file, route_yaml("", &[("b", b.url(), 1)])).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        who(&get(&c, &format!("http://{proxy}/"), &[]).await.1),
        "a",
        "the watch is off"
    );
    signal(&proc.0, "-HUP");
    let mut reloaded = false;
    for _ in 0..100 {
        if get(&c, &format!("http://{admin}/events"), &[])
            .await
            .1
            .contains("\"actor\": \"signal\"")
        {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert!(reloaded, "SIGHUP must reload the file");

    // A slow request in flight when SIGTERM arrives still completes.
    let url = format!("http://{proxy}/");
    let in_flight = tokio::spawn(async move { get(&client(), &url, &[]).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    signal(&proc.0, "-TERM");
    let (s, body) = in_flight.await.unwrap();
    assert_eq!((s.as_u16(), who(&body)), (200, "b"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = proc.0.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "sluice did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(0));
    assert!(
        tokio::net::TcpStream::connect(&proxy).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_drives_a_running_proxy() {
    let a = Backend::start("stable").await;
    let b = Backend::start("canary").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sluice.yaml");
    std::fs::write(
        &file,
        route_yaml("", &[("stable", a.url(), 90), ("canary", b.url(), 10)]),
    )
    .unwrap();
    let (_proc, proxy, admin) = run_binary(&file, &[]);
    let c = client();
    for _ in 0..20 {
        get(&c, &format!("http://{proxy}/"), &[]).await;
    }
    let admin = admin.as_str();
    let (code, out, _) = tokio::task::block_in_place(|| ctl(admin, &["status"]));
    assert_eq!(code, 0);
    assert!(
        out.contains("route api") && out.contains("stable") && out.contains("90.0%"),
        "{out}"
    );

    let (code, out, err) =
        tokio::task::block_in_place(|| ctl(admin, &["weights", "api", "stable=50", "canary=50"]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("table version 2"), "{out}");
    let (code, _, err) = tokio::task::block_in_place(|| ctl(admin, &["weights", "api", "nope=5"]));
    assert_eq!(code, 1);
    assert!(err.contains("no backend named \"nope\""), "{err}");
    let (code, _, err) = tokio::task::block_in_place(|| ctl(admin, &["weights", "api", "stable"]));
    assert_eq!(code, 2, "{err}");
    let (code, out, _) = tokio::task::block_in_place(|| ctl(admin, &["rollback", "api"]));
    assert_eq!(code, 0);
    assert!(out.contains("rolled back"), "{out}");
    let (code, out, _) = tokio::task::block_in_place(|| ctl(admin, &["history"]));
    assert_eq!(code, 0);
    assert!(
        out.contains("rollback of route api") && out.contains("(current)"),
        "{out}"
    );
    let (code, _, _) = tokio::task::block_in_place(|| ctl(admin, &["restore", "2"]));
    assert_eq!(code, 0);
    let (code, out, _) = tokio::task::block_in_place(|| ctl(admin, &["events", "api"]));
    assert_eq!(code, 0);
    assert!(
        out.contains("weights") && out.contains("rollback") && !out.contains("started"),
        "{out}"
    );
    let (code, out, _) = tokio::task::block_in_place(|| ctl(admin, &["events"]));
    assert_eq!(code, 0);
    assert!(
        out.contains("started") && out.contains("restore of version 2"),
        "{out}"
    );
    let (code, out, _) = tokio::task::block_in_place(|| ctl(admin, &["config"]));
    assert_eq!(code, 0);
    assert!(out.contains("name: api"), "{out}");

    let closed = closed_port().await.to_string();
    let (code, _, err) = tokio::task::block_in_place(|| ctl(&closed, &["status"]));
    assert_eq!(code, 3, "{err}");
}

#[test]
fn demo_serves_on_loopback_and_prints_its_urls() {
    let mut child = Command::new(BIN)
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let child = Proc(child);
    let mut urls = std::collections::HashMap::new();
    for line in BufReader::new(stdout).lines().take(4) {
        let line = line.unwrap();
        let (label, url) = line.split_once(':').unwrap();
        urls.insert(label.to_string(), url.trim().to_string());
    }
    for label in ["proxy", "admin", "dashboard"] {
        assert!(
            urls.get(label)
                .is_some_and(|u| u.starts_with("http://127.0.0.1:")),
            "{urls:?}"
        );
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = client();
        let mut seen = std::collections::HashSet::new();
        for i in 0..200 {
            let (s, body) = get(&c, &urls["proxy"], &[("x-user-id", &format!("u{i}"))]).await;
            assert_eq!(s, 200);
            seen.insert(body);
        }
        assert_eq!(seen.len(), 2, "both demo backends answer: {seen:?}");
        let (s, page) = get(&c, &urls["dashboard"], &[]).await;
        assert_eq!(s, 200);
        assert!(page.contains("<title>sluice</title>"));
    });
    signal(&child.0, "-TERM");
}

/// The shipped alerts parse, and their unit tests pass under a real
/// promtool (Debian's prometheus package): each fires on its condition and
/// stays silent on a healthy fleet (replicas whose config versions differ,
/// a rollback followed by the others).
#[test]
fn shipped_alerts_fire_on_their_conditions_and_not_on_a_healthy_fleet() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus");
    for args in [
        vec!["check", "rules", "alerts.yml"],
        vec![
            "test",
            "rules",
            "alerts_test.yml",
            "alerts_stalled_test.yml",
        ],
    ] {
        let out = Command::new("promtool")
            .args(&args)
            .current_dir(&dir)
            .output()
            .expect("promtool (Debian package prometheus; scripts/test.sh installs it)");
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The configs inside the Kubernetes manifests stay valid as the schema
/// grows (their token file is a Secret in the cluster; a stand-in here).
#[test]
fn deploy_manifests_carry_valid_configs() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    let tmp = tempfile::tempdir().unwrap();
    let token = tmp.path().join("token");
    std::fs::write(&token, "t").unwrap();
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let docs: Vec<serde_json::Value> = serde_saphyr::from_str_multiple(&text).unwrap();
        for doc in docs.iter().filter(|d| d["kind"] == "ConfigMap") {
            let Some(cfg) = doc["data"]["sluice.yaml"].as_str() else {
                continue;
            };
            let cfg = cfg.replace("/etc/sluice-admin/token", token.to_str().unwrap());
            let file = tmp.path().join("sluice.yaml");
            std::fs::write(&file, cfg).unwrap();
            let out = Command::new(BIN)
                .args(["check", "--config"])
                .arg(&file)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(checked >= 2, "found {checked} configs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_drives_a_rollout_and_prints_its_report() {
    let stable = Backend::start("stable").await;
    let canary = Backend::start("canary").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sluice.yaml");
    let plan = "interval: 50ms\nstages: [{ weight: 10, bake: 1h }, { weight: 50, bake: 1h }]\ngates: { success_rate: { warning: 99, critical: 90 } }\n";
    let yaml = rollout_yaml(&stable, &canary, plan, "");
    std::fs::write(&file, yaml).unwrap();
    let (_proc, _proxy, admin) = run_binary(&file, &[]);
    let admin = admin.as_str();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let run = |args: &'static [&'static str]| tokio::task::block_in_place(|| ctl(admin, args));
    let (code, out, err) = run(&["watch", "api", "--once"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("rollout running · stage 1/2")
            && out.contains("gate success_rate")
            && out.contains("recent events"),
        "{out}"
    );
    let (code, _, _) = run(&["pause", "api"]);
    assert_eq!(code, 0);
    let (code, _, err) = run(&["pause", "api"]);
    assert_eq!(code, 1, "pausing twice is refused: {err}");
    assert!(err.contains("paused"), "{err}");
    assert_eq!(run(&["resume", "api"]).0, 0);
    let (code, out, _) = run(&["promote", "api"]);
    assert_eq!(code, 0);
    assert!(out.contains("stage 2/2"), "{out}");
    let (code, _, err) = run(&["report", "api"]);
    assert_eq!(code, 1, "no rollback yet: {err}");
    assert_eq!(run(&["abort", "api"]).0, 0);
    let (code, out, _) = run(&["report", "api"]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with("# Incident") && out.contains("aborted by hand"),
        "{out}"
    );
    assert_eq!(run(&["restart", "api"]).0, 0);
    let (_, out, _) = run(&["status"]);
    assert!(out.contains("rollout running · stage 1/2"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_rollout_and_it_resumes_at_the_same_stage() {
    let stable = Backend::start("stable").await;
    let canary = Backend::start("canary").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sluice.yaml");
    let plan = "interval: 50ms\nstages: [{ weight: 10, bake: 1h }, { weight: 30, bake: 1h }, { weight: 100, bake: 1h }]\ngates: { success_rate: { critical: 90 } }\n";
    let yaml = rollout_yaml(&stable, &canary, plan, "state_dir: state\n");
    std::fs::write(&file, yaml).unwrap();
    let (mut first, _, admin) = run_binary(&file, &[]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let admin_s = admin.clone();
    let (code, _, err) = tokio::task::block_in_place(|| ctl(&admin_s, &["promote", "api"]));
    assert_eq!(code, 0, "{err}");
    signal(&first.0, "-KILL");
    let _ = first.0.wait();

    let (_second, proxy, admin) = run_binary(&file, &[]);
    let c = client();
    let status: serde_json::Value =
        serde_json::from_str(&get(&c, &format!("http://{admin}/status"), &[]).await.1).unwrap();
    let route = &status["routes"][0];
    assert_eq!(route["rollout"]["state"], "running", "{status:#}");
    assert_eq!(route["rollout"]["stage"], 2, "{status:#}");
    assert_eq!(
        route["backends"][1]["weight"], 30,
        "the stage's weights are back: {status:#}"
    );
    let events = get(&c, &format!("http://{admin}/events?route=api"), &[])
        .await
        .1;
    for kind in ["rollout_started", "promote", "rollout_resumed"] {
        assert!(
            events.contains(&format!("\"kind\": \"{kind}\"")),
            "{kind} missing: {events}"
        );
    }
    let mut canary_users = 0;
    for i in 0..200 {
        let (s, body) = get(
            &c,
            &format!("http://{proxy}/"),
            &[("x-user-id", &format!("u{i}"))],
        )
        .await;
        assert_eq!(s, 200);
        canary_users += (who(&body) == "canary") as u32;
    }
    assert!(
        (25..=100).contains(&canary_users),
        "about 30 % to the canary: {canary_users}/200"
    );
}

/// A failing backend is logged at warn with its cause, one line a second
/// per backend at most, each line counting the failures it left out; so a
/// backend that fails every request does not flood the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_failures_are_logged_at_warn_once_a_second() {
    let closed = closed_port().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sluice.yaml");
    // A second route to the same address shares its connection pool, not
    // its log lines.
    let yaml = route_yaml("", &[("gone", format!("http://{closed}"), 1)]).replace(
        "routes:\n",
        &format!(
            "routes:\n  - {{ name: other, match: {{ path_prefix: /other }}, backends: [{{ name: also, url: \"http://{closed}\" }}] }}\n"
        ),
    );
    std::fs::write(&file, yaml).unwrap();
    let (_proc, proxy, _admin, log) = run_binary_logged(&file, &[]);
    let c = client();
    let warnings = || -> Vec<serde_json::Value> {
        log.lock()
            .unwrap()
            .iter()
            .filter(|v| v["level"] == "WARN" && v["fields"]["route"] == "api")
            .cloned()
            .collect()
    };
    let started = Instant::now();
    for _ in 0..20 {
        assert_eq!(get(&c, &format!("http://{proxy}/"), &[]).await.0, 502);
    }
    let burst = started.elapsed();
    assert_eq!(get(&c, &format!("http://{proxy}/other"), &[]).await.0, 502);
    // A second later the next failure is logged again, with the count of
    // those left out.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get(&c, &format!("http://{proxy}/"), &[]).await.0, 502);
    let deadline = Instant::now() + Duration::from_secs(5);
    let lines = loop {
        let w = warnings();
        let counted: u64 = w
            .iter()
            .map(|v| 1 + v["fields"]["unlogged"].as_u64().unwrap())
            .sum();
        if counted == 21 {
            break w;
        }
        assert!(
            Instant::now() < deadline,
            "warn lines account for {counted} of 21 failures: {w:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let other: Vec<_> = log
        .lock()
        .unwrap()
        .iter()
        .filter(|v| v["level"] == "WARN" && v["fields"]["route"] == "other")
        .cloned()
        .collect();
    assert_eq!(
        other.len(),
        1,
        "the other route's failure has its own line: {other:?}"
    );
    assert_eq!(other[0]["fields"]["unlogged"], 0);
    let first = &lines[0]["fields"];
    assert_eq!(first["backend"], "gone");
    assert_eq!(first["status"], 502);
    assert_eq!(first["origin"], closed.to_string());
    let message = first["message"].as_str().unwrap().to_lowercase();
    assert!(message.contains("refused"), "the cause is named: {message}");
    // One line for the burst (two if it straddled a second) and one after.
    let most = 2 + burst.as_secs() as usize + 1;
    assert!(
        (2..=most).contains(&lines.len()),
        "{} warn lines: {lines:?}",
        lines.len()
    );
}
