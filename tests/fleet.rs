//! A fleet as users run one: three `sluice` processes of the built binary
//! reading one config file, a real Prometheus scraping each of them every
//! 500 ms, and uneven load (80/10/10). The replicas never talk to each
//! other; what they share is Prometheus and the file.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::prometheus::Prometheus;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const SCRAPE: Duration = Duration::from_millis(500);
/// One tick (1 s) plus one scrape plus the time a status poll takes.
const TRANSITION: Duration = Duration::from_millis(2_500);

/// A replica: the binary, killed when dropped.
struct Replica {
    child: Child,
    proxy: String,
    admin: String,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Replica {
    fn start(config: &Path) -> Replica {
        let child = Command::new(BIN)
            .args([
                "--log-format",
                "json",
                "run",
                "--watch-interval",
                "200ms",
                "--config",
            ])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Owned from here on, so a failed start still kills it.
        let mut r = Replica {
            child,
            proxy: String::new(),
            admin: String::new(),
        };
        let mut lines = BufReader::new(r.child.stderr.take().unwrap()).lines();
        (r.proxy, r.admin) = wait_serving(&mut lines);
        // What goes wrong in a replica shows with the test's output.
        let who = r.admin.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if !line.contains("\"level\":\"INFO\"") || line.contains("fleet:") {
                    eprintln!("replica {who}: {line}");
                }
            }
        });
        r
    }

    async fn status(&self) -> serde_json::Value {
        let (s, body) = get(&client(), &format!("http://{}/status", self.admin), &[]).await;
        assert_eq!(s, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    async fn rollout(&self) -> serde_json::Value {
        rollout_of(&self.status().await, "api")
    }

    async fn metrics(&self) -> String {
        get(&client(), &format!("http://{}/metrics", self.admin), &[])
            .await
            .1
    }
}

/// The shared config: listeners and admin on port 0, so one file serves
/// every replica of the loopback fleet as one ConfigMap serves pods.
fn fleet_yaml(prom: &str, stable: &Backend, canary: &Backend, plan: &str) -> String {
    let mut y = format!(
        "listeners: [{{ addr: \"127.0.0.1:0\" }}]\nadmin: {{ addr: \"127.0.0.1:0\" }}\nfleet:\n  prometheus: \"{prom}\"\n  selector: '{{job=\"sluice\", fleet=\"test\"}}'\n  lag: 2s\nroutes:\n  - name: api\n    backends:\n      - {{ name: stable, url: \"{}\", weight: 100 }}\n      - {{ name: canary, url: \"{}\", weight: 0 }}\n    rollout:\n      baseline: stable\n      canary: canary\n      interval: 1s\n      window: 10s\n      min_requests: 20\n",
        stable.url(),
        canary.url()
    );
    for line in plan.lines().filter(|l| !l.trim().is_empty()) {
        y.push_str(&format!("      {line}\n"));
    }
    y
}

/// Load at fixed rates (requests a second) to each replica, until stopped
/// or for at most a minute.
struct Rates {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Rates {
    fn start(targets: &[(&str, u64)]) -> Rates {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let tasks = targets
            .iter()
            .map(|(proxy, rate)| {
                let (url, rate, stop, sent) = (
                    format!("http://{proxy}/"),
                    *rate,
                    stop.clone(),
                    sent.clone(),
                );
                tokio::spawn(async move {
                    let c = client();
                    let until = Instant::now() + Duration::from_secs(60);
                    let mut every = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
                    let mut n = 0u64;
                    while !stop.load(Relaxed) && Instant::now() < until {
                        every.tick().await;
                        n += 1;
                        let c = c.clone();
                        let url = url.clone();
                        sent.fetch_add(1, Relaxed);
                        // A replica that is down (killed by the test) fails
                        // its requests; the load goes on.
                        tokio::spawn(async move {
                            let req = http::Request::get(&url)
                                .header("x-user-id", format!("u{n}"))
                                .body(Default::default())
                                .unwrap();
                            if let Ok(Ok(r)) =
                                tokio::time::timeout(Duration::from_secs(2), c.request(req)).await
                            {
                                let _ = http_body_util::BodyExt::collect(r.into_body()).await;
                            }
                        });
                    }
                })
            })
            .collect();
        Rates { stop, sent, tasks }
    }

    async fn stop(self) -> u64 {
        self.stop.store(true, Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        self.sent.load(Relaxed)
    }
}

/// Watches the replicas' (state, stage) every 100 ms until every replica
/// satisfies `done` or `within` passes; returns, per replica, when each
/// (state, stage) was first seen.
async fn watch(
    replicas: &[&Replica],
    within: Duration,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> Vec<BTreeMap<(String, u64), Instant>> {
    let mut seen = vec![BTreeMap::new(); replicas.len()];
    let deadline = Instant::now() + within;
    loop {
        let mut all = true;
        let mut last = Vec::new();
        for (i, r) in replicas.iter().enumerate() {
            let ro = r.rollout().await;
            let key = (
                ro["state"].as_str().unwrap_or("").to_string(),
                ro["stage"].as_u64().unwrap_or(0),
            );
            seen[i].entry(key).or_insert_with(Instant::now);
            all &= done(&ro);
            last.push(ro);
        }
        if all {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; replicas now: {last:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every replica went through the same (state, stage) steps, each at most
/// a tick and a scrape after the first replica that took it.
fn in_step(seen: &[BTreeMap<(String, u64), Instant>], steps: &[(&str, u64)]) {
    for (state, stage) in steps {
        let key = (state.to_string(), *stage);
        let times: Vec<Instant> = seen
            .iter()
            .map(|s| {
                *s.get(&key)
                    .unwrap_or_else(|| panic!("a replica never showed {key:?}: {seen:?}"))
            })
            .collect();
        let first = *times.iter().min().unwrap();
        let last = *times.iter().max().unwrap();
        assert!(
            last - first <= TRANSITION,
            "{key:?} reached {:?} apart across the replicas",
            last - first
        );
    }
}

struct Fleet {
    prom: Prometheus,
    replicas: Vec<Replica>,
    file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Fleet {
    /// Three replicas of `yaml(prometheus_url)` and a Prometheus scraping them.
    async fn start(yaml: impl Fn(&str) -> String) -> Fleet {
        let port = closed_port().await.port();
        let url = format!("http://127.0.0.1:{port}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sluice.yaml");
        std::fs::write(&file, yaml(&url)).unwrap();
        let replicas: Vec<Replica> = (0..3).map(|_| Replica::start(&file)).collect();
        let admins: Vec<String> = replicas.iter().map(|r| r.admin.clone()).collect();
        let prom = Prometheus::start(Some(port), SCRAPE, &admins).await;
        Fleet {
            prom,
            replicas,
            file,
            _dir: dir,
        }
    }

    fn all(&self) -> Vec<&Replica> {
        self.replicas.iter().collect()
    }

    fn uneven_load(&self) -> Rates {
        Rates::start(&[
            (&self.replicas[0].proxy, 120),
            (&self.replicas[1].proxy, 15),
            (&self.replicas[2].proxy, 15),
        ])
    }
}

/// The three-replica tests run one at a time: each is seven processes and
/// its timing bounds are a tick and a scrape wide.
static ONE_FLEET_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn state(s: &'static str) -> impl Fn(&serde_json::Value) -> bool {
    move |r| r["state"] == s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_promote_together_roll_back_together_and_start_anew() {
    let _one = ONE_FLEET_AT_A_TIME.lock().await;
    let stable = Backend::start("stable").await;
    let canary = Backend::start("canary").await;
    let bad = Backend::start("canary2").await;
    let plan = "stages: [{ weight: 10, bake: 2s }, { weight: 50, bake: 2s }, { weight: 100, bake: 2s }]\ngates: { success_rate: { critical: 99 } }\n";
    let fleet = Fleet::start(|prom| fleet_yaml(prom, &stable, &canary, plan)).await;
    let load = fleet.uneven_load();

    // 1. A healthy canary: the same stages on every replica, a tick apart
    // at most, the quiet replicas included.
    let seen = watch(
        &fleet.all(),
        Duration::from_secs(60),
        "promotion",
        state("promoted"),
    )
    .await;
    in_step(
        &seen,
        &[
            ("running", 1),
            ("running", 2),
            ("running", 3),
            ("promoted", 3),
        ],
    );
    let ids: Vec<String> = {
        let mut v = Vec::new();
        for r in &fleet.replicas {
            v.push(r.rollout().await["id"].as_str().unwrap().to_string());
        }
        v
    };
    assert!(ids.iter().all(|i| *i == ids[0] && !i.is_empty()), "{ids:?}");
    // One document, one digest, and each replica's status says the fleet agrees.
    let mut digests = Vec::new();
    for r in &fleet.replicas {
        let m = r.metrics().await;
        let line = m
            .lines()
            .find(|l| l.starts_with("sluice_config_info{"))
            .unwrap_or_else(|| panic!("no sluice_config_info in\n{m}"))
            .to_string();
        digests.push(line);
        assert!(
            m.contains(&format!("sluice_rollout_info{{route=\"api\",rollout=\"{}\",stage=\"0\",state=\"promoted\"}} 1", ids[0])),
            "{m}"
        );
    }
    assert!(digests.iter().all(|d| *d == digests[0]), "{digests:?}");
    let s = fleet.replicas[2].status().await;
    assert_eq!(s["fleet"]["replicas"], 3, "{s:#}");
    assert_eq!(s["fleet"]["agreed"], true, "{s:#}");

    // 2. A new canary that fails 10 % of requests: a new rollout (a new
    // id); rolled back on every replica within scrape + lag + a tick of
    // the first.
    bad.state.fail_every.store(10, Relaxed);
    std::fs::write(
        &fleet.file,
        fleet_yaml(&fleet.prom.url, &stable, &bad, plan),
    )
    .unwrap();
    let seen = watch(
        &fleet.all(),
        Duration::from_secs(60),
        "the rollback",
        state("rolled_back"),
    )
    .await;
    let times: Vec<Instant> = seen
        .iter()
        .map(|s| {
            *s.iter()
                .find(|((state, _), _)| state == "rolled_back")
                .expect("every replica rolled back")
                .1
        })
        .collect();
    let first = *times.iter().min().unwrap();
    let spread = *times.iter().max().unwrap() - first;
    assert!(
        spread <= SCRAPE + Duration::from_secs(2) + TRANSITION,
        "the last replica rolled back {spread:?} after the first"
    );
    let at_first = bad.state.seen();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = bad.state.seen() - at_first;
    // The 10 % stage sends at most 15 req/s to the canary; the followers
    // take at most `spread` to stop.
    let bound = (15.0 * (spread.as_secs_f64() + 0.5)).ceil() as u64 + 5;
    assert!(
        after <= bound,
        "{after} canary requests after the first rollback (bound {bound})"
    );
    for r in &fleet.replicas {
        let ro = r.rollout().await;
        assert_ne!(ro["id"], ids[0], "a new canary is a new rollout");
        assert_eq!(
            r.status().await["routes"][0]["backends"][1]["weight"],
            0,
            "no weight on the canary"
        );
    }
    let events = get(
        &client(),
        &format!("http://{}/events?route=api", fleet.replicas[1].admin),
        &[],
    )
    .await
    .1;
    assert!(events.contains("\"rolled_back\""), "{events}");

    // 3. The same canary, fixed, restarted through the file: a new run
    // of the rollout, which the first run's rollback does not touch; it
    // runs to promotion on every replica.
    bad.state.fail_every.store(0, Relaxed);
    let again = format!("{plan}action: restart\n");
    std::fs::write(
        &fleet.file,
        fleet_yaml(&fleet.prom.url, &stable, &bad, &again),
    )
    .unwrap();
    watch(
        &fleet.all(),
        Duration::from_secs(60),
        "the restarted run's promotion",
        |r| r["state"] == "promoted" && r["id"].as_str().is_some_and(|i| i.ends_with("-r1")),
    )
    .await;
    let sent = load.stop().await;
    assert!(sent > 1_000, "{sent} requests sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_pauses_the_fleet_and_a_restarted_replica_rejoins_where_it_is() {
    let _one = ONE_FLEET_AT_A_TIME.lock().await;
    let stable = Backend::start("stable").await;
    let canary = Backend::start("canary").await;
    let plan = "stages: [{ weight: 10, bake: 2s }, { weight: 50, bake: 3s }, { weight: 100, bake: 2s }]\ngates: { success_rate: { critical: 99 } }\n";
    let mut fleet = Fleet::start(|prom| fleet_yaml(prom, &stable, &canary, plan)).await;
    let load = fleet.uneven_load();
    watch(&fleet.all(), Duration::from_secs(40), "stage 2", |r| {
        r["stage"] == 2
    })
    .await;

    // Paused through the shared file: every replica holds at one tick.
    let paused = format!("{plan}paused: true\n");
    std::fs::write(
        &fleet.file,
        fleet_yaml(&fleet.prom.url, &stable, &canary, &paused),
    )
    .unwrap();
    let seen = watch(
        &fleet.all(),
        Duration::from_secs(20),
        "the pause",
        state("paused"),
    )
    .await;
    let stage = fleet.replicas[0].rollout().await["stage"].as_u64().unwrap();
    in_step(&seen, &[("paused", stage)]);

    // A quiet replica dies and comes back with no state: it joins at the
    // fleet's stage, paused, not at stage 1, within two ticks of showing.
    drop(fleet.replicas.remove(2));
    let back = Replica::start(&fleet.file);
    let targets: Vec<String> = fleet
        .replicas
        .iter()
        .map(|r| r.admin.clone())
        .chain([back.admin.clone()])
        .collect();
    fleet.prom.set_targets(&targets);
    let joined = Instant::now();
    watch(&[&back], Duration::from_secs(10), "the rejoin", |r| {
        r["state"] == "paused" && r["stage"] == stage
    })
    .await;
    assert!(
        joined.elapsed() < Duration::from_secs(6),
        "rejoined after {:?}",
        joined.elapsed()
    );
    let ro = back.rollout().await;
    assert_ne!(ro["stage"], 1, "{ro:#}");
    assert!(ro["fleet"]["started"].is_string(), "{ro:#}");
    let weights = back.status().await["routes"][0]["backends"][1]["weight"].clone();
    assert_eq!(
        weights,
        fleet.replicas[0].status().await["routes"][0]["backends"][1]["weight"]
    );
    // The joiner's bake progress is the fleet's.
    let baked = |r: &serde_json::Value| r["baked_seconds"].as_f64().unwrap();
    let other = fleet.replicas[1].rollout().await;
    assert!(
        (baked(&ro) - baked(&other)).abs() <= 1.0,
        "{ro:#} {other:#}"
    );

    // Unpaused: on together to the end, the newcomer with them.
    std::fs::write(
        &fleet.file,
        fleet_yaml(&fleet.prom.url, &stable, &canary, plan),
    )
    .unwrap();
    let mut all = fleet.all();
    all.push(&back);
    let seen = watch(
        &all,
        Duration::from_secs(40),
        "promotion",
        state("promoted"),
    )
    .await;
    in_step(&seen, &[("promoted", 3)]);
    load.stop().await;
}

/// Prometheus gone mid-rollout: the fleet's gates are inconclusive (no
/// advance, the reason in status), and the replica's own check still rolls
/// a broken canary back. One replica, in-process: Prometheus is the point.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_prometheus_nothing_advances_but_a_broken_canary_still_rolls_back() {
    let stable = Backend::start("stable").await;
    let canary = Backend::start("canary").await;
    let port = closed_port().await.port();
    let plan = "stages: [{ weight: 50, bake: 1h }, { weight: 100, bake: 1s }]\ngates: { success_rate: { critical: 99 } }\n";
    let p = start_proxy(&fleet_yaml(
        &format!("http://127.0.0.1:{port}"),
        &stable,
        &canary,
        plan,
    ))
    .await;
    let prom = Prometheus::start(Some(port), SCRAPE, &[p.admin_addr.to_string()]).await;
    let load = Load::start(
        format!("http://{}/", p.proxy_addr()),
        2,
        Duration::from_secs(40),
    );
    wait_rollout(&p, "api", Duration::from_secs(20), "stage 1 baking", |r| {
        r["state"] == "running" && r["baked_seconds"].as_f64().unwrap() > 0.0
    })
    .await;
    drop(prom);
    let r = wait_rollout(&p, "api", Duration::from_secs(15), "the reason", |r| {
        r["held"]
            .as_str()
            .is_some_and(|h| h.contains("unavailable"))
    })
    .await;
    assert!(
        r["fleet"]["evidence"]
            .as_str()
            .unwrap()
            .starts_with("unavailable"),
        "{r:#}"
    );
    let baked = r["baked_seconds"].as_f64().unwrap();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let r = rollout_status(&p, "api").await;
    assert_eq!(
        r["baked_seconds"].as_f64().unwrap(),
        baked,
        "no bake without the fleet: {r:#}"
    );
    assert_eq!(r["state"], "running");
    // The canary breaks: this replica's own check rolls it back at once.
    canary.state.status.store(500, Relaxed);
    let r = wait_state(&p, "api", "rolled_back", Duration::from_secs(10)).await;
    assert!(
        r["last_rollback"]
            .as_str()
            .unwrap()
            .contains("success_rate"),
        "{r:#}"
    );
    load.stop().await;
    p.shutdown().await;
}
