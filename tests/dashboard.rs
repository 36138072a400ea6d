//! The dashboard page in a real headless Chromium (Debian's package): the
//! page's script must render live routes, weights and the rollout.

mod support;

use std::process::Command;
use std::time::Duration;

use support::*;

/// Loads `url` in headless Chromium, lets its scripts run, returns the DOM.
fn chromium_dom(url: &str, screenshot: Option<&std::path::Path>) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1200,1400",
        "--virtual-time-budget=4000",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()));
    match screenshot {
        Some(p) => cmd.arg(format!("--screenshot={}", p.display())),
        None => cmd.arg("--dump-dom"),
    };
    let out = cmd
        .arg(url)
        .output()
        .expect("the chromium binary (Debian package chromium; scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_routes_weights_and_the_rollout() {
    let stable = Backend::start("stable").await;
    let canary = Backend::start("canary").await;
    let yaml = format!(
        "listeners: [{{ addr: \"127.0.0.1:0\" }}]\nadmin: {{ addr: \"127.0.0.1:0\" }}\nroutes:\n  - name: shop\n    backends:\n      - {{ name: stable, url: \"{}\", weight: 100 }}\n      - {{ name: canary, url: \"{}\", weight: 0 }}\n    rollout:\n      baseline: stable\n      canary: canary\n      interval: 50ms\n      stages: [{{ weight: 25, bake: 1h }}, {{ weight: 100, bake: 1h }}]\n      gates: {{ success_rate: {{ warning: 99, critical: 90 }} }}\n",
        stable.url(),
        canary.url()
    );
    let p = start_proxy(&yaml).await;
    wait_state(&p, "shop", "running", Duration::from_secs(5)).await;
    let c = client();
    for i in 0..50 {
        get(
            &c,
            &format!("http://{}/", p.proxy_addr()),
            &[("x-user-id", &format!("u{i}"))],
        )
        .await;
    }
    let url = format!("http://{}/", p.admin_addr);
    let dom = tokio::task::spawn_blocking(move || chromium_dom(&url, None))
        .await
        .unwrap();
    for want in [
        "data-route=\"shop\"",
        "data-backend=\"stable\"",
        "data-backend=\"canary\"",
        "data-state=\"running\"",
        "data-gate=\"success_rate\"",
        "25%",
        "rollout_started",
        ">promote</button>",
    ] {
        assert!(
            dom.contains(want),
            "the rendered page lacks {want:?}:\n{dom}"
        );
    }
    if let Ok(path) = std::env::var("SLUICE_DASHBOARD_SCREENSHOT") {
        let url = format!("http://{}/", p.admin_addr);
        tokio::task::spawn_blocking(move || chromium_dom(&url, Some(std::path::Path::new(&path))))
            .await
            .unwrap();
    }
    p.shutdown().await;
}
