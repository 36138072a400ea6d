//! A Prometheus gate against a real Prometheus server (Debian's package),
//! started on loopback and scraping the proxy's own metrics.

mod support;

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use support::prometheus::Prometheus;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prometheus_gate_reads_the_fleet_numbers_and_decides() {
    let stable = Backend::start("stable").await;
    let canary = Backend::start("canary").await;
    // The proxy's admin port must be known before Prometheus starts, so the
    // gate's URL is filled in by a reload once Prometheus is up.
    let base = |prom: &str| {
        format!(
            "listeners: [{{ addr: \"127.0.0.1:0\" }}]\nadmin: {{ addr: \"127.0.0.1:0\" }}\nroutes:\n  - name: api\n    backends:\n      - {{ name: stable, url: \"{}\", weight: 100 }}\n      - {{ name: canary, url: \"{}\", weight: 0 }}\n    rollout:\n      baseline: stable\n      canary: canary\n      interval: 200ms\n      stages: [{{ weight: 50, bake: 1h }}]\n      gates:\n        prometheus:\n          - name: canary_5xx\n            url: \"{prom}\"\n            query: 'sum(sluice_requests_total{{route=\"api\",backend=\"canary\",class=\"5xx\"}}) or vector(0)'\n            lag: 0s\n            critical: {{ above: 3 }}\n",
            stable.url(),
            canary.url()
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sluice.yaml");
    std::fs::write(&file, base("http://127.0.0.1:1")).unwrap();
    let p = start_proxy_file(&file).await;
    let prom = Prometheus::start(
        None,
        Duration::from_millis(500),
        &[p.admin_addr.to_string()],
    )
    .await;
    std::fs::write(&file, base(&prom.url)).unwrap();
    let load = Load::start(
        format!("http://{}/", p.proxy_addr()),
        4,
        Duration::from_secs(60),
    );

    // First the gate reads a real value from Prometheus and passes.
    wait_rollout(
        &p,
        "api",
        Duration::from_secs(30),
        "the gate to read Prometheus",
        |r| r["gates"][0]["verdict"] == "pass" && r["gates"][0]["value"] == 0.0,
    )
    .await;
    assert!(canary.state.seen() > 0);
    // Prometheus parsed the latency histogram sluice renders: once a scrape
    // has counted requests, a quantile over its buckets comes out, below
    // the slowest edge.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let counted = "sum(sluice_request_duration_seconds_count{route=\"api\"}) > 0";
    while prom.query(counted).await.is_nan() {
        assert!(
            std::time::Instant::now() < deadline,
            "prometheus never scraped a latency count"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let median = prom.query(
        "histogram_quantile(0.5, sum by (le) (sluice_request_duration_seconds_bucket{route=\"api\"}))",
    )
    .await;
    assert!(median > 0.0 && median <= 60.0, "median latency {median}");
    // Then the canary fails; Prometheus scrapes the failures; the gate trips.
    canary.state.status.store(500, Relaxed);
    let r = wait_state(&p, "api", "rolled_back", Duration::from_secs(30)).await;
    load.stop().await;
    assert!(
        r["last_rollback"].as_str().unwrap().contains("canary_5xx"),
        "{r:#}"
    );
    assert!(r["gates"][0]["value"].as_f64().unwrap() > 3.0);
    p.shutdown().await;
}
